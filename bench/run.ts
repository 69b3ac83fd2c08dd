/**
 * The benchmark's machinery: its options and scale, the child processes (sandbox provider,
 * relays), access tokens for the direct baseline, and the measurement of one load run
 * (delivered and acknowledged messages, latency, CPU and memory of the children).
 * @module
 */
import { Buffer } from "node:buffer";
import { randomBytes, scrypt } from "node:crypto";
import process from "node:process";
import { Child } from "./child.ts";
import type { ProcessStats } from "./control.ts";
import { BENCH_CLIENT, BENCH_PASSWORD, BENCH_RECIPIENT, benchAccount } from "./fixtures.ts";
import { buildMessage, type Percentiles, runLoad, type Target } from "./loadgen.ts";
import { newestProfile, type ProfileSummary, summarizeProfile } from "./profile.ts";
import { fmt, median, type Side, type ThroughputRow, type Verdict } from "./report.ts";
import { runtimeEnv, runtimeFlags } from "../src/runtime_flags.ts";

/** Parsed command-line options. */
export interface Options {
  quick: boolean;
  runs: number;
  durationMs: number;
  scenarios: Set<number>;
  json?: string;
  results?: string;
  profile: boolean;
  verbose: boolean;
  relayLogLevel: string;
  realHash: boolean;
  /** Scenario 3's rate instead of the scale's (--rate). */
  rate?: number;
}

/** Sizes of every scenario; the quick run shrinks them. */
export interface Scale {
  /** Accounts of relay A (scenarios 1-3). */
  accountsA: number;
  /** Client sessions of scenarios 1-4. */
  sessions: number;
  /** Messages per "persistent" session before it reconnects as another account. */
  persistentM: number;
  /** Open-loop rate of scenario 3, msg/s. */
  rate: number;
  /** The two account counts compared in scenario 4. */
  fewAccounts: number;
  manyAccounts: number;
  /** Messages per session in scenario 4 (small, so the sessions walk through the accounts). */
  accountsM: number;
  /** Upstream connection cap of the many-accounts relay (scenarios 4-6). */
  cap: number;
  /** Provider reply delay of scenario 5, ms. */
  delayMs: number;
  /** Scenario 5: accounts busy at a time, client sessions per busy account. */
  hot: number;
  perHot: number;
  /** Scenario 6: provider reply delay while the upstream connections are opened, ms. */
  memDelayMs: number;
  /** Scenario 6: the big message, bytes. */
  bigSize: number;
  /** JIT warm-up per relay, ms. */
  warmMs: number;
  /** Idle time before the leak check's "after" figure, ms. */
  restMs: number;
  /** Concurrent first logins of the login-storm check (real password hash). */
  stormAccounts: number;
  /** Ramp-up of the many-connections check, ms. */
  rampMs: number;
}

/** Size of the ordinary benchmark message, bytes ("2 KB"). */
export const MESSAGE_SIZE = 2048;
/** Bytes per MB in every figure. */
export const MB = 1e6;

/** Endpoints of the sandbox provider process. */
export interface SandboxInfo {
  tokenUrl: string;
  smtpHost: string;
  smtpPort: number;
  ca: string;
}

interface SandboxStats {
  delivered: number;
  deliveredBytes: number;
  openConnections: number;
  connections: number;
  authSuccesses: number;
  authFailures: number;
  errors: number;
}

/** A relay process. */
export interface RelayProc {
  name: string;
  child: Child;
  smtpPort: number;
  httpPort: number;
  accounts: number;
  stateDir: string;
  profileDir?: string;
}

/** Everything a scenario needs. */
export interface Ctx {
  o: Options;
  scale: Scale;
  sandbox: Child;
  sandboxInfo: SandboxInfo;
  passwordHash: string;
  tokens: Map<string, string>;
  messages: Map<number, Uint8Array>;
  problems: string[];
  profiles: { relay: string; summary: ProfileSummary }[];
  relays: Set<RelayProc>;
  /** Every child still running, for an emergency stop. */
  children: Set<Child>;
  /** What each relay's warm-up (first login of every account) cost. */
  warmups: Warmup[];
}

