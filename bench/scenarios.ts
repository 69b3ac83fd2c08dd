/**
 * The six scenarios of issue 5, on top of `./run.ts`: which relay, which load, which
 * figures, and the verdict against each target.
 * @module
 */
import { hashPassword } from "../src/relay/password.ts";
import { BENCH_PASSWORD, BENCH_RECIPIENT } from "./fixtures.ts";
import { startForwarder } from "./forwarder.ts";
import { runLoad } from "./loadgen.ts";
import { fmt, median, type ScenarioReport, type Side, type Verdict } from "./report.ts";
import {
  atRest,
  cpuS,
  type Ctx,
  emails,
  MB,
  measure,
  mergeSides,
  message,
  MESSAGE_SIZE,
  progress,
  type RelayProc,
  relayTarget,
  relayVsDirect,
  type Rest,
  row,
  scrape,
  type Shape,
  sleep,
  startRelay,
  stopRelay,
  verdict,
  warmRelay,
  zipRuns,
} from "./run.ts";

/** RSS of relay A after warm-up and after all its load (scenario 6), MB. */
export interface LeakFacts {
  baseline: Rest;
  after: Rest;
  peak: number;
  rssAfterRuns: number[];
  /** Relay A's peak RSS during each 50-session persistent load run (1, or 6's own), MB. */
  peakAtLoad: number[];
}

/** What scenario 6 measured with many upstream connections open. */
export interface ConnectionsResult {
  facts: [string, string][];
  verdict: Verdict;
  run: unknown;
}

