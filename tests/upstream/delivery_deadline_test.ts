/**
 * One deadline per message (`deliveryTimeoutSeconds`), from the end of DATA to the reply:
 * a provider that greets and then stalls, a message queued behind the account's connection
 * cap, a provider that has the whole message and does not answer, a token endpoint that
 * hangs. The client gets `451 4.4.7` at the deadline, and a message whose end the provider
 * never got is never delivered.
 */
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import type { ReceivedMessage } from "../../src/sandbox/mod.ts";
import { type Harness, metricValue, never, PASSWORD, startHarness, until } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

const EXPIRED = "451 4.4.7 Delivery time limit (1 s) reached, try again later";

/**
 * A logged-in session with DATA accepted (354), ready for the body. The relay starts the
 * upstream transaction at DATA and sends its 354 after the provider's, or after 1 s.
 */
async function atData(h: Harness): Promise<RawSmtp> {
  const a = h.accounts[0];
  const { client } = await RawSmtp.connect(h.relay.smtp.port);
  assert.equal((await client.command("EHLO c")).code, 250);
  assert.equal((await client.command(`AUTH PLAIN ${plain(a.email, PASSWORD)}`)).code, 235);
  assert.equal((await client.command(`MAIL FROM:<${a.email}>`)).code, 250);
  assert.equal((await client.command("RCPT TO:<r@example.net>")).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  return client;
}

/** Sends the body and the final dot; resolves to the reply and how long it took, ms. */
async function finish(client: RawSmtp, tag: string): Promise<{ reply: string; ms: number }> {
  await client.write(`Subject: ${tag}\r\n\r\n${tag}\r\n.\r\n`);
  const started = performance.now();
  // Far less than the stalled provider would take: a reply only at the deadline.
  const r = await client.next(4_000);
  return { reply: typeof r === "string" ? r : r.last, ms: performance.now() - started };
}

/** Captures the relay's log records while `run` runs. */
async function withLogs<T>(run: (records: LogRecord[]) => Promise<T>): Promise<T> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (r: LogRecord) => void records.push(r) },
    loggers: [
      { category: ["relay"], lowestLevel: "info", sinks: ["capture"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["capture"] },
    ],
  });
  try {
    return await run(records);
  } finally {
    await reset();
  }
}

const text = (r: LogRecord) => r.message.map(String).join("");

Deno.test("deadline: a provider that greets and stalls gets no message; the queued one gets 451 at its own deadline", async () => {
  const h = await startHarness({
    config: { deliveryTimeoutSeconds: 1 },
    accountExtras: () => ({ maxConnections: 1 }),
  });
  try {
    await withLogs(async (records) => {
      // Greets, takes the token, then answers MAIL FROM only after 5 s.
      h.sandbox.smtpFaults.replyDelayMs = 5_000;
      const a = await atData(h);
      const b = await atData(h);
      const first = finish(a, "first");
      // The first message holds the account's one connection; the second queues behind it.
      assert.ok(await until(() => h.sandbox.stats.smtp.authSuccesses === 1, 3_000));
      const second = finish(b, "second");
      const [ra, rb] = await Promise.all([first, second]);
      assert.equal(ra.reply, EXPIRED);
      assert.equal(rb.reply, EXPIRED);
      // Each at its own deadline: the queued one does not wait for the first to end.
      for (const r of [ra, rb]) assert.ok(r.ms > 900 && r.ms < 1_900, `${r.ms} ms`);
      // The connections the relay gave up on are closed: nothing can complete any more.
      assert.ok(await until(() => h.sandbox.smtp.openConnections === 0, 3_000));
      assert.equal(h.sandbox.received.length, 0);
      const lines = records.map(text).filter((t) => t.startsWith("expired"));
      assert.equal(lines.length, 2, lines.join("\n"));
      for (const l of lines) {
        assert.match(l, /^expired user0@example\.com \d+ bytes 1 rcpt \(0 refused\): 451 4\.4\.7/);
        assert.match(l, /not delivered: the provider never got the end of the message$/);
      }
      const metrics = await h.metrics();
      assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="expired"}'), 2);
      await a.close();
      await b.close();
    });
  } finally {
    await h.close();
  }
});

Deno.test("deadline: the provider has the whole message and does not answer: 451, logged as outcome unknown", async () => {
  // Once the provider has stored the message, its reply to the final dot takes 5 s.
  const onMessage = (_m: ReceivedMessage) => void (h.sandbox.smtpFaults.replyDelayMs = 5_000);
  const h = await startHarness({ config: { deliveryTimeoutSeconds: 1 }, sandbox: { onMessage } });
  try {
    await withLogs(async (records) => {
      const client = await atData(h);
      const r = await finish(client, "unknown");
      assert.equal(r.reply, EXPIRED);
      assert.ok(r.ms > 900 && r.ms < 1_900, `${r.ms} ms`);
      // The documented risk: the provider had it, and may deliver it although the client
      // was told to retry.
      assert.equal(h.sandbox.received.length, 1);
      const line = records.map(text).find((t) => t.startsWith("expired"));
      assert.match(line ?? "", /: 451 4\.4\.7 .*; outcome unknown: the provider had the whole/);
      await client.close();
    });
  } finally {
    await h.close();
  }
});

Deno.test("deadline: a slow token endpoint: 451 4.4.7 at the deadline, and the token that comes later sends nothing", async () => {
  const h = await startHarness({ config: { deliveryTimeoutSeconds: 1 } });
  try {
    // The token request starts at DATA (the 354 waits for it at most 1 s), the deadline at
    // the final dot (1 s later): the token comes at 4 s, after the deadline.
    h.sandbox.tokenFaults.delayMs = 4_000;
    const client = await atData(h);
    const r = await finish(client, "token");
    assert.equal(r.reply, EXPIRED);
    assert.ok(r.ms > 900 && r.ms < 1_900, `${r.ms} ms`);
    // The token arrives after the client's 451: the message given up on is not sent.
    assert.ok(await until(() => h.sandbox.stats.token.refreshes === 1, 3_000));
    assert.ok(await never(() => h.sandbox.stats.smtp.connections > 0, { forMs: 500 }));
    assert.equal(h.sandbox.received.length, 0);
    await client.close();
  } finally {
    await h.close();
  }
});
