/**
 * AccountTokens against the sandbox token endpoint with its state behind interfaces:
 * a rotation that loses the store's compare-and-set, two token sources on one state
 * directory, the refresh lease (in-process and a mutual-exclusion-only one, as a shared
 * lease would be), and expiry driven by an injected clock.
 */
import assert from "node:assert/strict";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import type { ExpectedVersion } from "../../src/state/store.ts";
import { type AccessTokenCache, MemoryAccessTokenCache } from "../../src/tokens/cache.ts";
import type { Timing } from "../../src/tokens/clock.ts";
import { InProcessRefreshLease, type RefreshLease } from "../../src/tokens/lease.ts";
import {
  AccountTokens,
  type AccountTokensOptions,
  fingerprint,
  type RefreshOutcome,
} from "../../src/tokens/manager.ts";
import {
  FileTokenStore,
  type RefreshTokenStore,
  replaceToken,
  type StoredToken,
} from "../../src/tokens/store.ts";
import { makeAccounts, type TestAccount } from "../harness.ts";

/** Asserts two secrets are (not) the same without printing either. */
function same(a: string | undefined, b: string | undefined, what: string): void {
  assert.ok(a !== undefined && a === b, `${what}: differ`);
}
function differ(a: string, b: string, what: string): void {
  assert.ok(a !== b, `${what}: the same`);
}

interface World {
  sandbox: Sandbox;
  account: TestAccount;
  dir: string;
  /** A token source for the account on `dir`, with the given overrides. */
  make(overrides?: Partial<AccountTokensOptions>): AccountTokens;
}

async function world(
  fn: (w: World) => Promise<void>,
  sandboxOptions: { accessTokenTtlSeconds?: number } = {},
): Promise<void> {
  const sandbox = await startSandbox(sandboxOptions);
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const dir = await Deno.makeTempDir({ prefix: "relay-shared-" });
  const made: AccountTokens[] = [];
  const make = (overrides: Partial<AccountTokensOptions> = {}) => {
    const tokens = new AccountTokens({
      account: account.email,
      client: {
        tokenUrl: sandbox.tokenUrl,
        clientId: account.clientId,
        clientSecret: account.clientSecret,
        scope: "s",
      },
      configRefreshToken: account.refreshToken,
      store: new FileTokenStore(dir),
      marginMs: 300_000,
      timeoutMs: 2_000,
      retry: { attempts: 1, baseMs: 10, maxMs: 10 },
      reauthRecheckMs: 60_000,
      ...overrides,
    });
    made.push(tokens);
    return tokens;
  };
  try {
    await fn({ sandbox, account, dir, make });
  } finally {
    for (const tokens of made) tokens.close(); // no recheck timer outlives the test
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A store that runs `before` once, just before the first compare-and-set. */
class Interleaved implements RefreshTokenStore {
  readonly #inner: RefreshTokenStore;
  #before?: () => Promise<void>;
  constructor(inner: RefreshTokenStore, before: () => Promise<void>) {
    this.#inner = inner;
    this.#before = before;
  }
  load(account: string) {
    return this.#inner.load(account);
  }
  async compareAndSet(account: string, expected: ExpectedVersion, value: StoredToken) {
    const before = this.#before;
    this.#before = undefined;
    await before?.();
    return this.#inner.compareAndSet(account, expected, value);
  }
}

Deno.test("a rotation that loses the compare-and-set adopts the newer stored token", async () => {
  await world(async ({ sandbox, account, dir, make }) => {
    const files = new FileTokenStore(dir);
    const authorized = `refresh-${crypto.randomUUID()}`;
    // Between our refresh and our write, the operator runs `authorize` (another process):
    // the provider issues a new grant (the one we just rotated to dies) and it is stored.
    const store = new Interleaved(files, async () => {
      sandbox.addAccount({ ...account, refreshToken: authorized });
      await replaceToken(new FileTokenStore(dir), account.email, {
        refreshToken: authorized,
        configFingerprint: fingerprint(account.refreshToken),
        updatedAt: new Date().toISOString(),
      });
    });
    const outcomes: RefreshOutcome[] = [];
    const tokens = make({ store, onRefresh: (o) => outcomes.push(o) });

    const first = await tokens.get();
    assert.equal(outcomes.length, 1);
    assert.equal(outcomes[0].rotated, true);
    assert.equal(outcomes[0].adopted, true);
    assert.equal(outcomes[0].persistError, undefined);
    // The newer writer's token stays stored: it is the one the provider accepts.
    const stored = await files.load(account.email);
    same(stored?.value.refreshToken, authorized, "stored vs authorized");
    same(
      stored?.value.refreshToken,
      sandbox.tokens.currentRefreshToken(account.email),
      "stored vs provider's",
    );
    // Our fresh access token is kept and served from the cache.
    assert.ok(sandbox.tokens.validateAccessToken(account.email, first.token));
    same((await tokens.get()).token, first.token, "cached vs first");
    assert.equal(sandbox.stats.token.requests, 1);

    // The next refresh uses the adopted token: accepted at once, no invalid_grant.
    const second = await tokens.renew();
    differ(second.token, first.token, "second vs first");
    assert.equal(tokens.state, "ok");
    assert.equal(sandbox.stats.token.requests, 2);
    assert.equal(sandbox.stats.token.refreshesByEmail.get(account.email), 2);
    const newest = sandbox.tokens.currentRefreshToken(account.email);
    same((await files.load(account.email))?.value.refreshToken, newest, "stored vs provider's");
  });
});

Deno.test("two token sources on one state directory: each refresh starts from the newest stored token", async () => {
  // `serve` and `check` at once: neither holds on to a token the other has rotated away.
  await world(async ({ sandbox, account, dir, make }) => {
    const serve = make();
    const check = make();
    await serve.get();
    await check.get(); // rotates the token serve last stored
    assert.equal(sandbox.stats.token.requests, 2);
    await serve.renew();
    assert.equal(serve.state, "ok");
    assert.equal(sandbox.stats.token.requests, 3, "serve refreshed with a dead token first");
    assert.equal(sandbox.stats.token.refreshes, 3);
    const stored = await new FileTokenStore(dir).load(account.email);
    same(
      stored?.value.refreshToken,
      sandbox.tokens.currentRefreshToken(account.email),
      "stored vs provider's",
    );
  });
});

Deno.test("refresh lease: one refresh for many concurrent callers", async () => {
  await world(async ({ sandbox, make }) => {
    const tokens = make();
    const got = await Promise.all(Array.from({ length: 50 }, () => tokens.get()));
    assert.equal(sandbox.stats.token.refreshes, 1);
    assert.equal(new Set(got.map((t) => t.token)).size, 1);
    // A burst of refusals costs one more refresh.
    await Promise.all(Array.from({ length: 20 }, () => tokens.renew()));
    assert.equal(sandbox.stats.token.refreshes, 2);
  });
});

/** A lease that only excludes (as a Redis lease would): waiters run their own refresh after. */
class ExclusiveLease implements RefreshLease {
  #tail = Promise.resolve();
  runs = 0;
  run<T>(_account: string, refresh: () => Promise<T>, ttlMs: number): Promise<T> {
    assert.ok(ttlMs > 0);
    const result = this.#tail.then(() => {
      this.runs++;
      return refresh();
    });
    this.#tail = result.then(() => {}, () => {});
    return result;
  }
}

