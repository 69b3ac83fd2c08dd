/**
 * What one large message costs the relay in RSS, per upstream transport: SMTP (the body
 * streams upstream as it arrives, held once for a retry) and the Gmail API (an HTTP request
 * needs the whole message: media upload of the raw bytes above its JSON limit) and Graph
 * (refuses over 4 MB of base64: shown refused). For each transport one relay process
 * (started as the benchmark starts its relays, with the relay's V8 flags and
 * `--expose-gc`), one account, warmed up with a small message; then `--runs` times: a full
 * GC, RSS, one message of `--size` bytes over one AUTH PLAIN session, and the relay's peak
 * RSS meanwhile (sampled every 50 ms). Printed: growth (peak − RSS before) / size.
 *
 *     deno task bench:big-message                       # 25 MiB, 3 runs, smtp and gmail-api
 *     deno task bench:big-message --size 5242880 --runs 1 --transport smtp
 *     deno task bench:big-message --env MALLOC_MMAP_THRESHOLD_=131072
 * @module
 */
import { parseArgs } from "node:util";
import { Child } from "../child.ts";
import { cpuS, lightHash, relayTarget, STATE_ROOT } from "../run.ts";
import { buildMessage, runLoad } from "../loadgen.ts";
import { BENCH_PASSWORD, BENCH_RECIPIENT, benchAccount } from "../fixtures.ts";
import { runtimeEnv, runtimeFlags } from "../../src/runtime_flags.ts";

const MB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    size: { type: "string", default: String(25 * MB) },
    runs: { type: "string", default: "3" },
    transport: { type: "string", multiple: true },
    env: { type: "string", multiple: true },
  },
});
const size = Number(values.size);
const runs = Number(values.runs);
type Kind = "smtp" | "gmail-api" | "graph";
const kinds = (values.transport ?? ["smtp", "gmail-api"]) as Kind[];
// The relay's environment (src/runtime_flags.ts), with --env NAME=VALUE over it.
const env = runtimeEnv();
for (const kv of values.env ?? []) {
  const at = kv.indexOf("=");
  env[kv.slice(0, at)] = kv.slice(at + 1);
}

const sandbox = Child.spawn("sandbox", [
  "run",
  "--allow-net=127.0.0.1,localhost",
  "bench/https_sandbox_process.ts",
], "null");
const children = [sandbox];
const f = (x: number, d = 0) => x.toFixed(d);
try {
  const info = await sandbox.request<{ tokenUrl: string; smtpPort: number; apiUrl: string }>(
    "start",
    { accounts: 1 },
  );
  const passwordHash = await lightHash(BENCH_PASSWORD);
  const email = benchAccount(0).email;
  console.log(
    `Deno ${Deno.version.deno}; one ${f(size / MB, 1)} MiB message per run, ${runs} runs per ` +
      `transport; relay flags ${runtimeFlags().join(" ") || "(none)"}, environment ` +
      Object.entries(env).map(([k, v]) => `${k}=${v}`).join(" "),
  );
  for (const kind of kinds) {
    const relay = Child.spawn(
      `relay ${kind}`,
      [
        "run",
        "--allow-net=127.0.0.1,localhost",
        `--allow-read=${STATE_ROOT}`,
        `--allow-write=${STATE_ROOT}`,
        "--v8-flags=--expose-gc",
        ...runtimeFlags(),
        "bench/relay_process.ts",
      ],
      "null",
      env,
    );
    children.push(relay);
    const stateDir = `${STATE_ROOT}/big-${kind}-${Date.now()}`;
    const a = benchAccount(0);
    const config = {
      smtp: { host: "127.0.0.1", port: 0 },
      http: { host: "127.0.0.1", port: 0 },
      stateDir,
      accounts: [{
        email,
        provider: { type: "sandbox", tokenUrl: info.tokenUrl, smtpPort: info.smtpPort },
        clientId: a.clientId,
        clientSecret: a.clientSecret,
        refreshToken: a.refreshToken,
        passwordHash,
        ...(kind === "smtp" ? {} : { transport: { type: kind, apiUrl: info.apiUrl } }),
      }],
    };
    const ports = await relay.request<{ smtpPort: number }>("start", {
      config,
      logLevel: "warning",
    }, 60_000);
    const target = relayTarget({ smtpPort: ports.smtpPort } as Parameters<typeof relayTarget>[0]);
    const send = (bytes: number) =>
      runLoad({
        target,
        accounts: [email],
        sessions: 1,
        messagesPerSession: 1,
        message: buildMessage(bytes, email, BENCH_RECIPIENT),
        recipient: BENCH_RECIPIENT,
        durationMs: 120_000,
        maxMessages: 1,
        replyTimeoutMs: 120_000,
      });
    await send(2048); // warm-up: login, token, connection
    const growth: number[] = [];
    const lines: string[] = [];
    for (let run = 0; run < runs; run++) {
      await relay.request("gc");
      await new Promise((ok) => setTimeout(ok, 300));
      await relay.request("mark");
      const before = await relay.stats();
      const route = kind === "smtp" ? "smtp" : kind === "graph" ? "graph" : "gmail";
      const d0 = (await sandbox.request<Record<string, number>>("stats"))[route];
      const result = await send(size);
      const after = await relay.stats();
      const d1 = (await sandbox.request<Record<string, number>>("stats"))[route];
      const g = (after.peakRssBytes - before.rssBytes) / size;
      growth.push(g);
      const failed = Object.entries(result.failures).filter(([, n]) => n > 0);
      lines.push(
        `${f(before.rssBytes / MB)} → ${f(after.peakRssBytes / MB)} MB (${f(g, 2)}×; ` +
          `${d1 - d0} delivered${
            failed.length ? `, failed: ${result.failureSamples[0] ?? failed}` : ""
          }; relay CPU ${f(cpuS(after) - cpuS(before), 2)} s)`,
      );
    }
    growth.sort((x, y) => x - y);
    console.log(
      `${kind.padEnd(9)} median ${f(growth[Math.floor(growth.length / 2)], 2)}× size; ` +
        lines.join("; "),
    );
    await relay.stop();
    children.splice(children.indexOf(relay), 1);
    await Deno.remove(stateDir, { recursive: true }).catch(() => {});
  }
} finally {
  for (const c of children.reverse()) await c.stop();
}
