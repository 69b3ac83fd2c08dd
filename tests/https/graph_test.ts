/**
 * Issue 13 through real sockets: nodemailer → relay (SMTP) → sandbox Microsoft Graph
 * (HTTPS, sandbox CA). Exact replies, the bytes Graph decoded, the recipients Graph
 * would deliver to, request and refresh counts, quota counted once.
 */
import assert from "node:assert/strict";
import { configure, jsonLinesFormatter, type LogRecord, reset } from "@logtape/logtape";
import { type Harness, metricValue, until } from "../harness.ts";
import { accounts } from "../tokens/helpers.ts";
import { message, sendRaw, startHttpsHarness } from "./helpers.ts";

async function withGraph(
  fn: (h: Harness) => Promise<void>,
  options: Parameters<typeof startHttpsHarness>[1] = {},
) {
  const h = await startHttpsHarness("graph", options);
  try {
    await fn(h);
  } finally {
    await h.close();
  }
}

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("graph: 250 after Graph's 202; Graph got the exact bytes and the header recipients; nothing over SMTP", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const raw = message([`From: <${me}>`, "To: A <a@example.net>", "Cc: b@example.net"]);
    const reply = await sendRaw(h, raw, ["a@example.net", "b@example.net"]);
    assert.equal(reply, "250 2.0.0 OK, upstream said: 250 2.0.0 202 Accepted by Microsoft Graph");
    const api = h.sandbox.api!;
    assert.equal(api.received.length, 1);
    assert.deepEqual(api.received[0].mime, raw);
    assert.deepEqual(api.received[0].recipients, ["a@example.net", "b@example.net"]);
    assert.equal(api.received[0].mailbox, me);
    assert.equal(api.received[0].savedToSentItems, true);
    assert.equal(h.sandbox.received.length, 0);
    assert.equal(h.sandbox.smtp.stats.connections, 0);
    const m = await h.metrics();
    assert.equal(
      metricValue(m, 'smtp_relay_transport_deliveries_total{transport="graph",result="sent"}'),
      1,
    );
    assert.equal(
      metricValue(m, 'smtp_relay_http_requests_total{transport="graph",status="202"}'),
      1,
    );
    assert.equal(metricValue(m, 'smtp_relay_messages_total{result="delivered"}'), 1);
  });
});

Deno.test("graph: envelope recipients missing from the header reach Graph as one Bcc line in front of the unchanged message", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const raw = message([`From: ${me}`, "To: a@example.net"]);
    const reply = await sendRaw(h, raw, ["a@example.net", "Hidden@Example.org", "c@example.org"]);
    assert.match(reply, /^250 2\.0\.0 /);
    const got = h.sandbox.api!.received[0];
    // The Bcc line comes first in the header, so Graph lists those first.
    assert.deepEqual(got.recipients, ["hidden@example.org", "c@example.org", "a@example.net"]);
    const bcc = got.mime.subarray(0, got.mime.length - raw.length);
    assert.deepEqual(got.mime.subarray(bcc.length), raw);
    assert.equal(
      new TextDecoder().decode(bcc).trimEnd(),
      "Bcc: <Hidden@example.org>,\r\n <c@example.org>", // the ingress lower-cases domains
    );
    assert.equal(bcc.length % 3, 0);
  });
});

Deno.test("graph: a header naming people outside the envelope is refused 550 5.7.1 naming them, never sent, not counted", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    // A list expansion: the header names the list, the envelope one member.
    const raw = message([`From: ${me}`, "To: team@example.net", 'Cc: "Boss" <boss@example.net>']);
    const reply = await sendRaw(h, raw, ["member@example.net"]);
    assert.equal(
      reply,
      "550 5.7.1 Header recipients not in the envelope: <team@example.net>, <boss@example.net>; " +
        "Microsoft Graph delivers to every To/Cc/Bcc address, so this message cannot be sent " +
        "without reaching them",
    );
    assert.equal(h.sandbox.api!.stats.requests, 0);
    // A Bcc header naming someone not in the envelope (a Bcc-less copy) is refused too.
    const bccCopy = message([`From: ${me}`, "To: a@example.net", "Bcc: secret@example.net"]);
    assert.match(
      await sendRaw(h, bccCopy, ["a@example.net"]),
      /^550 5\.7\.1 .*<secret@example\.net>/,
    );
    assert.equal(h.sandbox.api!.stats.requests, 0);
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 0);
  });
});

