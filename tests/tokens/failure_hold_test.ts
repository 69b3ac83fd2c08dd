/**
 * Issue 16, item 8: token failures are held. After a refresh failed, the account answers
 * with that failure at once (a 451 with the time of the next try) for a short while (the
 * endpoint's Retry-After, capped, or `tokens.failureHoldSeconds`), then one single-attempt
 * refresh (a probe) decides while everyone else still gets the held failure. A down
 * endpoint is asked a bounded number of times; a hung one costs one message the timeout.
 */
import assert from "node:assert/strict";
import { AccountTokens, HeldTokenError, MAX_FAILURE_HOLD_MS } from "../../src/tokens/manager.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import { metricValue, startHarness, until } from "../harness.ts";
import { readyz, send, VirtualClock } from "./helpers.ts";

const HELD =
  /^451 4\.4\.3 Cannot get an access token, try again later: HTTP 500 from the token endpoint \(next try after \d\d:\d\d:\d\d UTC\)$/;

Deno.test("token endpoint answering 500: 3 calls for 10 messages, the other 9 get 451 at once", async () => {
  const h = await startHarness({
    config: { tokens: { attempts: 3, retryBaseMs: 10, timeoutMs: 2_000 } }, // hold: default 30 s
  });
  try {
    h.sandbox.tokenFaults.failNext = 1_000;
    const replies: string[] = [];
    for (let i = 0; i < 10; i++) replies.push(await send(h));
    assert.equal(
      replies[0],
      "451 4.4.3 Cannot get an access token, try again later: HTTP 500 from the token endpoint",
    );
    for (const r of replies.slice(1)) assert.match(r, HELD);
    // The first message's refresh made its 3 attempts; the held failure asked nothing.
    assert.equal(h.sandbox.stats.token.requests, 3);
    assert.equal(h.sandbox.received.length, 0);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_messages_total{result="token_error"}'), 10);
    assert.equal(metricValue(m, 'smtp_relay_token_refreshes_total{result="failure"}'), 1);
    const ready = await readyz(h);
    assert.equal(ready.status, 503);
    assert.equal(ready.body.accounts.failing, 1);
  } finally {
    await h.close();
  }
});

Deno.test("a hung token endpoint: one call, one message waits the timeout, the others fail at once", async () => {
  const timeoutMs = 1_500;
  const h = await startHarness({ config: { tokens: { attempts: 3, retryBaseMs: 10, timeoutMs } } });
  try {
    h.sandbox.tokenFaults.hang = true;
    let started = Date.now();
    assert.equal(
      await send(h),
      `451 4.4.3 Cannot get an access token, try again later: no answer within ${timeoutMs} ms`,
    );
    const first = Date.now() - started;
    assert.ok(first < 2 * timeoutMs, `the first message took ${first} ms: the call was repeated`);
    for (let i = 0; i < 5; i++) {
      started = Date.now();
      assert.match(
        await send(h),
        /^451 4\.4\.3 .*no answer within 1500 ms \(next try after \d\d:\d\d:\d\d UTC\)$/,
      );
      const took = Date.now() - started;
      assert.ok(took < timeoutMs, `message ${i + 2} took ${took} ms: it waited for the endpoint`);
    }
    assert.equal(h.sandbox.stats.token.requests, 1);
  } finally {
    await h.close();
  }
});

/** A token endpoint whose answer the test sets; counts requests. */
function endpoint() {
  const state = {
    mode: "ok" as "ok" | "500" | "hang",
    retryAfter: undefined as string | undefined,
    requests: 0,
  };
  const hung: (() => void)[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    state.requests++;
    if (state.mode === "hang") {
      return new Promise<Response>((ok) =>
        hung.push(() => ok(new Response(null, { status: 503 })))
      );
    }
    if (state.mode === "500") {
      return new Response("", {
        status: 500,
        headers: state.retryAfter ? { "retry-after": state.retryAfter } : {},
      });
    }
    return Response.json({
      access_token: `at-${crypto.randomUUID()}`,
      token_type: "Bearer",
      expires_in: 3600,
    });
  });
  return {
    state,
    url: `http://127.0.0.1:${server.addr.port}/token`,
    async close() {
      for (const release of hung) release();
      await server.shutdown();
    },
  };
}

