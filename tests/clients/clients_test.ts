/**
 * The client guides of docs/clients.md, run with the real clients Debian has: Postfix as
 * the sending MTA (relayhost + SASL + TLS), msmtp (as a script's and PHP's sendmail),
 * swaks, and a printer-like client on a trusted network without AUTH. Each runs in a
 * client network namespace (non-loopback, see netns.ts) through the relay to the sandbox
 * provider; the test checks what the provider received, byte for byte where the client
 * sends the message as it is.
 */
import assert from "node:assert/strict";
import { PASSWORD } from "../harness.ts";
import { clientFile, inside, type Rig, startRig } from "./rig.ts";
import { PostfixClient } from "./postfix.ts";

const decoder = new TextDecoder();

/** The one message the sandbox received since `before` messages; its text. */
async function received(rig: Rig, before: number): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (rig.sandbox.received.length <= before && Date.now() < deadline) {
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.equal(rig.sandbox.received.length, before + 1, rig.log());
  return decoder.decode(rig.sandbox.received[before].data);
}

/**
 * `got` must be `sent` (LF turned into CRLF) after some header lines the client added;
 * returns those headers' names.
 */
function added(got: string, sent: string): string {
  const original = sent.replaceAll("\n", "\r\n");
  assert.ok(got.endsWith(original), got);
  const extra = got.slice(0, got.length - original.length);
  assert.match(extra, /^([A-Za-z-]+: [^\r\n]*\r\n)*$/);
  return extra.split("\r\n").filter(Boolean).map((l) => l.slice(0, l.indexOf(":"))).join(" ");
}

