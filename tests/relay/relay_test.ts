/**
 * The message path end to end over real sockets: nodemailer client → relay →
 * sandbox provider (token endpoint + XOAUTH2 SMTP server).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import MailComposer from "nodemailer/lib/mail-composer";
import type { NodemailerError } from "nodemailer";
import { metricValue, rawMessage, startHarness, until } from "../harness.ts";

/** Sends raw bytes through the relay; returns the reply line or the error's reply line. */
async function send(
  h: Awaited<ReturnType<typeof startHarness>>,
  raw: Uint8Array,
  to: string[] = ["rcpt@example.net"],
  client = h.client(),
): Promise<{ ok: boolean; response: string; rejected: string[] }> {
  try {
    const info = await client.sendMail({
      envelope: { from: h.accounts[0].email, to },
      raw: Buffer.from(raw),
    });
    return { ok: true, response: info.response, rejected: info.rejected };
  } catch (err) {
    return { ok: false, response: (err as NodemailerError).response ?? String(err), rejected: [] };
  }
}

function assertDelivered(actual: Uint8Array, expected: Uint8Array) {
  assert.equal(actual.length, expected.length, "delivered size");
  assert.ok(Buffer.from(actual).equals(Buffer.from(expected)), "delivered bytes differ");
}

Deno.test("message bytes reach the provider unchanged", async (t) => {
  const h = await startHarness();
  try {
    const from = h.accounts[0].email;
    const cases: Record<string, Uint8Array> = {
      "8-bit text": rawMessage(from, "r@example.net", "Grüße aus Köln — 東京 🙂\r\nÆØÅ æøå\r\n"),
      "lines starting with '.'": rawMessage(
        from,
        "r@example.net",
        ".leading dot\r\n..two dots\r\n.\r\nbetween\r\n. space\r\n.\r\n",
      ),
      "998-character lines": rawMessage(
        from,
        "r@example.net",
        `${"a".repeat(998)}\r\n${".".repeat(998)}\r\n${"é".repeat(499)}\r\n`,
      ),
    };
    for (const [name, raw] of Object.entries(cases)) {
      await t.step(name, async () => {
        const before = h.sandbox.received.length;
        const r = await send(h, raw);
        assert.ok(r.ok, r.response);
        assert.match(r.response, /^250 2\.0\.0 OK, upstream said: 250 /);
        assert.equal(h.sandbox.received.length, before + 1);
        assertDelivered(h.sandbox.received[before].data, raw);
        // MAIL FROM goes upstream before the body is in: it declares 8BITMIME (RFC 6152
        // allows it for any content), and a size only when the client declared one (this
        // client does not).
        assert.deepEqual(h.sandbox.received[before].mailParams, { BODY: "8BITMIME" });
      });
    }
    await t.step("10 MB attachment", async () => {
      const attachment = new Uint8Array(10 * 1024 * 1024);
      for (let i = 0; i < attachment.length; i += 65536) {
        crypto.getRandomValues(attachment.subarray(i, i + 65536));
      }
      const raw = await new MailComposer({
        from,
        to: "r@example.net",
        subject: "big",
        text: "see attachment",
        attachments: [{ filename: "random.bin", content: Buffer.from(attachment) }],
      }).compile().build();
      assert.ok(raw.length > 13_000_000);
      const before = h.sandbox.received.length;
      const r = await send(h, raw);
      assert.ok(r.ok, r.response);
      assertDelivered(h.sandbox.received[before].data, raw);
    });
    const metrics = await h.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="delivered"}'), 4);
  } finally {
    await h.close();
  }
});

Deno.test("wrong password and unknown user get the same 535", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const raw = rawMessage(a.email, "r@example.net", "x\r\n");
    const wrong = await send(h, raw, undefined, h.client(a, { password: "wrong" }));
    const unknown = await send(
      h,
      raw,
      undefined,
      h.client({ ...a, email: "nobody@example.com" }, { method: "LOGIN" }),
    );
    assert.equal(wrong.response, "535 5.7.8 Authentication credentials invalid");
    assert.equal(unknown.response, wrong.response);
    // The address is matched case-insensitively.
    const upper = await send(h, raw, undefined, h.client({ ...a, email: a.email.toUpperCase() }));
    assert.ok(upper.ok, upper.response);
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("MAIL before AUTH gets 530", async () => {
  const h = await startHarness();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: h.relay.smtp.port });
  try {
    const lines = await smtpDialogue(conn, ["EHLO client.test", "MAIL FROM:<a@example.com>"]);
    assert.match(lines[0], /^220 /);
    assert.ok(lines.some((l) => l.startsWith("250-AUTH PLAIN LOGIN")), lines.join("\n"));
    assert.ok(lines.some((l) => /^250[ -]SIZE 35882577$/.test(l)), lines.join("\n"));
    assert.equal(lines.at(-1), "530 5.7.0 Authentication required");
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    conn.close();
    await h.close();
  }
});

