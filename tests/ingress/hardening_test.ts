/**
 * Ingress hardening over real sockets: client TLS and its reload, plaintext AUTH policy,
 * PROXY protocol, early talkers, trusted networks, sender policy, the open-relay
 * battery, and the abuse limits.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import nodemailer, { type Transporter } from "nodemailer";
import { SANDBOX_CA_PEM, SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "../../src/sandbox/tls.ts";
import { type Harness, PASSWORD, rawMessage, startHarness } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

const FIXTURES = new URL("../fixtures/", import.meta.url);

async function tlsFiles(dir: string) {
  const certFile = `${dir}/cert.pem`, keyFile = `${dir}/key.pem`;
  await Deno.writeTextFile(certFile, SANDBOX_CERT_PEM);
  await Deno.writeTextFile(keyFile, SANDBOX_KEY_PEM);
  return { certFile, keyFile };
}

/** A full transaction on a raw session; returns the reply to the final step reached. */
async function transaction(c: RawSmtp, from: string, to = "r@example.net", body = "x") {
  const mail = await c.command(`MAIL FROM:<${from}>`);
  if (mail.code !== 250) return mail;
  const rcpt = await c.command(`RCPT TO:<${to}>`);
  if (rcpt.code !== 250) return rcpt;
  const data = await c.command("DATA");
  if (data.code !== 354) return data;
  return await c.command(`Subject: t\r\n\r\n${body}\r\n.`);
}

