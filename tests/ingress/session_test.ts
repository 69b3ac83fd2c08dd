/**
 * The ingress against a fake backend (go-smtp's way of testing a server): real sockets
 * and real SMTP bytes on one side, a backend that records every call and fails on demand
 * on the other. No relay, no sandbox.
 */
import assert from "node:assert/strict";
import { reply } from "../../src/smtp/reply.ts";
import { checkSmtpServer } from "../../src/compat/smtp_server.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { until } from "../harness.ts";
import { withIngress } from "./fake_backend.ts";

async function loggedIn(port: number): Promise<RawSmtp> {
  const { client } = await RawSmtp.connect(port);
  assert.equal((await client.command("EHLO c")).code, 250);
  assert.equal((await client.command(`AUTH PLAIN ${plain("a@example.com", "pw")}`)).code, 235);
  return client;
}

Deno.test("compat: smtp-server's internals the ingress relies on are all there", () => {
  checkSmtpServer();
});

Deno.test("compat: a missing internal fails the self-check with the library, version and piece", () => {
  class Broken {
    constructor() {}
  }
  assert.throws(
    () => checkSmtpServer(Broken as never),
    /^Error: smtp-server \d+\.\d+\.\d+: SMTPConnection\.connectionReady\(\) is missing \(the relay relies on it; pin smtp-server or update src\/compat\/smtp_server\.ts\)$/,
  );
});

Deno.test("session: one transaction calls the backend in order, with the exact bytes; QUIT logs out once", async () => {
  await withIngress(async (ingress, backend) => {
    const c = await loggedIn(ingress.addresses[0].port);
    assert.equal((await c.command("MAIL FROM:<a@example.com>")).last, "250 Accepted");
    assert.equal((await c.command("RCPT TO:<b@example.net>")).last, "250 Accepted");
    assert.equal((await c.command("DATA")).code, 354);
    await c.send("Subject: s\r\n\r\n..dot\r\nline\r\n.");
    assert.equal((await c.reply()).last, "250 2.0.0 OK queued");
    assert.equal((await c.command("QUIT")).code, 221);
    await c.close();
    assert.ok(await until(() => backend.logouts === 1));
    assert.deepEqual(backend.calls, [
      "newSession 127.0.0.1 trusted=false",
      "reset", // EHLO
      "auth a@example.com 2",
      "mail <a@example.com> authenticated=true",
      "rcpt <b@example.net>",
      "data 26",
      "reset", // after the reply to DATA
      "logout",
    ]);
    assert.equal(
      new TextDecoder().decode(backend.messages[0]),
      "Subject: s\r\n\r\n.dot\r\nline\r\n",
    );
  });
});

Deno.test("session: RSET resets the transaction; a client that vanishes mid-transaction is logged out once", async () => {
  await withIngress(async (ingress, backend) => {
    const c = await loggedIn(ingress.addresses[0].port);
    await c.command("MAIL FROM:<a@example.com>");
    await c.command("RCPT TO:<b@example.net>");
    assert.equal((await c.command("RSET")).code, 250);
    await c.command("MAIL FROM:<a@example.com>");
    await c.close(); // gone, no QUIT
    assert.ok(await until(() => backend.logouts === 1));
    assert.deepEqual(backend.calls.slice(3), [
      "mail <a@example.com> authenticated=true",
      "rcpt <b@example.net>",
      "reset", // RSET
      "mail <a@example.com> authenticated=true",
      "logout",
    ]);
    assert.equal(backend.logouts, 1);
    assert.equal(ingress.sessions, 0);
  });
});

Deno.test("session: each stage's refusal reaches the client as the backend worded it", async () => {
  await withIngress(async (ingress, backend) => {
    const port = ingress.addresses[0].port;
    backend.script.mail = reply(550, "5.7.1", "Sender <x@example.com> is not allowed");
    let c = await loggedIn(port);
    assert.equal(
      (await c.command("MAIL FROM:<x@example.com>")).last,
      "550 5.7.1 Sender <x@example.com> is not allowed",
    );
    backend.script.mail = undefined;
    backend.script.rcpt = reply(550, "5.1.1", "No such user");
    await c.command("MAIL FROM:<a@example.com>");
    assert.equal((await c.command("RCPT TO:<b@example.net>")).last, "550 5.1.1 No such user");
    backend.script.rcpt = undefined;
    backend.script.data = reply(451, "4.4.1", "Provider unreachable, try again later");
    await c.command("RCPT TO:<b@example.net>");
    await c.command("DATA");
    await c.send("x\r\n.");
    assert.equal((await c.reply()).last, "451 4.4.1 Provider unreachable, try again later");
    await c.close();

    backend.script.auth = false;
    c = (await RawSmtp.connect(port)).client;
    await c.command("EHLO c");
    assert.equal(
      (await c.command(`AUTH PLAIN ${plain("a@example.com", "wrong")}`)).last,
      "535 5.7.8 Authentication credentials invalid",
    );
    await c.close();
  });
});

Deno.test("session: a backend that throws at any stage gives a precise 4xx and the process stays up", async () => {
  await withIngress(async (ingress, backend) => {
    const port = ingress.addresses[0].port;
    backend.script.auth = "throw";
    let c = (await RawSmtp.connect(port)).client;
    await c.command("EHLO c");
    assert.equal(
      (await c.command(`AUTH PLAIN ${plain("a@example.com", "pw")}`)).last,
      "454 4.7.0 Temporary authentication failure",
    );
    await c.close();
    backend.script.auth = undefined;

    for (const stage of ["mail", "rcpt", "data"] as const) {
      backend.script[stage] = "throw";
      c = await loggedIn(port);
      const mail = await c.command("MAIL FROM:<a@example.com>");
      const rcpt = stage === "mail" ? mail : await c.command("RCPT TO:<b@example.net>");
      let last = rcpt;
      if (stage === "data") {
        await c.command("DATA");
        await c.send("x\r\n.");
        last = await c.reply();
      }
      assert.equal(last.last, "451 4.3.0 Local error in processing, try again later", stage);
      await c.close();
      backend.script[stage] = undefined;
    }

    backend.script.newSession = "throw";
    const opened = await RawSmtp.connect(port);
    assert.equal(opened.greeting!.last, "421 4.3.0 Local error in processing, try later");
    assert.equal(await opened.client.closedByServer(), true);
    backend.script.newSession = undefined;
    // Still serving.
    c = await loggedIn(port);
    assert.equal((await c.command("MAIL FROM:<a@example.com>")).code, 250);
    await c.close();
  });
});

Deno.test("session: trusted-network clients reach MAIL unauthenticated; others get 530 before the backend", async () => {
  await withIngress(async (ingress, backend) => {
    const { client: c } = await RawSmtp.connect(ingress.addresses[0].port);
    await c.command("EHLO c");
    assert.equal((await c.command("MAIL FROM:<p@printers.example>")).code, 250);
    await c.close();
    assert.ok(backend.calls.includes("newSession 127.0.0.1 trusted=true"));
    assert.ok(backend.calls.includes("mail <p@printers.example> authenticated=false"));
  }, { trustedNetworks: ["127.0.0.0/8"] });
  await withIngress(async (ingress, backend) => {
    const { client: c } = await RawSmtp.connect(ingress.addresses[0].port);
    await c.command("EHLO c");
    assert.equal(
      (await c.command("MAIL FROM:<p@printers.example>")).last,
      "530 5.7.0 Authentication required",
    );
    await c.close();
    assert.ok(!backend.calls.some((call) => call.startsWith("mail")));
  });
});