Deno.test("graph: 429 with Retry-After → 451 4.7.0 naming the time; the mailbox is held without asking Graph; nothing delivered", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    Object.assign(api.faults, { failNext: 1, failStatus: 429, retryAfter: "600" });
    const before = Date.now();
    const first = await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), [
      "a@example.net",
    ]);
    const m =
      /^451 4\.7\.0 Microsoft Graph is throttling user0@example\.com \(429 ApplicationThrottled\), retry after (\S+)$/
        .exec(first);
    assert.ok(m, first);
    const at = Date.parse(m[1]);
    assert.ok(at >= before + 599_000 && at <= Date.now() + 601_000, m[1]);
    const second = await sendRaw(h, message([`From: ${me}`, "To: b@example.net"]), [
      "b@example.net",
    ]);
    assert.equal(second, first);
    assert.equal(api.stats.requests, 1);
    assert.equal(api.received.length, 0);
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 0);
    assert.equal(
      metricValue(await h.metrics(), 'smtp_relay_messages_total{result="deferred"}'),
      2,
    );
  });
});

Deno.test("graph: 503 with Retry-After → 451 4.7.0; the client's retry after that time is delivered once", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    Object.assign(api.faults, { failNext: 1, failStatus: 503, retryAfter: "1" });
    const raw = message([`From: ${me}`, "To: a@example.net"]);
    assert.match(
      await sendRaw(h, raw, ["a@example.net"]),
      /^451 4\.7\.0 Microsoft Graph is throttling .* \(503 ServiceUnavailable\), retry after /,
    );
    // The client keeps the message and retries, as for any 4xx.
    let last = "";
    assert.ok(
      await until(
        async () => (last = await sendRaw(h, raw, ["a@example.net"])).startsWith("250"),
        15_000,
      ),
      last,
    );
    assert.equal(api.received.length, 1);
    assert.deepEqual(api.received[0].mime, raw);
    assert.equal(api.stats.requests, 2, "retries during the hold never reached Graph");
  });
});

Deno.test("graph: 401 → one token refresh and one retry; quota counted once", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    assert.match(
      await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]),
      /^250 /,
    );
    const refreshes = h.sandbox.stats.token.refreshes;
    Object.assign(api.faults, {
      failNext: 1,
      failStatus: 401,
      failBody:
        '{"error":{"code":"InvalidAuthenticationToken","message":"Lifetime validation failed"}}',
    });
    const raw = message([`From: ${me}`, "To: b@example.net"]);
    assert.match(await sendRaw(h, raw, ["b@example.net"]), /^250 2\.0\.0 /);
    assert.equal(h.sandbox.stats.token.refreshes, refreshes + 1);
    assert.equal(api.stats.requests, 3);
    assert.equal(api.received.length, 2);
    assert.deepEqual(api.received[1].mime, raw);
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 2);
  });
});

Deno.test("graph: 401 twice → 454 4.7.0 after one refresh; nothing delivered, not counted", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    Object.assign(api.faults, {
      failNext: 2,
      failStatus: 401,
      failBody: '{"error":{"code":"InvalidAuthenticationToken","message":"expired"}}',
    });
    const reply = await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), [
      "a@example.net",
    ]);
    assert.equal(
      reply,
      "454 4.7.0 Provider refused the relay's token, try again later: 535 5.7.8 Microsoft Graph " +
        "answered 401 InvalidAuthenticationToken after a token refresh: expired",
    );
    assert.equal(h.sandbox.stats.token.refreshes, 2);
    assert.equal(api.stats.requests, 2);
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 0);
  });
});

