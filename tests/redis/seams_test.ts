/**
 * The Redis implementations of the state seams against a real redis-server, two
 * connections standing for two relay instances: quotas (one script per reservation),
 * connection permits (leases), refresh-token compare-and-set, the access-token cache,
 * the refresh lease; and Redis trouble (down, back) as a designed state.
 */
import assert from "node:assert/strict";
import { RedisState, RedisUnavailableError } from "../../src/state/redis/client.ts";
import { RedisQuotas } from "../../src/quota/redis_quotas.ts";
import { isReservation } from "../../src/quota/quotas.ts";
import type { QuotaExceeded, Reservation } from "../../src/quota/quota.ts";
import { RedisPermits } from "../../src/upstream/redis_permits.ts";
import {
  RedisAccessTokenCache,
  RedisRefreshLease,
  RedisTokenStore,
} from "../../src/tokens/redis_tokens.ts";
import { until } from "../harness.ts";
import { RedisServer } from "./redis_server.ts";

async function withRedis(
  fn: (server: RedisServer, connect: () => Promise<RedisState>) => Promise<void>,
  options: { password?: string; tls?: boolean } = {},
): Promise<void> {
  const server = await RedisServer.start(options);
  const states: RedisState[] = [];
  try {
    await fn(server, async () => {
      const s = new RedisState({ url: server.url, keyPrefix: "t:", timeoutMs: 500 });
      states.push(s);
      await s.start();
      return s;
    });
  } finally {
    for (const s of states) await s.close();
    await server.close();
  }
}

const LIMITS = { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 10 };

Deno.test("redis quotas: 25 concurrent reservations over two instances, 10 per minute -> exactly 10 granted", async () => {
  await withRedis(async (_server, connect) => {
    const a = new RedisQuotas(await connect(), "a");
    const b = new RedisQuotas(await connect(), "b");
    const before = Date.now();
    const results = await Promise.all(
      Array.from({ length: 25 }, (_, i) => (i % 2 ? a : b).reserve("X@Example.com", LIMITS, 2)),
    );
    const granted = results.filter(isReservation) as Reservation[];
    const refused = results.filter((r) => !isReservation(r)) as QuotaExceeded[];
    assert.equal(granted.length, 10);
    assert.equal(refused.length, 15);
    for (const r of refused) {
      assert.equal(r.kind, "messages_per_minute");
      assert.equal(r.limit, 10);
      assert.ok(r.retryAt > before + 59_000 && r.retryAt <= Date.now() + 60_000, `${r.retryAt}`);
    }
    assert.deepEqual(await a.usage("x@example.com"), {
      lastMinute: 10,
      messagesToday: 10,
      recipientsToday: 20,
    });
    // A release gives one back (to either instance); a commit keeps it.
    granted[0].release();
    granted[1].commit();
    granted[1].release(); // no-op after the commit
    assert.ok(await until(async () => (await b.usage("x@example.com")).lastMinute === 9));
    assert.equal((await b.usage("x@example.com")).recipientsToday, 18);
    assert.ok(isReservation(await b.reserve("x@example.com", LIMITS, 1)));
    const full = await a.reserve("x@example.com", LIMITS, 1);
    assert.ok(!isReservation(full));
  });
});

Deno.test("redis quotas: per-day message and recipient limits refuse with the window's end", async () => {
  await withRedis(async (_server, connect) => {
    const q = new RedisQuotas(await connect(), "a");
    const limits = { messagesPerDay: 3, recipientsPerDay: 5, messagesPerMinute: 0 };
    assert.ok(isReservation(await q.reserve("d@example.com", limits, 2)));
    assert.ok(isReservation(await q.reserve("d@example.com", limits, 2)));
    const r = await q.reserve("d@example.com", limits, 2) as QuotaExceeded;
    assert.equal(r.kind, "recipients_per_day");
    assert.equal(r.limit, 5);
    const day = 86_400_000;
    assert.ok(r.retryAt > Date.now() + day - 120_000 && r.retryAt <= Date.now() + day + 60_000);
    assert.ok(isReservation(await q.reserve("d@example.com", limits, 1)));
    const m = await q.reserve("d@example.com", limits, 0) as QuotaExceeded;
    assert.equal(m.kind, "messages_per_day");
    assert.equal(m.limit, 3);
  });
});

