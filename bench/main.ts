/**
 * `deno task bench`: throughput, latency and memory of the relay, measured as delivered
 * mail, against a direct baseline from the same run (issue 5).
 *
 * Three kinds of process: the sandbox provider (`bench/sandbox_process.ts`), one relay per
 * configuration (`bench/relay_process.ts`), and this runner, which drives the load
 * generator (`bench/loadgen.ts`) and reads CPU time and memory from both children.
 * Everything talks over 127.0.0.1.
 *
 *     deno run <flags> bench/main.ts [--quick] [--runs N] [--duration S]
 *              [--scenario NAME]... [--json PATH] [--results PATH|--no-results]
 *              [--profile] [--verbose] [--relay-log-level LEVEL]
 *
 * Scenarios (`--scenario` takes the number or the name): 1 `persistent`,
 * 2 `per-connection`, 3 `latency`, 4 `accounts`, 5 `provider-delay`, 6 `memory`,
 * 7 `distance`, 8 `large`, 9 `workers` (`bench/workers.ts`).
 * @module
 */
import os from "node:os";
import { parseArgs } from "node:util";
import { hashPassword } from "../src/relay/password.ts";
import { Child, denoBinary } from "./child.ts";
import { BENCH_PASSWORD } from "./fixtures.ts";
import { type BenchReport, fmt, renderMarkdown, type ScenarioReport } from "./report.ts";
import {
  type Ctx,
  fetchTokens,
  lightHash,
  type Options,
  progress,
  type SandboxInfo,
  type Scale,
  STATE_ROOT,
  stopRelay,
} from "./run.ts";
import {
  bigMessage,
  distance,
  largeMessages,
  loginStorm,
  manyAccountScenarios,
  memoryReport,
  relayAScenarios,
} from "./scenarios.ts";
import { workersScenario } from "./workers.ts";

// ---------------------------------------------------------------------------------------
// Options and scale

const SCENARIOS = [
  "persistent",
  "per-connection",
  "latency",
  "accounts",
  "provider-delay",
  "memory",
  "distance",
  "large",
  "workers",
] as const;

const USAGE = `usage: bench/main.ts [options]
  --quick               smoke run of a few seconds (small scale, one run, no verdicts)
  --runs N              runs per scenario, medians reported (default 3; quick 1)
  --duration S          measurement window per run in seconds (default 8; quick 1)
  --scenario NAME       only this scenario (repeatable): 1-9 or ${SCENARIOS.join(", ")}
  --json PATH           write the machine-readable report there
  --results PATH        append the Markdown table there (default bench/RESULTS.md;
                        quick runs append only when this is given)
  --no-results          do not append to RESULTS.md
  --profile             run the relays under --cpu-prof and print their top frames
                        (slows the relay: use for diagnosis, not for figures)
  --rate N              scenario 3's open-loop rate, msg/s (default 1,000; its target is
                        judged at 1,000 only)
  --relay-log-level L   the relay's log level (default info, as deployed)
  --real-hash           give the measured relays hashPassword()'s scrypt cost (N=2^14,
                        16 MiB, ~70 ms per first login) instead of a light one (N=2^10)
  --verbose             show the children's stderr (relay logs)`;

const FULL: Scale = {
  accountsA: 100,
  sessions: 50,
  persistentM: 1000,
  rate: 1000,
  fewAccounts: 10,
  manyAccounts: 1000,
  accountsM: 200,
  cap: 3,
  delayMs: 50,
  hot: 50,
  perHot: 4,
  memDelayMs: 500,
  bigSize: 25 * 1024 * 1024,
  warmMs: 2000,
  restMs: 5000,
  stormAccounts: 50,
  rampMs: 2000,
};

