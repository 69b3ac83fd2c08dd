/**
 * A domain entry at run time: every mailbox of the domain sends through one app-only
 * credential. A mailbox gets its state (an {@link AccountRuntime}: tokens, pool) on its
 * first message, and loses it after `idleSeconds` unused, so thousands of configured
 * mailboxes cost only what the ones in use cost. A login needs the mailbox's client
 * password (or the domain's); the relay never becomes a catch-all.
 * @module
 */
import type { AccountConfig, DomainConfig, RelayConfig } from "./config/load.ts";
import type { DomainCredential } from "./config/domains.ts";
import { type AccountDeps, AccountRuntime, type AccountStatus } from "./accounts.ts";
import type { Quotas } from "./quota/quotas.ts";
import type { RelayAccount } from "./relay/relay.ts";
import type { AppCredential } from "./tokens/app_grant.ts";
import { ClientCredentialsCredential } from "./tokens/client_credentials.ts";
import { BROKEN_STATES, type TokenHealth } from "./tokens/manager.ts";
import { ServiceAccountCredential } from "./tokens/service_account.ts";

/** The credential of a domain entry, ready to grant tokens. */
export function appCredential(d: DomainConfig): AppCredential {
  const c: DomainCredential = d.credential;
  const { tokenUrl, scope } = d.provider;
  switch (c.type) {
    case "serviceAccount":
      return new ServiceAccountCredential(c.key, tokenUrl, scope);
    case "clientSecret":
      return new ClientCredentialsCredential(
        c.clientId,
        { secret: c.clientSecret },
        tokenUrl,
        scope,
      );
    case "certificate":
      return new ClientCredentialsCredential(
        c.clientId,
        { privateKey: c.privateKey, x5t: c.x5t },
        tokenUrl,
        scope,
      );
  }
}

/** The account config a mailbox of a domain entry runs with. */
export function mailboxAccount(d: DomainConfig, mailbox: string, hash: string): AccountConfig {
  return {
    email: mailbox,
    provider: d.provider,
    clientId: d.credential.type === "serviceAccount"
      ? d.credential.key.clientEmail
      : d.credential.clientId,
    passwordHash: hash,
    maxConnections: d.maxConnections,
    aliases: [],
    senders: d.senders,
    quota: d.quota,
    sourceAddress: d.sourceAddress,
    transport: { kind: "smtp" },
  };
}

/** Everything that shapes a domain's runtime, as a comparable string. */
export function domainKey(c: RelayConfig, d: DomainConfig): string {
  return JSON.stringify([d, c.tokens, c.smtp.name]);
}

/** One mailbox in use. */
interface MailboxState {
  readonly runtime: AccountRuntime;
  /** What the relay holds for this mailbox (kept, so its password check stays cached). */
  readonly account: RelayAccount;
  inflight: number;
  lastUsed: number;
}

/** Longest wait between two sweeps for idle mailboxes, ms. */
const MAX_SWEEP_MS = 60_000;

/** The mailboxes of one domain entry. */
export class DomainRuntime {
  /** The config it was built from. */
  readonly config: DomainConfig;
  /** Canonical form of the config: equal keys, equal domains. */
  readonly key: string;
  readonly #relayConfig: RelayConfig;
  readonly #deps: AccountDeps;
  readonly #credential: AppCredential;
  readonly #mailboxes = new Map<string, MailboxState>();
  readonly #sweep: ReturnType<typeof setInterval>;
  #retired = false;

  /** Nothing is fetched or connected until a mailbox sends. */
  constructor(relayConfig: RelayConfig, config: DomainConfig, deps: AccountDeps) {
    this.config = config;
    this.key = domainKey(relayConfig, config);
    this.#relayConfig = relayConfig;
    this.#deps = deps;
    this.#credential = appCredential(config);
    const every = Math.max(1_000, Math.min(config.idleMs / 2, MAX_SWEEP_MS));
    const sweep = setInterval(() => this.dropIdle(), every);
    Deno.unrefTimer(sweep);
    this.#sweep = sweep;
  }

