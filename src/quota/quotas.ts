/**
 * The quota backend: per-account counters behind an asynchronous interface that a
 * shared store (Redis, for several relay instances) can implement. Counters belong to
 * the account's address, not to a configuration generation: a reload that changes an
 * account keeps counting on the same counters, also for sessions that began before it.
 *
 * {@link LocalQuotas} is the one-process implementation: counters in memory
 * ({@link AccountQuota}), read from the state store on an account's first use and
 * written back by {@link LocalQuotas.flush} (every 10 s and at stop).
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { StateStore } from "../state/store.ts";
import {
  AccountQuota,
  type QuotaExceeded,
  type QuotaLimits,
  type QuotaSnapshot,
  type QuotaUsage,
  type Reservation,
} from "./quota.ts";

/** Per-account sending quotas, shared by every session and every config generation. */
export interface Quotas {
  /**
   * Reserves one message to `recipients` recipients on `account`'s counters under
   * `limits` (the account's limits as configured now), or says which limit it would break.
   */
  reserve(
    account: string,
    limits: QuotaLimits,
    recipients: number,
  ): Promise<Reservation | QuotaExceeded>;
  /** Use in the current windows. */
  usage(account: string): Promise<QuotaUsage>;
}

/** True for a granted reservation, false for a refusal. */
export function isReservation(r: Reservation | QuotaExceeded): r is Reservation {
  return "release" in r;
}

const log = getLogger(["relay", "quota"]);
const NO_LIMITS: QuotaLimits = { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 0 };

/** Options of {@link LocalQuotas}. */
export interface LocalQuotasOptions {
  /** The clock (ms since the epoch); tests pass their own. */
  readonly now?: () => number;
}

/** {@link Quotas} in this process's memory, persisted to a {@link StateStore}. */
export class LocalQuotas implements Quotas {
  readonly #store: StateStore<QuotaSnapshot>;
  readonly #now: () => number;
  readonly #counters = new Map<string, Promise<AccountQuota>>();
  #flushing?: Promise<void>;

  /** Counters are loaded from `store` on each account's first use. */
  constructor(store: StateStore<QuotaSnapshot>, options: LocalQuotasOptions = {}) {
    this.#store = store;
    this.#now = options.now ?? Date.now;
  }

  /** See {@link Quotas.reserve}. */
  async reserve(
    account: string,
    limits: QuotaLimits,
    recipients: number,
  ): Promise<Reservation | QuotaExceeded> {
    const q = await this.#of(account);
    q.limits = limits;
    return q.reserve(recipients, this.#now());
  }

  /** See {@link Quotas.usage}. */
  async usage(account: string): Promise<QuotaUsage> {
    return (await this.#of(account)).usage(this.#now());
  }

  /**
   * Writes changed counters (every account's with `all`), one account after the other:
   * written all at once, 100 accounts' files cost the event loop a ~30 ms stretch, which
   * every message in flight then waits out. A flush asked for while one runs waits for it
   * and runs after it. Failures are logged; the counters stay dirty and are tried again.
   */
  async flush(all = false): Promise<void> {
    while (this.#flushing) await this.#flushing;
    this.#flushing = (async () => {
      for (const [key, pending] of [...this.#counters]) {
        const q = await pending;
        if (!all && !q.dirty) continue;
        await this.#store.save(key, q.snapshot(this.#now())).catch((err) =>
          log.error("cannot save quota counters of {account}: {error}", {
            account: key,
            error: err instanceof Error ? err.message : String(err),
          })
        );
      }
    })().finally(() => this.#flushing = undefined);
    await this.#flushing;
  }

  /** True while a {@link flush} is writing. */
  get flushing(): boolean {
    return this.#flushing !== undefined;
  }

  #of(account: string): Promise<AccountQuota> {
    const key = account.toLowerCase();
    let q = this.#counters.get(key);
    if (!q) {
      q = this.#store.load(key).catch((err) => {
        log.warn("ignoring unreadable quota counters of {account}: {error}", {
          account: key,
          error: err instanceof Error ? err.message : String(err),
        });
        return undefined;
      }).then((snapshot) => new AccountQuota(NO_LIMITS, snapshot));
      this.#counters.set(key, q);
    }
    return q;
  }
}
