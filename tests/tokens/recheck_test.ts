/**
 * Issue 16, item 9: an account in `needs_reauth` is rechecked on a timer (every
 * `tokens.reauthRecheckSeconds`), not only when a message arrives: `/readyz` recovers
 * without traffic once the operator fixed things. The timer stops with the relay.
 */
import assert from "node:assert/strict";
import { AccountTokens, fingerprint } from "../../src/tokens/manager.ts";
import { FileTokenStore, replaceToken } from "../../src/tokens/store.ts";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { makeAccounts, metricValue, never, startHarness, until } from "../harness.ts";
import { accounts, readyz, send, VirtualClock } from "./helpers.ts";

/** Messages the relay has handled, all results. */
function messageCount(metrics: string): number {
  return metrics.split("\n").filter((l) => l.startsWith("smtp_relay_messages_total{"))
    .reduce((n, l) => n + Number(l.split(" ")[1]), 0);
}

const TOKENS = { attempts: 1, retryBaseMs: 10, timeoutMs: 2_000, reauthRecheckSeconds: 1 };

Deno.test("needs_reauth clears without traffic once authorize stored a new token", async () => {
  const h = await startHarness({ config: { tokens: TOKENS } });
  try {
    const a = h.accounts[0];
    h.sandbox.tokens.revoke(a.email);
    assert.match(await send(h), /^454 4\.7\.0 Account needs re-authorization/);
    assert.equal((await readyz(h)).status, 503);
    // The operator re-authorises (as `authorize` does: the provider's new grant, stored).
    const fresh = `refresh-${crypto.randomUUID()}`;
    h.sandbox.addAccount({ ...a, refreshToken: fresh });
    await replaceToken(new FileTokenStore(h.stateDir), a.email, {
      refreshToken: fresh,
      configFingerprint: fingerprint(a.refreshToken),
      updatedAt: new Date().toISOString(),
    });
    const messages = messageCount(await h.metrics());
    assert.ok(await until(async () => (await readyz(h)).status === 200, 5_000), "still not ready");
    const ready = await readyz(h);
    assert.deepEqual(
      [ready.body.accounts.ok, ready.body.accounts.needsReauth],
      [1, 0],
    );
    assert.equal((await accounts(h)).body[0].token, "ok");
    assert.equal(metricValue(await h.metrics(), 'smtp_relay_accounts{state="ok"}'), 1);
    // No message was needed for it.
    assert.equal(messageCount(await h.metrics()), messages);
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("needs_reauth clears without traffic once the token endpoint accepts the client again", async () => {
  const h = await startHarness({ config: { tokens: TOKENS } });
  try {
    Object.assign(h.sandbox.tokenFaults, {
      failNext: 1,
      failStatus: 401,
      failBody: '{"error":"invalid_client","error_description":"client secret expired"}',
    });
    assert.match(await send(h), /^454 4\.7\.0 .*invalid_client/);
    assert.equal((await readyz(h)).body.accounts.needsReauth, 1);
    // The provider-side fix is in (the fault is spent): the recheck finds it by itself.
    assert.ok(await until(async () => (await readyz(h)).status === 200, 5_000), "still not ready");
    assert.equal((await accounts(h)).body[0].token, "ok");
    assert.equal(h.sandbox.received.length, 0);
  } finally {
    await h.close();
  }
});

Deno.test("the recheck runs on a timer while the account is broken, and stops with the relay", async () => {
  const h = await startHarness({ config: { tokens: TOKENS } });
  try {
    h.sandbox.tokens.revoke(h.accounts[0].email);
    assert.match(await send(h), /^454 /);
    const after = h.sandbox.stats.token.requests;
    assert.ok(
      await until(() => h.sandbox.stats.token.requests >= after + 2, 5_000),
      "no recheck without traffic",
    );
    await h.relay.close();
    const closed = h.sandbox.stats.token.requests;
    assert.ok(
      await never(() => h.sandbox.stats.token.requests > closed, { forMs: 2_500 }),
      "a recheck ran after the relay closed",
    );
  } finally {
    await h.close();
  }
});

Deno.test("recheck timers follow the injected clock and end with close()", async () => {
  const sandbox = await startSandbox();
  const [a] = makeAccounts(1);
  sandbox.addAccount(a);
  const dir = await Deno.makeTempDir();
  const clock = new VirtualClock();
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
    timing: clock,
    marginMs: 300_000,
    timeoutMs: 2_000,
    retry: { attempts: 1, baseMs: 10, maxMs: 10 },
    reauthRecheckMs: 60_000,
  });
  try {
    sandbox.tokens.revoke(a.email);
    await assert.rejects(() => tokens.get(), /invalid_grant/);
    assert.equal(tokens.state, "needs_reauth");
    assert.equal(clock.pending, 1);
    const requests = sandbox.stats.token.requests;
    clock.advance(59_000);
    assert.equal(sandbox.stats.token.requests, requests, "rechecked before the interval");
    clock.advance(1_000 + 6_000); // due (spread by up to 10%)
    assert.ok(await until(() => sandbox.stats.token.requests === requests + 1), "no recheck");
    assert.ok(await until(() => clock.pending === 1), "no next recheck");
    // Fixed meanwhile: the next timer recheck brings it back.
    sandbox.addAccount(a);
    clock.advance(66_000);
    assert.ok(await until(() => tokens.state === "ok"), "not recovered");
    assert.equal(clock.pending, 0);
    // Broken again, then closed: no timer is left and advancing asks nothing.
    sandbox.tokens.revoke(a.email);
    await assert.rejects(() => tokens.renew(), /invalid_grant/);
    assert.equal(clock.pending, 1);
    tokens.close();
    assert.equal(clock.pending, 0);
    const before = sandbox.stats.token.requests;
    clock.advance(600_000);
    assert.equal(sandbox.stats.token.requests, before);
  } finally {
    tokens.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