/** The cost of a relay's first login + message for every account. */
export interface Warmup {
  relay: string;
  accounts: number;
  sessions: number;
  seconds: number;
  relayCpuS: number;
  peakRssMB: number;
}

/** Where the relays keep their state directories (removed at the end). */
export const STATE_ROOT = "bench/.state";
/** Where `--profile` writes the relays' CPU profiles. */
export const PROFILE_ROOT = "bench/.profiles";

/** A progress line on stderr (stdout carries the report). */
export function progress(text: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${text}`);
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

/** Addresses of the first `n` benchmark accounts. */
export function emails(n: number): string[] {
  return Array.from({ length: n }, (_, i) => benchAccount(i).email);
}

/** The benchmark message of `size` bytes (built once per size). */
export function message(ctx: Ctx, size: number): Uint8Array {
  let m = ctx.messages.get(size);
  if (!m) {
    m = buildMessage(size, "sender@bench.test", BENCH_RECIPIENT);
    ctx.messages.set(size, m);
  }
  return m;
}

/** What {@link relayConfig} varies. */
export interface RelayConfigShape {
  stateDir: string;
  accounts: number;
  maxConnections?: number;
  passwordHash?: string;
  smtpPort?: number;
  /** `state` of the config (e.g. Redis); files under `stateDir` without it. */
  state?: Record<string, unknown>;
}

/**
 * The config of a relay under measurement: loopback listeners on free ports, the first
 * `accounts` benchmark accounts on the sandbox provider, no per-IP cap.
 */
export function relayConfig(ctx: Ctx, shape: RelayConfigShape): Record<string, unknown> {
  const provider = {
    type: "sandbox",
    tokenUrl: ctx.sandboxInfo.tokenUrl,
    smtpHost: "localhost",
    smtpPort: shape.smtpPort ?? ctx.sandboxInfo.smtpPort,
  };
  const { maxConnections } = shape;
  return {
    smtp: { host: "127.0.0.1", port: 0 },
    http: { host: "127.0.0.1", port: 0 },
    // Every load-generator session comes from 127.0.0.1: the per-IP cap would refuse them.
    limits: { maxClients: 20_000, maxConnectionsPerIp: 20_000 },
    stateDir: shape.stateDir,
    ...(shape.state ? { state: shape.state } : {}),
    accounts: Array.from({ length: shape.accounts }, (_, i) => {
      const a = benchAccount(i);
      return {
        email: a.email,
        provider,
        clientId: a.clientId,
        clientSecret: a.clientSecret,
        refreshToken: a.refreshToken,
        passwordHash: shape.passwordHash ?? ctx.passwordHash,
        ...(maxConnections ? { maxConnections } : {}),
      };
    }),
  };
}

/**
 * Starts a relay process for the first `accounts` benchmark accounts, with an optional
 * upstream cap and password hash.
 */
export async function startRelay(
  ctx: Ctx,
  name: string,
  accounts: number,
  maxConnections?: number,
  passwordHash = ctx.passwordHash,
  smtpPort = ctx.sandboxInfo.smtpPort,
): Promise<RelayProc> {
  const stateDir = `${STATE_ROOT}/${name}-${Date.now()}`;
  const args = [
    "run",
    "--allow-net=127.0.0.1,localhost",
    `--allow-read=${STATE_ROOT}`,
    `--allow-write=${STATE_ROOT}`,
    // Exposes gc() to the control channel only (the leak check collects before measuring).
    "--v8-flags=--expose-gc",
    // The relay's own V8 flags, as the launcher starts it (src/runtime_flags.ts).
    ...runtimeFlags(),
  ];
  let profileDir: string | undefined;
  if (ctx.o.profile) {
    profileDir = `${PROFILE_ROOT}/${name}-${Date.now()}`;
    args.push("--cpu-prof", `--cpu-prof-dir=${profileDir}`);
  }
  args.push("bench/relay_process.ts");
  const child = Child.spawn(
    `relay ${name}`,
    args,
    ctx.o.verbose ? "inherit" : "null",
    runtimeEnv(),
  );
  ctx.children.add(child);
  const config = relayConfig(ctx, { stateDir, accounts, maxConnections, passwordHash, smtpPort });
  try {
    const ports = await child.request<{ smtpPort: number; httpPort: number }>(
      "start",
      { config, logLevel: ctx.o.relayLogLevel },
      60_000,
    );
    const relay = { name, child, accounts, stateDir, profileDir, ...ports };
    ctx.relays.add(relay);
    return relay;
  } catch (err) {
    ctx.children.delete(child);
    await child.stop(5000);
    throw err;
  }
}

/** Stops a relay, removes its state and, with `--profile`, summarises its CPU profile. */
export async function stopRelay(ctx: Ctx, relay: RelayProc): Promise<void> {
  ctx.relays.delete(relay);
  ctx.children.delete(relay.child);
  const status = await relay.child.stop();
  if (!status.success) ctx.problems.push(`relay ${relay.name} exited with status ${status.code}`);
  await Deno.remove(relay.stateDir, { recursive: true }).catch(() => {});
  if (relay.profileDir) {
    const file = await newestProfile(relay.profileDir);
    if (file) ctx.profiles.push({ relay: relay.name, summary: await summarizeProfile(file) });
    else ctx.problems.push(`no CPU profile written for relay ${relay.name}`);
  }
}

/** The relay's Prometheus gauges and counters, by series. */
export async function scrape(relay: RelayProc): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${relay.httpPort}/metrics`)).text();
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return values;
}