const QUICK: Scale = {
  accountsA: 20,
  sessions: 10,
  persistentM: 100,
  rate: 200,
  fewAccounts: 5,
  manyAccounts: 20,
  accountsM: 20,
  cap: 3,
  delayMs: 50,
  hot: 10,
  perHot: 4,
  memDelayMs: 100,
  bigSize: 2 * 1024 * 1024,
  warmMs: 200,
  restMs: 500,
  stormAccounts: 10,
  rampMs: 300,
};

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      duration: { type: "string" },
      scenario: { type: "string", multiple: true, default: [] },
      json: { type: "string" },
      results: { type: "string" },
      "no-results": { type: "boolean", default: false },
      profile: { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
      rate: { type: "string" },
      "relay-log-level": { type: "string", default: "info" },
      "real-hash": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const quick = values.quick;
  const runs = Number(values.runs ?? (quick ? 1 : 3));
  const durationS = Number(values.duration ?? (quick ? 1 : 8));
  if (!Number.isInteger(runs) || runs < 1 || runs > 20) throw new Error("--runs: 1-20");
  if (!(durationS > 0 && durationS <= 120)) throw new Error("--duration: 0-120 seconds");
  const rate = values.rate === undefined ? undefined : Number(values.rate);
  if (rate !== undefined && !(Number.isInteger(rate) && rate >= 1 && rate <= 20_000)) {
    throw new Error("--rate: a whole number of messages per second, 1-20000");
  }
  const scenarios = new Set<number>();
  for (const s of values.scenario) {
    const n = /^\d$/.test(s) ? Number(s) : SCENARIOS.indexOf(s as typeof SCENARIOS[number]) + 1;
    if (n < 1 || n > SCENARIOS.length) {
      throw new Error(`--scenario: unknown ${s} (1-9 or ${SCENARIOS.join(", ")})`);
    }
    scenarios.add(n);
  }
  if (scenarios.size === 0) {
    for (let i = 1; i <= SCENARIOS.length; i++) scenarios.add(i);
    // `workers` (four relays and a redis-server) would double the smoke run: named only.
    if (values.quick) scenarios.delete(SCENARIOS.indexOf("workers") + 1);
  }
  if (!["debug", "info", "warning", "error"].includes(values["relay-log-level"])) {
    throw new Error("--relay-log-level: debug, info, warning or error");
  }
  let results: string | undefined = values.results ?? (quick ? undefined : "bench/RESULTS.md");
  if (values["no-results"]) results = undefined;
  return {
    quick,
    runs,
    durationMs: durationS * 1000,
    scenarios,
    json: values.json,
    results,
    profile: values.profile,
    verbose: values.verbose,
    relayLogLevel: values["relay-log-level"],
    realHash: values["real-hash"],
    ...(rate !== undefined ? { rate } : {}),
  };
}

// ---------------------------------------------------------------------------------------
// Machine and output

async function gitCommit(): Promise<string> {
  try {
    const head = (await Deno.readTextFile(".git/HEAD")).trim();
    if (!head.startsWith("ref: ")) return head.slice(0, 12);
    const ref = head.slice(5);
    try {
      return (await Deno.readTextFile(`.git/${ref}`)).trim().slice(0, 12);
    } catch {
      const packed = await Deno.readTextFile(".git/packed-refs");
      const line = packed.split("\n").find((l) => l.endsWith(` ${ref}`));
      return line ? line.slice(0, 12) : "unknown";
    }
  } catch {
    return "unknown";
  }
}

function machine(commit: string) {
  let cpu = "unknown CPU";
  let cores = navigator.hardwareConcurrency;
  try {
    const cpus = os.cpus();
    cpu = cpus[0]?.model?.trim() || cpu;
    cores = cpus.length || cores;
  } catch {
    // --allow-sys=cpus not given
  }
  const v = Deno.version;
  return { cpu, cores, deno: `Deno ${v.deno} (V8 ${v.v8})`, commit };
}

