/**
 * HttpTransport against the sandbox's Graph API and token endpoint (real HTTPS, no relay):
 * the request timeout, a caller giving up mid-request, the wait for a request slot.
 */
import assert from "node:assert/strict";
import { type Sandbox, SANDBOX_CA_PEM, startSandbox } from "../../src/sandbox/mod.ts";
import { HttpTransport } from "../../src/upstream/http_transport.ts";
import { GRAPH_MAX_REQUEST_BYTES, GRAPH_SCOPE, graphApi } from "../../src/upstream/graph.ts";
import { LocalPermits } from "../../src/upstream/permits.ts";
import type { SendProgress } from "../../src/upstream/pool.ts";
import { MessageBody } from "../../src/smtp/body.ts";

const ACCOUNT = {
  email: "box@example.com",
  clientId: "client-1",
  clientSecret: "secret-1",
  refreshToken: "refresh-1",
};
const RAW = new TextEncoder().encode("From: box@example.com\r\nTo: a@example.net\r\n\r\nx\r\n");

async function withTransport(
  options: { timeoutMs?: number; permitWaitMs?: number; permits?: LocalPermits },
  fn: (t: HttpTransport, s: Sandbox) => Promise<void>,
) {
  const sandbox = await startSandbox({ rotateRefreshTokens: false, accounts: [ACCOUNT] });
  const tokens = async () => {
    const r = await fetch(sandbox.tokenUrl, {
      method: "POST",
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: ACCOUNT.refreshToken,
        client_id: ACCOUNT.clientId,
        client_secret: ACCOUNT.clientSecret,
        scope: GRAPH_SCOPE,
      }),
    });
    return { token: (await r.json()).access_token as string, useUntil: Date.now() + 60_000 };
  };
  const transport = new HttpTransport(
    graphApi({
      kind: "graph",
      apiUrl: sandbox.apiUrl,
      maxRequestBytes: GRAPH_MAX_REQUEST_BYTES,
      saveToSentItems: true,
    }),
    tokens,
    {
      user: ACCOUNT.email,
      maxConnections: 1,
      permits: options.permits ?? new LocalPermits(1),
      ca: SANDBOX_CA_PEM,
      timeoutMs: options.timeoutMs,
      permitWaitMs: options.permitWaitMs,
    },
  );
  try {
    await fn(transport, sandbox);
  } finally {
    transport.close();
    await sandbox.close();
  }
}

Deno.test("HttpTransport: no answer within the timeout → unreachable, saying Graph may have it", async () => {
  await withTransport({ timeoutMs: 300 }, async (t, s) => {
    s.api!.faults.delayMs = 3_000;
    const progress: SendProgress = { endSent: false };
    const r = await t.send({
      from: ACCOUNT.email,
      to: ["a@example.net"],
      body: MessageBody.of(RAW),
      progress,
    });
    assert.deepEqual(r, {
      kind: "unreachable",
      detail: "no answer from Microsoft Graph within 0.3 s (it may have sent the message)",
    });
    assert.equal(progress.endSent, true);
  });
});

Deno.test("HttpTransport: a caller giving up mid-request gets abandoned with the end sent; before it, not", async () => {
  await withTransport({}, async (t, s) => {
    s.api!.faults.delayMs = 3_000;
    const control = new AbortController();
    const pending = t.send({
      from: ACCOUNT.email,
      to: ["a@example.net"],
      body: MessageBody.of(RAW),
      signal: control.signal,
    });
    setTimeout(() => control.abort(), 200);
    assert.deepEqual(await pending, { kind: "abandoned", endSent: true });
    assert.equal(t.openConnections, 0);
    const aborted = AbortSignal.abort();
    assert.deepEqual(
      await t.send({
        from: ACCOUNT.email,
        to: ["a@example.net"],
        body: MessageBody.of(RAW),
        signal: aborted,
      }),
      { kind: "abandoned", endSent: false },
    );
  });
});

Deno.test("HttpTransport: no request slot within the wait → unreachable naming the cap; the slot is free after", async () => {
  const permits = new LocalPermits(1);
  await withTransport({ permitWaitMs: 200, permits }, async (t, s) => {
    const held = await permits.acquire(ACCOUNT.email);
    const r = await t.send({
      from: ACCOUNT.email,
      to: ["a@example.net"],
      body: MessageBody.of(RAW),
    });
    assert.deepEqual(r, {
      kind: "unreachable",
      detail: "no Microsoft Graph request slot free within 0.2 s (1 at once per mailbox)",
    });
    assert.equal(s.api!.stats.requests, 0);
    held.release();
    const ok = await t.send({
      from: ACCOUNT.email,
      to: ["a@example.net"],
      body: MessageBody.of(RAW),
    });
    assert.equal(ok.kind, "sent");
    assert.equal(s.api!.received.length, 1);
  });
});