Deno.test("redis token store: concurrent compare-and-set from two instances, one wins, the other adopts", async () => {
  await withRedis(async (_server, connect) => {
    const a = new RedisTokenStore(await connect());
    const b = new RedisTokenStore(await connect());
    const token = (n: string) => ({
      refreshToken: `rt-${n}`,
      configFingerprint: "f",
      updatedAt: new Date().toISOString(),
    });
    assert.equal(await a.load("u@example.com"), undefined);
    const first = await Promise.all([
      a.compareAndSet("u@example.com", "absent", token("a")),
      b.compareAndSet("u@example.com", "absent", token("b")),
    ]);
    assert.equal(first.filter((r) => r.ok).length, 1);
    const loser = first.find((r) => !r.ok)!;
    assert.ok(!loser.ok && loser.current?.version === 0);
    const stored = await b.load("U@example.com");
    assert.equal(stored?.version, 0);
    assert.equal(stored?.value.refreshToken, loser.ok ? "" : loser.current!.value.refreshToken);
    // A writer holding version 0 wins once; a second writer at version 0 does not replace it.
    const r1 = await a.compareAndSet("u@example.com", 0, token("c"));
    const r2 = await b.compareAndSet("u@example.com", 0, token("d"));
    assert.deepEqual(r1, { ok: true, version: 1 });
    assert.ok(!r2.ok && r2.current?.version === 1 && r2.current.value.refreshToken === "rt-c");
    assert.equal((await a.load("u@example.com"))?.value.refreshToken, "rt-c");
  });
});

Deno.test("redis access-token cache: the hot path reads memory; a refresh by another instance is seen once due", async () => {
  await withRedis(async (server, connect) => {
    let now = Date.now();
    const ra = await connect();
    const a = new RedisAccessTokenCache(ra, () => now);
    const b = new RedisAccessTokenCache(await connect(), () => now);
    await a.set("c@example.com", { token: "t1", useUntil: now + 60_000, refreshAt: now + 30_000 });
    assert.equal((await b.get("c@example.com"))?.token, "t1");
    // Memory only while not due: Redis going away does not matter.
    await server.kill();
    assert.equal((await a.get("c@example.com"))?.token, "t1");
    // Due for refresh, Redis unreachable: the still-usable local copy is served.
    now += 40_000;
    assert.ok(await until(() => !ra.up, 5_000));
    assert.equal((await a.get("c@example.com"))?.token, "t1");
    // Past use-until and Redis unreachable: the call fails (the message gets a 4xx).
    now += 30_000;
    await assert.rejects(a.get("c@example.com"), RedisUnavailableError);
    await server.restart();
    assert.ok(await until(() => ra.up, 10_000), "reconnects without a restart");
    await b.set("c@example.com", { token: "t2", useUntil: now + 60_000, refreshAt: now + 30_000 });
    assert.equal((await a.get("c@example.com"))?.token, "t2");
    // A refused token is deleted only if it is still the one stored.
    await a.delete("c@example.com", "t1");
    assert.equal((await b.get("c@example.com"))?.token, "t2");
    await a.delete("c@example.com", "t2");
    now += 31_000; // b's local copy is due: it asks Redis, which has nothing
    assert.equal((await b.get("c@example.com"))?.token, "t2", "still usable locally");
    assert.match(await server.command(["EXISTS", "t:access:{c@example.com}"]), /^:0/);
  });
});

Deno.test("redis refresh lease: two instances, 20 callers -> refreshes never overlap, each instance runs one", async () => {
  await withRedis(async (_server, connect) => {
    const a = new RedisRefreshLease(await connect(), { instance: "a" });
    const b = new RedisRefreshLease(await connect(), { instance: "b" });
    let running = 0, most = 0, runs = 0;
    const refresh = async () => {
      running++;
      runs++;
      most = Math.max(most, running);
      await new Promise((ok) => setTimeout(ok, 100));
      running--;
      return runs;
    };
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).run("L@example.com", refresh, 5_000)),
    );
    assert.equal(most, 1);
    assert.equal(runs, 2, "one run per instance (callers within an instance share it)");
  });
});

Deno.test("redis refresh lease: a dead holder's lease lapses after its ttl", async () => {
  await withRedis(async (server, connect) => {
    await connect();
    // A holder that died: its lease key stays until it expires.
    assert.match(
      await server.command(["SET", "t:lease:{d@example.com}", "dead:1", "PX", "600"]),
      /^\+OK/,
    );
    const lease = new RedisRefreshLease(await connect(), { instance: "b" });
    const started = Date.now();
    const result = await lease.run("d@example.com", () => Promise.resolve("mine"), 5_000);
    assert.equal(result, "mine");
    assert.ok(Date.now() - started >= 400, "waited for the dead holder's lease");
  });
});