Deno.test("graph: Graph's errors become precise replies with its code: 400 → 554 5.6.0, 413 → 552 5.3.4, ErrorSendAsDenied → 550 5.7.1, 500 → 451 4.3.0", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    const send = () => sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]);
    Object.assign(api.faults, {
      failNext: 1,
      failStatus: 400,
      failBody:
        '{"error":{"code":"ErrorMimeContentInvalid","message":"The MIME content is\\r\\ninvalid."}}',
    });
    assert.equal(
      await send(),
      "554 5.6.0 Microsoft Graph refused the message (400 ErrorMimeContentInvalid: The MIME content is invalid.)",
    );
    api.resetFaults();
    Object.assign(api.faults, { failNext: 1, failStatus: 500 });
    assert.equal(
      await send(),
      "451 4.3.0 Microsoft Graph failed (500 InternalServerError: Injected 500), try again later",
    );
    api.graphMaxRequestBytes = 64;
    assert.equal(
      await send(),
      "552 5.3.4 Message too big for Microsoft Graph (413 ErrorRequestEntityTooLarge; its request " +
        "limit: 4194304 bytes of base64, 3145728 bytes of message)",
    );
    api.graphMaxRequestBytes = 4 * 1024 * 1024;
    const spoofed = message(["From: ceo@example.com", "To: a@example.net"]);
    assert.match(
      await sendRaw(h, spoofed, ["a@example.net"]),
      /^550 5\.7\.1 Microsoft Graph refused the sender \(403 ErrorSendAsDenied: The user account/,
    );
    h.sandbox.api!.allowSendAs(me, "ceo@example.com");
    assert.match(await sendRaw(h, spoofed, ["a@example.net"]), /^250 /);
    assert.equal(api.received.length, 1);
    assert.equal(api.received[0].sentAs, "ceo@example.com");
  });
});

Deno.test("graph: a message over Graph's 4 MB request is refused 552 5.3.4 before any request", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const line = "x".repeat(998) + "\r\n";
    const body = line.repeat(Math.ceil(3_200_000 / line.length));
    const raw = message([`From: ${me}`, "To: a@example.net"], body);
    assert.equal(
      await sendRaw(h, raw, ["a@example.net"]),
      "552 5.3.4 Message too big for Microsoft Graph (its request limit: 4194304 bytes of " +
        "base64, 3145728 bytes of message)",
    );
    assert.equal(h.sandbox.api!.stats.requests, 0);
    // Just under the limit goes.
    const fits = message([`From: ${me}`, "To: a@example.net"], line.repeat(3_000));
    assert.match(await sendRaw(h, fits, ["a@example.net"]), /^250 /);
    assert.deepEqual(h.sandbox.api!.received[0].mime, fits);
  });
});

Deno.test("graph: at most 4 requests per mailbox at once, however many clients", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    const api = h.sandbox.api!;
    api.faults.delayMs = 300;
    const replies = await Promise.all(
      Array.from(
        { length: 10 },
        (_, i) =>
          sendRaw(h, message([`From: ${me}`, `To: r${i}@example.net`]), [`r${i}@example.net`]),
      ),
    );
    assert.deepEqual(replies.filter((r) => r.startsWith("250 ")).length, 10, replies.join("\n"));
    assert.equal(api.received.length, 10);
    const peak = api.peakInflight.get(me)!;
    assert.ok(peak <= 4 && peak >= 2, `peak ${peak}`);
    assert.equal((await accounts(h)).body[0].connections.max, 4);
  });
});

Deno.test("graph: a Graph slower than the delivery deadline → 451 4.4.7; counted, since Graph may have it", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    h.sandbox.api!.faults.delayMs = 4_000;
    const reply = await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), [
      "a@example.net",
    ]);
    assert.equal(reply, "451 4.4.7 Delivery time limit (1 s) reached, try again later");
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 1);
  }, { config: { deliveryTimeoutSeconds: 1 } });
});

Deno.test("graph: the token asked for has Graph's Mail.Send scope; a token without it is refused 454 4.7.0", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    // The sandbox API checks the scope of the token the relay presents: 250 proves it.
    assert.match(
      await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]),
      /^250 /,
    );
    assert.equal(
      h.config.accounts[0].provider.scope,
      "https://graph.microsoft.com/Mail.Send offline_access",
    );
    const api = h.sandbox.api!;
    Object.assign(api.faults, {
      failNext: 1,
      failStatus: 403,
      failBody: '{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}',
    });
    assert.equal(
      await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]),
      "454 4.7.0 Provider refused the relay's token, try again later: 535 5.7.8 Microsoft Graph " +
        "answered 403 ErrorAccessDenied: Access is denied.",
    );
  });
});

