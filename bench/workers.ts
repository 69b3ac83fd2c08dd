/**
 * Scenario 9 `workers` (issue 11, part 7): the same closed-loop load (persistent sessions,
 * 2 KB) against one relay on files (the baseline), one relay on Redis and two workers on
 * Redis (`--workers 2`, one process; once with the accounts' cap, once with a cap of 10),
 * in the same run, runs interleaved. Per setup:
 * delivered msg/s (counted at the sandbox), relay CPU per message (all threads), Redis
 * CPU per message (`INFO cpu` used_cpu_user + used_cpu_sys), Redis commands per message
 * (`INFO stats` total_commands_processed), Redis round trips per message (the relay's
 * `smtp_relay_redis_calls_total`, health-check PINGs excluded) and p99. A real
 * `redis-server` (Debian's) on a free loopback port; the sandbox, the load generator,
 * the relay and Redis all share the machine's cores, so their CPU is reported too.
 * @module
 */
import { Child } from "./child.ts";
import { fmt, median, type ScenarioReport, type Side } from "./report.ts";
import {
  type Ctx,
  measure,
  MESSAGE_SIZE,
  progress,
  relayConfig,
  type RelayProc,
  row,
  scrape,
  type Shape,
  sleep,
  STATE_ROOT,
  stopRelay,
  verdict,
  warmRelay,
} from "./run.ts";
import { runtimeEnv, runtimeFlags } from "../src/runtime_flags.ts";

/** Accounts of the load (a fleet's hot path: tokens cached, pools warm). */
const ACCOUNTS = 10;

/** A running redis-server of the benchmark. */
interface Redis {
  readonly port: number;
  readonly dir: string;
  readonly child: Deno.ChildProcess;
}

/** CPU and commands of Redis so far. */
interface RedisCounters {
  readonly cpuS: number;
  readonly commands: number;
}

/** One setup's extra figures of one run. */
interface RedisRun {
  /** Redis CPU per delivered message, µs. */
  readonly redisCpuUsPerMsg: number;
  /** Redis commands per delivered message. */
  readonly commandsPerMsg: number;
  /** Relay → Redis calls (round trips) per delivered message, PING excluded. */
  readonly callsPerMsg: number;
  /** Redis CPU seconds in the run. */
  readonly redisCpuS: number;
}

/** Upstream connections the sandbox accepted per 1,000 delivered messages. */
async function sandboxConnections(ctx: Ctx): Promise<number> {
  return (await ctx.sandbox.request<{ connections: number }>("stats")).connections;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function startRedis(): Promise<Redis> {
  const port = freePort();
  const dir = `${STATE_ROOT}/redis-${Date.now()}`;
  await Deno.mkdir(dir, { recursive: true });
  const child = new Deno.Command("redis-server", {
    // As docs/redis.md asks of production: append-only file (fsync every second here).
    args: ["--port", String(port), "--bind", "127.0.0.1", "--dir", Deno.realPathSync(dir)]
      .concat(["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
      .concat(["--daemonize", "no", "--loglevel", "warning"]),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const redis = { port, dir, child };
  for (let i = 0; i < 100; i++) {
    try {
      await info(redis, "server");
      return redis;
    } catch {
      await sleep(100);
    }
  }
  throw new Error("redis-server did not answer within 10 s");
}

async function stopRedis(redis: Redis): Promise<void> {
  try {
    redis.child.kill("SIGKILL");
  } catch {
    // already gone
  }
  await redis.child.status;
  await Deno.remove(redis.dir, { recursive: true }).catch(() => {});
}

/** `INFO <section>` over RESP on a connection of its own; the fields. */
async function info(redis: Redis, section: string): Promise<Map<string, string>> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: redis.port });
  try {
    const command = `*2\r\n$4\r\nINFO\r\n$${section.length}\r\n${section}\r\n`;
    await conn.write(new TextEncoder().encode(command));
    const decoder = new TextDecoder();
    let text = "";
    const buffer = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("redis closed the connection");
      text += decoder.decode(buffer.subarray(0, n), { stream: true });
      const nl = text.indexOf("\r\n");
      if (nl < 0 || text[0] !== "$") continue;
      const length = Number(text.slice(1, nl));
      // Byte length: INFO is ASCII, so characters are bytes.
      if (text.length >= nl + 2 + length) {
        const fields = new Map<string, string>();
        for (const line of text.slice(nl + 2, nl + 2 + length).split("\r\n")) {
          const at = line.indexOf(":");
          if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1));
        }
        return fields;
      }
    }
  } finally {
    conn.close();
  }
}

async function redisCounters(redis: Redis): Promise<RedisCounters> {
  const [cpu, stats] = await Promise.all([info(redis, "cpu"), info(redis, "stats")]);
  return {
    cpuS: Number(cpu.get("used_cpu_user")) + Number(cpu.get("used_cpu_sys")),
    commands: Number(stats.get("total_commands_processed")),
  };
}

