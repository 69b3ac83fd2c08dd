/**
 * Shared state on Redis, measured (issue 11): the same closed-loop load (persistent
 * sessions, 10 accounts, 2 KB) against one relay on files (the baseline), one relay on
 * Redis, and two relay processes on one Redis (the load split between them), in one run.
 * Reports delivered msg/s (counted at the sandbox), p99 latency, Redis calls per message
 * (from the relays' metrics, PING excluded) and relay CPU is not measured here.
 *
 *     deno run --allow-net=127.0.0.1,localhost --allow-read --allow-write --allow-run \
 *       --allow-env bench/redis.ts [--seconds 15] [--sessions 20]
 *
 * Not part of `deno task bench` yet: the bench runner's owner can hook it in as a scenario.
 * The sandbox and the load generator run in this process, the relays and redis-server in
 * their own; all share the machine's cores.
 * @module
 */
import { parseArgs } from "node:util";
import { startSandbox } from "../src/sandbox/mod.ts";
import { hashPassword } from "../src/relay/password.ts";
import { BENCH_PASSWORD, BENCH_RECIPIENT, benchAccount } from "./fixtures.ts";
import { buildMessage, runLoad } from "./loadgen.ts";

const ROOT = new URL("../", import.meta.url);
const MAIN = new URL("src/main.ts", ROOT).pathname;
const CONFIG_MOD = new URL("src/config/mod.ts", ROOT).href;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function until(f: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f().catch(() => false))) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

interface Relay {
  smtp: number;
  http: number;
  child: Deno.ChildProcess;
  dir: string;
}

async function startRelay(config: string, redisPort?: number): Promise<Relay> {
  const dir = await Deno.makeTempDir({ prefix: "bench-redis-" });
  await Deno.writeTextFile(`${dir}/accounts.ts`, config);
  const smtp = freePort(), http = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      `--allow-net=127.0.0.1,localhost${redisPort ? `,127.0.0.1:${redisPort}` : ""}`,
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
      "--allow-env=RELAY_*",
      MAIN,
      "--port",
      String(smtp),
      "--metrics-port",
      String(http),
      "--log-level",
      "error",
    ],
    cwd: dir,
    env: redisPort ? { RELAY_REDIS_URL: `redis://127.0.0.1:${redisPort}` } : {},
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  await until(async () => (await fetch(`http://127.0.0.1:${http}/readyz`)).status === 200, 30_000)
    .catch(async () => {
      // Ready needs a token state: one message first is not needed, /healthz is enough.
      await until(async () => (await fetch(`http://127.0.0.1:${http}/healthz`)).ok, 30_000);
    });
  return { smtp, http, child, dir };
}

async function stopRelay(r: Relay): Promise<void> {
  r.child.kill("SIGKILL");
  await r.child.status;
  await Deno.remove(r.dir, { recursive: true });
}

async function redisCalls(r: Relay): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${r.http}/metrics`)).text();
  let n = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("smtp_relay_redis_calls_total{") && !line.includes('op="ping"')) {
      n += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return n;
}

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "15" },
    sessions: { type: "string", default: "20" },
  },
});
const seconds = Number(values.seconds), sessions = Number(values.sessions);
const N = 10;
const sandbox = await startSandbox({ rotateRefreshTokens: false });
const accounts = Array.from({ length: N }, (_, i) => benchAccount(i));
for (const a of accounts) sandbox.addAccount(a);
const hash = await hashPassword(BENCH_PASSWORD);
const provider = JSON.stringify({
  type: "sandbox",
  tokenUrl: sandbox.tokenUrl,
  smtpPort: sandbox.smtpPort,
});
const config = (state: string) =>
  `import { defineConfig, env } from "${CONFIG_MOD}";