Deno.test("oversized message gets 552 and is not relayed", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, maxMessageSize: 10_000 } } });
  try {
    const a = h.accounts[0];
    const r = await send(h, rawMessage(a.email, "r@example.net", "x".repeat(20_000) + "\r\n"));
    assert.equal(r.response, "552 5.3.4 Message exceeds fixed maximum message size of 10000 bytes");
    assert.equal(h.sandbox.received.length, 0);
    // The session stays usable and a message under the limit goes through.
    const ok = await send(h, rawMessage(a.email, "r@example.net", "small\r\n"));
    assert.ok(ok.ok, ok.response);
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("a message over the provider's SIZE is refused before it is sent: 552 5.3.4, nothing delivered", async () => {
  const h = await startHarness({ sandbox: { smtpSize: 1024 * 1024 } });
  try {
    const raw = rawMessage(h.accounts[0].email, "r@example.net", "x".repeat(2 * 1024 * 1024));
    const r = await send(h, raw);
    assert.equal(
      r.response,
      "552 5.3.4 Message too big for the provider (its limit: 1048576 bytes)",
    );
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("a sender with an internationalised domain goes upstream in its ASCII form", async () => {
  const h = await startHarness({ accountExtras: () => ({ senders: "any" }) });
  try {
    const from = "news@bücher.example";
    const info = await h.client().sendMail({
      envelope: { from, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(h.accounts[0].email, "r@example.net", "x\r\n")),
    });
    assert.match(info.response, /^250 2\.0\.0 OK/);
    // smtp-server (the sandbox) shows domains in Unicode whichever form came: what tells is
    // that MAIL FROM needed no SMTPUTF8, which the Unicode form would have.
    assert.equal(h.sandbox.received[0].from, "news@bücher.example");
    assert.deepEqual(h.sandbox.received[0].mailParams, { BODY: "8BITMIME" });
  } finally {
    await h.close();
  }
});

Deno.test("recipients beyond the limit get 452 4.5.3", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, maxRecipients: 3 } } });
  try {
    const a = h.accounts[0];
    const to = ["r1@example.net", "r2@example.net", "r3@example.net", "r4@example.net"];
    const client = h.client();
    const info = await client.sendMail({
      envelope: { from: a.email, to },
      raw: Buffer.from(rawMessage(a.email, to[0], "x\r\n")),
    });
    assert.deepEqual(info.rejected, ["r4@example.net"]);
    assert.equal(
      (info.rejectedErrors?.[0] as NodemailerError).response,
      "452 4.5.3 Too many recipients (at most 3)",
    );
    assert.deepEqual(h.sandbox.received[0].to, to.slice(0, 3));
  } finally {
    await h.close();
  }
});

Deno.test("token endpoint failures defer the message, nothing is delivered", async (t) => {
  // No failure hold: the second step's message asks the endpoint again.
  const h = await startHarness({
    config: { tokens: { attempts: 2, retryBaseMs: 10, failureHoldSeconds: 0 } },
  });
  try {
    const a = h.accounts[0];
    const raw = rawMessage(a.email, "r@example.net", "x\r\n");
    await t.step("HTTP 500 on every attempt", async () => {
      h.sandbox.tokenFaults.failNext = 2;
      const r = await send(h, raw);
      assert.equal(
        r.response,
        "451 4.4.3 Cannot get an access token, try again later: HTTP 500 from the token endpoint",
      );
      assert.equal(h.sandbox.received.length, 0);
    });
    await t.step("invalid_grant", async () => {
      h.sandbox.tokens.revoke(a.email);
      const r = await send(h, raw);
      assert.match(
        r.response,
        /^454 4\.7\.0 Account needs re-authorization by the relay operator \(invalid_grant/,
      );
      assert.equal(h.sandbox.received.length, 0);
    });
    const metrics = await h.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="token_error"}'), 2);
    assert.equal(metricValue(metrics, 'smtp_relay_token_refreshes_total{result="failure"}'), 2);
    assert.equal(metricValue(metrics, 'smtp_relay_accounts{state="needs_reauth"}'), 1);
    assert.equal(metricValue(metrics, 'smtp_relay_token_refreshes_total{result="success"}'), 0);
  } finally {
    await h.close();
  }
});