Deno.test("STARTTLS and implicit TLS with the configured certificate; reload keeps sessions", async () => {
  const dir = await Deno.makeTempDir();
  const files = await tlsFiles(dir);
  const h = await startHarness({ config: { smtp: { port: 0 }, smtps: { port: 0 }, tls: files } });
  const clients: Transporter[] = [];
  const client = (port: number, ca: string, options: Record<string, unknown> = {}) => {
    const t = nodemailer.createTransport({
      host: "localhost",
      port,
      auth: { user: h.accounts[0].email, pass: PASSWORD },
      tls: { ca, servername: "localhost" },
      logger: false,
      ...options,
    });
    clients.push(t);
    return t;
  };
  const mail = (t: Transporter) =>
    t.sendMail({
      envelope: { from: h.accounts[0].email, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(h.accounts[0].email, "r@example.net", "tls\r\n")),
    });
  try {
    const starttls = client(h.relay.smtp.port, SANDBOX_CA_PEM, {
      requireTLS: true,
      pool: true,
      maxConnections: 1,
    });
    assert.match(String((await mail(starttls)).response), /^250 /);
    const implicit = client(h.relay.smtps!.port, SANDBOX_CA_PEM, { secure: true });
    assert.match(String((await mail(implicit)).response), /^250 /);

    // New certificate on disk, reloaded (what SIGHUP does).
    await Deno.copyFile(new URL("reload_cert.pem", FIXTURES), files.certFile);
    await Deno.copyFile(new URL("reload_key.pem", FIXTURES), files.keyFile);
    assert.equal(await h.relay.reloadTls(), true);
    const caB = await Deno.readTextFile(new URL("reload_ca.pem", FIXTURES));
    // New sessions get the new certificate: trusted with CA B, refused with CA A.
    assert.match(
      String((await mail(client(h.relay.smtp.port, caB, { requireTLS: true }))).response),
      /^250 /,
    );
    await assert.rejects(() =>
      mail(client(h.relay.smtp.port, SANDBOX_CA_PEM, { requireTLS: true }))
    );
    // The pooled session opened before the reload trusts only CA A: it must still be alive.
    assert.match(String((await mail(starttls)).response), /^250 /);
    assert.equal(h.sandbox.received.length, 4);
  } finally {
    for (const c of clients) c.close();
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AUTH in plaintext from a non-loopback client: 538 5.7.11; after STARTTLS: 235", async () => {
  const dir = await Deno.makeTempDir();
  const h = await startHarness({
    config: { smtp: { port: 0, proxyFrom: ["127.0.0.1"] }, tls: await tlsFiles(dir) },
  });
  const { client: c } = await RawSmtp.connect(h.relay.smtp.port, { proxy: "203.0.113.5" });
  try {
    const ehlo = await c.command("EHLO client.example");
    assert.ok(ehlo.lines.includes("250-STARTTLS"), ehlo.lines.join("\n"));
    const auth = await c.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`);
    assert.equal(
      auth.last,
      "538 5.7.11 Encryption required for requested authentication mechanism",
    );
    assert.equal((await c.command("STARTTLS")).code, 220);
    await c.startTls([SANDBOX_CA_PEM]);
    assert.equal((await c.command("EHLO client.example")).code, 250);
    const secured = await c.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`);
    assert.equal(secured.code, 235);
    assert.match((await transaction(c, h.accounts[0].email)).last, /^250 2\.0\.0 OK/);
  } finally {
    await c.close();
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pipelined commands: every reply arrives, in order; EHLO + STARTTLS in one write upgrades", async () => {
  const dir = await Deno.makeTempDir();
  const h = await startHarness({ config: { smtp: { port: 0 }, tls: await tlsFiles(dir) } });
  const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
  const encode = (s: string) => new TextEncoder().encode(s);
  try {
    // RFC 2920: STARTTLS may end a pipelined group. Its 220 must leave in plaintext, before
    // the handshake, even when the EHLO reply is still waiting to be written with it.
    await c.write(encode("EHLO client.example\r\nSTARTTLS\r\n"));
    const ehlo = await c.reply();
    assert.equal(ehlo.code, 250);
    // No DSN extension: the relay does not honour NOTIFY/RET/ENVID, so it must not offer them.
    assert.ok(!ehlo.lines.some((l) => /\bDSN\b/.test(l)), ehlo.lines.join("\n"));
    assert.equal((await c.reply()).last, "220 Ready to start TLS");
    await c.startTls([SANDBOX_CA_PEM]);
    assert.equal((await c.command("EHLO client.example")).code, 250);
    assert.equal((await c.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`)).code, 235);
    // Two whole transactions in one write: seven replies, in order, none lost or merged.
    const from = h.accounts[0].email;
    const one = `MAIL FROM:<${from}>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\n`;
    await c.write(encode(`${one}DATA\r\n`));
    const codes = [];
    for (let i = 0; i < 4; i++) codes.push((await c.reply()).code);
    assert.deepEqual(codes, [250, 250, 250, 354]);
    await c.write(encode(`Subject: p\r\n\r\nx\r\n.\r\n${one}RSET\r\n`));
    const after = [];
    for (let i = 0; i < 5; i++) after.push((await c.reply()).code);
    assert.deepEqual(after, [250, 250, 250, 250, 250]);
    assert.equal(h.sandbox.received.length, 1);
    assert.deepEqual(h.sandbox.received[0].to, ["a@example.net", "b@example.net"]);
  } finally {
    await c.close();
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PROXY headers count only from configured proxies", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, proxyFrom: ["127.0.0.2"] } } });
  try {
    // 127.0.0.1 is not a configured proxy: its PROXY line is just a bad command.
    const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
    const r = await c.command("PROXY TCP4 203.0.113.5 127.0.0.1 40000 2525");
    assert.equal(r.code, 500);
    // ... and the session is still the loopback client it is: AUTH in plaintext works.
    await c.command("EHLO client.example");
    assert.equal((await c.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`)).code, 235);
    await c.close();
  } finally {
    await h.close();
  }
});