/** Sum (s) and count of the relay's duration histogram for delivered messages. */
function deliverHistogram(
  metrics: Map<string, number>,
): { sum: number; count: number; within10ms: number } {
  const name = "smtp_relay_message_duration_seconds";
  return {
    sum: metrics.get(`${name}_sum{result="delivered"}`) ?? 0,
    count: metrics.get(`${name}_count{result="delivered"}`) ?? 0,
    within10ms: metrics.get(`${name}_bucket{le="0.01",result="delivered"}`) ?? 0,
  };
}

/** Access tokens for the direct baseline, straight from the sandbox token endpoint. */
export async function fetchTokens(ctx: Ctx, n: number): Promise<void> {
  const missing = Array.from({ length: n }, (_, i) => benchAccount(i))
    .filter((a) => !ctx.tokens.has(a.email));
  const parallel = 16;
  for (let i = 0; i < missing.length; i += parallel) {
    await Promise.all(
      missing.slice(i, i + parallel).map(async (a) => {
        const response = await fetch(ctx.sandboxInfo.tokenUrl, {
          method: "POST",
          body: new URLSearchParams({
            grant_type: "refresh_token",
            refresh_token: a.refreshToken,
            client_id: BENCH_CLIENT.clientId,
            client_secret: BENCH_CLIENT.clientSecret,
          }),
        });
        const body = await response.json();
        if (!response.ok || typeof body.access_token !== "string") {
          throw new Error(`token endpoint refused ${a.email}: ${JSON.stringify(body)}`);
        }
        ctx.tokens.set(a.email, body.access_token);
      }),
    );
  }
}

/** The generator's target for a relay: AUTH PLAIN in plaintext. */
export function relayTarget(relay: RelayProc): Target {
  return {
    host: "127.0.0.1",
    port: relay.smtpPort,
    login: { kind: "plain", password: BENCH_PASSWORD },
  };
}

/** The generator's target for the direct baseline: the sandbox, STARTTLS + XOAUTH2. */
export function directTarget(ctx: Ctx, port = ctx.sandboxInfo.smtpPort): Target {
  return {
    host: "127.0.0.1",
    port,
    login: {
      kind: "xoauth2",
      tlsHostname: ctx.sandboxInfo.smtpHost,
      caCerts: [ctx.sandboxInfo.ca],
      token: (email) => {
        const token = ctx.tokens.get(email);
        if (!token) throw new Error(`no token for ${email}`);
        return token;
      },
    },
  };
}

