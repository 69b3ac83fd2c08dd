/**
 * Recipients the provider refused after the relay said 250 to their RCPT TO: the sender
 * gets a non-delivery report (RFC 3464) through the same account, the client's reply is
 * unchanged, nothing is reported twice or about a report.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { NodemailerError } from "nodemailer";
import { nonDeliveryReport } from "../../src/relay/dsn.ts";
import { reply } from "../../src/smtp/reply.ts";
import type { ReceivedMessage } from "../../src/sandbox/mod.ts";
import { parseConfig } from "../../src/config/load.ts";
import {
  type Harness,
  metricValue,
  rawMessage,
  sandboxConfig,
  startHarness,
  until,
} from "../harness.ts";

const decoder = new TextDecoder();

async function send(h: Harness, from: string, to: string[], raw: Uint8Array) {
  try {
    const info = await h.client().sendMail({ envelope: { from, to }, raw: Buffer.from(raw) });
    return info.response;
  } catch (err) {
    return (err as NodemailerError).response ?? String(err);
  }
}

/** Waits (bounded) until the sandbox holds `n` messages. */
async function received(h: Harness, n: number): Promise<ReceivedMessage[]> {
  await until(() => h.sandbox.received.length >= n);
  return h.sandbox.received;
}

/**
 * Stops the relay as SIGTERM does: it waits for the reports still being sent, then closes
 * its upstream connections, so nothing more can reach the sandbox. Returns the metrics as
 * they stand then (the HTTP listener is closed by now).
 */
async function drained(h: Harness): Promise<string> {
  await h.relay.stop(5_000);
  return await h.relay.metrics.registry.metrics();
}

/** The sum of `smtp_relay_nondelivery_reports_total` over its results. */
function reportsTotal(metrics: string): number {
  return metrics.split("\n").filter((l) => l.startsWith("smtp_relay_nondelivery_reports_total{"))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

/** Polls /metrics (bounded) until `series` is non-zero; returns its value. */
async function counted(h: Harness, series: string): Promise<number> {
  let value = 0;
  await until(async () => (value = metricValue(await h.metrics(), series)) !== 0);
  return value;
}

Deno.test("report: RFC 3464 structure, the original's headers but not its body, safe lines", () => {
  const original = new TextEncoder().encode(
    "From: <a@example.com>\r\nSubject: hello\r\nX-Id: 42\r\n\r\nsecret body text\r\n",
  );
  const bytes = nonDeliveryReport({
    reportingMta: "relay.example",
    account: "a@example.com",
    sender: "a@example.com",
    recipients: [
      { recipient: "gone@example.net", reply: reply(550, "5.1.1", "No such user") },
      { recipient: "full@example.net", reply: reply(452, "", "Mailbox full") },
    ],
    original,
    arrival: new Date("2026-11-26T23:00:00Z"),
  });
  const text = decoder.decode(bytes);
  assert.ok(!/[^\r]\n/.test(text), "every line ends with CRLF");
  assert.ok(text.split("\r\n").every((l) => l.length <= 998));
  const boundary = text.match(/boundary="([^"]+)"/)?.[1];
  assert.ok(boundary);
  assert.match(text, /^From: Mail Delivery System <a@example\.com>\r\nTo: <a@example\.com>\r\n/);
  assert.match(text, /\r\nAuto-Submitted: auto-replied\r\n/);
  assert.match(text, /report-type=delivery-status/);
  const parts = text.split(`--${boundary}`);
  assert.equal(parts.length, 5); // preamble, 3 parts, closing "--"
  assert.equal(parts[4], "--\r\n");
  assert.match(parts[1], /<gone@example\.net>: 550 5\.1\.1 No such user/);
  assert.match(parts[2], /^\r\nContent-Type: message\/delivery-status\r\n\r\n/);
  assert.match(parts[2], /Reporting-MTA: dns; relay\.example\r\nArrival-Date: Thu, 26 Nov 2026/);
  assert.match(
    parts[2],
    /Final-Recipient: rfc822; gone@example\.net\r\nAction: failed\r\nStatus: 5\.1\.1\r\n/,
  );
  // No enhanced code from the provider: the class stands in.
  assert.match(
    parts[2],
    /Final-Recipient: rfc822; full@example\.net\r\nAction: failed\r\nStatus: 4\.0\.0/,
  );
  assert.match(parts[3], /Content-Type: text\/rfc822-headers/);
  assert.match(parts[3], /Subject: hello\r\nX-Id: 42\r\n/);
  assert.ok(!text.includes("secret body text"));
});

