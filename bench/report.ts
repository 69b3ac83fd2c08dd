/**
 * Result types of the benchmark and their rendering: one Markdown document that is both
 * the stdout table and the section appended to `bench/RESULTS.md`.
 * @module
 */
import type { Percentiles } from "./loadgen.ts";
import type { ProfileSummary } from "./profile.ts";

/** One side (through the relay, or direct to the sandbox) of one measured run. */
export interface Side {
  /** Messages answered 2xx. */
  readonly acked: number;
  /** Messages the sandbox provider accepted during the run. */
  readonly delivered: number;
  /** Messages tried. */
  readonly attempted: number;
  /** Failures by class. */
  readonly failures: Record<string, number>;
  /** Some failure texts. */
  readonly failureSamples: readonly string[];
  /** Run length, seconds. */
  readonly elapsedS: number;
  /** Acknowledged messages per second. */
  readonly ackedPerS: number;
  /** Delivered (counted at the sandbox) messages per second. */
  readonly deliveredPerS: number;
  /** End of DATA to reply, ms. */
  readonly latency: Percentiles;
  /** MAIL FROM to final reply, ms. */
  readonly transactionLatency: Percentiles;
  /** Open loop: start lag behind schedule, ms. */
  readonly startLag?: Percentiles;
  /** Client connections logged in. */
  readonly sessionsOpened: number;
  /** Relay CPU seconds (user + system) during the run; relay side only. */
  readonly relayCpuS?: number;
  /** Relay CPU per delivered message, µs. */
  readonly relayCpuUsPerMsg?: number;
  /** Relay peak RSS during the run (sampled every 50 ms), MB. */
  readonly relayPeakRssMB?: number;
  /** Relay RSS at the end of the run, MB. */
  readonly relayRssMB?: number;
  /** Relay event-loop lag during the run (a 20 ms timer's lateness), ms. */
  readonly relayLoopLag?: { readonly p99: number; readonly max: number; readonly over50: number };
  /**
   * Mean time inside the relay from the end of DATA to its reply (its own
   * `smtp_relay_message_duration_seconds` histogram, delivered messages), ms.
   */
  readonly relayDeliverMeanMs?: number;
  /** Share of delivered messages that spent over 10 ms inside the relay (same histogram). */
  readonly relayOver10msShare?: number;
  /** Sandbox event-loop lag during the run, ms. */
  readonly sandboxLoopLag: { readonly p99: number; readonly max: number; readonly over50: number };
  /** Sandbox provider CPU seconds during the run. */
  readonly sandboxCpuS: number;
  /** Load generator (runner process) CPU seconds during the run. */
  readonly generatorCpuS: number;
}

/** A line of the throughput table (medians over runs). */
export interface ThroughputRow {
  /** Scenario number and variant. */
  readonly label: string;
  /** Median delivered/s through the relay. */
  readonly deliveredPerS: number;
  /** Median acknowledged/s through the relay. */
  readonly ackedPerS: number;
  /** Median delivered/s direct to the sandbox. */
  readonly directPerS?: number;
  /** Median of the per-run relay/direct ratios. */
  readonly ratio?: number;
  /** Median latency percentiles through the relay, ms. */
  readonly p50: number;
  /** p95, ms. */
  readonly p95: number;
  /** p99, ms. */
  readonly p99: number;
  /** max, ms. */
  readonly max: number;
  /** Median direct p99, ms. */
  readonly directP99?: number;
  /** Median relay CPU seconds per run. */
  readonly relayCpuS?: number;
  /** Median relay CPU per message, µs. */
  readonly cpuUsPerMsg?: number;
  /** Largest relay peak RSS over the runs, MB. */
  readonly peakRssMB?: number;
  /** Median CPU seconds of the sandbox and the load generator together (relay side runs). */
  readonly otherCpuS?: number;
  /** Failures over all runs, by class, relay side (and direct side). */
  readonly failures: string;
}

/** Whether a target of the issue was met. */
export interface Verdict {
  /** The target, as the issue states it. */
  readonly target: string;
  /** What was measured. */
  readonly measured: string;
  /** true / false; null when not judged (quick mode or not measurable). */
  readonly met: boolean | null;
}

/** One scenario's results. */
export interface ScenarioReport {
  /** 1-6, as numbered in the issue. */
  readonly id: number;
  /** `--scenario` name. */
  readonly key: string;
  /** Title. */
  readonly title: string;
  /** Load shape, in words. */
  readonly shape: string;
  /** Throughput rows (medians). */
  readonly rows: ThroughputRow[];
  /** Extra name/value lines (memory scenario, bounds). */
  readonly facts: [string, string][];
  /** Verdicts, one per target of the scenario. */
  readonly verdicts: Verdict[];
  /** Remarks. */
  readonly notes: string[];
  /** Every run's raw figures. */
  readonly runs: unknown[];
}

/** The machine a run happened on. */
export interface Machine {
  /** CPU model (os.cpus()). */
  readonly cpu: string;
  /** Logical cores. */
  readonly cores: number;
  /** Deno, V8 and TypeScript versions. */
  readonly deno: string;
  /** Git commit of the working tree (uncommitted edits not shown), or "unknown". */
  readonly commit: string;
}