Deno.test("token endpoint unreachable defers the message", async () => {
  const h = await startHarness();
  try {
    await h.sandbox.tokens.close();
    const a = h.accounts[0];
    const r = await send(h, rawMessage(a.email, "r@example.net", "x\r\n"));
    assert.match(r.response, /^451 4\.4\.3 Cannot get an access token, try again later: /);
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("provider replies reach the client with their codes", async (t) => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const raw = rawMessage(a.email, "r@example.net", "x\r\n");
    await t.step("550 to the message", async () => {
      h.sandbox.smtpFaults.rejectData = "550 5.7.1 Message rejected by policy";
      h.sandbox.smtpFaults.rejectDataCount = 1;
      const r = await send(h, raw);
      assert.equal(r.response, "550 5.7.1 Message rejected by policy");
    });
    await t.step("451 to the message", async () => {
      h.sandbox.smtpFaults.rejectData = "451 4.3.0 Try again later";
      h.sandbox.smtpFaults.rejectDataCount = 1;
      const r = await send(h, raw);
      assert.equal(r.response, "451 4.3.0 Try again later");
    });
    await t.step("421 becomes 451 and the client's session stays open", async () => {
      h.sandbox.smtpFaults.rejectData = "421 4.7.0 Too busy, closing";
      h.sandbox.smtpFaults.rejectDataCount = 1;
      const client = h.client(undefined, { pool: true });
      const first = await send(h, raw, undefined, client);
      assert.equal(first.response, "451 4.7.0 Too busy, closing");
      const second = await send(h, raw, undefined, client);
      assert.ok(second.ok, second.response);
      h.sandbox.received.length = 0;
    });
    await t.step("550 to the only recipient", async () => {
      h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
      const r = await send(h, raw, ["gone@example.net"]);
      assert.equal(r.response, "550 5.1.1 No such user");
    });
    await t.step("some recipients refused, others delivered", async () => {
      const r = await send(h, raw, ["ok@example.net", "gone@example.net"]);
      assert.ok(r.ok);
      assert.equal(
        r.response,
        "250 2.0.0 Delivered to 1 of 2 recipients; refused: <gone@example.net> 550 5.1.1",
      );
      // The sender's non-delivery report (tests/relay/dsn_test.ts) follows: let it land.
      assert.ok(await until(() => h.sandbox.received.some((m) => m.from === "")));
      const mail = h.sandbox.received.filter((m) => m.from !== "");
      assert.equal(mail.length, 1);
      assert.deepEqual(mail[0].to, ["ok@example.net"]);
    });
    const metrics = await h.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="rejected"}'), 2);
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="deferred"}'), 2);
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="partial"}'), 1);
    assert.equal(metricValue(metrics, "smtp_relay_recipients_refused_total"), 1);
  } finally {
    await h.close();
  }
});

Deno.test("provider drops the connection mid-DATA: 451 4.4.1, nothing acknowledged", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.dropDataNext = 1;
    const r = await send(h, rawMessage(a.email, "r@example.net", "x".repeat(200_000) + "\r\n"));
    assert.equal(r.ok, false);
    assert.match(r.response, /^451 4\.4\.1 Provider unreachable, try again later: /);
    assert.equal(h.sandbox.received.length, 0);
    // The next message opens a fresh connection and goes through.
    const again = await send(h, rawMessage(a.email, "r@example.net", "again\r\n"));
    assert.ok(again.ok, again.response);
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("provider 535 once: one refresh, one retry, delivered", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectAuthNext = 1;
    const r = await send(h, rawMessage(a.email, "r@example.net", "x\r\n"));
    assert.ok(r.ok, r.response);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(h.sandbox.stats.smtp.authFailures, 1);
    assert.equal(h.sandbox.stats.smtp.authSuccesses, 1);
    // One refresh for the cold account, one after the provider refused the token.
    assert.equal(h.sandbox.stats.token.refreshes, 2);
  } finally {
    await h.close();
  }
});

Deno.test("provider 535 twice: 454 4.7.0, nothing delivered", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectAuthNext = 2;
    const r = await send(h, rawMessage(a.email, "r@example.net", "x\r\n"));
    assert.match(r.response, /^454 4\.7\.0 Provider refused the relay's token, try again later: /);
    assert.equal(h.sandbox.received.length, 0);
    assert.equal(h.sandbox.stats.token.refreshes, 2);
  } finally {
    await h.close();
  }
});

Deno.test("50 concurrent messages on a cold account: exactly one refresh", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const results = await Promise.all(
      Array.from(
        { length: 50 },
        (_, i) => send(h, rawMessage(a.email, "r@example.net", `message ${i}\r\n`)),
      ),
    );
    assert.deepEqual(results.filter((r) => !r.ok), []);
    assert.equal(h.sandbox.received.length, 50);
    assert.equal(h.sandbox.stats.token.refreshes, 1);
    const metrics = await h.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_token_refreshes_total{result="success"}'), 1);
    assert.ok(metricValue(metrics, "smtp_relay_upstream_connections") <= 5);
  } finally {
    await h.close();
  }
});

/** Sends SMTP commands one at a time on a raw socket and returns every reply line. */
async function smtpDialogue(conn: Deno.Conn, commands: string[]): Promise<string[]> {
  const lines: string[] = [];
  const reader = conn.readable.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const readReply = async () => {
    while (true) {
      const end = buffer.match(/^\d{3} .*\r\n/m);
      if (end) {
        const upto = buffer.indexOf(end[0]) + end[0].length;
        lines.push(...buffer.slice(0, upto).split("\r\n").filter(Boolean));
        buffer = buffer.slice(upto);
        return;
      }
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value);
    }
  };
  await readReply();
  for (const command of commands) {
    await conn.write(new TextEncoder().encode(command + "\r\n"));
    await readReply();
  }
  reader.releaseLock();
  return lines;
}