export default defineConfig({
  limits: { maxClients: 2000, maxConnectionsPerIp: 2000 },
  stateDir: "./state",
  ${state}
  accounts: ${JSON.stringify(accounts)}.map((a) => ({
    email: a.email, provider: ${provider}, clientId: a.clientId, clientSecret: a.clientSecret,
    refreshToken: a.refreshToken, passwordHash: "${hash}", quota: { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 0 },
  })),
});
void env;
`;

const redisPort = freePort();
const redisDir = await Deno.makeTempDir({ prefix: "bench-redis-server-" });
const redis = new Deno.Command("redis-server", {
  args: [
    "--port",
    String(redisPort),
    "--bind",
    "127.0.0.1",
    "--dir",
    redisDir,
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
  ],
  stdin: "null",
  stdout: "null",
  stderr: "null",
}).spawn();

const message = buildMessage(2048, accounts[0].email, BENCH_RECIPIENT);
const rows: string[] = [];

async function scenario(name: string, relays: Relay[]): Promise<void> {
  const emails = accounts.map((a) => a.email);
  // Warm-up: tokens fetched, pools open.
  await Promise.all(relays.map((r) =>
    runLoad({
      target: {
        host: "127.0.0.1",
        port: r.smtp,
        login: { kind: "plain", password: BENCH_PASSWORD },
      },
      accounts: emails,
      sessions: 10,
      messagesPerSession: 20,
      message,
      recipient: BENCH_RECIPIENT,
      durationMs: 3_000,
      maxMessages: 200,
      replyTimeoutMs: 30_000,
    })
  ));
  const calls0 = (await Promise.all(relays.map(redisCalls))).reduce((a, b) => a + b, 0);
  const delivered0 = sandbox.received.length;
  const started = performance.now();
  const results = await Promise.all(relays.map((r) =>
    runLoad({
      target: {
        host: "127.0.0.1",
        port: r.smtp,
        login: { kind: "plain", password: BENCH_PASSWORD },
      },
      accounts: emails,
      sessions: Math.ceil(sessions / relays.length),
      messagesPerSession: 1_000_000,
      message,
      recipient: BENCH_RECIPIENT,
      durationMs: seconds * 1000,
      maxMessages: 10_000_000,
      replyTimeoutMs: 30_000,
    })
  ));
  const elapsed = (performance.now() - started) / 1000;
  const delivered = sandbox.received.length - delivered0;
  const calls = (await Promise.all(relays.map(redisCalls))).reduce((a, b) => a + b, 0) - calls0;
  const acked = results.reduce((a, r) => a + r.acked, 0);
  const failed = results.reduce(
    (a, r) => a + Object.values(r.failures).reduce((x, y) => x + y, 0),
    0,
  );
  const p99 = Math.max(...results.map((r) => r.latency.p99));
  rows.push(
    `| ${name} | ${(delivered / elapsed).toFixed(0)} | ${acked} | ${failed} | ${p99.toFixed(1)} | ${
      delivered ? (calls / delivered).toFixed(2) : "-"
    } |`,
  );
  sandbox.received.length = 0;
}

try {
  const files = await startRelay(config(""));
  await scenario("1 relay, files", [files]);
  await stopRelay(files);
  const state = `state: { redis: { url: env("RELAY_REDIS_URL"), keyPrefix: "bench:" } },`;
  const one = await startRelay(config(state), redisPort);
  await scenario("1 relay, Redis", [one]);
  await stopRelay(one);
  const two = await Promise.all([0, 1].map(() => startRelay(config(state), redisPort)));
  await scenario("2 relays, Redis", two);
  await Promise.all(two.map(stopRelay));
  console.log(
    `${sessions} persistent sessions, ${N} accounts, 2 KB, ${seconds} s each (${
      new Date().toISOString()
    })\n`,
  );
  console.log("| setup | delivered msg/s | acked | failed | p99 ms | Redis calls/msg |");
  console.log("| ----- | --------------- | ----- | ------ | ------ | --------------- |");
  for (const r of rows) console.log(r);
} finally {
  redis.kill("SIGKILL");
  await redis.status;
  await Deno.remove(redisDir, { recursive: true });
  await sandbox.close();
}