Deno.test("token sources sharing a lease and a cache refresh once between them", async () => {
  await world(async ({ sandbox, make }) => {
    for (const lease of [new InProcessRefreshLease(), new ExclusiveLease()]) {
      const cache: AccessTokenCache = new MemoryAccessTokenCache();
      const instances = [make({ lease, cache }), make({ lease, cache }), make({ lease, cache })];
      const before = sandbox.stats.token.refreshes;
      const got = await Promise.all(
        Array.from({ length: 30 }, (_, i) => instances[i % instances.length].get()),
      );
      assert.equal(sandbox.stats.token.refreshes - before, 1, lease.constructor.name);
      assert.equal(new Set(got.map((t) => t.token)).size, 1);
      // A refused token is not handed out again by the other instances' leases.
      const refused = got[0].token;
      const renewed = await Promise.all(instances.map((t) => t.renew()));
      assert.equal(sandbox.stats.token.refreshes - before, 2, lease.constructor.name);
      for (const t of renewed) differ(t.token, refused, "renewed vs refused");
    }
  });
});

/** A clock the test moves; sleeps advance it instead of waiting. */
function manualClock(): Timing & { advance(ms: number): void; slept: number[] } {
  let now = Date.now();
  const slept: number[] = [];
  return {
    now: () => now,
    sleep: (ms) => {
      slept.push(ms);
      now += ms;
      return Promise.resolve();
    },
    advance: (ms) => now += ms,
    slept,
  };
}

Deno.test("expiry, refresh-ahead, backoff and the reauth recheck follow the injected clock", async () => {
  await world(async ({ sandbox, account, make }) => {
    const clock = manualClock();
    const tokens = make({
      timing: clock,
      retry: { attempts: 3, baseMs: 60_000, maxMs: 600_000 },
    });
    // 3600 s tokens, 300 s margin: used until 3300 s, refreshed ahead from 2475 s of use.
    const t1 = await tokens.get();
    assert.equal(t1.useUntil, clock.now() + 3_300_000);
    clock.advance(2_400_000);
    same((await tokens.get()).token, t1.token, "cached vs t1");
    assert.equal(sandbox.stats.token.refreshes, 1);

    clock.advance(100_000); // past refresh-ahead: served from the cache, refreshed behind
    same((await tokens.get()).token, t1.token, "cached vs t1");
    let t2 = t1;
    for (let i = 0; i < 400 && t2.token === t1.token; i++) {
      await new Promise((ok) => setTimeout(ok, 5));
      t2 = await tokens.get();
    }
    differ(t2.token, t1.token, "t2 vs t1");
    assert.equal(sandbox.stats.token.refreshes, 2);

    clock.advance(3_300_000); // past t2's use-until: a refresh before anything is handed out
    sandbox.tokenFaults.failNext = 2; // two 500s: backoff sleeps on the clock, not for real
    const t3 = await tokens.get();
    differ(t3.token, t2.token, "t3 vs t2");
    assert.equal(sandbox.stats.token.refreshes, 3);
    assert.equal(clock.slept.length, 2);

    sandbox.tokens.revoke(account.email);
    await assert.rejects(() => tokens.renew(), /invalid_grant/);
    assert.equal(tokens.state, "needs_reauth");
    const requests = sandbox.stats.token.requests;
    await assert.rejects(() => tokens.get(), /invalid_grant/);
    assert.equal(sandbox.stats.token.requests, requests, "asked again before the recheck");
    clock.advance(60_000);
    await assert.rejects(() => tokens.get(), /invalid_grant/);
    assert.ok(sandbox.stats.token.requests > requests, "no recheck after the interval");
  }, { accessTokenTtlSeconds: 3600 });
});