async function appendResults(path: string, markdown: string): Promise<void> {
  let exists = true;
  try {
    await Deno.stat(path);
  } catch {
    exists = false;
  }
  const head = exists ? "" : "# Benchmark results\n\n" +
    "Appended by `deno task bench` (bench/main.ts): messages/s delivered (counted at the " +
    "sandbox provider) and acknowledged, client-observed latency from the end of DATA to the " +
    "reply, relay CPU and peak RSS, and a direct baseline (the same load generator straight " +
    "to the sandbox, STARTTLS + XOAUTH2) from the same run. Medians over the runs.\n\n";
  await Deno.writeTextFile(path, head + markdown + "\n", { append: true });
  // `deno task check` runs `deno fmt --check`, which covers Markdown: keep the file formatted.
  const fmt = await new Deno.Command(denoBinary(), {
    args: ["fmt", "--quiet", path],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!fmt.success) {
    throw new Error(`deno fmt ${path} failed: ${new TextDecoder().decode(fmt.stderr).trim()}`);
  }
}

// ---------------------------------------------------------------------------------------
// Main

async function main(args: string[]): Promise<number> {
  let o: Options;
  try {
    o = parseOptions(args);
  } catch (err) {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    return 2;
  }
  const started = performance.now();
  const date = new Date().toISOString();
  const scale = { ...(o.quick ? QUICK : FULL), ...(o.rate ? { rate: o.rate } : {}) };
  const limitS = o.quick ? 120 : 20 * 60;
  const children = new Set<Child>();
  const abort = (why: string) => {
    console.error(`bench: ${why}; stopping`);
    // Closing stdin stops a child; exiting closes every pipe anyway.
    for (const c of children) void c.stop(2000);
    setTimeout(() => Deno.exit(3), 2500);
  };
  const limit = setTimeout(() => abort(`time limit of ${limitS} s reached`), limitS * 1000);
  const onSignal = () => abort("interrupted");
  Deno.addSignalListener("SIGINT", onSignal);

  await Deno.mkdir(STATE_ROOT, { recursive: true });
  const maxAccounts = Math.max(
    o.scenarios.has(1) || o.scenarios.has(2) || o.scenarios.has(3) || o.scenarios.has(6)
      ? scale.accountsA
      : 1,
    o.scenarios.has(4) || o.scenarios.has(5) || o.scenarios.has(6) ? scale.manyAccounts : 1,
    o.scenarios.has(7) || o.scenarios.has(8) || o.scenarios.has(9) ? 10 : 1,
  );
  progress(`starting the sandbox provider (${fmt(maxAccounts)} accounts)`);
  const sandbox = Child.spawn("sandbox", [
    "run",
    "--allow-net=127.0.0.1",
    "bench/sandbox_process.ts",
  ], o.verbose ? "inherit" : "null");
  children.add(sandbox);
  const ctx: Ctx = {
    o,
    scale,
    sandbox,
    sandboxInfo: await sandbox.request<SandboxInfo>("start", { accounts: maxAccounts }),
    passwordHash: o.realHash ? await hashPassword(BENCH_PASSWORD) : await lightHash(BENCH_PASSWORD),
    tokens: new Map(),
    messages: new Map(),
    problems: [],
    profiles: [],
    relays: new Set(),
    children,
    warmups: [],
  };
  const reports: ScenarioReport[] = [];
  let status = 0;
  try {
    await fetchTokens(ctx, maxAccounts);
    try {
      const leakFacts = [1, 2, 3, 6].some((s) => o.scenarios.has(s))
        ? await relayAScenarios(ctx, reports)
        : undefined;
      const manyConnectionsResult = [4, 5, 6].some((s) => o.scenarios.has(s))
        ? await manyAccountScenarios(ctx, reports)
        : undefined;
      if (o.scenarios.has(7)) await distance(ctx, reports);
      if (o.scenarios.has(8)) await largeMessages(ctx, reports);
      if (o.scenarios.has(9)) await workersScenario(ctx, reports);
      if (o.scenarios.has(6)) {
        const big = await bigMessage(ctx);
        const storm = await loginStorm(ctx);
        reports.push(memoryReport(ctx, big, manyConnectionsResult, leakFacts, storm));
      }
    } finally {
      for (const r of [...ctx.relays]) await stopRelay(ctx, r);
    }
  } catch (err) {
    console.error(`bench failed: ${err instanceof Error ? err.stack : String(err)}`);
    ctx.problems.push(`aborted: ${err instanceof Error ? err.message : String(err)}`);
    status = 1;
  } finally {
    const s = await sandbox.stop();
    if (!s.success) ctx.problems.push(`sandbox exited with status ${s.code}`);
    await Deno.remove(STATE_ROOT, { recursive: true }).catch(() => {});
    clearTimeout(limit);
    Deno.removeSignalListener("SIGINT", onSignal);
  }

  reports.sort((a, b) => a.id - b.id);
  const report: BenchReport = {
    date,
    quick: o.quick,
    runs: o.runs,
    durationS: o.durationMs / 1000,
    machine: machine(await gitCommit()),
    scenarios: reports,
    profiles: ctx.profiles,
    problems: ctx.problems,
    wallS: (performance.now() - started) / 1000,
    passwordHash: o.realHash ? "real" : "light",
  };
  const markdown = renderMarkdown(report);
  console.log(markdown);
  if (o.json) {
    await Deno.writeTextFile(o.json, JSON.stringify(report, null, 2) + "\n");
    progress(`JSON written to ${o.json}`);
  }
  if (o.results && status === 0) {
    try {
      await appendResults(o.results, markdown);
      progress(`appended to ${o.results}`);
    } catch (err) {
      console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
      status = 1;
    }
  }
  // The smoke test fails on anything broken; full runs report problems and still succeed.
  if (o.quick && ctx.problems.length) status = 1;
  return status;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