/** A load shape. */
export interface Shape {
  accounts: number;
  sessions: number;
  messagesPerSession: number;
  size: number;
  durationMs: number;
  rate?: number;
  accountStride?: number;
  accountOfSession?: (session: number) => number;
  rampUpMs?: number;
  replyTimeoutMs?: number;
  maxMessages?: number;
  maxMessagesPerWorker?: number;
  /** The direct baseline's port (a forwarder in front of the sandbox); the sandbox's otherwise. */
  directPort?: number;
}

/** CPU seconds (user + system) of a child's stats. */
export const cpuS = (p: ProcessStats) => p.cpuUserS + p.cpuSystemS;

function sandboxStats(ctx: Ctx): Promise<SandboxStats> {
  return ctx.sandbox.request<SandboxStats>("stats");
}

/** Waits until the sandbox's delivered count stops moving (at most 5 s). */
async function settle(ctx: Ctx): Promise<SandboxStats> {
  let last = await sandboxStats(ctx);
  for (let i = 0; i < 50; i++) {
    await sleep(100);
    const now = await sandboxStats(ctx);
    if (now.delivered === last.delivered) return now;
    last = now;
  }
  return last;
}

/** Runs `shape` through `relay` (or direct to the sandbox when undefined) and measures. */
export async function measure(ctx: Ctx, relay: RelayProc | undefined, shape: Shape): Promise<Side> {
  const [sb0, sp0, rp0] = await Promise.all([
    sandboxStats(ctx),
    ctx.sandbox.stats(),
    relay?.child.stats(),
  ]);
  await ctx.sandbox.request("mark");
  if (relay) await relay.child.request("mark");
  const h0 = relay ? deliverHistogram(await scrape(relay)) : undefined;
  const g0 = process.cpuUsage();
  const load = await runLoad({
    target: relay ? relayTarget(relay) : directTarget(ctx, shape.directPort),
    accounts: emails(shape.accounts),
    sessions: shape.sessions,
    messagesPerSession: shape.messagesPerSession,
    accountStride: shape.accountStride,
    accountOfSession: shape.accountOfSession,
    message: message(ctx, shape.size),
    recipient: BENCH_RECIPIENT,
    durationMs: shape.durationMs,
    maxMessages: shape.maxMessages ?? Math.ceil(shape.durationMs * 50),
    maxMessagesPerWorker: shape.maxMessagesPerWorker,
    rate: shape.rate,
    replyTimeoutMs: shape.replyTimeoutMs ?? 30_000,
    rampUpMs: shape.rampUpMs,
  });
  const g1 = process.cpuUsage();
  const sb1 = await settle(ctx);
  const [sp1, rp1] = await Promise.all([ctx.sandbox.stats(), relay?.child.stats()]);
  const h1 = relay ? deliverHistogram(await scrape(relay)) : undefined;
  const delivered = sb1.delivered - sb0.delivered;
  const side: Side = {
    acked: load.acked,
    delivered,
    attempted: load.attempted,
    failures: load.failures,
    failureSamples: load.failureSamples,
    elapsedS: load.elapsedS,
    ackedPerS: load.acked / load.elapsedS,
    deliveredPerS: delivered / load.elapsedS,
    latency: load.latency,
    transactionLatency: load.transactionLatency,
    startLag: load.startLag,
    sessionsOpened: load.sessionsOpened,
    sandboxCpuS: cpuS(sp1) - cpuS(sp0),
    sandboxLoopLag: sp1.loopLag,
    generatorCpuS: (g1.user + g1.system - g0.user - g0.system) / 1e6,
    ...(rp0 && rp1
      ? {
        relayCpuS: cpuS(rp1) - cpuS(rp0),
        relayCpuUsPerMsg: delivered > 0 ? ((cpuS(rp1) - cpuS(rp0)) * 1e6) / delivered : NaN,
        relayPeakRssMB: rp1.peakRssBytes / MB,
        relayRssMB: rp1.rssBytes / MB,
        relayLoopLag: rp1.loopLag,
        relayDeliverMeanMs: h0 && h1 && h1.count > h0.count
          ? (1000 * (h1.sum - h0.sum)) / (h1.count - h0.count)
          : NaN,
        relayOver10msShare: h0 && h1 && h1.count > h0.count
          ? 1 - (h1.within10ms - h0.within10ms) / (h1.count - h0.count)
          : NaN,
      }
      : {}),
  };
  check(ctx, relay ? `relay ${relay.name}` : "direct", side);
  progress(
    `  ${relay ? `relay ${relay.name}` : "direct"}: ${fmt(side.deliveredPerS)} delivered/s ` +
      `(${fmt(side.acked)} acked, ${fmt(delivered)} delivered in ${fmt(side.elapsedS, 1)} s), ` +
      `p50/p99 ${fmt(side.latency.p50, 1)}/${fmt(side.latency.p99, 1)} ms` +
      (side.relayCpuS !== undefined
        ? `, relay CPU ${fmt(side.relayCpuS, 2)} s, peak RSS ${fmt(side.relayPeakRssMB)} MB, ` +
          `in relay ${fmt(side.relayDeliverMeanMs, 1)} ms mean, ` +
          `${
            fmt(100 * (side.relayOver10msShare ?? NaN), 2)
          } % over 10 ms, relay loop lag p99/max ` +
          `${fmt(side.relayLoopLag?.p99, 1)}/${fmt(side.relayLoopLag?.max, 1)} ms`
        : "") +
      `, sandbox/generator CPU ${fmt(side.sandboxCpuS, 2)}/${fmt(side.generatorCpuS, 2)} s` +
      (load.attempted > load.acked ? `, failures ${failureText(side.failures)}` : ""),
  );
  return side;
}

