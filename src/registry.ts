/**
 * The accounts in force: one {@link AccountRuntime} per configured address, rebuilt only
 * for the accounts a reload changed. An unchanged account keeps its runtime (tokens,
 * pooled connections); a changed or removed one is retired once its messages are done.
 * @module
 */
import type { RelayConfig } from "./config/load.ts";
import { type AccountDeps, accountKey, AccountRuntime, type AccountStatus } from "./accounts.ts";
import type { Quotas } from "./quota/quotas.ts";
import type { RelayAccount } from "./relay/relay.ts";
import type { TokenHealth, UnsavedToken } from "./tokens/manager.ts";

/** An account whose rotated refresh token is still not saved after the last write at stop. */
export interface UnsavedAtStop {
  /** Mailbox address. */
  readonly account: string;
  /** Where and why. */
  readonly unsaved: UnsavedToken;
}

/** How many accounts a reload added, removed and changed. */
export interface AccountChanges {
  /** New addresses. */
  readonly added: number;
  /** Addresses no longer configured. */
  readonly removed: number;
  /** Addresses whose settings changed (new runtime). */
  readonly changed: number;
}

/** The running accounts, keyed by lower-cased address. */
export class AccountRegistry {
  readonly #deps: AccountDeps;
  readonly #quotas: Quotas;
  #runtimes = new Map<string, AccountRuntime>();

  /** Starts empty; {@link apply} the first config. */
  constructor(deps: AccountDeps, quotas: Quotas) {
    this.#deps = deps;
    this.#quotas = quotas;
  }

  /** Number of accounts. */
  get size(): number {
    return this.#runtimes.size;
  }

  /** The runtimes in config order. */
  get runtimes(): AccountRuntime[] {
    return [...this.#runtimes.values()];
  }

  /** What the relay uses of each account. */
  relayAccounts(): RelayAccount[] {
    return this.runtimes.map((r) => r.relayAccount);
  }

  /** Every account's token state, and whether a rotated refresh token is unsaved. */
  tokenStates(): TokenHealth[] {
    return this.runtimes.map((r) => r.tokens.health);
  }

  /**
   * Makes `config`'s accounts the ones in force: unchanged runtimes are kept, new and
   * changed ones built, replaced and removed ones retired. Returns what changed.
   */
  apply(config: RelayConfig): AccountChanges {
    const previous = this.#runtimes;
    const built = new Map<string, AccountRuntime>();
    for (const a of config.accounts) {
      const id = a.email.toLowerCase();
      const old = previous.get(id);
      built.set(
        id,
        old && old.key === accountKey(config, a) ? old : new AccountRuntime(config, a, this.#deps),
      );
    }
    this.#runtimes = built;
    for (const [id, r] of previous) {
      const next = built.get(id);
      if (next === r) continue;
      // A rotated refresh token not saved yet lives only in the old runtime's memory.
      next?.tokens.inherit(r.tokens);
      r.retire();
    }
    return {
      added: [...built.keys()].filter((k) => !previous.has(k)).length,
      removed: [...previous.keys()].filter((k) => !built.has(k)).length,
      changed: [...built].filter(([k, r]) => previous.has(k) && previous.get(k) !== r).length,
    };
  }

  /** The operator's view of every account. */
  status(): Promise<AccountStatus[]> {
    return Promise.all(this.runtimes.map((r) => r.status(this.#quotas)));
  }

  /**
   * Stop: one more write of every unsaved refresh token. Resolves to the accounts whose
   * token is still not saved (it is lost when the process ends).
   */
  async saveTokens(): Promise<UnsavedAtStop[]> {
    const results = await Promise.all(
      this.runtimes.map(async (r) => ({
        account: r.config.email,
        unsaved: await r.tokens.flush(),
      })),
    );
    return results.filter((x): x is UnsavedAtStop => x.unsaved !== undefined);
  }

  /** Graceful stop: every pool says QUIT on its idle connections and closes. */
  async stop(): Promise<void> {
    await Promise.all(this.runtimes.map((r) => r.stop()));
  }

  /** Immediate stop: pools close without QUIT. */
  close(): void {
    for (const r of this.runtimes) r.retire(0);
  }
}