/** 1-3 and the leak check of 6, on relay A (100 accounts, provider's default cap). */
export async function relayAScenarios(
  ctx: Ctx,
  reports: ScenarioReport[],
): Promise<LeakFacts | undefined> {
  const { o, scale } = ctx;
  const relay = await startRelay(ctx, "A", scale.accountsA);
  await warmRelay(ctx, relay);
  await measure(ctx, undefined, {
    accounts: scale.accountsA,
    sessions: scale.sessions,
    messagesPerSession: scale.persistentM,
    size: MESSAGE_SIZE,
    durationMs: scale.warmMs,
  });
  const baseline = await atRest(relay, 1000, true);
  const rssAfterRuns: number[] = [];
  const peakAtLoad: number[] = [];
  const base: Shape = {
    accounts: scale.accountsA,
    sessions: scale.sessions,
    messagesPerSession: scale.persistentM,
    size: MESSAGE_SIZE,
    durationMs: o.durationMs,
  };

  if (o.scenarios.has(1)) {
    const r = await relayVsDirect(ctx, relay, base, "1 persistent");
    rssAfterRuns.push(...r.relay.map((s) => s.relayRssMB ?? NaN));
    peakAtLoad.push(...r.relay.map((s) => s.relayPeakRssMB ?? NaN));
    const x = row("1 persistent", r.relay, r.direct);
    reports.push({
      id: 1,
      key: "persistent",
      title: "2 KB messages, persistent sessions",
      shape: `${scale.sessions} sessions × ${scale.persistentM} messages, then reconnect as the ` +
        `next account; ${scale.accountsA} accounts; 2,048-byte messages; closed loop`,
      rows: [x],
      facts: [],
      verdicts: [
        verdict(
          ctx,
          "≥ 6,000 msg/s delivered, 2 KB, 50 persistent sessions, 100 accounts",
          `${fmt(x.deliveredPerS)} msg/s (${fmt(x.ratio, 2)}× direct ${fmt(x.directPerS)})`,
          x.deliveredPerS >= 6000,
        ),
      ],
      notes: [],
      runs: zipRuns(r),
    });
  }

  if (o.scenarios.has(2)) {
    const r = await relayVsDirect(
      ctx,
      relay,
      { ...base, messagesPerSession: 1 },
      "2 per-connection",
    );
    const x = row("2 per-connection", r.relay, r.direct);
    reports.push({
      id: 2,
      key: "per-connection",
      title: "one message per connection",
      shape: `${scale.sessions} concurrent sessions, each: connect, EHLO, AUTH, 1 message, QUIT; ` +
        `${scale.accountsA} accounts; direct = STARTTLS + XOAUTH2 per connection`,
      rows: [x],
      facts: [],
      verdicts: [
        verdict(
          ctx,
          "≥ 2,000 msg/s, one message per connection, 50 concurrent sessions",
          `${fmt(x.deliveredPerS)} msg/s (${fmt(x.ratio, 2)}× direct ${fmt(x.directPerS)})`,
          x.deliveredPerS >= 2000,
        ),
      ],
      notes: [
        "smtp-server (relay ingress and sandbox alike) waits 100 ms before every greeting " +
        "(early-talker check): a session cannot do more than ~10 connections/s.",
      ],
      runs: zipRuns(r),
    });
  }

  if (o.scenarios.has(3)) {
    const shape = { ...base, rate: scale.rate };
    const r = await relayVsDirect(ctx, relay, shape, "3 latency");
    const added = r.relay.map((s, i) => s.latency.p99 - r.direct[i].latency.p99);
    const x = row(`3 latency @${fmt(scale.rate)}/s`, r.relay, r.direct);
    const addedMs = median(added);
    const lag = median(r.relay.map((s) => s.startLag?.p99 ?? NaN));
    reports.push({
      id: 3,
      key: "latency",
      title: `p99 latency added at a steady ${fmt(scale.rate)} msg/s`,
      shape: `open loop at ${fmt(scale.rate)} msg/s over ${scale.sessions} persistent sessions; ` +
        `latency = end of DATA to the reply`,
      rows: [x],
      facts: [
        ["p99 relay − p99 direct, per run", added.map((a) => `${fmt(a, 2)} ms`).join(", ")],
        [
          "p50 relay − p50 direct (median)",
          `${fmt(x.p50 - median(r.direct.map((s) => s.latency.p50)), 2)} ms`,
        ],
        [
          "generator start lag p99 (relay side; > a few ms means the sessions could not keep up)",
          `${fmt(lag, 2)} ms`,
        ],
        [
          "mean time inside the relay (its own histogram) vs mean client latency",
          `${fmt(median(r.relay.map((s) => s.relayDeliverMeanMs ?? NaN)), 2)} ms vs ` +
          `${fmt(median(r.relay.map((s) => s.latency.mean)), 2)} ms`,
        ],
        [
          "relay event-loop lag (20 ms timer) p99 / max / timers > 50 ms late, per run",
          r.relay.map((s) =>
            `${fmt(s.relayLoopLag?.p99, 1)} / ${fmt(s.relayLoopLag?.max, 1)} ms / ` +
            `${fmt(s.relayLoopLag?.over50)}`
          ).join("; "),
        ],
        [
          "sandbox event-loop lag p99 / max in the direct runs",
          r.direct.map((s) =>
            `${fmt(s.sandboxLoopLag.p99, 1)} / ${fmt(s.sandboxLoopLag.max, 1)} ms`
          )
            .join("; "),
        ],
      ],
      // The target is set at 1,000 msg/s; at another --rate the figures are only reported.
      verdicts: scale.rate !== 1000 && !o.quick ? [] : [
        verdict(
          ctx,
          "p99 latency added by the relay ≤ 5 ms at a steady 1,000 msg/s",
          `+${fmt(addedMs, 2)} ms (relay p99 ${fmt(x.p99, 2)}, direct p99 ${fmt(x.directP99, 2)})`,
          addedMs <= 5 && x.deliveredPerS >= 0.95 * scale.rate,
        ),
      ],
      notes: [],
      runs: zipRuns(r),
    });
  }

  if (o.scenarios.has(6)) {
    if (!o.scenarios.has(1) && !o.scenarios.has(2) && !o.scenarios.has(3)) {
      for (let run = 0; run < o.runs; run++) {
        progress(`6 memory: load run ${run + 1}/${o.runs} for the leak check`);
        const side = await measure(ctx, relay, base);
        rssAfterRuns.push(side.relayRssMB ?? NaN);
        peakAtLoad.push(side.relayPeakRssMB ?? NaN);
      }
    }
  }
  let leak: LeakFacts | undefined;
  if (o.scenarios.has(6)) {
    const after = await atRest(relay, scale.restMs, true);
    const life = await relay.child.stats();
    leak = { baseline, after, peak: life.maxRssBytes / MB, rssAfterRuns, peakAtLoad };
  }
  await stopRelay(ctx, relay);
  return leak;
}

