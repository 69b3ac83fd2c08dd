/**
 * Failed AUTHs counted across two relay processes through Redis: an attacker who spreads
 * guesses over both gets no more than against one (account lock, per-IP cut-off), also
 * when the guesses arrive at once (the per-IP count and its verdict are one step); and the
 * same cut-off, exact under concurrency, for one relay counting alone (no Redis).
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { makeAccounts, PASSWORD, startHarness, type TestAccount, until } from "../harness.ts";
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

/**
 * Opens one session per port (EHLO done), then sends every AUTH at once; the replies, in
 * the order of `ports`.
 */
async function concurrentAuths(
  ports: number[],
  user: (i: number) => string,
  password: string,
): Promise<string[]> {
  const clients = await Promise.all(ports.map(async (port) => {
    const { client } = await RawSmtp.connect(port);
    assert.equal((await client.command("EHLO c")).code, 250);
    return client;
  }));
  try {
    return await Promise.all(
      clients.map(async (c, i) => (await c.command(`AUTH PLAIN ${plain(user(i), password)}`)).last),
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/** How many of `replies` are exactly `line`. */
function count(replies: string[], line: string): number {
  return replies.filter((r) => r === line).length;
}

Deno.test("fleet auth: 10 right and then 20 bad AUTHs at once from one IP, split over two relays, log in 10 and get exactly 6 535s (limit 6), the rest 421", async () => {
  await twoRelays(
    "authFailuresBeforeDisconnect: 6, authFailuresBeforeAccountLock: 100",
    async (relays, redis, [a, b]) => {
      const ipKey = "relay:auth:ip:{127.0.0.1}";
      // 10 right passwords at once from the address (more than the limit): all log in and
      // count nothing.
      const good = Array.from({ length: 10 }, (_, i) => relays[i % 2].ports.smtp);
      const ok = await concurrentAuths(good, () => a.email, PASSWORD);
      assert.equal(ok.filter((r) => r.startsWith("235 ")).length, 10, ok.join("\n"));
      assert.equal(await redis.command(["ZCARD", ipKey]), ":0\r\n");
      const ports = Array.from({ length: 20 }, (_, i) => relays[i % 2].ports.smtp);
      const replies = await concurrentAuths(ports, (i) => (i % 3 ? a : b).email, "wrong");
      const shown = replies.join("\n");
      assert.equal(count(replies, BAD), 6, shown);
      assert.equal(count(replies, CUT_OFF), 14, shown);
      assert.equal(await redis.command(["ZCARD", ipKey]), ":6\r\n");
      assert.equal(await redis.command(["EXISTS", "relay:auth:try:{127.0.0.1}"]), ":0\r\n");
      // Cut off on both relays, the right password included, and nothing more is counted.
      assert.equal(await auth(relays[0], a.email, PASSWORD), CUT_OFF);
      assert.equal(await auth(relays[1], b.email, PASSWORD), CUT_OFF);
      assert.equal(await redis.command(["ZCARD", ipKey]), ":6\r\n");
    },
  );
});

Deno.test("fleet auth: 16 bad AUTHs at once as one account, split over two relays, get exactly 4 535s (lock after 4), the rest 454", async () => {
  await twoRelays(
    "authFailuresBeforeDisconnect: 100, authFailuresBeforeAccountLock: 4",
    async (relays, redis, [a, b]) => {
      // 8 right passwords at once (more than the lock threshold): all log in, no strike.
      const good = Array.from({ length: 8 }, (_, i) => relays[i % 2].ports.smtp);
      const ok = await concurrentAuths(good, () => a.email, PASSWORD);
      assert.equal(ok.filter((r) => r.startsWith("235 ")).length, 8, ok.join("\n"));
      const ports = Array.from({ length: 16 }, (_, i) => relays[i % 2].ports.smtp);
      const replies = await concurrentAuths(ports, () => a.email, "wrong");
      const shown = replies.join("\n");
      assert.equal(count(replies, BAD), 4, shown);
      assert.equal(count(replies, LOCKED), 12, shown);
      assert.equal((await redis.command(["KEYS", "relay:auth:lock:*"])).slice(0, 2), "*1");
      assert.equal(await auth(relays[0], a.email, PASSWORD), LOCKED);
      assert.equal(await auth(relays[1], a.email, PASSWORD), LOCKED);
      assert.match(await auth(relays[1], b.email, PASSWORD), /^235 /);
    },
  );
});

Deno.test("auth cut-off (one relay, no Redis): 6 right and then 12 bad AUTHs at once from one IP log in 6 and get exactly 4 535s (limit 4), the rest 421", async () => {
  const h = await startHarness({
    accounts: 2,
    config: {
      limits: {
        authFailuresBeforeDisconnect: 4,
        authFailuresBeforeAccountLock: 100,
        authFailuresBeforeTarpit: 100,
        maxConnectionsPerIp: 100,
      },
    },
  });
  try {
    const port = h.relay.smtp.port;
    const [a, b] = h.accounts;
    const ports = Array.from({ length: 12 }, () => port);
    // Logins that succeed, at once, count nothing: then 12 wrong ones at once.
    const ok = await concurrentAuths(ports.slice(0, 6), () => a.email, PASSWORD);
    assert.equal(ok.filter((r) => r.startsWith("235 ")).length, 6, ok.join("\n"));
    const replies = await concurrentAuths(ports, (i) => (i % 2 ? a : b).email, "wrong");
    const shown = replies.join("\n");
    assert.equal(count(replies, BAD), 4, shown);
    assert.equal(count(replies, CUT_OFF), 8, shown);
    assert.equal((await concurrentAuths([port], () => a.email, PASSWORD))[0], CUT_OFF);
  } finally {
    await h.close();
  }
});

Deno.test("fleet auth: failures from one IP on both relays add up to the cut-off (6) at once", async () => {
  await twoRelays(
    "authFailuresBeforeDisconnect: 6, authFailuresBeforeAccountLock: 100",
    async (relays, redis, [a, b]) => {
      for (let i = 0; i < 3; i++) assert.equal(await auth(relays[1], b.email, "wrong"), BAD);
      assert.equal(await redis.command(["ZCARD", "relay:auth:ip:{127.0.0.1}"]), ":3\r\n");
      for (let i = 0; i < 3; i++) assert.equal(await auth(relays[0], a.email, "wrong"), BAD);
      // Each relay saw 3: the fleet's 6 cut the address off on both, with no delay (the
      // count is Redis's, taken in the same step as the verdict).
      assert.equal(await auth(relays[0], a.email, PASSWORD), CUT_OFF);
      assert.equal(await auth(relays[1], b.email, "wrong"), CUT_OFF);
      assert.equal(await auth(relays[1], b.email, PASSWORD), CUT_OFF);
    },
  );
});
