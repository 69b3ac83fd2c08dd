/**
 * Issue 13, item 7: the HTTPS transports next to SMTP against the sandbox. For each
 * transport (smtp, graph, gmail-api) one relay process, the same closed-loop load
 * (persistent AUTH PLAIN sessions, 2 KB messages, several accounts), and per transport:
 * messages delivered per second (counted by the sandbox), relay CPU per message, and the
 * client's latency from the end of DATA to the reply (p50, p99).
 *
 *     deno run --allow-net=127.0.0.1,localhost --allow-read=bench/ --allow-write=bench/ \
 *       --allow-run=deno bench/https.ts [--seconds 10] [--sessions 40] [--accounts 10]
 *
 * Prints a Markdown table; nothing is written. All traffic stays on loopback.
 * @module
 */
import { parseArgs } from "node:util";
import { Child } from "./child.ts";
import { cpuS, lightHash, relayTarget, STATE_ROOT } from "./run.ts";
import { buildMessage, runLoad } from "./loadgen.ts";
import { BENCH_PASSWORD, BENCH_RECIPIENT, benchAccount } from "./fixtures.ts";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    sessions: { type: "string", default: "40" },
    accounts: { type: "string", default: "10" },
    size: { type: "string", default: "2048" },
  },
});
const seconds = Number(values.seconds);
const sessions = Number(values.sessions);
const accountCount = Number(values.accounts);
const size = Number(values.size);

type Kind = "smtp" | "graph" | "gmail-api";
const KINDS: Kind[] = ["smtp", "graph", "gmail-api"];

const sandbox = Child.spawn("sandbox", [
  "run",
  "--allow-net=127.0.0.1,localhost",
  "bench/https_sandbox_process.ts",
], "null");
const children = [sandbox];
try {
  const info = await sandbox.request<{ tokenUrl: string; smtpPort: number; apiUrl: string }>(
    "start",
    { accounts: accountCount },
  );
  const passwordHash = await lightHash(BENCH_PASSWORD);
  const emails = Array.from({ length: accountCount }, (_, i) => benchAccount(i).email);
  const rows: string[] = [];
  for (const kind of KINDS) {
    const relayChild = Child.spawn(`relay ${kind}`, [
      "run",
      "--allow-net=127.0.0.1,localhost",
      `--allow-read=${STATE_ROOT}`,
      `--allow-write=${STATE_ROOT}`,
      "bench/relay_process.ts",
    ], "null");
    children.push(relayChild);
    const stateDir = `${STATE_ROOT}/https-${kind}-${Date.now()}`;
    const config = {
      smtp: { host: "127.0.0.1", port: 0 },
      http: { host: "127.0.0.1", port: 0 },
      limits: { maxClients: 20_000, maxConnectionsPerIp: 20_000 },
      stateDir,
      accounts: emails.map((email, i) => {
        const a = benchAccount(i);
        return {
          email,
          provider: { type: "sandbox", tokenUrl: info.tokenUrl, smtpPort: info.smtpPort },
          clientId: a.clientId,
          clientSecret: a.clientSecret,
          refreshToken: a.refreshToken,
          passwordHash,
          maxConnections: 4,
          ...(kind === "smtp" ? {} : { transport: { type: kind, apiUrl: info.apiUrl } }),
        };
      }),
    };
    const ports = await relayChild.request<{ smtpPort: number; httpPort: number }>(
      "start",
      { config, logLevel: "warning" },
      60_000,
    );
    const target = relayTarget({ smtpPort: ports.smtpPort } as Parameters<typeof relayTarget>[0]);
    const message = buildMessage(size, emails[0], BENCH_RECIPIENT);
    const load = (durationMs: number) =>
      runLoad({
        target,
        accounts: emails,
        sessions,
        messagesPerSession: 1_000_000,
        message,
        recipient: BENCH_RECIPIENT,
        durationMs,
        maxMessages: 10_000_000,
        replyTimeoutMs: 30_000,
      });
    await load(2_000); // warm-up: logins, tokens, connections
    const before = {
      relay: await relayChild.stats(),
      sandbox: await sandbox.request<Record<string, number>>("stats"),
    };
    const result = await load(seconds * 1000);
    const after = {
      relay: await relayChild.stats(),
      sandbox: await sandbox.request<Record<string, number>>("stats"),
    };
    const route = kind === "smtp" ? "smtp" : kind === "graph" ? "graph" : "gmail";
    const delivered = after.sandbox[route] - before.sandbox[route];
    const cpu = cpuS(after.relay) - cpuS(before.relay);
    const failed = Object.values(result.failures).reduce((a, b) => a + b, 0);
    rows.push(
      `| ${kind} | ${(delivered / result.elapsedS).toFixed(0)} | ${delivered} | ${failed} | ` +
        `${(cpu * 1e6 / Math.max(1, result.acked)).toFixed(0)} | ` +
        `${result.latency.p50.toFixed(1)} | ${result.latency.p99.toFixed(1)} |`,
    );
    if (failed > 0) console.error(`${kind}: ${result.failureSamples.slice(0, 3).join("; ")}`);
    await relayChild.stop();
    children.splice(children.indexOf(relayChild), 1);
    await Deno.remove(stateDir, { recursive: true }).catch(() => {});
  }
  console.log(
    `\n${new Date().toISOString()}: ${sessions} persistent sessions, ${accountCount} accounts ` +
      `(4 upstream connections / requests each), ${size} B, ${seconds} s per transport\n`,
  );
  console.log(
    "| transport | delivered msg/s | delivered | failed | relay CPU µs/msg | p50 ms | p99 ms |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) console.log(r);
} finally {
  for (const c of children.reverse()) await c.stop();
}