/** The relay's calls to Redis so far (PING, the health check, excluded). */
async function redisCalls(relay: RelayProc): Promise<number> {
  let n = 0;
  for (const [series, value] of await scrape(relay)) {
    if (series.startsWith("smtp_relay_redis_calls_total{") && !series.includes('op="ping"')) {
      n += value;
    }
  }
  return n;
}

/** Starts a relay child with `workers` workers, on Redis when `redis` is given. */
async function startSetup(
  ctx: Ctx,
  name: string,
  workers: number,
  redis?: { port: number; prefix: string },
  maxConnections?: number,
): Promise<RelayProc> {
  const stateDir = `${STATE_ROOT}/${name}-${Date.now()}`;
  const child = Child.spawn(
    `relay ${name}`,
    [
      "run",
      "--allow-net=127.0.0.1,localhost",
      // A worker loads the relay's modules itself (Deno checks those loads as reads).
      `--allow-read=${STATE_ROOT},src/`,
      `--allow-write=${STATE_ROOT}`,
      // The relay's own V8 flags and environment, as the launcher starts it.
      ...runtimeFlags(),
      "bench/workers_relay_process.ts",
    ],
    ctx.o.verbose ? "inherit" : "null",
    runtimeEnv(),
  );
  ctx.children.add(child);
  const config = relayConfig(ctx, {
    stateDir,
    accounts: ACCOUNTS,
    maxConnections,
    ...(redis
      ? { state: { redis: { url: `redis://127.0.0.1:${redis.port}`, keyPrefix: redis.prefix } } }
      : {}),
  });
  try {
    const ports = await child.request<{ smtpPort: number; httpPort: number }>(
      "start",
      { config, workers, logLevel: ctx.o.relayLogLevel },
      60_000,
    );
    const relay = { name, child, accounts: ACCOUNTS, stateDir, ...ports };
    ctx.relays.add(relay);
    return relay;
  } catch (err) {
    ctx.children.delete(child);
    await child.stop(5000);
    throw err;
  }
}

/** One measured run of `relay`, with Redis's CPU and commands around it. */
async function measureWithRedis(
  ctx: Ctx,
  relay: RelayProc,
  redis: Redis,
  shape: Shape,
  onRedis: boolean,
): Promise<{ side: Side; redis?: RedisRun; connectsPerK: number }> {
  const [r0, c0, u0] = await Promise.all([
    redisCounters(redis),
    onRedis ? redisCalls(relay) : 0,
    sandboxConnections(ctx),
  ]);
  const side = await measure(ctx, relay, shape);
  const [r1, c1, u1] = await Promise.all([
    redisCounters(redis),
    onRedis ? redisCalls(relay) : 0,
    sandboxConnections(ctx),
  ]);
  const d = Math.max(1, side.delivered);
  const connectsPerK = (1000 * (u1 - u0)) / d;
  progress(`  ${relay.name}: ${fmt(connectsPerK, 1)} upstream connections per 1,000 messages`);
  if (!onRedis) return { side, connectsPerK };
  const run: RedisRun = {
    redisCpuS: r1.cpuS - r0.cpuS,
    redisCpuUsPerMsg: ((r1.cpuS - r0.cpuS) * 1e6) / d,
    // Two INFO calls per snapshot are not the relay's.
    commandsPerMsg: (r1.commands - r0.commands - 2) / d,
    callsPerMsg: (c1 - c0) / d,
  };
  progress(
    `  ${relay.name}: Redis CPU ${fmt(run.redisCpuUsPerMsg, 1)} µs/msg, ` +
      `${fmt(run.commandsPerMsg, 2)} commands/msg, ${fmt(run.callsPerMsg, 2)} round trips/msg`,
  );
  return { side, redis: run, connectsPerK };
}