Deno.test("redis permits: cap 3 across two instances, 12 holders -> never more than 3 at once", async () => {
  await withRedis(async (server, connect) => {
    const a = new RedisPermits(await connect(), 3, { instance: "a", leaseMs: 6_000 });
    const b = new RedisPermits(await connect(), 3, { instance: "b", leaseMs: 6_000 });
    let held = 0, most = 0;
    await Promise.all(Array.from({ length: 12 }, async (_, i) => {
      const p = await (i % 2 ? a : b).acquire("P@example.com");
      held++;
      most = Math.max(most, held);
      const count = await server.command(["ZCARD", "t:conn:{p@example.com}"]);
      assert.ok(Number(count.slice(1)) <= 3, count);
      await new Promise((ok) => setTimeout(ok, 30));
      held--;
      p.release();
    }));
    assert.equal(most, 3);
    assert.ok(
      await until(async () =>
        (await server.command(["ZCARD", "t:conn:{p@example.com}"])).startsWith(":0")
      ),
    );
    await a.close();
    await b.close();
  });
});

Deno.test("redis permits: a waiter gives up on abort; a dead instance's leases lapse and free the cap", async () => {
  await withRedis(async (_server, connect) => {
    const deadState = await connect();
    const dead = new RedisPermits(deadState, 1, { instance: "dead", leaseMs: 3_000 });
    const live = new RedisPermits(await connect(), 1, { instance: "live", leaseMs: 3_000 });
    const held = await dead.acquire("q@example.com");
    const stop = new AbortController();
    const waited = live.acquire("q@example.com", stop.signal);
    stop.abort(new Error("gave up"));
    await assert.rejects(waited, /gave up/);
    assert.deepEqual(await live.holders("q@example.com"), { dead: 1 });
    // The holder loses Redis (its process is as good as dead to the others).
    await deadState.close();
    const started = Date.now();
    const p = await live.acquire("q@example.com");
    assert.ok(Date.now() - started >= 1_000, "granted only once the lease lapsed");
    assert.ok(
      await until(() => held.revoked.aborted, 5_000),
      "the cut-off holder revokes its permit",
    );
    p.release();
    await live.close();
    await dead.close();
  });
});

Deno.test("redis down: calls fail within the deadline with RedisUnavailableError; back up without a new client", async () => {
  await withRedis(async (server, connect) => {
    const s = await connect();
    const q = new RedisQuotas(s, "a");
    assert.ok(s.up);
    await server.kill();
    const started = Date.now();
    await assert.rejects(q.reserve("r@example.com", LIMITS, 1), RedisUnavailableError);
    assert.ok(Date.now() - started < 2_000);
    assert.ok(await until(() => !s.up, 5_000));
    await server.restart();
    assert.ok(await until(() => s.up, 10_000));
    assert.ok(isReservation(await q.reserve("r@example.com", LIMITS, 1)));
  });
});

Deno.test("redis: a URL with a password (requirepass) works; a wrong one leaves it down without leaking it", async () => {
  await withRedis(async (server) => {
    const good = new RedisState({ url: server.url, keyPrefix: "t:", timeoutMs: 500 });
    await good.start();
    assert.ok(good.up);
    await good.close();
    const bad = new RedisState({
      url: `redis://default:wrong-secret@127.0.0.1:${server.port}`,
      keyPrefix: "t:",
      timeoutMs: 500,
    });
    await bad.start(1_000);
    assert.ok(!bad.up);
    assert.ok(!bad.reason.includes("wrong-secret"), bad.reason);
    await bad.close();
  }, { password: "s3cret pass" });
});

Deno.test("redis: rediss:// with an ACL user, trusting the server's CA from caFile; without it, down with the reason", async () => {
  await withRedis(async (server) => {
    assert.match(
      await server.command(["ACL", "SETUSER", "relay", "on", ">acl pass", "~t:*", "+@all"]),
      /^\+OK/,
    );
    const url = `rediss://relay:${encodeURIComponent("acl pass")}@127.0.0.1:${server.tlsPort}`;
    const ca = await Deno.readTextFile(`${server.dir}/ca.pem`);
    const s = new RedisState({ url, keyPrefix: "t:", timeoutMs: 1_000, ca });
    await s.start();
    try {
      assert.ok(s.up, s.reason);
      const store = new RedisTokenStore(s);
      const value = { refreshToken: "rt", configFingerprint: "f", updatedAt: "now" };
      assert.deepEqual(await store.compareAndSet("tls@example.com", "absent", value), {
        ok: true,
        version: 0,
      });
      // The ACL allows the prefix only.
      await assert.rejects(s.call("other", ["SET", "elsewhere", "1"]), RedisUnavailableError);
    } finally {
      await s.close();
    }
    const untrusted = new RedisState({ url, keyPrefix: "t:", timeoutMs: 1_000 });
    await untrusted.start(2_000);
    assert.ok(!untrusted.up);
    assert.match(untrusted.reason, /certificate/i);
    assert.ok(!untrusted.reason.includes("acl pass"));
    await untrusted.close();
  }, { tls: true });
});