Deno.test("early talkers: refused when untrusted, welcome from loopback", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, proxyFrom: ["127.0.0.1"] } } });
  try {
    // A remote (untrusted) client that speaks before the greeting is refused.
    const remote = await RawSmtp.connect(h.relay.smtp.port, {
      proxy: "198.51.100.9",
      greeting: false,
    });
    await remote.client.send("EHLO early.example");
    const first = await remote.client.reply();
    const second = first.code === 220 ? await remote.client.reply() : first;
    assert.match(second.last, /^421 4\.7\.0 .*You talk too soon/);
    await remote.client.close();
    // A loopback client gets its greeting at once and may pipeline.
    const local = await RawSmtp.connect(h.relay.smtp.port, { proxy: "127.0.0.1", greeting: false });
    await local.client.send("EHLO early.example");
    assert.equal((await local.client.reply()).code, 220);
    assert.equal((await local.client.reply()).code, 250);
    await local.client.close();
  } finally {
    await h.close();
  }
});

async function trustedHarness(): Promise<Harness> {
  return await startHarness({
    accounts: 2,
    config: {
      smtp: { port: 0, trustedNetworks: ["127.0.0.0/8"] },
      senderDomains: { "printers.example.org": "user1@example.com" },
    },
    accountExtras: (i) => i === 0 ? { aliases: ["sales@example.com"] } : {},
  });
}

Deno.test("trusted network: no AUTH, the account is chosen by MAIL FROM; HELO-only works", async () => {
  const h = await trustedHarness();
  const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
  try {
    assert.equal((await c.command("HELO printer")).code, 250);
    assert.match((await transaction(c, "user0@example.com")).last, /^250 /);
    assert.match((await transaction(c, "SALES@example.com")).last, /^250 /);
    assert.match((await transaction(c, "scanner@printers.example.org")).last, /^250 /);
    const unknown = await c.command("MAIL FROM:<someone@elsewhere.example>");
    assert.equal(
      unknown.last,
      "550 5.7.1 Sender <someone@elsewhere.example> is not configured for relaying",
    );
    const bounce = await c.command("MAIL FROM:<>");
    assert.equal(bounce.last, "550 5.7.1 The null sender needs authentication");
    assert.deepEqual(h.sandbox.received.map((m) => m.user), [
      "user0@example.com",
      "user0@example.com",
      "user1@example.com",
    ]);
    // A client on a trusted network may still log in.
    assert.equal((await c.command(`AUTH PLAIN ${plain("user1@example.com", PASSWORD)}`)).code, 235);
    assert.match((await transaction(c, "user1@example.com")).last, /^250 /);
  } finally {
    await c.close();
    await h.close();
  }
});

