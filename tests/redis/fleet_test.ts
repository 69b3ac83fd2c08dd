/**
 * Two relay processes sharing state through a real redis-server, in front of the
 * sandbox provider: one refresh per account across both, the connection cap across
 * both, the per-minute quota across both, refresh-token rotation across both (and a
 * restart of both), and Redis killed under load (no false 250, no double delivery,
 * delivery resumes when Redis is back).
 */
import assert from "node:assert/strict";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import {
  freePort,
  makeAccounts,
  metricValue,
  startTaskArgs,
  type TestAccount,
  until,
} from "../harness.ts";
import { RedisServer } from "./redis_server.ts";
import { deliveredCount, FleetRelay, redisConfig, send, sendInOneSession } from "./fleet.ts";

interface Fleet {
  sandbox: Sandbox;
  redis: RedisServer;
  account: TestAccount;
  relays: FleetRelay[];
}

async function fleet(
  fn: (f: Fleet) => Promise<void>,
  options: { accountExtra?: string; accessTokenTtlSeconds?: number } = {},
): Promise<void> {
  const sandbox = await startSandbox({ accessTokenTtlSeconds: options.accessTokenTtlSeconds });
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const redis = await RedisServer.start();
  const relays: FleetRelay[] = [];
  try {
    const config = await redisConfig(sandbox, [account], { accountExtra: options.accountExtra });
    relays.push(
      ...await Promise.all([0, 1].map(() => FleetRelay.start(sandbox, redis, config))),
    );
    for (const r of relays) await r.waitFor("is reachable: shared state in use");
    await fn({ sandbox, redis, account, relays });
  } finally {
    await Promise.all(relays.map((r) => r.close()));
    await redis.close();
    await sandbox.close();
  }
}

/** Sends `n` messages at once, alternating between the relays; replies in order. */
function burst(f: Fleet, n: number, tag: string): Promise<string[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) => send(f.relays[i % 2].ports.smtp, f.account, `${tag}-${i}`)),
  );
}

Deno.test("fleet: 50 concurrent messages on one cold account over two relays -> exactly one token refresh", async () => {
  await fleet(async (f) => {
    const replies = await burst(f, 50, "cold");
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(f.sandbox.received.length, 50);
    assert.equal(f.sandbox.stats.token.refreshesByEmail.get(f.account.email.toLowerCase()), 1);
    assert.equal(f.sandbox.stats.token.refreshes, 1);
    const m = await f.relays[0].http("/metrics");
    assert.ok(
      metricValue(m.body, 'smtp_relay_redis_calls_total{op="quota_reserve",result="ok"}') > 0,
    );
    assert.equal(metricValue(m.body, "smtp_relay_redis_up"), 1);
  });
});

Deno.test("fleet: a cap of 3 connections across two relays -> the sandbox never sees a 4th", async () => {
  await fleet(async (f) => {
    const replies = await burst(f, 60, "cap");
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(f.sandbox.received.length, 60);
    assert.ok(f.sandbox.smtp.stats.peakOpen <= 3, `peak ${f.sandbox.smtp.stats.peakOpen}`);
    assert.ok(f.sandbox.smtp.stats.peakOpen >= 2, "both relays held connections at once");
    // The operator sees the fleet's connections (pooled ones stay open while idle).
    const view = JSON.parse((await f.relays[0].http("/accounts")).body);
    const fleet: Record<string, number> = view[0].connections.fleet;
    const total = Object.values(fleet).reduce((a, b) => a + b, 0);
    assert.ok(total >= 1 && total <= 3, JSON.stringify(fleet));
  }, { accountExtra: "maxConnections: 3," });
});

Deno.test("fleet: messagesPerMinute 10 over two relays -> exactly 10 accepted, the rest 451 with the time", async () => {
  await fleet(async (f) => {
    const replies = await burst(f, 25, "quota");
    const ok = replies.filter((r) => r.startsWith("250 "));
    const deferred = replies.filter((r) => r.startsWith("451 4.7.0 "));
    assert.equal(ok.length, 10);
    assert.equal(deferred.length, 15, replies.join("\n"));
    for (const r of deferred) {
      const m = r.match(
        /^451 4\.7\.0 Quota of 10 messages per minute for user0@example\.com reached, retry after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$/,
      );
      assert.ok(m, r);
      const at = Date.parse(m[1]);
      assert.ok(at > Date.now() - 1_000 && at <= Date.now() + 61_000, r);
    }
    assert.equal(f.sandbox.received.length, 10);
  }, { accountExtra: "quota: { messagesPerMinute: 10 }," });
});

