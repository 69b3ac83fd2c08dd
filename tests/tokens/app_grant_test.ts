/**
 * The token manager with an app-only grant (service account) against the sandbox token
 * endpoint over HTTP, on a virtual clock: tokens are cached, refreshed ahead of expiry in
 * the background and again once used up; transient failures are retried; a refused
 * credential is a permanent AppCredentialError; and the refresh-token store (a fake
 * that fails the test if touched) is never read or written.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { AccountTokens, type RefreshOutcome } from "../../src/tokens/manager.ts";
import {
  parseServiceAccountKey,
  ServiceAccountCredential,
} from "../../src/tokens/service_account.ts";
import { AppCredentialError } from "../../src/tokens/app_grant.ts";
import type { RefreshTokenStore } from "../../src/tokens/store.ts";
import { until } from "../harness.ts";
import { VirtualClock } from "./helpers.ts";

/** A store the app-only path must never use. */
const untouchable = new Proxy({}, {
  get(_t, name) {
    throw new Error(`the refresh-token store was used (${String(name)})`);
  },
}) as RefreshTokenStore;

Deno.test("app-only tokens: cached, refreshed ahead and when used up, retried, never stored", async () => {
  const sandbox = await startSandbox({ accessTokenTtlSeconds: 3600 });
  try {
    const g = await generateServiceAccountKey("sa@p.iam.test", sandbox.tokenUrl);
    const sa = sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: "sa@p.iam.test",
      publicKeyPem: g.publicKeyPem,
      domains: ["fleet.example"],
    });
    const credential = new ServiceAccountCredential(
      parseServiceAccountKey(g.keyFile),
      sandbox.tokenUrl,
      "https://sandbox.localhost/smtp",
    );
    const clock = new VirtualClock();
    const outcomes: RefreshOutcome[] = [];
    const tokens = new AccountTokens({
      account: "alice@fleet.example",
      client: { tokenUrl: sandbox.tokenUrl, clientId: "sa@p.iam.test", scope: "unused" },
      grant: credential.grantFor("alice@fleet.example"),
      store: untouchable,
      timing: clock,
      marginMs: 300_000,
      timeoutMs: 10_000,
      retry: { attempts: 3, baseMs: 10, maxMs: 100 },
      reauthRecheckMs: 600_000,
      failureHoldMs: 0,
      onRefresh: (o) => outcomes.push(o),
    });
    await tokens.inspect(); // does not touch the store either
    const grants = () => sandbox.tokens.appOnly.stats.grants;
    const first = await tokens.get();
    assert.equal((await tokens.get()).token, first.token);
    assert.equal(grants(), 1);
    assert.equal(tokens.state, "ok");
    // Past 75% of its usable life: still handed out, a new one fetched in the background.
    clock.advance(0.8 * (3600_000 - 300_000));
    assert.equal((await tokens.get()).token, first.token);
    assert.ok(await until(() => grants() === 2));
    const second = await tokens.get();
    assert.notEqual(second.token, first.token);
    // Used up: a new one before anything is handed out.
    clock.advance(3600_000);
    sandbox.tokenFaults.failNext = 2; // HTTP 500 twice, then the grant
    const third = await tokens.get();
    assert.notEqual(third.token, second.token);
    assert.equal(grants(), 3);
    assert.deepEqual(outcomes.map((o) => [o.ok, o.attempts, o.background, o.rotated]), [
      [true, 1, false, false],
      [true, 1, true, false],
      [true, 3, false, false],
    ]);
    // Delegation withdrawn: a permanent, operator-only failure.
    sa.domains = [];
    clock.advance(3600_000);
    await assert.rejects(tokens.get(), (e) => {
      assert.ok(e instanceof AppCredentialError);
      assert.equal(e.oauthError, "unauthorized_client");
      return true;
    });
    assert.equal(tokens.state, "needs_reauth");
    assert.equal(outcomes.at(-1)?.attempts, 1); // not retried
    tokens.close();
  } finally {
    await sandbox.close();
  }
});
