/**
 * Readiness as `/readyz` reports it: listening, and the accounts counted by token state
 * (and how many hold a rotated refresh token that is not saved yet).
 * @module
 */
import type { Readiness } from "./http.ts";
import type { TokenHealth } from "./tokens/manager.ts";

/** Counts `accounts` into a {@link Readiness}. */
export function readiness(listening: boolean, accounts: readonly TokenHealth[]): Readiness {
  const count = (state: TokenHealth["state"]) => accounts.filter((a) => a.state === state).length;
  return {
    listening,
    accounts: {
      total: accounts.length,
      ok: count("ok"),
      failing: count("failing"),
      needsReauth: count("needs_reauth"),
      stateCorrupt: count("state_corrupt"),
      unsaved: accounts.filter((a) => a.unsaved).length,
    },
  };
}