Deno.test("fleet: refresh tokens rotating under load on two relays -> the newest stored, none lost, both restarted still send", async () => {
  await fleet(async (f) => {
    const email = f.account.email.toLowerCase();
    // 3 s access tokens: used for 1.5 s each, so the waves below need several refreshes.
    for (let wave = 0; wave < 6; wave++) {
      const replies = await burst(f, 10, `rot-${wave}`);
      assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), [], `wave ${wave}`);
      await new Promise((ok) => setTimeout(ok, 700));
    }
    const refreshes = f.sandbox.stats.token.refreshesByEmail.get(email) ?? 0;
    assert.ok(refreshes >= 3, `${refreshes} refreshes`);
    const stored = await f.redis.command(["HGET", `relay:token:{${email}}`, "value"]);
    const current = f.sandbox.tokens.currentRefreshToken(email)!;
    assert.ok(
      stored.includes(JSON.stringify(current).slice(1, -1)),
      "Redis holds the newest token",
    );
    for (const r of f.relays) await r.kill();
    for (const r of f.relays) await r.restart();
    // The access token may still be cached in Redis: wait it out so a refresh must happen.
    await new Promise((ok) => setTimeout(ok, 3_000));
    const before = f.sandbox.stats.token.refreshesByEmail.get(email) ?? 0;
    const replies = await burst(f, 10, "after-restart");
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.ok((f.sandbox.stats.token.refreshesByEmail.get(email) ?? 0) > before);
  }, { accessTokenTtlSeconds: 3 });
});

Deno.test("fleet: Redis killed under load -> every message 250 and delivered once, or 4xx and not delivered; back -> delivery resumes", async () => {
  await fleet(async (f) => {
    const results: { subject: string; reply: string }[] = [];
    let n = 0;
    let stop = false;
    const worker = async (relay: FleetRelay) => {
      while (!stop) {
        const subject = `kill-${n++}`;
        results.push({ subject, reply: await send(relay.ports.smtp, f.account, subject) });
      }
    };
    const workers = [0, 1, 0, 1, 0, 1].map((i) => worker(f.relays[i]));
    assert.ok(
      await until(() => results.filter((r) => r.reply.startsWith("250 ")).length >= 20, 60_000),
    );
    await f.redis.kill();
    assert.ok(
      await until(() => results.filter((r) => r.reply.startsWith("451 4.3.0")).length >= 6, 30_000),
    );
    const ready = await f.relays[0].http("/readyz");
    assert.equal(ready.status, 503);
    assert.equal(JSON.parse(ready.body).sharedState.up, false);
    await f.redis.restart();
    const atRestart = results.length;
    assert.ok(
      await until(
        () => results.slice(atRestart).filter((r) => r.reply.startsWith("250 ")).length >= 20,
        60_000,
      ),
      "delivery resumes",
    );
    stop = true;
    await Promise.all(workers);
    for (const r of results) {
      const delivered = deliveredCount(f.sandbox, r.subject);
      if (r.reply.startsWith("250 ")) assert.equal(delivered, 1, `${r.subject}: ${r.reply}`);
      else {
        assert.match(r.reply, /^4\d\d /, `${r.subject}: ${r.reply}`);
        assert.equal(delivered, 0, `${r.subject}: ${r.reply}`);
      }
    }
    assert.ok((await f.relays[1].http("/readyz")).status === 200);
    for (const r of f.relays) await r.waitFor("is unavailable");
  });
});

Deno.test("fleet: a stalled Redis (SIGSTOP) -> 451 4.3.0 within the deadline, /readyz 503, nothing sent; resumed -> 250 again", async () => {
  await fleet(async (f) => {
    assert.match(await send(f.relays[0].ports.smtp, f.account, "warm"), /^250 /);
    f.redis.stall();
    try {
      const started = Date.now();
      const replies = await burst(f, 6, "stalled");
      assert.deepEqual(
        replies,
        Array(6).fill("451 4.3.0 Shared state unavailable, try again later"),
      );
      assert.ok(Date.now() - started < 15_000);
      for (const r of f.relays) {
        assert.ok(await until(async () => (await r.http("/readyz")).status === 503, 15_000));
      }
      const metrics = (await f.relays[0].http("/metrics")).body;
      assert.ok(
        metricValue(metrics, 'smtp_relay_redis_calls_total{op="quota_reserve",result="timeout"}') >=
          1,
      );
      assert.equal(metricValue(metrics, "smtp_relay_redis_up"), 0);
      assert.ok(
        metricValue(metrics, 'smtp_relay_messages_total{result="state_unavailable"}') >= 1,
      );
    } finally {
      f.redis.resume();
    }
    for (const r of f.relays) {
      assert.ok(await until(async () => (await r.http("/readyz")).status === 200, 15_000));
    }
    const after = await burst(f, 4, "resumed");
    assert.deepEqual(after.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(f.sandbox.received.length, 5, "only the warm-up and the 4 after it");
    for (const r of f.relays) await r.waitFor("is unavailable");
  });
});

/** Redis calls so far per operation, but the health PING. */
function redisCalls(metrics: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const line of metrics.split("\n")) {
    const m = line.match(/^smtp_relay_redis_calls_total\{op="([a-z_]+)",result="[a-z]+"\} (\d+)/);
    if (!m || m[1] === "ping") continue;
    calls.set(m[1], (calls.get(m[1]) ?? 0) + Number(m[2]));
  }
  return calls;
}