/** 4 (10 vs 1,000 accounts), then 6's many-connections check and 5 on the big relay. */
export async function manyAccountScenarios(
  ctx: Ctx,
  reports: ScenarioReport[],
): Promise<ConnectionsResult | undefined> {
  const { o, scale } = ctx;
  const big = await startRelay(ctx, "C", scale.manyAccounts, scale.cap);
  await warmRelay(ctx, big);

  if (o.scenarios.has(4)) {
    // Its sessions share accounts (sessions / fewAccounts each): a cap that large keeps the
    // cap from binding, as it does not bind on the big relay (one session per account).
    const small = await startRelay(
      ctx,
      "B",
      scale.fewAccounts,
      Math.max(scale.cap, Math.ceil(scale.sessions / scale.fewAccounts)),
    );
    await warmRelay(ctx, small);
    const shape = (accounts: number): Shape => ({
      accounts,
      sessions: scale.sessions,
      messagesPerSession: scale.accountsM,
      size: MESSAGE_SIZE,
      durationMs: o.durationMs,
    });
    const few: Side[] = [];
    const many: Side[] = [];
    const direct: Side[] = [];
    // This machine's speed drifts within minutes: each run interleaves short slices of the
    // three loads (alternating their order) and adds them up.
    const slices = o.quick ? 1 : 4;
    for (let run = 0; run < o.runs; run++) {
      progress(`4 accounts: run ${run + 1}/${o.runs} (${slices} interleaved slices each)`);
      const parts: Record<"few" | "many" | "direct", Side[]> = { few: [], many: [], direct: [] };
      for (let slice = 0; slice < slices; slice++) {
        const order = (run * slices + slice) % 2 === 0
          ? ["few", "many", "direct"] as const
          : ["direct", "many", "few"] as const;
        for (const which of order) {
          const relay = which === "few" ? small : which === "many" ? big : undefined;
          const accounts = which === "few" ? scale.fewAccounts : scale.manyAccounts;
          parts[which].push(
            await measure(ctx, relay, {
              ...shape(accounts),
              durationMs: o.durationMs / slices,
            }),
          );
        }
      }
      few.push(mergeSides(parts.few));
      many.push(mergeSides(parts.many));
      direct.push(mergeSides(parts.direct));
    }
    await stopRelay(ctx, small);
    const ratios = many.map((m, i) => m.deliveredPerS / few[i].deliveredPerS);
    const cost = 1 - median(ratios);
    const xFew = row(`4 ${fmt(scale.fewAccounts)} accounts`, few, direct);
    const xMany = row(`4 ${fmt(scale.manyAccounts)} accounts`, many, direct);
    reports.push({
      id: 4,
      key: "accounts",
      title: `${fmt(scale.manyAccounts)} configured accounts versus ${fmt(scale.fewAccounts)}`,
      shape: `${scale.sessions} sessions × ${scale.accountsM} messages, then reconnect as the ` +
        `next account (so the sessions walk through all accounts); 2 KB; upstream cap ` +
        `${scale.cap}/account with ${
          fmt(scale.manyAccounts)
        } accounts (one session per account), ` +
        `${Math.max(scale.cap, Math.ceil(scale.sessions / scale.fewAccounts))} with ` +
        `${scale.fewAccounts} (${Math.ceil(scale.sessions / scale.fewAccounts)} sessions per ` +
        `account), so neither binds; direct baseline with ${fmt(scale.manyAccounts)} accounts`,
      rows: [xFew, xMany],
      facts: [["throughput ratio many/few, per run", ratios.map((r) => fmt(r, 3)).join(", ")]],
      verdicts: [
        verdict(
          ctx,
          "1,000 configured accounts cost < 10 % throughput versus 10 accounts",
          `${fmt(cost * 100, 1)} % (${fmt(xMany.deliveredPerS)} vs ${
            fmt(xFew.deliveredPerS)
          } msg/s)`,
          cost < 0.1,
        ),
      ],
      notes: [],
      runs: few.map((f, i) => ({ few: f, many: many[i], direct: direct[i], ratio: ratios[i] })),
    });
  }

  let connections: ConnectionsResult | undefined;
  if (o.scenarios.has(6)) connections = await manyConnections(ctx, big);
  if (o.scenarios.has(5)) await providerDelay(ctx, big, reports);
  await stopRelay(ctx, big);
  return connections;
}

/**
 * Opens `cap` upstream connections for every account: `cap` client sessions per account,
 * each sending two messages while the provider answers slowly, so each account's pool
 * grows to its cap. RSS is sampled while they are open.
 */
