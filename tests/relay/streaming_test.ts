/**
 * The message path streams: the upstream transaction starts at the client's DATA, the
 * relay's 354 follows the provider's, the body goes upstream as it arrives, and the reply
 * follows the provider's reply to the final dot. A message the client does not complete
 * (gone, timed out, too big) never gets a final dot upstream: the provider stores nothing.
 */
import assert from "node:assert/strict";
import { type Harness, never, PASSWORD, startHarness, until } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

/** A logged-in raw session with DATA accepted (354). */
async function atData(h: Harness, size?: number): Promise<RawSmtp> {
  const a = h.accounts[0];
  const { client } = await RawSmtp.connect(h.relay.smtp.port);
  assert.equal((await client.command("EHLO c")).code, 250);
  assert.equal((await client.command(`AUTH PLAIN ${plain(a.email, PASSWORD)}`)).code, 235);
  const declared = size ? ` SIZE=${size}` : "";
  assert.equal((await client.command(`MAIL FROM:<${a.email}>${declared}`)).code, 250);
  assert.equal((await client.command("RCPT TO:<r@example.net>")).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  return client;
}

/** `n` bytes of message: a header, then 76-character lines. */
function body(n: number, tag = "x"): string {
  const line = tag.repeat(76) + "\r\n";
  const head = `Subject: ${tag}\r\n\r\n`;
  return head + line.repeat(Math.ceil((n - head.length) / line.length));
}

Deno.test("streaming: the provider is at DATA when the relay says 354, has the body before the final dot, and the reply is the provider's", async () => {
  const h = await startHarness();
  try {
    const client = await atData(h, 300_000);
    // The relay's 354 came after the provider's: its DATA is already accepted.
    assert.equal(h.sandbox.smtp.stats.dataStarted, 1);
    const text = body(300_000);
    assert.ok(await client.write(text));
    // Most of the body reaches the provider while the client has not finished.
    assert.ok(
      await until(() => h.sandbox.smtp.stats.dataBytes > 200_000, 5_000),
      `${h.sandbox.smtp.stats.dataBytes} bytes upstream`,
    );
    assert.equal(h.sandbox.received.length, 0);
    assert.ok(await client.write(".\r\n"));
    const r = await client.reply(10_000);
    assert.equal(r.code, 250);
    assert.match(r.last, /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 OK 1 - sandbox$/);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(new TextDecoder().decode(h.sandbox.received[0].data), text);
    // The client's SIZE= went upstream with the envelope.
    assert.deepEqual(h.sandbox.received[0].mailParams, { BODY: "8BITMIME", SIZE: "300000" });
    await client.close();
  } finally {
    await h.close();
  }
});

Deno.test("streaming: a client that disconnects mid-DATA completes nothing upstream; the next message goes through", async () => {
  const h = await startHarness();
  try {
    const client = await atData(h);
    assert.ok(await client.write(body(200_000, "gone")));
    assert.ok(await until(() => h.sandbox.smtp.stats.dataBytes > 100_000, 5_000));
    await client.close();
    // The upstream connection that carried the partial message is closed, no final dot.
    assert.ok(await until(() => h.sandbox.smtp.openConnections === 0, 5_000));
    assert.ok(await never(() => h.sandbox.received.length > 0, { forMs: 500 }));
    const next = await atData(h);
    assert.ok(await next.write(body(1_000, "next") + ".\r\n"));
    assert.equal((await next.reply(10_000)).code, 250);
    assert.equal(h.sandbox.received.length, 1);
    assert.match(new TextDecoder().decode(h.sandbox.received[0].data), /^Subject: next/);
    await next.close();
  } finally {
    await h.close();
  }
});

Deno.test("streaming: a message over the size limit is cut upstream before its end: 552 5.3.4, nothing stored", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, maxMessageSize: 100_000 } } });
  try {
    const client = await atData(h);
    assert.ok(await client.write(body(300_000, "big") + ".\r\n"));
    const r = await client.reply(10_000);
    assert.equal(r.last, "552 5.3.4 Message exceeds fixed maximum message size of 100000 bytes");
    assert.ok(await until(() => h.sandbox.smtp.openConnections === 0, 5_000));
    assert.equal(h.sandbox.received.length, 0);
    // The session goes on.
    assert.equal((await client.command("RSET")).code, 250);
    await client.close();
  } finally {
    await h.close();
  }
});

Deno.test("streaming: a client that stalls mid-DATA times out (421) and nothing is stored upstream", async () => {
  const h = await startHarness({ config: { limits: { idleTimeoutSeconds: 1 } } });
  try {
    const client = await atData(h);
    assert.ok(await client.write(body(50_000, "stall")));
    assert.ok(await until(() => h.sandbox.smtp.stats.dataBytes > 10_000, 5_000));
    const r = await client.next(5_000);
    assert.ok(typeof r !== "string", `no reply: ${r}`);
    assert.match(r.last, /^421 4\.4\.2 /);
    assert.ok(await client.closedByServer(3_000));
    assert.ok(await until(() => h.sandbox.smtp.openConnections === 0, 5_000));
    assert.ok(await never(() => h.sandbox.received.length > 0, { forMs: 500 }));
  } finally {
    await h.close();
  }
});

Deno.test("streaming: a pooled connection the provider closed is replaced, the streamed message goes through once", async () => {
  const h = await startHarness();
  try {
    const first = await atData(h);
    assert.ok(await first.write(body(1_000, "one") + ".\r\n"));
    assert.equal((await first.reply(10_000)).code, 250);
    // The provider drops the idle pooled connection without a word.
    h.sandbox.smtp.dropConnections(true);
    const second = await atData(h);
    assert.ok(await second.write(body(100_000, "two") + ".\r\n"));
    const r = await second.reply(10_000);
    assert.equal(r.code, 250, r.last);
    assert.equal(h.sandbox.received.length, 2);
    assert.equal(new TextDecoder().decode(h.sandbox.received[1].data), body(100_000, "two"));
    await first.close();
    await second.close();
  } finally {
    await h.close();
  }
});
