/**
 * What a reload may change in place, decided in one pure function. Accounts, sender
 * domains, token settings and `deliveryTimeoutSeconds` (for messages that arrive after the
 * reload) are applied; every other setting needs a restart and keeps
 * the value the process started with, so a change not applied stays reported (and not
 * applied) at every later reload until the process restarts.
 * @module
 */
import type { RelayConfig } from "./config/load.ts";

/** The outcome of comparing the config in force with a newly loaded one. */
export interface ReloadPlan {
  /** The config to run with: `next`'s reloadable parts, the running one's others. */
  readonly config: RelayConfig;
  /** Settings that differ but need a restart, one line each (e.g. `smtp.name`). */
  readonly notApplied: readonly string[];
}

/** Top-level settings that need a restart. `smtp` and `smtps` are compared field by field. */
const RESTART_ONLY = [
  "smtp",
  "smtps",
  "http",
  "limits",
  "stateDir",
  "state",
  "shutdownTimeoutSeconds",
  "metrics",
  "tls",
] as const;

const NOTES: Partial<Record<string, string>> = {
  "smtp.name": "smtp.name (banner, EHLO name upstream and in non-delivery reports)",
  tls: "tls file names (the files themselves are re-read)",
};

/** Compares the running config with `next`; see {@link ReloadPlan}. */
export function planReload(running: RelayConfig, next: RelayConfig): ReloadPlan {
  const notApplied: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const kept: Record<string, unknown> = {};
  for (const key of RESTART_ONLY) {
    const was = running[key] as unknown;
    const now = next[key] as unknown;
    kept[key] = was;
    if (same(was, now)) continue;
    if ((key === "smtp" || key === "smtps") && isRecord(was) && isRecord(now)) {
      const fields = new Set([...Object.keys(was), ...Object.keys(now)]);
      for (const f of [...fields].sort()) {
        if (!same(was[f], now[f])) notApplied.push(NOTES[`${key}.${f}`] ?? `${key}.${f}`);
      }
    } else {
      notApplied.push(NOTES[key] ?? key);
    }
  }
  return { config: { ...next, ...kept } as RelayConfig, notApplied };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