/** Scenario 9: 1 relay on files, 1 on Redis, 2 workers on Redis. */
export async function workersScenario(ctx: Ctx, reports: ScenarioReport[]): Promise<void> {
  const { o, scale } = ctx;
  progress("workers: starting redis-server and four relays (files, Redis, 2 workers on Redis ×2)");
  const redis = await startRedis();
  const setups: { label: string; relay: RelayProc; onRedis: boolean }[] = [];
  try {
    setups.push(
      { label: "9 1 worker, files", relay: await startSetup(ctx, "W1f", 1), onRedis: false },
      {
        label: "9 1 worker, Redis",
        relay: await startSetup(ctx, "W1r", 1, { port: redis.port, prefix: "w1:" }),
        onRedis: true,
      },
      {
        label: "9 2 workers, Redis",
        relay: await startSetup(ctx, "W2r", 2, { port: redis.port, prefix: "w2:" }),
        onRedis: true,
      },
      {
        // Both workers busy on every account share its cap (the sandbox's 5): each finds it
        // full and makes the other QUIT idle connections. A cap of 10 shows the workers
        // without that contention.
        label: "9 2 workers, Redis, cap 10",
        relay: await startSetup(ctx, "W2c", 2, { port: redis.port, prefix: "w2c:" }, 10),
        onRedis: true,
      },
    );
    for (const s of setups) await warmRelay(ctx, s.relay);
    const shape: Shape = {
      accounts: ACCOUNTS,
      sessions: scale.sessions,
      messagesPerSession: scale.persistentM,
      size: MESSAGE_SIZE,
      durationMs: o.durationMs,
    };
    const sides = setups.map(() => [] as Side[]);
    const extra = setups.map(() => [] as RedisRun[]);
    const connects = setups.map(() => [] as number[]);
    for (let run = 0; run < o.runs; run++) {
      progress(`9 workers: run ${run + 1}/${o.runs}`);
      // The machine's speed drifts: every run measures all setups, in a rotating order.
      for (let k = 0; k < setups.length; k++) {
        const i = (k + run) % setups.length;
        const s = setups[i];
        const r = await measureWithRedis(ctx, s.relay, redis, shape, s.onRedis);
        sides[i].push(r.side);
        connects[i].push(r.connectsPerK);
        if (r.redis) extra[i].push(r.redis);
      }
    }
    const rows = setups.map((s, i) => row(s.label, sides[i]));
    const ratios = sides[2].map((s, i) => s.deliveredPerS / sides[1][i].deliveredPerS);
    const ratio = median(ratios);
    const calls = Math.max(...[1, 2, 3].map((i) => median(extra[i].map((e) => e.callsPerMsg))));
    const ratiosCap = sides[3].map((s, i) => s.deliveredPerS / sides[1][i].deliveredPerS);
    const m = (i: number, f: (e: RedisRun) => number) => median(extra[i].map(f));
    /** Cores busy during a run: relay + sandbox + load generator (+ Redis). */
    const busy = (i: number) =>
      median(
        sides[i].map((s, run) =>
          ((s.relayCpuS ?? 0) + s.sandboxCpuS + s.generatorCpuS + (extra[i][run]?.redisCpuS ?? 0)) /
          s.elapsedS
        ),
      );
    const cpuShare = (i: number) =>
      median(sides[i].map((s) => (s.sandboxCpuS + s.generatorCpuS) / s.elapsedS));
    reports.push({
      id: 9,
      key: "workers",
      title: "Workers on Redis (--workers 2) vs one relay",
      shape: `${scale.sessions} persistent sessions over ${ACCOUNTS} accounts, closed loop, ` +
        `${fmt(MESSAGE_SIZE)}-byte messages; the four setups measured in every run, order ` +
        "rotated; redis-server (AOF, fsync every second) on loopback",
      rows,
      facts: [
        ...[1, 2, 3].map((i): [string, string] => [
          `${setups[i].label.slice(2)}: Redis per message`,
          `${fmt(m(i, (e) => e.callsPerMsg), 2)} round trips, ${
            fmt(m(i, (e) => e.commandsPerMsg), 2)
          } commands, ${fmt(m(i, (e) => e.redisCpuUsPerMsg), 1)} µs Redis CPU`,
        ]),
        ...setups.map((s, i): [string, string] => [
          `${s.label.slice(2)}: cores busy (relay + sandbox + generator + Redis)`,
          `${fmt(busy(i), 2)} of ${navigator.hardwareConcurrency}; sandbox + generator ` +
          `${fmt(cpuShare(i), 2)} cores`,
        ]),
        ...setups.map((s, i): [string, string] => [
          `${s.label.slice(2)}: upstream connections opened per 1,000 messages`,
          fmt(median(connects[i]), 1),
        ]),
        ["2 workers / 1 worker on Redis, per run", ratios.map((r) => fmt(r, 2)).join(", ")],
        [
          "2 workers with cap 10 / 1 worker on Redis, per run",
          ratiosCap.map((r) => fmt(r, 2)).join(", "),
        ],
      ],
      verdicts: [
        verdict(
          ctx,
          "Redis round trips per message on the hot path ≤ 2",
          `${fmt(calls, 2)} (the largest of the Redis setups)`,
          calls <= 2,
        ),
        verdict(
          ctx,
          "2 workers deliver ≥ 1.3× one worker (Redis, same run)",
          `${fmt(ratio, 2)}× (same cap); ${fmt(median(ratiosCap), 2)}× with cap 10`,
          ratio >= 1.3,
        ),
      ],
      notes: [
        "The load generator and the sandbox provider run on the same cores as the relay and " +
        "Redis: the cores-busy lines show how much of the machine is left for a second worker.",
      ],
      runs: sides.map((s, i) => ({ setup: setups[i].label, sides: s, redis: extra[i] })),
    });
  } finally {
    for (const s of setups) await stopRelay(ctx, s.relay);
    await stopRedis(redis);
  }
}