/**
 * Adds up slices of one run: counts, times and CPU are summed; latency percentiles are the
 * median over the slices (max: the largest).
 */
export function mergeSides(parts: Side[]): Side {
  const sum = (f: (s: Side) => number | undefined) => parts.reduce((a, s) => a + (f(s) ?? NaN), 0);
  const mid = (f: (s: Side) => number | undefined) => median(parts.map((s) => f(s) ?? NaN));
  const pct = (f: (s: Side) => Percentiles | undefined): Percentiles | undefined =>
    parts.every((s) => f(s))
      ? {
        count: sum((s) => f(s)!.count),
        p50: mid((s) => f(s)!.p50),
        p95: mid((s) => f(s)!.p95),
        p99: mid((s) => f(s)!.p99),
        max: Math.max(...parts.map((s) => f(s)!.max)),
        mean: sum((s) => f(s)!.mean * f(s)!.count) / Math.max(1, sum((s) => f(s)!.count)),
      }
      : undefined;
  const failures: Record<string, number> = {};
  for (const p of parts) {
    for (const [k, v] of Object.entries(p.failures)) failures[k] = (failures[k] ?? 0) + v;
  }
  const elapsedS = sum((s) => s.elapsedS);
  const delivered = sum((s) => s.delivered);
  const relayCpuS = parts[0].relayCpuS === undefined ? undefined : sum((s) => s.relayCpuS);
  const lag = (f: (s: Side) => Side["sandboxLoopLag"] | undefined) =>
    parts.every((s) => f(s))
      ? {
        p99: mid((s) => f(s)!.p99),
        max: Math.max(...parts.map((s) => f(s)!.max)),
        over50: sum((s) => f(s)!.over50),
      }
      : undefined;
  return {
    acked: sum((s) => s.acked),
    delivered,
    attempted: sum((s) => s.attempted),
    failures,
    failureSamples: parts.flatMap((s) => s.failureSamples).slice(0, 8),
    elapsedS,
    ackedPerS: sum((s) => s.acked) / elapsedS,
    deliveredPerS: delivered / elapsedS,
    latency: pct((s) => s.latency)!,
    transactionLatency: pct((s) => s.transactionLatency)!,
    startLag: pct((s) => s.startLag),
    sessionsOpened: sum((s) => s.sessionsOpened),
    sandboxCpuS: sum((s) => s.sandboxCpuS),
    sandboxLoopLag: lag((s) => s.sandboxLoopLag)!,
    generatorCpuS: sum((s) => s.generatorCpuS),
    ...(relayCpuS === undefined ? {} : {
      relayCpuS,
      relayCpuUsPerMsg: (relayCpuS * 1e6) / delivered,
      relayPeakRssMB: Math.max(...parts.map((s) => s.relayPeakRssMB ?? NaN)),
      relayRssMB: parts[parts.length - 1].relayRssMB,
      relayLoopLag: lag((s) => s.relayLoopLag),
      relayDeliverMeanMs: mid((s) => s.relayDeliverMeanMs),
    }),
  };
}

