/**
 * Issue 13 through real sockets: nodemailer → relay (SMTP) → sandbox Gmail API (HTTPS,
 * sandbox CA): JSON `raw` for small messages, the media upload endpoint for large ones,
 * the envelope kept authoritative, throttling, 401, size, the scope.
 */
import assert from "node:assert/strict";
import { type Harness, metricValue } from "../harness.ts";
import { accounts } from "../tokens/helpers.ts";
import { message, sendRaw, startHttpsHarness } from "./helpers.ts";

async function withGmail(
  fn: (h: Harness) => Promise<void>,
  options: Parameters<typeof startHttpsHarness>[1] = {},
) {
  const h = await startHttpsHarness("gmail-api", options);
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

Deno.test("gmail-api: a small message goes as JSON raw, a large one by media upload; both byte-identical after decoding", async () => {
  await withGmail(async (h) => {
    const me = h.accounts[0].email;
    const small = message([`From: ${me}`, "To: a@example.net"], "caf\u00e9\r\n");
    const reply = await sendRaw(h, small, ["a@example.net"]);
    assert.match(
      reply,
      /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 200 Sent by the Gmail API, id [0-9a-f]+$/,
    );
    const line = "y".repeat(76) + "\r\n";
    const large = message([`From: ${me}`, "To: a@example.net"], line.repeat(200));
    assert.match(await sendRaw(h, large, ["a@example.net"]), /^250 /);
    const got = h.sandbox.api!.received;
    assert.deepEqual(got.map((m) => m.upload), ["raw", "media"]);
    assert.deepEqual(got[0].mime, small);
    assert.deepEqual(got[1].mime, large);
    assert.deepEqual(got.map((m) => m.api), ["gmail", "gmail"]);
    assert.equal(h.sandbox.received.length, 0);
    const m = await h.metrics();
    assert.equal(
      metricValue(m, 'smtp_relay_http_requests_total{transport="gmail-api",status="200"}'),
      2,
    );
  }, { transportExtras: { mediaUploadAbove: 4096 } });
});

Deno.test("gmail-api: envelope recipients missing from the header go as Bcc, with raw and with media upload", async () => {
  await withGmail(async (h) => {
    const me = h.accounts[0].email;
    const small = message([`From: ${me}`, "To: a@example.net"]);
    assert.match(await sendRaw(h, small, ["a@example.net", "b@example.org"]), /^250 /);
    const large = message(
      [`From: ${me}`, "To: a@example.net"],
      "z".repeat(70) + "\r\n".repeat(1) + "w\r\n".repeat(3000),
    );
    assert.match(await sendRaw(h, large, ["a@example.net", "b@example.org"]), /^250 /);
    const got = h.sandbox.api!.received;
    assert.deepEqual(got.map((m) => m.upload), ["raw", "media"]);
    for (const [m, raw] of [[got[0], small], [got[1], large]] as const) {
      assert.deepEqual(m.recipients, ["b@example.org", "a@example.net"]);
      const head = new TextDecoder().decode(m.mime.subarray(0, m.mime.length - raw.length));
      assert.equal(head.trimEnd(), "Bcc: <b@example.org>");
      assert.deepEqual(m.mime.subarray(m.mime.length - raw.length), raw);
    }
  }, { transportExtras: { mediaUploadAbove: 4096 } });
});

Deno.test("gmail-api: headers naming people outside the envelope are refused 550 5.7.1; nothing sent", async () => {
  await withGmail(async (h) => {
    const me = h.accounts[0].email;
    // Resent mail: the original To stays in the header, the envelope has the new recipient.
    const resent = message([
      `Resent-From: ${me}`,
      "Resent-To: new@example.net",
      "From: someone@example.com",
      "To: original@example.net",
    ]);
    const reply = await sendRaw(h, resent, ["new@example.net"]);
    assert.equal(
      reply,
      "550 5.7.1 Header recipients not in the envelope: <original@example.net>; the Gmail API " +
        "delivers to every To/Cc/Bcc address, so this message cannot be sent without reaching them",
    );
    assert.equal(h.sandbox.api!.stats.requests, 0);
  });
});

Deno.test("gmail-api: 429 → 451 4.7.0 naming the time; 403 rateLimitExceeded too; 401 → one refresh, one retry", async () => {
  await withGmail(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    Object.assign(api.faults, { failNext: 1, failStatus: 429, retryAfter: "0" });
    const send = () => sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]);
    assert.match(
      await send(),
      /^451 4\.7\.0 the Gmail API is throttling user0@example\.com \(429 RESOURCE_EXHAUSTED\), retry after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
    );
    Object.assign(api.faults, {
      failNext: 1,
      failStatus: 403,
      retryAfter: "0",
      failBody: JSON.stringify({
        error: {
          code: 403,
          message: "User-rate limit exceeded",
          errors: [{ reason: "userRateLimitExceeded" }],
        },
      }),
    });
    assert.match(
      await send(),
      /^451 4\.7\.0 the Gmail API is throttling .*\(403 userRateLimitExceeded\)/,
    );
    api.resetFaults();
    const refreshes = h.sandbox.stats.token.refreshes;
    Object.assign(api.faults, { failNext: 1, failStatus: 401 });
    assert.match(await send(), /^250 /);
    assert.equal(h.sandbox.stats.token.refreshes, refreshes + 1);
    assert.equal(api.received.length, 1);
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 1);
  });
});

Deno.test("gmail-api: a 413 from the API → 552 5.3.4 naming the limit; nothing kept", async () => {
  await withGmail(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    api.gmailMaxMessageBytes = 1000;
    const raw = message(
      [`From: ${me}`, "To: a@example.net"],
      "q".repeat(70) + "\r\n" + "r\r\n".repeat(600),
    );
    assert.equal(
      await sendRaw(h, raw, ["a@example.net"]),
      "552 5.3.4 Message too big for the Gmail API (413 FAILED_PRECONDITION; its limit: 36700160 bytes)",
    );
    assert.equal(api.received.length, 0);
  });
});

Deno.test("gmail-api: the token has the gmail.send scope; a From the mailbox may not use is sent as the mailbox", async () => {
  await withGmail(async (h) => {
    assert.equal(h.config.accounts[0].provider.scope, "https://www.googleapis.com/auth/gmail.send");
    const raw = message(["From: other@example.com", "To: a@example.net"]);
    assert.match(await sendRaw(h, raw, ["a@example.net"]), /^250 /);
    const got = h.sandbox.api!.received[0];
    assert.equal(got.from, "other@example.com");
    assert.equal(got.sentAs, h.accounts[0].email);
  });
});
