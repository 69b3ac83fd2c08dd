/**
 * `check` reads the refresh token from the store the relay uses: with Redis, the token a
 * relay rotated there (the sandbox invalidates the old one on rotation, so reading the
 * config's token or a file would fail). With Redis unreachable it exits 1.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { main } from "../../src/main.ts";
import { makeAccounts } from "../harness.ts";
import { RedisServer } from "./redis_server.ts";
import { FleetRelay, redisConfig, send } from "./fleet.ts";

Deno.test("check on Redis: uses the token a relay rotated there; exit 1 when Redis is unreachable", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const redis = await RedisServer.start();
  let relay: FleetRelay | undefined;
  const saved = Deno.env.get("RELAY_REDIS_URL");
  try {
    relay = await FleetRelay.start(sandbox, redis, await redisConfig(sandbox, [account]));
    await relay.waitFor("is reachable: shared state in use");
    assert.match(await send(relay.ports.smtp, account, "rotate"), /^250 /);
    const email = account.email.toLowerCase();
    assert.notEqual(sandbox.tokens.currentRefreshToken(email), account.refreshToken);
    await relay.kill();
    Deno.env.set("RELAY_REDIS_URL", redis.url);
    const before = sandbox.stats.token.refreshesByEmail.get(email) ?? 0;
    assert.equal(await main(["check", "--config", `${relay.dir}/accounts.ts`, "--json"]), 0);
    assert.equal(sandbox.stats.token.refreshesByEmail.get(email), before + 1);
    // The token check rotated again: Redis holds the sandbox's current token.
    const stored = await redis.command(["HGET", `relay:token:{${email}}`, "value"]);
    assert.ok(stored.includes(sandbox.tokens.currentRefreshToken(email)!));
    await redis.kill();
    assert.equal(await main(["check", "--config", `${relay.dir}/accounts.ts`, "--json"]), 1);
  } finally {
    if (saved === undefined) Deno.env.delete("RELAY_REDIS_URL");
    else Deno.env.set("RELAY_REDIS_URL", saved);
    await relay?.close();
    await redis.close();
    await sandbox.close();
  }
});