  /** Mailboxes holding state now (tokens, pool). */
  get liveMailboxes(): number {
    return this.#mailboxes.size;
  }

  /** The runtimes of the mailboxes in use. */
  get runtimes(): AccountRuntime[] {
    return [...this.#mailboxes.values()].map((m) => m.runtime);
  }

  /**
   * The account `address` logs in and sends as, or undefined when it is not a mailbox
   * this entry serves (another domain, not in `mailboxes`, or no password for it). No
   * state is created: that waits for its first message.
   */
  account(address: string): RelayAccount | undefined {
    const mailbox = address.trim().toLowerCase();
    if (this.#retired || !mailbox.endsWith(`@${this.config.domain}`)) return undefined;
    const live = this.#mailboxes.get(mailbox);
    if (live) return live.account;
    if (this.config.mailboxes && !this.config.mailboxes.includes(mailbox)) return undefined;
    const hash = this.config.passwords[mailbox] ?? this.config.passwordHash;
    if (hash === undefined) return undefined;
    const account: RelayAccount = {
      email: mailbox,
      passwordHash: hash,
      aliases: [],
      senders: this.config.senders,
      quota: this.config.quota,
      deliver: (m) => this.#deliver(mailbox, account, m),
    };
    return account;
  }

  /** Sends through the mailbox's state, made on first use. */
  async #deliver(
    mailbox: string,
    account: RelayAccount,
    m: Parameters<RelayAccount["deliver"]>[0],
  ): ReturnType<RelayAccount["deliver"]> {
    let state = this.#mailboxes.get(mailbox);
    if (!state) {
      const runtime = new AccountRuntime(
        this.#relayConfig,
        mailboxAccount(this.config, mailbox, account.passwordHash),
        this.#deps,
        this.#credential.grantFor(mailbox),
      );
      state = { runtime, account, inflight: 0, lastUsed: Date.now() };
      this.#mailboxes.set(mailbox, state);
    }
    state.inflight++;
    try {
      return await state.runtime.relayAccount.deliver(m);
    } finally {
      state.inflight--;
      state.lastUsed = Date.now();
      // A session that resolved the mailbox before a reload replaced this domain.
      if (this.#retired && state.inflight === 0) {
        this.#mailboxes.delete(mailbox);
        state.runtime.retire();
      }
    }
  }

  /** Drops the state of mailboxes unused for `idleSeconds` (on a timer; tests call it). */
  dropIdle(now = Date.now()): number {
    let dropped = 0;
    for (const [mailbox, state] of this.#mailboxes) {
      if (state.inflight > 0 || now - state.lastUsed < this.config.idleMs) continue;
      this.#mailboxes.delete(mailbox);
      state.runtime.retire(0);
      dropped++;
    }
    return dropped;
  }

  /**
   * The domain's token health as one entry: `ok` when a mailbox in use has a token,
   * else the state of the mailboxes in use when all are broken, else `unknown`.
   */
  health(): TokenHealth {
    const states = this.runtimes.map((r) => r.tokens.state);
    if (states.includes("ok")) return { state: "ok", unsaved: false };
    const broken = states.filter((s) => BROKEN_STATES.includes(s));
    if (broken.length > 0 && broken.length === states.length) {
      return { state: broken[broken.length - 1], unsaved: false };
    }
    return { state: "unknown", unsaved: false };
  }

  /** The operator's view of each mailbox in use. */
  status(quotas: Quotas): Promise<AccountStatus>[] {
    return this.runtimes.map((r) => r.status(quotas));
  }

  /** Replaced or removed by a reload: no new mailboxes; those in use retire. */
  retire(graceMs?: number): void {
    this.#retired = true;
    clearInterval(this.#sweep);
    for (const state of this.#mailboxes.values()) state.runtime.retire(graceMs);
  }

  /** Shutdown: every mailbox's pool QUITs and closes. */
  async stop(): Promise<void> {
    this.#retired = true;
    clearInterval(this.#sweep);
    await Promise.all(this.runtimes.map((r) => r.stop()));
  }
}