Deno.test("clients over STARTTLS + AUTH from another host: Postfix (relayhost + SASL), msmtp (also as PHP's sendmail -t), swaks", async (t) => {
  const rig = await startRig();
  try {
    const host = rig.net.hostAddress;
    const from = rig.account.email;

    await t.step("msmtp (a script)", async () => {
      const conf = await clientFile(
        rig,
        "msmtprc",
        `defaults\nauth on\ntls on\ntls_starttls on\ntls_trust_file ${rig.caFile}\n` +
          `account relay\nhost ${host}\nport ${rig.port}\nfrom ${from}\nuser ${from}\n` +
          `password ${PASSWORD}\naccount default : relay\n`,
      );
      const message = "From: <" + from + ">\nTo: <ops@example.net>\nSubject: msmtp test\n\n" +
        "Line one.\n.leading dot\nLast line.\n";
      const before = rig.sandbox.received.length;
      const r = await inside(rig, "msmtp", ["-C", conf, "ops@example.net"], message);
      assert.equal(r.code, 0, r.out);
      const got = await received(rig, before);
      // msmtp sends the message as given with CRLF line ends, adding Date and Message-ID.
      assert.equal(added(got, message), "Date Message-ID");
      const m = rig.sandbox.received[before];
      assert.equal(m.from, from);
      assert.deepEqual(m.to, ["ops@example.net"]);

      // PHP's mail() runs sendmail_path ("msmtp -t -C …") with the recipients in the headers.
      const php = `To: first@example.net, second@example.net\nSubject: from PHP\n\nHi.\n`;
      const r2 = await inside(rig, "msmtp", ["-t", "-C", conf], php);
      assert.equal(r2.code, 0, r2.out);
      const got2 = await received(rig, before + 1);
      assert.equal(added(got2, php), "From Date Message-ID");
      assert.deepEqual(rig.sandbox.received[before + 1].to, [
        "first@example.net",
        "second@example.net",
      ]);
    });

    await t.step("swaks --tls", async () => {
      const before = rig.sandbox.received.length;
      const r = await inside(rig, "swaks", [
        "--server",
        `${host}:${rig.port}`,
        "--tls",
        "--tls-ca-path",
        rig.caFile,
        "--tls-verify",
        "--auth",
        "LOGIN",
        "--auth-user",
        from,
        "--auth-password",
        PASSWORD,
        "--from",
        from,
        "--to",
        "ops@example.net",
        "--header",
        "Subject: swaks test",
        "--body",
        "Hello from swaks.",
      ]);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /^<~ {2}250 2\.0\.0 OK, upstream said: 250 /m);
      assert.ok(!r.out.includes("=== TLS") || /TLS started/.test(r.out));
      const got = await received(rig, before);
      assert.match(got, /^Subject: swaks test\r$/m);
      assert.match(got, /\r\n\r\nHello from swaks\.\r\n/);
    });

    await t.step("Postfix: relayhost + SASL + TLS (encrypt)", async () => {
      const before = rig.sandbox.received.length;
      const postfix = await PostfixClient.start(rig, { tls: "encrypt" });
      try {
        await postfix.send(
          from,
          "ops@example.net",
          `From: ${from}\nTo: ops@example.net\nSubject: postfix test\n\nRelayed by Postfix.\n`,
        );
        const line = await postfix.waitForLog(/status=(sent|deferred|bounced)/);
        assert.match(
          line,
          /status=sent \(250 2\.0\.0 OK, upstream said: 250 /,
          await postfix.log(),
        );
        const log = await postfix.log();
        assert.match(log, /Trusted TLS connection established|TLS connection established/);
      } finally {
        await postfix.close();
      }
      const got = await received(rig, before);
      const m = rig.sandbox.received[before];
      assert.equal(m.from, from);
      assert.deepEqual(m.to, ["ops@example.net"]);
      assert.match(got, /^Subject: postfix test\r$/m);
      assert.match(got, /^Received: by client\.test \(Postfix/m);
      assert.match(got, /\r\n\r\nRelayed by Postfix\.\r\n$/);
    });
  } finally {
    await rig.close();
  }
});

Deno.test("a printer or scanner on a trusted network sends without AUTH and without TLS", async () => {
  const rig = await startRig({ trusted: true, tls: false });
  try {
    const from = rig.account.email;
    const before = rig.sandbox.received.length;
    const r = await inside(rig, "swaks", [
      "--server",
      `${rig.net.hostAddress}:${rig.port}`,
      "--helo",
      "scanner.local",
      "--from",
      from,
      "--to",
      "office@example.net",
      "--header",
      "Subject: Scan 0001",
      "--body",
      "Scanned document attached.",
    ]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /<- {2}250 2\.0\.0 OK, upstream said: 250 /);
    const got = await received(rig, before);
    assert.match(got, /^Subject: Scan 0001\r$/m);
    assert.equal(rig.sandbox.received[before].from, from);

    // A client on a trusted network may also log in without TLS (AUTH is offered there).
    const before2 = rig.sandbox.received.length;
    const r3 = await inside(rig, "swaks", [
      "--server",
      `${rig.net.hostAddress}:${rig.port}`,
      "--auth",
      "LOGIN",
      "--auth-user",
      from,
      "--auth-password",
      PASSWORD,
      "--from",
      from,
      "--to",
      "office@example.net",
    ]);
    assert.equal(r3.code, 0, r3.out);
    assert.match(r3.out, /<- {2}235 /);
    await received(rig, before2);

    // Another sender on the same network names no account: refused, counted, logged.
    const r2 = await inside(rig, "swaks", [
      "--server",
      `${rig.net.hostAddress}:${rig.port}`,
      "--from",
      "stranger@elsewhere.example",
      "--to",
      "office@example.net",
    ]);
    assert.notEqual(r2.code, 0);
    assert.match(r2.out, /<\*\* 550 5\.7\.1 /);
    assert.equal(await rig.metric('smtp_relay_ingress_refusals_total{reason="sender"}'), 1);
    const line = rig.refusals().find((l) => l.reason === "sender");
    assert.equal(line?.ip, rig.net.clientAddress);
    assert.equal(line?.command, "MAIL");
    assert.equal(line?.address, "<stranger@elsewhere.example>");
  } finally {
    await rig.close();
  }
});
