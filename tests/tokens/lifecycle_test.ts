/**
 * Token lifecycle against the sandbox token endpoint in its failure modes: retries,
 * timeouts, invalid_grant verdicts per account, malformed and oversized responses,
 * background refresh, the two-minute floor, rotation under concurrency.
 */
import assert from "node:assert/strict";
import { startRelay } from "../../src/app.ts";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { AccountTokens, MIN_LIFETIME_MS } from "../../src/tokens/manager.ts";
import type { ExpectedVersion } from "../../src/state/store.ts";
import { FileTokenStore, type StoredToken, type TokenStore } from "../../src/tokens/store.ts";
import { type Harness, makeAccounts, metricValue, sendMessage, startHarness } from "../harness.ts";

const FAST_RETRIES = { attempts: 3, retryBaseMs: 10, timeoutMs: 2_000 };

const send = (h: Harness, i = 0) => sendMessage(h, i);

Deno.test("500s then success: retried and delivered", async () => {
  const h = await startHarness({ config: { tokens: FAST_RETRIES } });
  try {
    h.sandbox.tokenFaults.failNext = 2;
    assert.match(await send(h), /^250 /);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(h.sandbox.stats.token.requests, 3);
    assert.equal(h.sandbox.stats.token.refreshes, 1);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_token_refreshes_total{result="success"}'), 1);
    assert.equal(metricValue(m, 'smtp_relay_token_refreshes_total{result="failure"}'), 0);
  } finally {
    await h.close();
  }
});

Deno.test("slow endpoint: timeout, 451, nothing delivered, the hung call not repeated", async () => {
  const h = await startHarness({
    config: { tokens: { attempts: 2, retryBaseMs: 10, timeoutMs: 200 } },
  });
  try {
    h.sandbox.tokenFaults.delayMs = 1_000;
    assert.equal(
      await send(h),
      "451 4.4.3 Cannot get an access token, try again later: no answer within 200 ms",
    );
    assert.equal(h.sandbox.received.length, 0);
    assert.equal(h.sandbox.stats.token.requests, 1);
  } finally {
    h.sandbox.tokenFaults.delayMs = 0;
    await h.close();
  }
});

