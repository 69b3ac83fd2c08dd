/**
 * Readiness as `/readyz` reports it: listening, the accounts counted by token state
 * (and how many hold a rotated refresh token that is not saved yet), and the shared
 * state (Redis) when configured: a relay that cannot reach it is not ready.
 * @module
 */
import type { Readiness } from "./http.ts";
import type { TokenHealth } from "./tokens/manager.ts";

/** What readiness needs to know of the shared-state connection. */
export interface SharedStateHealth {
  /** `host:port`. */
  readonly host: string;
  /** Answers in time. */
  readonly up: boolean;
  /** Why not. */
  readonly reason: string;
}

/** Counts `accounts` into a {@link Readiness}; `shared`: the Redis connection, if any. */
export function readiness(
  listening: boolean,
  accounts: readonly TokenHealth[],
  shared?: SharedStateHealth,
): Readiness {
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
    ...(shared
      ? {
        sharedState: {
          backend: "redis" as const,
          host: shared.host,
          up: shared.up,
          ...(shared.up ? {} : { reason: shared.reason }),
        },
      }
      : {}),
  };
}