/** Records what looks broken in a run (checked in quick and full mode alike). */
function check(ctx: Ctx, who: string, side: Side): void {
  if (side.acked === 0) ctx.problems.push(`${who}: no message acknowledged`);
  if (side.delivered < side.acked) {
    ctx.problems.push(
      `${who}: ${side.acked} acknowledged but only ${side.delivered} delivered upstream`,
    );
  }
  if (side.attempted > side.acked) {
    ctx.problems.push(
      `${who}: ${side.attempted - side.acked} failed (${failureText(side.failures)}): ` +
        side.failureSamples.slice(0, 3).join(" | "),
    );
  }
}

function failureText(f: Record<string, number>): string {
  return Object.entries(f).map(([k, v]) => `${k} ${v}`).join(", ");
}

function sumFailures(sides: Side[]): string {
  const total: Record<string, number> = {};
  for (const s of sides) {
    for (const [k, v] of Object.entries(s.failures)) total[k] = (total[k] ?? 0) + v;
  }
  return failureText(total);
}

/** Median row of relay sides, with direct sides when there are. */
export function row(label: string, relay: Side[], direct: Side[] = []): ThroughputRow {
  const m = (f: (s: Side) => number | undefined, sides = relay) =>
    median(sides.map((s) => f(s) ?? NaN));
  const ratios = relay.map((r, i) => direct[i] ? r.deliveredPerS / direct[i].deliveredPerS : NaN);
  const failures = [sumFailures(relay), direct.length ? sumFailures(direct) : ""]
    .filter(Boolean);
  return {
    label,
    deliveredPerS: m((s) => s.deliveredPerS),
    ackedPerS: m((s) => s.ackedPerS),
    directPerS: direct.length ? m((s) => s.deliveredPerS, direct) : undefined,
    ratio: direct.length ? median(ratios) : undefined,
    p50: m((s) => s.latency.p50),
    p95: m((s) => s.latency.p95),
    p99: m((s) => s.latency.p99),
    max: m((s) => s.latency.max),
    directP99: direct.length ? m((s) => s.latency.p99, direct) : undefined,
    relayCpuS: m((s) => s.relayCpuS),
    cpuUsPerMsg: m((s) => s.relayCpuUsPerMsg),
    peakRssMB: Math.max(...relay.map((s) => s.relayPeakRssMB ?? NaN)),
    otherCpuS: m((s) => s.sandboxCpuS + s.generatorCpuS),
    failures: failures.length === 2 && failures[1]
      ? `relay: ${failures[0] || "0"}; direct: ${failures[1]}`
      : failures[0] ?? "",
  };
}

/** A verdict; not judged in quick mode. */
export function verdict(ctx: Ctx, target: string, measured: string, met: boolean): Verdict {
  return { target, measured, met: ctx.o.quick ? null : met };
}