Deno.test("report: the attached header section ends at the first empty line, LF or CRLF, at most 64 KiB", () => {
  const attached = (original: string) => {
    const text = decoder.decode(nonDeliveryReport({
      reportingMta: "relay.example",
      account: "a@example.com",
      sender: "a@example.com",
      recipients: [{ recipient: "b@example.net", reply: reply(550, "5.1.1", "No such user") }],
      original: new TextEncoder().encode(original),
      arrival: new Date(),
    }));
    const part =
      text.split("Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")[1];
    return part.slice(0, part.lastIndexOf("\r\n--"));
  };
  assert.equal(attached("A: 1\r\nB: 2\r\n\r\nbody\r\n"), "A: 1\r\nB: 2\r\n");
  assert.equal(attached("A: 1\nB: 2\n\nbody\n"), "A: 1\nB: 2\n");
  assert.equal(attached("A: 1\r\nB: 2\r\n"), "A: 1\r\nB: 2\r\n"); // no body at all
  assert.equal(attached("\r\nbody1\r\nbody2\r\n\r\nmore\r\n"), ""); // no header section at all
  const line = `X-Long: ${"y".repeat(100)}\r\n`;
  const huge = attached(line.repeat(2_000) + "\r\nbody\r\n");
  assert.ok(huge.length <= 64 * 1024 && huge.length > 60 * 1024, String(huge.length));
  assert.equal(huge, line.repeat(huge.length / line.length)); // whole lines only
});

Deno.test("report: 8-bit content is labelled where it is; long lines are cut below 998", () => {
  const build = (recipient: string, text: string) =>
    decoder.decode(nonDeliveryReport({
      reportingMta: "relay.example",
      account: "a@example.com",
      sender: "a@example.com",
      recipients: [{ recipient, reply: reply(550, "5.1.1", text) }],
      original: new TextEncoder().encode("Subject: hi\r\n\r\nx\r\n"),
      arrival: new Date(),
    }));
  const ascii = build("b@example.net", "No such user");
  assert.ok(!ascii.includes("Content-Transfer-Encoding: 8bit\r\n\r\nThis is a MIME"));
  assert.match(ascii, /Content-Type: message\/delivery-status\r\n\r\n/);
  const utf8 = build("jörg@example.net", "Unbekannter Empfänger");
  assert.match(utf8, /boundary="[^"]+"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nThis is a MIME/);
  assert.match(
    utf8,
    /Content-Type: message\/delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n/,
  );
  const long = build(`${"l".repeat(950)}@example.net`, "t".repeat(950));
  assert.ok(long.split("\r\n").every((line) => line.length <= 998));
});

Deno.test("refused recipients: the sender gets a report, the client its 250, once", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    const raw = rawMessage(a.email, "ok@example.net", "the body\r\n", "quarterly numbers");
    const response = await send(h, a.email, ["ok@example.net", "gone@example.net"], raw);
    assert.equal(
      response,
      "250 2.0.0 Delivered to 1 of 2 recipients; refused: <gone@example.net> 550 5.1.1",
    );
    const [original, report] = await received(h, 2);
    assert.deepEqual(original.to, ["ok@example.net"]);
    assert.equal(report.user, a.email); // sent through the same account
    assert.equal(report.from, ""); // the null sender: no report about a report
    assert.deepEqual(report.to, [a.email]);
    const text = decoder.decode(report.data);
    assert.match(text, /Final-Recipient: rfc822; gone@example\.net\r\nAction: failed\r\n/);
    assert.match(text, /Diagnostic-Code: smtp; 550 5\.1\.1 No such user/);
    assert.match(text, /Subject: quarterly numbers/);
    assert.ok(!text.includes("ok@example.net>: "), "only refused recipients are listed");
    assert.ok(!text.includes("the body"));
    // Nothing more once every report is done and the upstream connections are closed.
    const metrics = await drained(h);
    assert.equal(h.sandbox.received.length, 2);
    assert.equal(metricValue(metrics, 'smtp_relay_nondelivery_reports_total{result="sent"}'), 1);
    assert.equal(metricValue(metrics, 'smtp_relay_messages_total{result="partial"}'), 1);
  } finally {
    await h.close();
  }
});

