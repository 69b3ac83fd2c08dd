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
import { domainKey, DomainRuntime } from "./domain_runtime.ts";

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
  /** Domain entries, keyed by lower-cased domain. */
  #domains = new Map<string, DomainRuntime>();

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

  /** The domain entries in force. */
  get domains(): DomainRuntime[] {
    return [...this.#domains.values()];
  }

  /**
   * The account of a mailbox of a configured domain (not a configured single account),
   * or undefined: for the relay's logins and sender checks.
   */
  resolve(address: string): RelayAccount | undefined {
    const mailbox = address.trim().toLowerCase();
    if (this.#runtimes.has(mailbox)) return undefined;
    return this.#domains.get(mailbox.slice(mailbox.lastIndexOf("@") + 1))?.account(mailbox);
  }

  /** The upstream connection cap of an address: its account's or its domain's (else 1). */
  maxConnections(address: string): number {
    const key = address.toLowerCase();
    const account = this.#runtimes.get(key);
    if (account) return account.config.maxConnections;
    return this.#domains.get(key.slice(key.lastIndexOf("@") + 1))?.config.maxConnections ?? 1;
  }

  /** What the relay uses of each account. */
  relayAccounts(): RelayAccount[] {
    return this.runtimes.map((r) => r.relayAccount);
  }

  /** Every account's token state, and whether a rotated refresh token is unsaved. */
  tokenStates(): TokenHealth[] {
    return [...this.runtimes.map((r) => r.tokens.health), ...this.domains.map((d) => d.health())];
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
    const previousDomains = this.#domains;
    const domains = new Map<string, DomainRuntime>();
    for (const d of config.domains) {
      const old = previousDomains.get(d.domain);
      domains.set(
        d.domain,
        old && old.key === domainKey(config, d) ? old : new DomainRuntime(config, d, this.#deps),
      );
    }
    this.#domains = domains;
    for (const [name, d] of previousDomains) if (domains.get(name) !== d) d.retire();
    return {
      added: [...built.keys()].filter((k) => !previous.has(k)).length,
      removed: [...previous.keys()].filter((k) => !built.has(k)).length,
      changed: [...built].filter(([k, r]) => previous.has(k) && previous.get(k) !== r).length,
    };
  }

  /** The operator's view of every account. */
  status(): Promise<AccountStatus[]> {
    return Promise.all([
      ...this.runtimes.map((r) => r.status(this.#quotas)),
      ...this.domains.flatMap((d) => d.status(this.#quotas)),
    ]);
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
    await Promise.all([
      ...this.runtimes.map((r) => r.stop()),
      ...this.domains.map((d) => d.stop()),
    ]);
  }

  /** Immediate stop: pools close without QUIT. */
  close(): void {
    for (const r of this.runtimes) r.retire(0);
    for (const d of this.domains) d.retire(0);
  }
}