/** Relay and direct, alternating which goes first, for every run. */
export async function relayVsDirect(
  ctx: Ctx,
  relay: RelayProc,
  shape: Shape,
  label: string,
): Promise<{ relay: Side[]; direct: Side[] }> {
  const out = { relay: [] as Side[], direct: [] as Side[] };
  for (let run = 0; run < ctx.o.runs; run++) {
    progress(`${label}: run ${run + 1}/${ctx.o.runs}`);
    if (run % 2 === 0) {
      out.relay.push(await measure(ctx, relay, shape));
      out.direct.push(await measure(ctx, undefined, shape));
    } else {
      out.direct.push(await measure(ctx, undefined, shape));
      out.relay.push(await measure(ctx, relay, shape));
    }
  }
  return out;
}

/**
 * Brings a relay to steady state: every account logs in and sends one message (the first
 * login of an account costs a full scrypt, its first message a token refresh and an
 * upstream connection), then `warmMs` of closed-loop load for the JIT.
 */
export async function warmRelay(ctx: Ctx, relay: RelayProc): Promise<void> {
  const n = relay.accounts;
  const sessions = Math.min(50, n);
  const started = performance.now();
  const first = await measure(ctx, relay, {
    accounts: n,
    sessions,
    messagesPerSession: 1,
    accountStride: sessions,
    maxMessagesPerWorker: Math.ceil(n / sessions),
    maxMessages: n,
    size: MESSAGE_SIZE,
    durationMs: 300_000,
    replyTimeoutMs: 120_000,
  });
  const seconds = (performance.now() - started) / 1000;
  progress(
    `relay ${relay.name}: first login + message of ${n} accounts took ` +
      `${fmt(seconds, 1)} s (relay CPU ${fmt(first.relayCpuS, 1)} s)`,
  );
  ctx.warmups.push({
    relay: relay.name,
    accounts: n,
    sessions,
    seconds,
    relayCpuS: first.relayCpuS ?? NaN,
    peakRssMB: first.relayPeakRssMB ?? NaN,
  });
  await measure(ctx, relay, {
    accounts: n,
    sessions: ctx.scale.sessions,
    messagesPerSession: ctx.scale.persistentM,
    size: MESSAGE_SIZE,
    durationMs: ctx.scale.warmMs,
  });
}

/** Memory of a relay at rest, MB. */
export interface Rest {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
}

/**
 * Memory (MB) once the relay has had no client session for `ms`; with `collect`, after a
 * full garbage collection, so that the heap figure is live data only.
 */
export async function atRest(relay: RelayProc, ms = 1000, collect = false): Promise<Rest> {
  for (let i = 0; i < 100; i++) {
    if ((await scrape(relay)).get("smtp_relay_sessions_active") === 0) break;
    await sleep(100);
  }
  await sleep(ms);
  if (collect) {
    await relay.child.request("gc");
    await sleep(200);
  }
  const s = await relay.child.stats();
  return {
    rss: s.rssBytes / MB,
    heapUsed: s.heapUsedBytes / MB,
    heapTotal: s.heapTotalBytes / MB,
    external: s.externalBytes / MB,
  };
}

/** Per-run relay and direct figures with their ratio, for the JSON report. */
export function zipRuns(r: { relay: Side[]; direct: Side[] }): unknown[] {
  return r.relay.map((relay, i) => ({
    relay,
    direct: r.direct[i],
    ratio: r.direct[i] ? relay.deliveredPerS / r.direct[i].deliveredPerS : undefined,
  }));
}

/**
 * A password hash in the relay's `scrypt$N$r$p$salt$key` format at a light cost (N=2^10:
 * 1 MiB, a few ms). The relay reads the cost from the hash, and verifies each account's
 * password with scrypt only on its first login (later logins hit an HMAC cache), so the
 * steady-state path is the same; only the warm-up is cheaper. {@link loginStorm} measures
 * the real cost separately.
 */
export function lightHash(password: string): Promise<string> {
  const salt = randomBytes(16);
  return new Promise((ok, fail) =>
    scrypt(password, salt, 32, { N: 1024, r: 8, p: 1 }, (err, key: Buffer) => {
      if (err) return fail(err);
      ok(`scrypt$1024$8$1$${salt.toString("base64")}$${key.toString("base64")}`);
    })
  );
}