async function manyConnections(ctx: Ctx, relay: RelayProc): Promise<ConnectionsResult> {
  const { scale } = ctx;
  const want = relay.accounts * scale.cap;
  progress(`6 memory: opening ${fmt(want)} upstream connections`);
  await ctx.sandbox.request("delay", { ms: scale.memDelayMs });
  await relay.child.request("mark");
  let maxUpstream = 0;
  let rssAtMax = 0;
  let heapAtMax = { used: 0, total: 0 };
  let peakRss = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const [metrics, stats] = await Promise.all([scrape(relay), relay.child.stats()]);
      const up = metrics.get("smtp_relay_upstream_connections") ?? 0;
      peakRss = Math.max(peakRss, stats.peakRssBytes / MB);
      if (up >= maxUpstream) {
        maxUpstream = up;
        if (stats.rssBytes / MB >= rssAtMax) {
          rssAtMax = stats.rssBytes / MB;
          heapAtMax = { used: stats.heapUsedBytes / MB, total: stats.heapTotalBytes / MB };
        }
      }
      await sleep(250);
    }
  })();
  let side: Side;
  try {
    side = await measure(ctx, relay, {
      accounts: relay.accounts,
      sessions: want,
      // Sessions s, s+1, s+2 share an account and start together, so its pool must grow.
      accountOfSession: (s) => Math.floor(s / scale.cap),
      accountStride: relay.accounts,
      messagesPerSession: 2,
      maxMessagesPerWorker: 2,
      maxMessages: want * 2,
      size: MESSAGE_SIZE,
      durationMs: 120_000,
      rampUpMs: scale.rampMs,
      replyTimeoutMs: 60_000,
    });
  } finally {
    sampling = false;
    await sampler;
    await ctx.sandbox.request("delay", { ms: 0 });
  }
  const idleRss = (await atRest(relay, 1000)).rss;
  const idleUpstream = (await scrape(relay)).get("smtp_relay_upstream_connections") ?? 0;
  const facts: [string, string][] = [
    [
      `${
        fmt(want)
      } client sessions (${scale.cap} per account), provider reply delay ${scale.memDelayMs} ms`,
      `peak ${fmt(maxUpstream)} upstream connections open; RSS ${fmt(rssAtMax)} MB then, of ` +
      `it V8 heap ${fmt(heapAtMax.used)} MB used of ${fmt(heapAtMax.total)} (peak ${
        fmt(peakRss)
      } MB)`,
    ],
    [
      "clients gone, upstream connections still pooled",
      `${fmt(idleUpstream)} upstream connections, RSS ${fmt(idleRss)} MB`,
    ],
  ];
  return {
    facts,
    verdict: verdict(
      ctx,
      "≤ 200 MB RSS with 3,000 upstream connections open",
      `${fmt(maxUpstream)} open: ${fmt(rssAtMax)} MB with as many client sessions, ` +
        `${fmt(idleRss)} MB with ${fmt(idleUpstream)} idle`,
      maxUpstream >= 3000 && rssAtMax <= 200,
    ),
    run: { side, maxUpstream, rssAtMax, heapAtMax, peakRss, idleRss, idleUpstream },
  };
}