Deno.test("no report for a message from the null sender", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    const raw = rawMessage("", "ok@example.net", "a bounce\r\n");
    const response = await send(h, "", ["ok@example.net", "gone@example.net"], raw);
    assert.match(response, /^250 2\.0\.0 Delivered to 1 of 2 recipients/);
    const metrics = await drained(h);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(h.sandbox.received[0].user, a.email);
    assert.equal(reportsTotal(metrics), 0);
  } finally {
    await h.close();
  }
});

Deno.test("a provider that refuses the null sender gets the report from the account", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    h.sandbox.smtpFaults.rejectSenders.set("", "553 5.7.1 Sender address not allowed");
    const raw = rawMessage(a.email, "ok@example.net", "x\r\n");
    assert.match(await send(h, a.email, ["ok@example.net", "gone@example.net"], raw), /^250 /);
    const [, report] = await received(h, 2);
    assert.equal(report.from, a.email);
    assert.deepEqual(report.to, [a.email]);
    assert.match(decoder.decode(report.data), /Final-Recipient: rfc822; gone@example\.net/);
  } finally {
    await h.close();
  }
});

Deno.test("a report the provider refuses is counted as failed; the client's reply stands", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    // The report goes to the sender, whom the provider refuses too.
    h.sandbox.smtpFaults.rejectRecipients.set(a.email, "550 5.1.1 No such user");
    const raw = rawMessage(a.email, "ok@example.net", "x\r\n");
    const response = await send(h, a.email, ["ok@example.net", "gone@example.net"], raw);
    assert.match(response, /^250 2\.0\.0 Delivered to 1 of 2 recipients/);
    assert.equal(await counted(h, 'smtp_relay_nondelivery_reports_total{result="failed"}'), 1);
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("no report when the account's quota is spent: counted as skipped", async () => {
  // The original takes the day's only message; the report would be the second.
  const h = await startHarness({ accountExtras: () => ({ quota: { messagesPerDay: 1 } }) });
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    const raw = rawMessage(a.email, "ok@example.net", "x\r\n");
    const response = await send(h, a.email, ["ok@example.net", "gone@example.net"], raw);
    assert.match(response, /^250 2\.0\.0 Delivered to 1 of 2 recipients/);
    assert.equal(await counted(h, 'smtp_relay_nondelivery_reports_total{result="skipped"}'), 1);
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("a report still goes out when a reload replaced the account during the message", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    h.sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    // Four slow provider replies (MAIL, 2 RCPT, end of DATA): the message outlives the old
    // runtime's 5 s grace, so its pool is retired while the message is in flight.
    h.sandbox.smtpFaults.replyDelayMs = 1_800;
    const raw = rawMessage(a.email, "ok@example.net", "x\r\n");
    const sending = send(h, a.email, ["ok@example.net", "gone@example.net"], raw);
    await new Promise((ok) => setTimeout(ok, 300));
    const next = await sandboxConfig(h.sandbox, h.accounts, h.stateDir);
    (next.accounts as Record<string, unknown>[])[0].aliases = ["alias0@example.com"];
    assert.deepEqual(await h.relay.reload(parseConfig(next)), []);
    await new Promise((ok) => setTimeout(ok, 5_400)); // past the grace, before the last reply
    h.sandbox.smtpFaults.replyDelayMs = 0;
    assert.match(await sending, /^250 2\.0\.0 Delivered to 1 of 2 recipients/);
    const [, report] = await received(h, 2);
    assert.equal(report.from, "");
    assert.deepEqual(report.to, [a.email]);
    assert.equal(await counted(h, 'smtp_relay_nondelivery_reports_total{result="sent"}'), 1);
  } finally {
    await h.close();
  }
});