Deno.test("sender policy for logged-in clients", async () => {
  const h = await startHarness({
    accounts: 2,
    accountExtras: (i) => i === 0 ? { aliases: ["sales@example.com"] } : { senders: "any" },
  });
  try {
    const { client: a } = await RawSmtp.connect(h.relay.smtp.port);
    await a.command("EHLO c");
    await a.command(`AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`);
    assert.equal(
      (await a.command("MAIL FROM:<user1@example.com>")).last,
      "550 5.7.1 Sender <user1@example.com> is not allowed for user0@example.com",
    );
    assert.match((await transaction(a, "sales@example.com")).last, /^250 /);
    assert.match((await transaction(a, "")).last, /^250 /);
    await a.close();
    const { client: b } = await RawSmtp.connect(h.relay.smtp.port);
    await b.command("EHLO c");
    await b.command(`AUTH PLAIN ${plain("user1@example.com", PASSWORD)}`);
    assert.match((await transaction(b, "newsletter@anything.example")).last, /^250 /);
    await b.close();
    assert.deepEqual(h.sandbox.received.map((m) => [m.user, m.from]), [
      ["user0@example.com", "sales@example.com"],
      ["user0@example.com", ""],
      ["user1@example.com", "newsletter@anything.example"],
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("never an open relay", async (t) => {
  const h = await startHarness({
    accounts: 2,
    config: { smtp: { port: 0, trustedNetworks: ["10.0.0.0/8"], proxyFrom: ["127.0.0.1"] } },
  });
  const attempt = async (proxy: string, steps: (c: RawSmtp) => Promise<number>) => {
    const { client } = await RawSmtp.connect(h.relay.smtp.port, { proxy });
    try {
      await client.command("EHLO attacker.example");
      return await steps(client);
    } finally {
      await client.close();
    }
  };
  try {
    await t.step("unauthenticated, untrusted address", async () => {
      const code = await attempt("203.0.113.66", async (c) => {
        const r = await c.command("MAIL FROM:<user0@example.com>");
        assert.equal(r.last, "530 5.7.0 Authentication required");
        assert.equal((await c.command("RCPT TO:<victim@example.net>")).code, 503);
        return (await c.command("DATA")).code;
      });
      assert.notEqual(code, 354);
    });
    await t.step("trusted network, unknown sender", async () => {
      const code = await attempt(
        "10.1.2.3",
        async (c) => (await transaction(c, "spammer@evil.example")).code,
      );
      assert.equal(code, 550);
    });
    await t.step("trusted network, forged account domain", async () => {
      const code = await attempt(
        "10.1.2.3",
        async (c) => (await transaction(c, "ceo@example.com")).code,
      );
      assert.equal(code, 550);
    });
    await t.step("AUTH as A, MAIL FROM B", async () => {
      const code = await attempt("127.0.0.1", async (c) => {
        await c.command(`AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`);
        return (await transaction(c, "user1@example.com")).code;
      });
      assert.equal(code, 550);
    });
    const tricks = [
      "@relay.example,@evil.example:victim@example.net",
      "victim%example.net@relay.example",
      '"victim@example.net"@relay.example',
      "example.net!victim@relay.example",
    ];
    for (const rcpt of tricks) {
      await t.step(`recipient trick <${rcpt}> without AUTH`, async () => {
        const code = await attempt("203.0.113.66", async (c) => {
          await c.command("MAIL FROM:<user0@example.com>");
          return (await c.command(`RCPT TO:<${rcpt}>`)).code;
        });
        assert.ok(code >= 500, `RCPT <${rcpt}> got ${code}`);
      });
    }
    // Logged in, routing tricks are still refused (defence in depth: some systems act on
    // them). A source route is stripped by the parser (RFC 5321 C) and only its final
    // address, which the account may send to anyway, remains.
    for (const rcpt of tricks.slice(1)) {
      await t.step(`recipient trick <${rcpt}> after AUTH`, async () => {
        const reply = await attempt("127.0.0.1", async (c) => {
          await c.command(`AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`);
          assert.equal((await c.command("MAIL FROM:<user0@example.com>")).code, 250);
          return (await c.command(`RCPT TO:<${rcpt}>`)).code;
        });
        assert.ok(reply >= 500, `RCPT <${rcpt}> got ${reply}`);
      });
    }
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("connection limits: per IP and overall, 421 4.7.0", async () => {
  const h = await startHarness({
    config: {
      smtp: { port: 0, proxyFrom: ["127.0.0.1"], allowPlaintextAuth: true },
      limits: { maxConnectionsPerIp: 2, maxClients: 3 },
    },
  });
  const open: RawSmtp[] = [];
  // Logged in: at the cap, idle sessions that have not logged in would make room instead.
  const login = async (c: RawSmtp) => {
    await c.command("EHLO c");
    assert.equal((await c.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`)).code, 235);
  };
  try {
    for (let i = 0; i < 2; i++) {
      const s = await RawSmtp.connect(h.relay.smtp.port, { proxy: "198.51.100.1" });
      assert.equal(s.greeting?.code, 220);
      open.push(s.client);
      await login(s.client);
    }
    const third = await RawSmtp.connect(h.relay.smtp.port, { proxy: "198.51.100.1" });
    open.push(third.client);
    assert.equal(third.greeting?.last, "421 4.7.0 Too many connections from your address");
    assert.ok(await third.client.closedByServer());
    const other = await RawSmtp.connect(h.relay.smtp.port, { proxy: "198.51.100.2" });
    open.push(other.client);
    assert.equal(other.greeting?.code, 220);
    await login(other.client);
    const fourth = await RawSmtp.connect(h.relay.smtp.port, { proxy: "198.51.100.3" });
    open.push(fourth.client);
    assert.equal(fourth.greeting?.last, "421 4.7.0 Too many connections");
  } finally {
    await Promise.all(open.map((c) => c.close()));
    await h.close();
  }
});

Deno.test("authentication failures: tarpit, then 421 and disconnect; an exempt address is never cut off", async () => {
  const h = await startHarness({
    config: {
      smtp: { port: 0, proxyFrom: ["127.0.0.1"], allowPlaintextAuth: true },
      limits: {
        authFailuresBeforeTarpit: 2,
        authFailuresBeforeDisconnect: 3,
        tarpitStepMs: 300,
        authFailureExempt: ["127.0.0.1/32"],
      },
    },
  });
  const bad = `AUTH PLAIN ${plain("user0@example.com", "wrong")}`;
  const good = `AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`;
  try {
    const { client: c } = await RawSmtp.connect(h.relay.smtp.port, { proxy: "203.0.113.9" });
    await c.command("EHLO c");
    assert.equal((await c.command(bad)).code, 535);
    let started = performance.now();
    assert.equal((await c.command(bad)).code, 535);
    const untarpitted = performance.now() - started;
    started = performance.now();
    assert.equal((await c.command(bad)).code, 535);
    const tarpitted = performance.now() - started;
    assert.ok(tarpitted >= 290, `third failure answered after ${tarpitted} ms`);
    assert.ok(untarpitted < tarpitted);
    // The right password no longer helps this address: 421 and the session ends.
    const locked = await c.command(good);
    assert.equal(locked.last, "421 4.7.0 Too many failed authentications, try again later");
    assert.ok(await c.closedByServer());
    await c.close();
    // Exempt (local programs sharing an address): tarpitted, never a lock-out.
    const { client: l } = await RawSmtp.connect(h.relay.smtp.port, { proxy: "127.0.0.1" });
    await l.command("EHLO c");
    for (let i = 0; i < 4; i++) assert.equal((await l.command(bad)).code, 535);
    started = performance.now();
    assert.equal((await l.command(good)).code, 235);
    // 7 failures on this account by now: a tarpitted reply would wait >= 1.5 s.
    assert.ok(performance.now() - started < 1_000, "a correct login is never tarpitted");
    await l.close();
  } finally {
    await h.close();
  }
});

Deno.test("session limits: unauthenticated commands, long lines, total session time", async (t) => {
  const h = await startHarness({
    config: {
      limits: { maxUnauthenticatedCommands: 3, maxCommandLength: 512, sessionTimeoutSeconds: 1 },
    },
  });
  try {
    await t.step("unauthenticated commands", async () => {
      const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
      assert.equal((await c.command("EHLO c")).code, 250);
      assert.equal((await c.command("NOOP")).code, 250);
      assert.equal((await c.command("NOOP")).code, 421);
      assert.ok(await c.closedByServer());
      await c.close();
    });
    await t.step("over-long command line", async () => {
      const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
      const r = await c.command(`EHLO ${"x".repeat(600)}`);
      assert.equal(r.last, "421 4.7.0 Error: Command line too long");
      assert.ok(await c.closedByServer());
      await c.close();
    });
    await t.step("total session time", async () => {
      const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
      await c.command("EHLO c");
      await c.command(`AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`);
      const r = await c.reply();
      assert.equal(r.last, "421 4.4.2 Session time limit exceeded, closing");
      assert.ok(await c.closedByServer());
      await c.close();
    });
    const m = await h.metrics();
    assert.match(m, /smtp_relay_ingress_refusals_total\{reason="session_timeout"\} 1/);
  } finally {
    await h.close();
  }
});
