/**
 * Failed AUTHs counted across two relay processes through Redis: an attacker who spreads
 * guesses over both gets no more than against one (account lock, per-IP cut-off).
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { makeAccounts, PASSWORD, type TestAccount, until } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { RedisServer } from "./redis_server.ts";
import { FleetRelay, redisConfig } from "./fleet.ts";

const BAD = "535 5.7.8 Authentication credentials invalid";
const LOCKED = "454 4.7.0 Too many failed authentications for this account, try again later";
const CUT_OFF = "421 4.7.0 Too many failed authentications, try again later";

async function twoRelays(
  limits: string,
  fn: (relays: FleetRelay[], redis: RedisServer, accounts: TestAccount[]) => Promise<void>,
): Promise<void> {
  const sandbox = await startSandbox();
  const accounts = makeAccounts(2);
  for (const a of accounts) sandbox.addAccount(a);
  const redis = await RedisServer.start();
  const relays: FleetRelay[] = [];
  try {
    const config = await redisConfig(sandbox, accounts, {
      top:
        `limits: { maxClients: 2000, maxConnectionsPerIp: 2000, authFailuresBeforeTarpit: 100, ${limits} },`,
    });
    relays.push(...await Promise.all([0, 1].map(() => FleetRelay.start(sandbox, redis, config))));
    for (const r of relays) await r.waitFor("is reachable: shared state in use");
    await fn(relays, redis, accounts);
  } finally {
    await Promise.all(relays.map((r) => r.close()));
    await redis.close();
    await sandbox.close();
  }
}

async function auth(relay: FleetRelay, user: string, password: string): Promise<string> {
  const { client } = await RawSmtp.connect(relay.ports.smtp);
  try {
    await client.command("EHLO c");
    return (await client.command(`AUTH PLAIN ${plain(user, password)}`)).last;
  } finally {
    await client.close();
  }
}

Deno.test("fleet auth: 4 failed AUTHs spread over two relays lock the account on both (lock after 4)", async () => {
  await twoRelays(
    "authFailuresBeforeDisconnect: 100, authFailuresBeforeAccountLock: 4",
    async (relays, redis, [a, b]) => {
      for (let i = 0; i < 4; i++) assert.equal(await auth(relays[i % 2], a.email, "wrong"), BAD);
      // Each relay saw 2 failures only: the lock is the fleet's.
      assert.ok(
        await until(
          async () => (await redis.command(["KEYS", "relay:auth:lock:*"])).startsWith("*1"),
          10_000,
        ),
      );
      assert.equal(await auth(relays[0], a.email, PASSWORD), LOCKED);
      assert.equal(await auth(relays[1], a.email, PASSWORD), LOCKED);
      // Another account is not affected.
      assert.match(await auth(relays[1], b.email, PASSWORD), /^235 /);
    },
  );
});

Deno.test("fleet auth: failures from one IP on both relays add up to the cut-off (6)", async () => {
  await twoRelays(
    "authFailuresBeforeDisconnect: 6, authFailuresBeforeAccountLock: 100",
    async (relays, redis, [a, b]) => {
      for (let i = 0; i < 3; i++) assert.equal(await auth(relays[1], b.email, "wrong"), BAD);
      assert.ok(
        await until(
          async () => (await redis.command(["ZCARD", "relay:auth:ip:{127.0.0.1}"])) === ":3\r\n",
          10_000,
        ),
      );
      for (let i = 0; i < 3; i++) assert.equal(await auth(relays[0], a.email, "wrong"), BAD);
      // Relay 0 counted 3 itself; with relay 1's 3 the address is cut off (once the shared
      // count of its last failure is back).
      let first = "";
      assert.ok(
        await until(
          async () => (first = await auth(relays[0], a.email, PASSWORD)) === CUT_OFF,
          10_000,
        ),
        first,
      );
      // Relay 1 (4 failures of its own) learns it with its next failure, once the shared
      // count comes back (a right password meanwhile is checked and adds no failure).
      assert.equal(await auth(relays[1], b.email, "wrong"), BAD);
      let last = "";
      assert.ok(
        await until(
          async () => (last = await auth(relays[1], b.email, PASSWORD)) === CUT_OFF,
          10_000,
        ),
        last,
      );
    },
  );
});