/** 5: slow provider, per-account cap; throughput against the cap's Little's-law bound. */
async function providerDelay(ctx: Ctx, relay: RelayProc, reports: ScenarioReport[]) {
  const { o, scale } = ctx;
  const sessions = scale.hot * scale.perHot;
  // Each message waits for three delayed replies upstream: MAIL, RCPT, end of DATA.
  const serviceS = (3 * scale.delayMs) / 1000;
  const bound = (scale.hot * Math.min(scale.perHot, scale.cap)) / serviceS;
  // Run r loads accounts [r·hot, (r+1)·hot): a different set each run, persistent sessions.
  const shape = (run: number, durationMs: number): Shape => ({
    accounts: relay.accounts,
    sessions,
    accountOfSession: (s) => (run * scale.hot + Math.floor(s / scale.perHot)) % relay.accounts,
    messagesPerSession: 1_000_000,
    size: MESSAGE_SIZE,
    durationMs,
    replyTimeoutMs: 60_000,
  });
  await ctx.sandbox.request("delay", { ms: scale.delayMs });
  const sides: Side[] = [];
  try {
    for (let run = 0; run < o.runs; run++) {
      progress(`5 provider-delay: run ${run + 1}/${o.runs} (bound ${fmt(bound)} msg/s)`);
      // Unmeasured: lets these accounts' pools grow to their cap.
      await measure(ctx, relay, shape(run, scale.warmMs / 2));
      sides.push(await measure(ctx, relay, shape(run, o.durationMs)));
    }
  } finally {
    await ctx.sandbox.request("delay", { ms: 0 });
  }
  const x = row(`5 ${scale.delayMs} ms provider delay`, sides);
  const fraction = x.deliveredPerS / bound;
  reports.push({
    id: 5,
    key: "provider-delay",
    title: `${scale.delayMs} ms per provider reply, ${
      fmt(relay.accounts)
    } accounts, cap ${scale.cap}`,
    shape: `${fmt(sessions)} persistent sessions, ${scale.perHot} per account on ${scale.hot} ` +
      `accounts (another ${scale.hot} of the ${fmt(relay.accounts)} each run, pools warmed ` +
      `${fmt(scale.warmMs / 2000, 1)} s first); 2 KB`,
    rows: [x],
    facts: [
      [
        "Little's-law bound",
        `${scale.hot} busy accounts × ${Math.min(scale.perHot, scale.cap)} connections / ` +
        `${fmt(serviceS * 1000)} ms per message (3 delayed replies) = ${fmt(bound)} msg/s`,
      ],
      [
        "fraction of the bound, per run",
        sides.map((s) => fmt(s.deliveredPerS / bound, 3)).join(", "),
      ],
      [
        `client latency p50 (ideal: ${scale.perHot}/${scale.cap} × ${fmt(serviceS * 1000)} ms ` +
        `with ${scale.perHot} sessions on ${scale.cap} connections)`,
        `${fmt(x.p50, 1)} ms`,
      ],
      [
        "relay CPU per run (well under one core per second: the cap, not the CPU, binds)",
        `${fmt(x.relayCpuS, 2)} s in ${fmt(o.durationMs / 1000, 1)} s`,
      ],
    ],
    verdicts: [
      verdict(
        ctx,
        "≥ 80 % of the connection cap's Little's-law bound (50 ms delay, 1,000 accounts, cap 3)",
        `${fmt(fraction * 100, 1)} % (${fmt(x.deliveredPerS)} of ${fmt(bound)} msg/s)`,
        fraction >= 0.8,
      ),
    ],
    notes: [
      "No direct baseline: the bound, not the provider, is the reference here.",
    ],
    runs: sides,
  });
}

/** 6: the big message on a fresh one-account relay. */
export async function bigMessage(
  ctx: Ctx,
): Promise<{ facts: [string, string][]; verdict: Verdict; runs: unknown[] }> {
  const { o, scale } = ctx;
  const relay = await startRelay(ctx, "D", 1);
  await warmRelay(ctx, relay);
  const initial = (await atRest(relay, 1000, true)).rss;
  const shape: Shape = {
    accounts: 1,
    sessions: 1,
    messagesPerSession: 1,
    size: scale.bigSize,
    durationMs: 300_000,
    maxMessages: 1,
    replyTimeoutMs: 120_000,
  };
  const size = scale.bigSize / MB;
  const runs: { relay: Side; direct: Side; baselineMB: number; growthMB: number }[] = [];
  for (let run = 0; run < o.runs; run++) {
    progress(`6 memory: ${fmt(size, 1)} MB message, run ${run + 1}/${o.runs}`);
    // Each message starts from a collected heap; its peak is sampled every 20 ms.
    const baselineMB = (await atRest(relay, 500, true)).rss;
    const side = await measure(ctx, relay, shape);
    runs.push({
      relay: side,
      direct: await measure(ctx, undefined, shape),
      baselineMB,
      growthMB: (side.relayPeakRssMB ?? NaN) - baselineMB,
    });
  }
  const life = await relay.child.stats();
  await stopRelay(ctx, relay);
  const growth = median(runs.map((r) => r.growthMB)) / size;
  const lat = median(runs.map((r) => r.relay.transactionLatency.p50));
  const directLat = median(runs.map((r) => r.direct.transactionLatency.p50));
  return {
    facts: [
      [
        `${fmt(size, 1)} MB message through a one-account relay, ${o.runs}× (RSS before each, ` +
        "after a full GC → peak while it is relayed)",
        runs.map((r) => `${fmt(r.baselineMB)} → ${fmt(r.relay.relayPeakRssMB)} MB`).join(", ") +
        `; MAIL-to-250 ${fmt(lat)} ms (direct ${fmt(directLat)} ms)`,
      ],
      [
        "lifetime peak RSS of that relay (getrusage) vs its RSS before the first big message",
        `${fmt(life.maxRssBytes / MB)} MB vs ${fmt(initial)} MB`,
      ],
    ],
    verdict: verdict(
      ctx,
      "a 25 MB message relays with peak memory ≤ 2× its size",
      `peak − baseline = ${fmt(growth, 2)}× size (median +${fmt(growth * size)} MB for ${
        fmt(size, 1)
      } MB)`,
      growth <= 2,
    ),
    runs,
  };
}

