/**
 * Readiness as `/readyz` reports it: listening, and the accounts counted by token state.
 * @module
 */
import type { Readiness } from "./http.ts";
import type { TokenState } from "./tokens/manager.ts";

/** Counts `states` into a {@link Readiness}. */
export function readiness(listening: boolean, states: readonly TokenState[]): Readiness {
  return {
    listening,
    accounts: {
      total: states.length,
      ok: states.filter((s) => s === "ok").length,
      failing: states.filter((s) => s === "failing").length,
      needsReauth: states.filter((s) => s === "needs_reauth").length,
    },
  };
}