Deno.test("graph: no access token, refresh token or client secret in logs, replies, /metrics or /accounts", async () => {
  const lines: string[] = [];
  await configure({
    reset: true,
    sinks: {
      capture: (record: LogRecord) => {
        lines.push(jsonLinesFormatter(record), JSON.stringify(record.properties));
      },
    },
    loggers: [{ category: [], lowestLevel: "trace", sinks: ["capture"] }],
  });
  try {
    await withGraph(async (h) => {
      const me = h.accounts[0].email;
      const api = h.sandbox.api!;
      const send = () =>
        sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]);
      const replies = [await send()];
      Object.assign(api.faults, { failNext: 2, failStatus: 401 });
      replies.push(await send());
      api.resetFaults();
      Object.assign(api.faults, { failNext: 1, failStatus: 429, retryAfter: "0" });
      replies.push(await send());
      api.resetFaults();
      replies.push(await send());
      assert.deepEqual(replies.map((r) => r.slice(0, 3)), ["250", "454", "451", "250"]);
      assert.ok(api.bearerTokens.size >= 2);
      const outputs = [...replies, await h.metrics(), (await accounts(h)).text, ...lines];
      assert.ok(lines.some((l) => l.includes("delivered")), "message log lines were captured");
      const secrets = [...api.bearerTokens, h.accounts[0].refreshToken, h.accounts[0].clientSecret];
      const current = h.sandbox.tokens.currentRefreshToken(me);
      if (current) secrets.push(current);
      for (const out of outputs) {
        for (const secret of secrets) assert.ok(!out.includes(secret), "a secret in the output");
      }
      assert.equal((await accounts(h)).body[0].transport, "graph");
    });
  } finally {
    await reset();
  }
});

Deno.test("graph: the SMTP transport stays the default for other accounts in the same relay", async () => {
  await withGraph(async (h) => {
    const raw = enc(`From: ${h.accounts[1].email}\r\nTo: z@example.net\r\nSubject: s\r\n\r\nx\r\n`);
    assert.match(await sendRaw(h, raw, ["z@example.net"], { i: 1 }), /^250 /);
    assert.equal(h.sandbox.received.length, 1);
    assert.deepEqual(h.sandbox.received[0].data, raw);
    assert.equal(h.sandbox.api!.received.length, 0);
    assert.equal(
      metricValue(
        await h.metrics(),
        'smtp_relay_transport_deliveries_total{transport="smtp",result="sent"}',
      ),
      1,
    );
  }, {
    accounts: 2,
    accountExtras: (i) => i === 1 ? { transport: "smtp" } : {},
  });
});

Deno.test("graph: Graph unreachable → 451 4.4.1; nothing counted", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    await h.sandbox.api!.close();
    const reply = await sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), [
      "a@example.net",
    ]);
    assert.match(reply, /^451 4\.4\.1 Provider unreachable, try again later: Microsoft Graph: /);
    const m = await h.metrics();
    assert.equal(
      metricValue(m, 'smtp_relay_http_requests_total{transport="graph",status="error"}'),
      1,
    );
    assert.equal(
      metricValue(
        m,
        'smtp_relay_transport_deliveries_total{transport="graph",result="unreachable"}',
      ),
      1,
    );
    assert.equal((await accounts(h)).body[0].quota.messagesToday, 0);
  });
});

Deno.test("graph: keep-alive: one message after another reuses one HTTPS connection", async () => {
  await withGraph(async (h) => {
    const me = h.accounts[0].email;
    for (let i = 0; i < 5; i++) {
      const raw = message([`From: ${me}`, `To: r${i}@example.net`]);
      assert.match(await sendRaw(h, raw, [`r${i}@example.net`]), /^250 /);
    }
    assert.equal(h.sandbox.api!.received.length, 5);
    assert.equal(h.sandbox.api!.stats.connections.size, 1);
  });
});