Deno.test("fleet: the hot path costs at most 2 Redis round trips per message (measured: 1)", async () => {
  await fleet(async (f) => {
    const relay = f.relays[0];
    assert.match(await send(relay.ports.smtp, f.account, "warm"), /^250 /);
    const before = redisCalls((await relay.http("/metrics")).body);
    const subjects = Array.from({ length: 20 }, (_, i) => `hot-${i}`);
    const replies = await sendInOneSession(relay.ports.smtp, f.account, subjects);
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    const after = redisCalls((await relay.http("/metrics")).body);
    const delta = new Map([...after].map(([op, n]) => [op, n - (before.get(op) ?? 0)]));
    const total = [...delta.values()].reduce((a, b) => a + b, 0);
    const shown = JSON.stringify(Object.fromEntries(delta));
    assert.equal(delta.get("quota_reserve"), 20, shown);
    // The rest: one lock check for the session's AUTH, lease renewals on a timer.
    assert.ok(total <= 40, `${total} Redis calls for 20 messages: ${shown}`);
    console.log(`Redis calls for 20 messages in one session: ${total} ${shown}`);
    assert.ok((delta.get("auth_lock") ?? 0) <= 1, shown);
    assert.equal(delta.get("access_get") ?? 0, 0, shown);
    assert.equal(delta.get("conn_acquire") ?? 0, 0, shown);
  });
});

Deno.test("fleet: a relay started while Redis is down comes up not ready (451 4.3.0), and sends once Redis starts, without a restart", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const redis = await RedisServer.start();
  await redis.kill();
  let relay: FleetRelay | undefined;
  try {
    relay = await FleetRelay.start(sandbox, redis, await redisConfig(sandbox, [account]));
    await relay.waitFor("is unavailable");
    const ready = await relay.http("/readyz");
    assert.equal(ready.status, 503);
    assert.equal(JSON.parse(ready.body).sharedState.up, false);
    assert.equal(
      await send(relay.ports.smtp, account, "early"),
      "451 4.3.0 Shared state unavailable, try again later",
    );
    await redis.restart();
    const r = relay;
    assert.ok(await until(async () => (await r.http("/readyz")).status === 200, 20_000));
    assert.match(await send(relay.ports.smtp, account, "later"), /^250 /);
    assert.equal(deliveredCount(sandbox, "early"), 0);
    assert.equal(deliveredCount(sandbox, "later"), 1);
  } finally {
    await relay?.close();
    await redis.close();
    await sandbox.close();
  }
});

Deno.test("fleet: cap 1, an idle pooled connection on one relay does not starve the other (it lets it go at its next renewal)", async () => {
  await fleet(async (f) => {
    // Relay 0's connection stays pooled and idle (the pool keeps idle ones for 60 s).
    assert.match(await send(f.relays[0].ports.smtp, f.account, "first"), /^250 /);
    assert.equal(f.sandbox.smtp.stats.open, 1);
    const started = Date.now();
    assert.match(await send(f.relays[1].ports.smtp, f.account, "second"), /^250 /);
    const waited = Date.now() - started;
    assert.ok(waited < 30_000, `waited ${waited} ms`);
    assert.ok(f.sandbox.smtp.stats.peakOpen <= 1, `peak ${f.sandbox.smtp.stats.peakOpen}`);
    assert.equal(deliveredCount(f.sandbox, "second"), 1);
  }, { accountExtra: "maxConnections: 1," });
});

Deno.test("fleet: the start task allows the Redis address; a relay run by hand without it does not start, naming the flag", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const dir = await Deno.makeTempDir({ prefix: "relay-noperm-" });
  try {
    const port = freePort();
    await Deno.writeTextFile(`${dir}/accounts.ts`, await redisConfig(sandbox, [account]));
    const ports = {
      smtp: freePort(),
      metrics: freePort(),
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const env = { RELAY_REDIS_URL: `redis://127.0.0.2:${port}` };
    const taskArgs = await startTaskArgs(ports);
    const launcher = taskArgs.find((w) => w.endsWith("src/launch.ts"))!;
    const printed = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-run", launcher, "permissions", "--format", "json"],
      cwd: dir,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(printed.code, 0, new TextDecoder().decode(printed.stderr));
    const set = JSON.parse(new TextDecoder().decode(printed.stdout));
    assert.ok(set.net.includes(`127.0.0.2:${port}`), set.net.join(","));
    const main = launcher.replace(/launch\.ts$/, "main.ts");
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        `--allow-net=127.0.0.1,localhost`,
        `--allow-read=${dir}`,
        `--allow-write=${dir}`,
        "--allow-env=RELAY_*",
        main,
        "--port",
        String(ports.smtp),
        "--metrics-port",
        String(ports.metrics),
        "--log-format",
        "json",
      ],
      cwd: dir,
      env,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(
      stderr.includes(
        `cannot start: state.redis.url: Redis at 127.0.0.2:${port} needs --allow-net=127.0.0.2:${port} (not granted)`,
      ),
      stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
    await sandbox.close();
  }
});