Deno.test("the hold follows Retry-After (capped), one probe per hold, callers during it fail at once", async () => {
  const ep = endpoint();
  const dir = await Deno.makeTempDir();
  const clock = new VirtualClock();
  const tokens = new AccountTokens({
    account: "a@example.com",
    client: { tokenUrl: ep.url, clientId: "c", scope: "s" },
    configRefreshToken: "rt-config",
    store: new FileTokenStore(dir),
    timing: clock,
    marginMs: 300_000,
    timeoutMs: 500,
    retry: { attempts: 3, baseMs: 10, maxMs: 1_000 },
    reauthRecheckMs: 60_000,
    failureHoldMs: 30_000,
  });
  try {
    // 500 with Retry-After: 5 (over retry.maxMs: the refresh ends after one call).
    Object.assign(ep.state, { mode: "500", retryAfter: "5" });
    const failedAt = clock.now();
    await assert.rejects(() => tokens.get(), /^TokenError: HTTP 500 from the token endpoint$/);
    assert.equal(ep.state.requests, 1);
    assert.equal(tokens.state, "failing");
    for (let i = 0; i < 5; i++) {
      const err = await tokens.get().then(() => undefined, (e) => e);
      assert.ok(err instanceof HeldTokenError, String(err));
      assert.equal(err.retryAt, failedAt + 5_000);
      assert.match(err.message, /^HTTP 500 from the token endpoint \(next try after .* UTC\)$/);
    }
    await assert.rejects(() => tokens.renew(), HeldTokenError); // a refused token too
    assert.equal(ep.state.requests, 1);

    clock.advance(4_000);
    await assert.rejects(() => tokens.get(), HeldTokenError);
    assert.equal(ep.state.requests, 1);

    // Due: the timer runs the probe by itself; it hangs. Callers meanwhile fail at once.
    ep.state.mode = "hang";
    clock.advance(1_000 + 500); // the timer may be spread by up to 10% of the wait
    assert.ok(await until(() => ep.state.requests === 2), "no probe when the hold ended");
    for (let i = 0; i < 3; i++) await assert.rejects(() => tokens.get(), HeldTokenError);
    assert.equal(ep.state.requests, 2);
    // The probe times out (one attempt): held again, for failureHoldMs (no Retry-After).
    assert.ok(await until(() => clock.pending === 1), "the failed probe set no new hold");
    const err = await tokens.get().then(() => undefined, (e) => e);
    assert.ok(err instanceof HeldTokenError);
    assert.match(err.message, /^no answer within 500 ms \(next try after/);
    assert.ok(err.retryAt - clock.now() > 29_000 && err.retryAt - clock.now() <= 30_000);
    assert.equal(ep.state.requests, 2);

    // The endpoint recovers: the next probe, by timer, brings the account back.
    ep.state.mode = "ok";
    clock.advance(30_000 + 3_000);
    assert.ok(await until(() => tokens.state === "ok"), "no recovery after the hold");
    assert.equal(ep.state.requests, 3);
    await tokens.get();
    assert.equal(ep.state.requests, 3);

    // A Retry-After of an hour holds for MAX_FAILURE_HOLD_MS only.
    Object.assign(ep.state, { mode: "500", retryAfter: "3600" });
    await assert.rejects(() => tokens.renew(), /^TokenError: HTTP 500/);
    const capped = await tokens.get().then(() => undefined, (e) => e);
    assert.ok(capped instanceof HeldTokenError);
    assert.equal(capped.retryAt - clock.now(), MAX_FAILURE_HOLD_MS);
    assert.equal(MAX_FAILURE_HOLD_MS, 300_000);
  } finally {
    tokens.close();
    assert.equal(clock.pending, 0, "a timer outlived close()");
    await ep.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a failed background refresh is held too: the cached token serves, no refresh per message", async () => {
  const ep = endpoint();
  const dir = await Deno.makeTempDir();
  const clock = new VirtualClock();
  const tokens = new AccountTokens({
    account: "a@example.com",
    client: { tokenUrl: ep.url, clientId: "c", scope: "s" },
    configRefreshToken: "rt-config",
    store: new FileTokenStore(dir),
    timing: clock,
    marginMs: 300_000,
    timeoutMs: 500,
    retry: { attempts: 2, baseMs: 10, maxMs: 1_000 },
    reauthRecheckMs: 60_000,
  });
  try {
    const t1 = await tokens.get();
    assert.equal(ep.state.requests, 1);
    ep.state.mode = "500";
    clock.advance(2_600_000); // past refresh-ahead (75% of 3300 s), before use-until
    assert.equal((await tokens.get()).token, t1.token); // triggers the background refresh
    assert.ok(await until(() => tokens.state === "failing"));
    assert.equal(ep.state.requests, 3); // its two attempts
    for (let i = 0; i < 20; i++) assert.equal((await tokens.get()).token, t1.token);
    assert.equal(ep.state.requests, 3, "every use started another background refresh");
  } finally {
    tokens.close();
    await ep.close();
    await Deno.remove(dir, { recursive: true });
  }
});