/** A whole benchmark run. */
export interface BenchReport {
  /** ISO time of the start. */
  readonly date: string;
  /** Quick (smoke) mode. */
  readonly quick: boolean;
  /** Runs per scenario (medians are over these). */
  readonly runs: number;
  /** Measurement window per run, seconds. */
  readonly durationS: number;
  /** Where it ran. */
  readonly machine: Machine;
  /** Scenarios, in the order run. */
  readonly scenarios: ScenarioReport[];
  /** Relay CPU profiles (`--profile`). */
  readonly profiles: { relay: string; summary: ProfileSummary }[];
  /** Things that look broken (acks without deliveries, empty runs...). */
  readonly problems: string[];
  /** Wall time of the whole benchmark, seconds. */
  readonly wallS: number;
  /** Cost of the measured relays' password hash: light (N=2^10) or hashPassword()'s. */
  readonly passwordHash: "light" | "real";
}

/** The median of numbers (NaN when empty). */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Formats a number for tables: thousands separators, fixed decimals. */
export function fmt(value: number | undefined, decimals = 0): string {
  if (value === undefined || !Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: decimals,
    maximumFractionDigits: decimals,
  });
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

function verdictText(v: Verdict): string {
  return v.met === null ? "not judged" : v.met ? "met" : "**missed**";
}

/** The report as Markdown (a `##` section). */
export function renderMarkdown(r: BenchReport): string {
  const out: string[] = [];
  out.push(
    `## ${r.date.slice(0, 16).replace("T", " ")} UTC${r.quick ? " (quick smoke run)" : ""}`,
    "",
    `${r.machine.cpu}, ${r.machine.cores} cores · ${r.machine.deno} · commit ${r.machine.commit} · ` +
      `${r.runs} run(s) of ${fmt(r.durationS, 1)} s per scenario, medians · wall ${
        fmt(r.wallS)
      } s · ` +
      `relay password hash: ${
        r.passwordHash === "light" ? "light (scrypt N=2^10)" : "hashPassword()"
      }`,
    "",
  );
  const rows = r.scenarios.flatMap((s) => s.rows);
  if (rows.length) {
    out.push(
      table(
        [
          "scenario",
          "delivered/s",
          "acked/s",
          "direct/s",
          "relay/direct",
          "p50 ms",
          "p95 ms",
          "p99 ms",
          "max ms",
          "direct p99",
          "relay CPU s",
          "sandbox+gen CPU s",
          "CPU µs/msg",
          "peak RSS MB",
          "failures",
        ],
        rows.map((x) => [
          x.label,
          fmt(x.deliveredPerS),
          fmt(x.ackedPerS),
          fmt(x.directPerS),
          fmt(x.ratio, 2),
          fmt(x.p50, 1),
          fmt(x.p95, 1),
          fmt(x.p99, 1),
          fmt(x.max, 1),
          fmt(x.directP99, 1),
          fmt(x.relayCpuS, 2),
          fmt(x.otherCpuS, 2),
          fmt(x.cpuUsPerMsg),
          fmt(x.peakRssMB),
          x.failures || "0",
        ]),
      ),
      "",
    );
  }
  const verdicts = r.scenarios.flatMap((s) => s.verdicts.map((v) => [s, v] as const));
  if (verdicts.length) {
    out.push(
      table(
        ["#", "target", "measured", "result"],
        verdicts.map(([s, v]) => [String(s.id), v.target, v.measured, verdictText(v)]),
      ),
      "",
    );
  }
  for (const s of r.scenarios) {
    if (!s.facts.length && !s.notes.length) continue;
    out.push(`**${s.id}. ${s.title}** (${s.shape})`, "");
    for (const [k, v] of s.facts) out.push(`- ${k}: ${v}`);
    for (const n of s.notes) out.push(`- ${n}`);
    out.push("");
  }
  for (const p of r.profiles) {
    out.push(
      `**CPU profile of relay \`${p.relay}\`** (${fmt(p.summary.busyMs)} ms busy, ` +
        `${fmt(p.summary.idleMs)} ms idle; self time)`,
      "",
      table(
        ["module (self)", "self ms", "%", "module (on the stack)", "incl. ms", "%"],
        Array.from({ length: 12 }, (_, i) => {
          const a = p.summary.topModules[i];
          const b = p.summary.inclusiveModules[i];
          return [
            a?.name ?? "",
            fmt(a?.selfMs),
            fmt(a?.pct, 1),
            b?.name ?? "",
            fmt(b?.selfMs),
            fmt(b?.pct, 1),
          ];
        }),
      ),
      "",
      table(
        ["function", "self ms", "%"],
        p.summary.topFrames.slice(0, 15).map((c) => [
          `\`${c.name}\``,
          fmt(c.selfMs),
          fmt(c.pct, 1),
        ]),
      ),
      "",
    );
  }
  if (r.problems.length) {
    out.push("**Problems seen**", "", ...r.problems.map((p) => `- ${p}`), "");
  }
  return out.join("\n");
}