Deno.test("invalid_grant marks that account only; the others deliver", async () => {
  const h = await startHarness({ accounts: 2, config: { tokens: FAST_RETRIES } });
  try {
    h.sandbox.tokens.revoke(h.accounts[0].email);
    const refused = await send(h, 0);
    assert.match(
      refused,
      /^454 4\.7\.0 Account needs re-authorization by the relay operator \(invalid_grant/,
    );
    // invalid_grant is tried twice (a transient one happens) before the verdict.
    assert.equal(h.sandbox.stats.token.requests, 2);
    assert.match(await send(h, 1), /^250 /);
    // The verdict sticks: the next message is refused without asking the endpoint.
    assert.match(await send(h, 0), /^454 4\.7\.0 /);
    assert.equal(h.sandbox.stats.token.requests, 3);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(h.sandbox.received[0].user, h.accounts[1].email);

    const ready = await fetch(`http://127.0.0.1:${h.relay.http.port}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual((await ready.json()).accounts, {
      total: 2,
      ok: 1,
      failing: 0,
      needsReauth: 1,
      stateCorrupt: 0,
      unsaved: 0,
    });
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_accounts{state="needs_reauth"}'), 1);
    assert.equal(metricValue(m, 'smtp_relay_accounts{state="ok"}'), 1);
  } finally {
    await h.close();
  }
});

Deno.test("a single transient invalid_grant is retried, not a verdict", async () => {
  const h = await startHarness({ config: { tokens: FAST_RETRIES } });
  try {
    Object.assign(h.sandbox.tokenFaults, {
      failNext: 1,
      failStatus: 400,
      failBody: '{"error":"invalid_grant","error_description":"hiccup"}',
    });
    assert.match(await send(h), /^250 /);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_accounts{state="ok"}'), 1);
  } finally {
    await h.close();
  }
});

Deno.test("malformed JSON and a 10 MB body: clear error, no crash", async (t) => {
  // No failure hold: each step's message asks the endpoint.
  const h = await startHarness({
    config: { tokens: { ...FAST_RETRIES, attempts: 1, failureHoldSeconds: 0 } },
  });
  try {
    await t.step("malformed JSON", async () => {
      Object.assign(h.sandbox.tokenFaults, { failNext: 1, failStatus: 200, failBody: "{not json" });
      assert.equal(
        await send(h),
        '451 4.4.3 Cannot get an access token, try again later: unusable token response (HTTP 200): failed to parse "response" body as JSON',
      );
    });
    await t.step("10 MB body", async () => {
      Object.assign(h.sandbox.tokenFaults, {
        failNext: 1,
        failStatus: 200,
        failBody: `{"access_token":"${"x".repeat(10 * 1024 * 1024)}"}`,
      });
      assert.match(
        await send(h),
        /^451 4\.4\.3 Cannot get an access token, try again later: response too large \(HTTP 200, /,
      );
    });
    await t.step("then a good answer delivers", async () => {
      h.sandbox.resetFaults();
      assert.match(await send(h), /^250 /);
      assert.equal(h.sandbox.received.length, 1);
    });
  } finally {
    await h.close();
  }
});

Deno.test("Retry-After is honoured between attempts", async () => {
  const times: number[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    times.push(Date.now());
    if (times.length === 1) {
      return Response.json({ error: "temporarily_unavailable" }, {
        status: 429,
        headers: { "retry-after": "1" },
      });
    }
    return Response.json({ access_token: "at", token_type: "Bearer", expires_in: 3600 });
  });
  const dir = await Deno.makeTempDir();
  try {
    const tokens = new AccountTokens({
      account: "a@example.com",
      client: {
        tokenUrl: `http://127.0.0.1:${server.addr.port}/token`,
        clientId: "c",
        scope: "s",
      },
      configRefreshToken: "rt",
      store: new FileTokenStore(dir),
      marginMs: 300_000,
      timeoutMs: 2_000,
      retry: { attempts: 3, baseMs: 10, maxMs: 5_000 },
      reauthRecheckMs: 60_000,
    });
    const token = await tokens.get();
    tokens.close();
    assert.equal(token.token, "at");
    assert.equal(times.length, 2);
    assert.ok(times[1] - times[0] >= 950, `waited ${times[1] - times[0]} ms`);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("no token is handed out with under 2 minutes left", async () => {
  const sandbox = await startSandbox({ accessTokenTtlSeconds: 3600 });
  const [a] = makeAccounts(1);
  sandbox.addAccount(a);
  const dir = await Deno.makeTempDir();
  try {
    const tokens = new AccountTokens({
      account: a.email,
      client: {
        tokenUrl: sandbox.tokenUrl,
        clientId: a.clientId,
        clientSecret: a.clientSecret,
        scope: "s",
      },
      configRefreshToken: a.refreshToken,
      store: new FileTokenStore(dir),
      marginMs: 0, // even when asked for no margin
      timeoutMs: 2_000,
      retry: { attempts: 1, baseMs: 10, maxMs: 10 },
      reauthRecheckMs: 60_000,
    });
    const before = Date.now();
    const token = await tokens.get();
    tokens.close();
    assert.ok(token.useUntil <= before + 3600_000 - MIN_LIFETIME_MS + 1000);
    assert.ok(token.useUntil >= before + 3600_000 - MIN_LIFETIME_MS - 5000);
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an account in use is refreshed in the background before its token runs out", async () => {
  // 4 s tokens: used for half their life (2 s), refreshed ahead after 1.5 s of use.
  const h = await startHarness({ sandbox: { accessTokenTtlSeconds: 4 } });
  try {
    assert.match(await send(h), /^250 /);
    assert.equal(h.sandbox.stats.token.refreshes, 1);
    await new Promise((ok) => setTimeout(ok, 1_700));
    assert.match(await send(h), /^250 /); // served from the cache, triggers the refresh
    for (let i = 0; i < 50 && h.sandbox.stats.token.refreshes < 2; i++) {
      await new Promise((ok) => setTimeout(ok, 20));
    }
    assert.equal(h.sandbox.stats.token.refreshes, 2);
    assert.equal(h.sandbox.received.length, 2);
  } finally {
    await h.close();
  }
});

/** A store whose first write is slow, to overlap refreshes with a write in progress. */
class SlowStore implements TokenStore {
  #inner: FileTokenStore;
  #slow = true;
  constructor(dir: string) {
    this.#inner = new FileTokenStore(dir);
  }
  load(account: string) {
    return this.#inner.load(account);
  }
  async compareAndSet(account: string, expected: ExpectedVersion, token: StoredToken) {
    if (this.#slow) {
      this.#slow = false;
      await new Promise((ok) => setTimeout(ok, 300));
    }
    return this.#inner.compareAndSet(account, expected, token);
  }
}

Deno.test("rotation under concurrency: the newest refresh token survives a restart", async () => {
  const sandbox = await startSandbox();
  const [a] = makeAccounts(1);
  sandbox.addAccount(a);
  const dir = await Deno.makeTempDir();
  const make = (store: TokenStore) =>
    new AccountTokens({
      account: a.email,
      client: {
        tokenUrl: sandbox.tokenUrl,
        clientId: a.clientId,
        clientSecret: a.clientSecret,
        scope: "s",
      },
      configRefreshToken: a.refreshToken,
      store,
      marginMs: 300_000,
      timeoutMs: 2_000,
      retry: { attempts: 1, baseMs: 10, maxMs: 10 },
      reauthRecheckMs: 60_000,
    });
  try {
    const tokens = make(new SlowStore(dir));
    // Bursts of renewals (as after provider 535s) while the first write is still pending.
    const all: Promise<unknown>[] = [];
    for (let burst = 0; burst < 5; burst++) {
      for (let i = 0; i < 20; i++) all.push(tokens.renew());
      await new Promise((ok) => setTimeout(ok, 80));
    }
    await Promise.all(all);
    assert.ok(sandbox.stats.token.refreshes >= 2);
    const newest = sandbox.tokens.currentRefreshToken(a.email);
    const stored = await new FileTokenStore(dir).load(a.email);
    assert.equal(stored?.value.refreshToken, newest);
    // "Restart": a fresh manager on the same state directory refreshes with it.
    const restarted = make(new FileTokenStore(dir));
    await restarted.get();
    assert.equal(restarted.state, "ok");
    tokens.close();
    restarted.close();
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a relay restarted after invalid_grant picks up a token stored by authorize", async () => {
  const h = await startHarness({
    config: { tokens: { ...FAST_RETRIES, reauthRecheckSeconds: 1 } },
  });
  try {
    const a = h.accounts[0];
    h.sandbox.tokens.revoke(a.email);
    assert.match(await send(h), /^454 /);
    // The operator re-authorises: a new valid token lands in the store (as `authorize` does).
    const fresh = `refresh-${crypto.randomUUID()}`;
    h.sandbox.addAccount({ ...a, refreshToken: fresh });
    const { fingerprint } = await import("../../src/tokens/manager.ts");
    await new FileTokenStore(h.stateDir).save(a.email, {
      refreshToken: fresh,
      configFingerprint: fingerprint(a.refreshToken),
      updatedAt: new Date().toISOString(),
    });
    await new Promise((ok) => setTimeout(ok, 1_100));
    // Without a restart: the recheck reads the store again.
    assert.match(await send(h), /^250 /);
    await h.relay.close();
    h.relay = await startRelay(h.config);
    assert.match(await send(h), /^250 /);
    assert.equal(h.sandbox.received.length, 2);
  } finally {
    await h.close();
  }
});