function memoryText(r: Rest): string {
  return `RSS ${fmt(r.rss)} MB (V8 heap ${fmt(r.heapUsed, 1)} MB used of ${fmt(r.heapTotal, 1)}, ` +
    `external ${fmt(r.external, 1)} MB)`;
}

/** Scenario 6 from its three parts: many connections, the big message, the leak check. */
export function memoryReport(
  ctx: Ctx,
  big: { facts: [string, string][]; verdict: Verdict; runs: unknown[] },
  connections: ConnectionsResult | undefined,
  leak: LeakFacts | undefined,
  storm: { facts: [string, string][]; run: unknown },
): ScenarioReport {
  const facts: [string, string][] = [];
  const verdicts: Verdict[] = [];
  if (connections) {
    facts.push(...connections.facts);
    verdicts.push(connections.verdict);
  }
  facts.push(...big.facts);
  verdicts.push(big.verdict);
  if (leak) {
    facts.push(
      [
        "relay A after warm-up and a full GC (baseline)",
        memoryText(leak.baseline),
      ],
      [
        "relay A RSS at the end of each load run",
        leak.rssAfterRuns.map((r) => `${fmt(r)} MB`).join(", ") || "–",
      ],
      [
        `relay A ${fmt(ctx.scale.restMs / 1000, 1)} s after all its load, then a full GC`,
        `${memoryText(leak.after)} ` +
        `(lifetime peak RSS ${fmt(leak.peak)} MB)`,
      ],
    );
    if (leak.peakAtLoad.length > 0) {
      const at50 = median(leak.peakAtLoad);
      verdicts.push(verdict(
        ctx,
        `≤ 150 MB RSS under the ${ctx.scale.sessions}-session persistent load (relay A)`,
        `peak ${fmt(at50)} MB (median; per run ${
          leak.peakAtLoad.map((r) => fmt(r)).join(", ")
        } MB); after warm-up ${fmt(leak.baseline.rss)} MB`,
        at50 <= 150,
      ));
    }
    const grew = leak.after.rss - leak.baseline.rss;
    verdicts.push(verdict(
      ctx,
      "memory returns to baseline after the load (no leak)",
      `RSS ${fmt(leak.after.rss)} MB after vs ${fmt(leak.baseline.rss)} MB (+${fmt(grew)} MB); ` +
        `V8 heap ${fmt(leak.after.heapUsed, 1)} vs ${fmt(leak.baseline.heapUsed, 1)} MB`,
      grew <= Math.max(20, 0.25 * leak.baseline.rss),
    ));
  }
  facts.push(...storm.facts);
  for (const w of ctx.warmups) {
    facts.push([
      `relay ${w.relay}: first login + first message of ${fmt(w.accounts)} accounts ` +
      `(${w.sessions} sessions at once)`,
      `${fmt(w.seconds, 1)} s, relay CPU ${fmt(w.relayCpuS, 1)} s, peak RSS ${fmt(w.peakRssMB)} MB`,
    ]);
  }
  return {
    id: 6,
    key: "memory",
    title: "memory",
    shape: "RSS as the relay measures itself (getrusage maxrss, RSS sampled every 50 ms)",
    rows: [],
    facts,
    verdicts,
    notes: [
      '"back to baseline" is judged on RSS, within max(20 MB, 25 %) of the RSS after ' +
      "warm-up, both taken after a full GC (the relay runs with --expose-gc for this).",
    ],
    runs: [connections?.run, big.runs, leak, storm.run].filter(Boolean),
  };
}

/**
 * Concurrent first logins with hashPassword()'s real cost: `stormAccounts` wrong-password
 * attempts at once (every failure costs a full scrypt), then as many good first logins.
 */
export async function loginStorm(ctx: Ctx): Promise<{ facts: [string, string][]; run: unknown }> {
  const n = ctx.scale.stormAccounts;
  const relay = await startRelay(ctx, "L", n, undefined, await hashPassword(BENCH_PASSWORD));
  const phase = async (password: string) => {
    await relay.child.request("mark");
    const before = await relay.child.stats();
    const load = await runLoad({
      target: { ...relayTarget(relay), login: { kind: "plain", password } },
      accounts: emails(n),
      sessions: n,
      messagesPerSession: 1,
      maxMessagesPerWorker: 1,
      maxMessages: n,
      preOpen: false,
      message: message(ctx, MESSAGE_SIZE),
      recipient: BENCH_RECIPIENT,
      durationMs: 120_000,
      replyTimeoutMs: 120_000,
    });
    const after = await relay.child.stats();
    return {
      attempts: load.attempted,
      acked: load.acked,
      failures: load.failures,
      seconds: load.elapsedS,
      relayCpuS: cpuS(after) - cpuS(before),
      rssBeforeMB: before.rssBytes / MB,
      peakRssMB: after.peakRssBytes / MB,
      rssAfterMB: after.rssBytes / MB,
    };
  };
  progress(`6 memory: login storm, ${n} concurrent logins with the real password hash`);
  const bad = await phase("wrong password");
  const good = await phase(BENCH_PASSWORD);
  const settled = await atRest(relay, 1000, true);
  await stopRelay(ctx, relay);
  const line = (p: typeof bad) =>
    `${fmt(p.seconds, 1)} s, relay CPU ${fmt(p.relayCpuS, 1)} s, RSS ${fmt(p.rssBeforeMB)} → ` +
    `peak ${fmt(p.peakRssMB)} MB`;
  return {
    facts: [
      [
        `login storm (hashPassword cost): ${n} concurrent AUTH with a wrong password ` +
        `(${fmt(bad.failures["5xx"] ?? 0)} refused)`,
        line(bad),
      ],
      [
        `then ${n} concurrent first logins + 1 message each (${fmt(good.acked)} delivered)`,
        line(good),
      ],
      [
        "after both storms, a full GC",
        `RSS ${fmt(settled.rss)} MB (heap ${fmt(settled.heapUsed, 1)} MB)`,
      ],
    ],
    run: { bad, good, settled },
  };
}

/** Round trips to the provider measured by scenario 7, ms. */
export const DISTANCE_RTTS_MS = [10, 20, 50] as const;
/** Scenario 7's persistent sessions (one account each): light load, latency is the point. */
const DISTANCE_SESSIONS = 10;

/**
 * 7: a provider some distance away. A delaying forwarder (`./forwarder.ts`) sits between
 * the relay and the sandbox, and the direct baseline goes through the same forwarder, so
 * both see the same round trip. Latency after the client's final dot, in round trips: one
 * is the floor (the provider's answer to the dot must come back).
 */
export async function distance(ctx: Ctx, reports: ScenarioReport[]): Promise<void> {
  const { o } = ctx;
  const forwarder = startForwarder("127.0.0.1", ctx.sandboxInfo.smtpPort, 0);
  const relay = await startRelay(
    ctx,
    "D",
    DISTANCE_SESSIONS,
    undefined,
    ctx.passwordHash,
    forwarder.port,
  );
  try {
    await warmRelay(ctx, relay);
    const rows = [];
    const facts: [string, string][] = [];
    const runs: unknown[] = [];
    const verdicts: Verdict[] = [];
    for (const rtt of DISTANCE_RTTS_MS) {
      forwarder.oneWayMs = rtt / 2;
      const shape: Shape = {
        accounts: DISTANCE_SESSIONS,
        sessions: DISTANCE_SESSIONS,
        messagesPerSession: 1_000_000,
        size: MESSAGE_SIZE,
        durationMs: o.durationMs,
        directPort: forwarder.port,
        replyTimeoutMs: 60_000,
      };
      // Unmeasured: pooled connections made at this distance, JIT warm.
      await measure(ctx, relay, { ...shape, durationMs: Math.min(2000, o.durationMs) });
      const r = await relayVsDirect(ctx, relay, shape, `7 distance ${rtt} ms`);
      const x = row(`7 ${rtt} ms round trip`, r.relay, r.direct);
      rows.push(x);
      const directP50 = median(r.direct.map((s) => s.latency.p50));
      const inRtt = x.p50 / rtt;
      const added = r.relay.map((s, i) => (s.latency.p50 - r.direct[i].latency.p50) / rtt);
      facts.push([
        `${rtt} ms: p50 after the final dot, relay / direct`,
        `${fmt(x.p50, 1)} ms = ${fmt(inRtt, 2)} RTT / ${fmt(directP50, 1)} ms = ` +
        `${fmt(directP50 / rtt, 2)} RTT; added per run ${
          added.map((a) => `${fmt(a, 2)}`).join(", ")
        } RTT`,
      ]);
      facts.push([
        `${rtt} ms: whole transaction p50 (MAIL to the final reply), relay / direct`,
        `${fmt(median(r.relay.map((s) => s.transactionLatency.p50)), 1)} ms / ` +
        `${fmt(median(r.direct.map((s) => s.transactionLatency.p50)), 1)} ms`,
      ]);
      runs.push({ rtt, ...r });
      if (rtt === 20) {
        verdicts.push(
          verdict(
            ctx,
            "p50 latency after the client's final dot ≤ 1.3 round trips at 20 ms",
            `${fmt(inRtt, 2)} RTT (${fmt(x.p50, 1)} ms; direct ${fmt(directP50 / rtt, 2)} RTT)`,
            inRtt <= 1.3,
          ),
        );
      }
    }
    forwarder.oneWayMs = 0;
    reports.push({
      id: 7,
      key: "distance",
      title: "a provider some distance away (delaying forwarder, both directions)",
      shape: `${DISTANCE_SESSIONS} persistent sessions, one account each, closed loop, 2 KB; ` +
        `relay → forwarder → sandbox, direct baseline → the same forwarder → sandbox; round ` +
        `trips ${DISTANCE_RTTS_MS.join(", ")} ms; latency = end of DATA to the reply`,
      rows,
      facts,
      verdicts,
      notes: [
        "The forwarder holds every chunk for half the round trip, in both directions, order " +
        "kept; pipelined commands stay pipelined (the sandbox's per-reply delay of scenario 5 " +
        "is a server-side sleep that serialises them, not a distance).",
      ],
      runs,
    });
  } finally {
    await stopRelay(ctx, relay);
    await forwarder.close();
  }
}

/** Scenario 8's message size: 1 MiB. */
export const LARGE_SIZE = 1024 * 1024;
/** Scenario 8's persistent sessions (one account each). */
const LARGE_SESSIONS = 10;

/**
 * 8: 1 MiB messages over 10 persistent sessions, relay against direct, relay CPU per
 * message (dot-unstuffing at the ingress, dot-stuffing upstream, TLS, copies).
 */
export async function largeMessages(ctx: Ctx, reports: ScenarioReport[]): Promise<void> {
  const { o } = ctx;
  const relay = await startRelay(ctx, "L", LARGE_SESSIONS);
  try {
    await warmRelay(ctx, relay);
    const shape: Shape = {
      accounts: LARGE_SESSIONS,
      sessions: LARGE_SESSIONS,
      messagesPerSession: 1_000_000,
      size: LARGE_SIZE,
      durationMs: o.durationMs,
      replyTimeoutMs: 60_000,
    };
    await measure(ctx, relay, { ...shape, durationMs: Math.min(2000, o.durationMs) });
    const r = await relayVsDirect(ctx, relay, shape, "8 large");
    const x = row("8 1 MiB messages", r.relay, r.direct);
    reports.push({
      id: 8,
      key: "large",
      title: "1 MiB messages",
      shape: `${LARGE_SESSIONS} persistent sessions, one account each, closed loop, ` +
        `${fmt(LARGE_SIZE)}-byte messages`,
      rows: [x],
      facts: [[
        "relay CPU per message, per run",
        r.relay.map((s) => `${fmt((s.relayCpuUsPerMsg ?? NaN) / 1000, 2)} ms`).join(", "),
      ]],
      verdicts: [
        verdict(
          ctx,
          "≤ 3 ms relay CPU per 1 MiB message",
          `${fmt((x.cpuUsPerMsg ?? NaN) / 1000, 2)} ms (${fmt(x.ratio, 2)}× direct throughput)`,
          (x.cpuUsPerMsg ?? Infinity) <= 3000,
        ),
      ],
      notes: [],
      runs: zipRuns(r),
    });
  } finally {
    await stopRelay(ctx, relay);
  }
}
