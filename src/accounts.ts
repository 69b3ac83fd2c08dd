/**
 * One account's moving parts, built from its config: token source, upstream pool and
 * quota, presented to the relay as a {@link RelayAccount}. Used by the relay (`app.ts`,
 * which rebuilds only the accounts a reload changed) and by the `check` command.
 * @module
 */
import type { AccountConfig, RelayConfig } from "./config/load.ts";
import { DEFAULTS } from "./config/defaults.ts";
import { getLogger } from "@logtape/logtape";
import { dirname } from "node:path";
import {
  AccountTokens,
  CorruptTokenFileError,
  type RefreshOutcome,
  type SaveOutcome,
  type TokenState,
} from "./tokens/manager.ts";
import type { TokenStore } from "./tokens/store.ts";
import type { UpstreamObserver, UpstreamTarget } from "./upstream/pool.ts";
import { createTransport, isTransportObserver, type Transport } from "./upstream/transport.ts";
import type { AccessTokenCache } from "./tokens/cache.ts";
import type { RefreshLease } from "./tokens/lease.ts";
import { type ConnectionPermits, LocalPermits } from "./upstream/permits.ts";
import type { RelayAccount } from "./relay/relay.ts";
import type { Quotas } from "./quota/quotas.ts";
import type { AppGrant } from "./tokens/app_grant.ts";

const tokenLog = getLogger(["relay", "tokens"]);

/** The token source of an account, with the config's token settings. */
export function accountTokens(
  config: RelayConfig,
  a: AccountConfig,
  store: TokenStore,
  onRefresh?: (outcome: RefreshOutcome) => void,
  onSave?: (outcome: SaveOutcome) => void,
  grant?: AppGrant,
  shared?: SharedTokenState,
): AccountTokens {
  return new AccountTokens({
    ...(shared?.accessTokens ? { cache: shared.accessTokens } : {}),
    ...(shared?.refreshLease ? { lease: shared.refreshLease } : {}),
    account: a.email,
    grant,
    client: {
      tokenUrl: a.provider.tokenUrl,
      clientId: a.clientId,
      clientSecret: a.clientSecret,
      scope: a.provider.scope,
    },
    configRefreshToken: a.refreshToken,
    store,
    marginMs: config.tokens.refreshMarginSeconds * 1000,
    timeoutMs: config.tokens.timeoutMs,
    retry: {
      attempts: config.tokens.attempts,
      baseMs: config.tokens.retryBaseMs,
      maxMs: config.tokens.retryMaxMs,
    },
    reauthRecheckMs: config.tokens.reauthRecheckSeconds * 1000,
    failureHoldMs: config.tokens.failureHoldSeconds * 1000,
    onRefresh,
    onSave,
  });
}

/** Token state shared by relay instances (Redis); absent: this process's memory. */
export interface SharedTokenState {
  /** Access tokens, shared. */
  readonly accessTokens?: AccessTokenCache;
  /** One refresh per account across instances. */
  readonly refreshLease?: RefreshLease;
}

/** Where and how an account's mail goes upstream. */
export function upstreamTarget(config: RelayConfig, a: AccountConfig): UpstreamTarget {
  return {
    user: a.email,
    host: a.provider.smtpHost,
    port: a.provider.smtpPort,
    tls: a.provider.tls,
    ca: a.provider.ca,
    ehloName: config.smtp.name,
    maxConnections: a.maxConnections,
    messagesPerConnection: DEFAULTS.upstreamMessagesPerConnection,
    connectTimeoutMs: DEFAULTS.upstreamConnectTimeoutMs,
    socketTimeoutMs: DEFAULTS.upstreamSocketTimeoutMs,
    idleTimeoutMs: DEFAULTS.upstreamIdleTimeoutMs,
    sourceAddress: a.sourceAddress,
  };
}

/** What an operator sees of one account (`/accounts`, `status`). No secrets. */
export interface AccountStatus {
  /** Mailbox address. */
  readonly account: string;
  /** Provider preset. */
  readonly provider: string;
  /** `smtp`, `graph` or `gmail-api`. */
  readonly transport: string;
  /** Token state. */
  readonly token: TokenState;
  /** Latest token or delivery error, secret-free. */
  readonly lastError?: string;
  /**
   * Present while a rotated refresh token is in memory only (its write failed and is
   * being retried): the file, the kind of failure, since when, how often tried. Never
   * the token.
   */
  readonly tokenUnsaved?: {
    /** The token file that could not be written. */
    readonly path?: string;
    /** `ENOSPC`, `EROFS`, `EACCES`, `ENOTDIR`, `state_corrupt`, `lock_timeout`, … */
    readonly error: string;
    /** The latest failure (a path at most). */
    readonly message: string;
    /** First failure (ISO 8601). */
    readonly since: string;
    /** Writes tried so far. */
    readonly attempts: number;
    /** Next write (ISO 8601). */
    readonly nextAttempt?: string;
  };
  /** What the operator should do, when the account needs them. */
  readonly action?: string;
  /**
   * Open upstream connections and the cap; with shared state, `fleet`: the connections of
   * every instance (instance id → count).
   */
  readonly connections: {
    readonly open: number;
    readonly max: number;
    readonly fleet?: Readonly<Record<string, number>>;
  };
  /** Quota usage in the current windows, with limits (0: none). */
  readonly quota: {
    readonly messagesToday: number;
    readonly recipientsToday: number;
    readonly lastMinute: number;
    readonly limits: AccountConfig["quota"];
    /** The shared quota state could not be read (Redis down): the counts are not known. */
    readonly unavailable?: true;
  };
}

/** How long a replaced account's pool stays usable after a reload, ms. */
const RETIRE_GRACE_MS = 5_000;

/** Shared parts an account runtime needs. */
export interface AccountDeps extends SharedTokenState {
  /** Where rotated refresh tokens go. */
  readonly tokenStore: TokenStore;
  /** Token refresh hook (metrics, logs). */
  readonly onRefresh: (account: string, outcome: RefreshOutcome) => void;
  /** Upstream connection counting. */
  readonly upstream?: UpstreamObserver;
  /**
   * The per-account connection cap, shared by every runtime of an address: after a reload
   * the retired pool and the new one hold permits from the same cap. Without it each
   * runtime has a cap of its own (the `check` command).
   */
  readonly permits?: ConnectionPermits;
}

/**
 * One configured account at run time. A reload that leaves an account's config as it
 * was keeps its runtime (tokens, pool); a changed account gets a new runtime and the
 * old one is retired once idle. Quota counters are not part of it: they belong to the
 * address ({@link Quotas}), whatever the config generation.
 */
export class AccountRuntime {
  /** The config it was built from. */
  readonly config: AccountConfig;
  /** Canonical form of the config: equal keys, equal accounts. */
  readonly key: string;
  /** Token source. */
  readonly tokens: AccountTokens;
  /**
   * Its transport: the SMTP pool, or Graph / the Gmail API over HTTPS (chosen by the
   * account's `transport`, in {@link createTransport}).
   */
  readonly pool: Transport;
  /** What the relay uses. */
  readonly relayAccount: RelayAccount;
  #inflight = 0;
  readonly #permits?: ConnectionPermits;
  #retired = false;
  /** Replaced by a reload, still usable until {@link retire}'s grace period ends. */
  #retiring = false;
  #lastError?: string;
  /** Tokens come from an app-only credential (a mailbox of a domain entry). */
  readonly #appOnly: boolean;

  /**
   * Builds the runtime; nothing connects or refreshes until first use. With `grant`, the
   * tokens come from that app-only grant (a mailbox of a domain entry), not a refresh token.
   */
  constructor(
    relayConfig: RelayConfig,
    config: AccountConfig,
    deps: AccountDeps,
    grant?: AppGrant,
  ) {
    this.config = config;
    this.key = accountKey(relayConfig, config);
    this.#appOnly = grant !== undefined;
    this.tokens = accountTokens(
      relayConfig,
      config,
      deps.tokenStore,
      (o) => deps.onRefresh(config.email, o),
      (o) => logSave(config.email, o),
      grant,
      deps,
    );
    // A corrupt token file shows (readiness, status) before a message needs the account.
    void this.tokens.inspect();
    const tokens = this.tokens;
    this.#permits = deps.permits;
    this.pool = createTransport(
      config.transport,
      upstreamTarget(relayConfig, config),
      (renew) => renew ? tokens.renew() : tokens.get(),
      {
        permits: deps.permits ?? new LocalPermits(config.maxConnections),
        observer: deps.upstream,
      },
    );
    const observer = isTransportObserver(deps.upstream) ? deps.upstream : undefined;
    const transport = this.pool.kind;
    this.relayAccount = {
      email: config.email,
      passwordHash: config.passwordHash,
      aliases: config.aliases,
      senders: config.senders,
      quota: config.quota,
      deliver: async (m) => {
        this.#inflight++;
        try {
          // Fetched first, so a token failure is reported as such (and cached for the pool).
          try {
            await tokens.get();
          } catch (err) {
            observer?.deliveryDone(transport, "token");
            return { kind: "token", error: err instanceof Error ? err : new Error(String(err)) };
          }
          const r = await this.pool.send(m);
          observer?.deliveryDone(transport, r.kind);
          if (r.kind === "unreachable") this.#lastError = r.detail;
          else if (r.kind === "auth" || r.kind === "rejected") {
            this.#lastError = `${r.reply.code} ${r.reply.enhanced} ${r.reply.text}`;
          }
          return r;
        } finally {
          this.#inflight--;
          this.#closeIfDone();
        }
      },
    };
  }

  /**
   * Stops using this runtime: its pool closes once its last message is done, and not
   * before a short grace period (a session may still be between MAIL and DATA).
   */
  retire(graceMs = RETIRE_GRACE_MS): void {
    if (this.#retired || this.#retiring) return;
    // Its successor shares the account's connection cap: idle connections go now, so their
    // permits move on to the new runtime; the pool itself stays usable for the grace period.
    this.#retiring = true;
    if (this.#inflight === 0) this.pool.quitIdle();
    const close = () => {
      this.#retired = true;
      this.#closeIfDone();
      this.#closeTokens();
    };
    if (graceMs <= 0) return close();
    const timer = setTimeout(close, graceMs);
    Deno.unrefTimer(timer);
  }

  /**
   * Closes a retired runtime's pool once nothing is in flight, checked a turn later: the
   * relay may follow a message with its non-delivery report through the same account.
   */
  #closeIfDone(): void {
    if (this.#retiring && !this.#retired && this.#inflight === 0) {
      setTimeout(() => {
        if (this.#inflight === 0 && !this.#retired) this.pool.quitIdle();
      }, 0);
    }
    if (!this.#retired || this.#inflight > 0) return;
    setTimeout(() => {
      if (this.#inflight === 0) this.pool.close();
    }, 0);
  }

  /**
   * No more rechecks or retried writes for this runtime's tokens. A token still unsaved
   * (its successor did not take it over: the account was removed, or its grant changed)
   * gets one last write.
   */
  #closeTokens(): void {
    this.tokens.close();
    if (this.tokens.unsaved) void this.tokens.flush();
  }

  /**
   * Shutdown: QUIT the idle upstream connections and close the pool; the tokens' timers
   * stop (the relay then writes unsaved tokens once more: {@link AccountTokens.flush}).
   */
  async stop(): Promise<void> {
    this.#retired = true;
    this.tokens.close();
    await this.pool.quit();
  }

  /** The operator's view, with the quota use from `quotas`. */
  async status(quotas: Quotas): Promise<AccountStatus> {
    // Shared state (Redis) may be down: the rest of the view is still worth showing.
    const usage = await quotas.usage(this.config.email).catch(() => undefined);
    const fleet = await this.#permits?.holders?.(this.config.email).catch(() => undefined);
    const unsaved = this.tokens.unsaved;
    const action = this.#appOnly
      ? appOnlyAction(this.config.email, this.tokens.state)
      : accountAction(this.config.email, this.tokens.state, this.tokens.lastError);
    return {
      account: this.config.email,
      provider: this.config.provider.kind,
      transport: this.pool.kind,
      token: this.tokens.state,
      lastError: this.tokens.lastError?.message ?? this.#lastError,
      ...(unsaved
        ? {
          tokenUnsaved: {
            path: unsaved.path,
            error: unsaved.error,
            message: unsaved.message,
            since: new Date(unsaved.since).toISOString(),
            attempts: unsaved.attempts,
            ...(unsaved.nextAttemptAt
              ? { nextAttempt: new Date(unsaved.nextAttemptAt).toISOString() }
              : {}),
          },
        }
        : {}),
      ...(action ? { action } : {}),
      connections: {
        open: this.pool.openConnections,
        max: this.config.maxConnections,
        ...(fleet ? { fleet } : {}),
      },
      quota: usage ? { ...usage, limits: this.config.quota } : {
        messagesToday: 0,
        recipientsToday: 0,
        lastMinute: 0,
        limits: this.config.quota,
        unavailable: true,
      },
    };
  }
}

/** The command that gives an account a new refresh token. */
function authorizeCommand(account: string): string {
  return `deno task authorize --account ${account}`;
}

/** What the operator must do about an account's token state, if anything. */
function accountAction(account: string, state: TokenState, error?: Error): string | undefined {
  if (state === "state_corrupt" && error instanceof CorruptTokenFileError) {
    return `move ${error.path} away and run \`${authorizeCommand(account)}\`, ` +
      "or restore the file from a backup";
  }
  if (state === "needs_reauth") return `run \`${authorizeCommand(account)}\``;
  return undefined;
}

/** What to do about a domain mailbox whose app-only credential is refused. */
function appOnlyAction(account: string, state: TokenState): string | undefined {
  if (state !== "needs_reauth") return undefined;
  const domain = account.slice(account.lastIndexOf("@") + 1);
  return `fix the credential of domain ${domain} (run \`deno task start check ` +
    `--mailbox ${account}\` for a hint)`;
}

/** Logs the retried write of an unsaved refresh token (never the token). */
function logSave(account: string, o: SaveOutcome): void {
  if (o.ok) {
    tokenLog.info(
      "rotated refresh token for {account} saved to {path} after {attempts} attempts",
      { account, path: o.path, attempts: o.attempts },
    );
    return;
  }
  const u = o.unsaved;
  tokenLog.warn(
    "rotated refresh token for {account} still not saved to {path} ({error}: {message}), " +
      "{attempts} attempts; retried at {next}: make {dir} writable",
    {
      account,
      path: u?.path,
      error: u?.error,
      message: u?.message,
      attempts: o.attempts,
      next: u?.nextAttemptAt ? new Date(u.nextAttemptAt).toISOString() : "stop",
      dir: u?.path ? dirname(u.path) : "the state directory",
    },
  );
}

/** Everything that shapes an account's runtime, as a comparable string. */
export function accountKey(c: RelayConfig, a: AccountConfig): string {
  return JSON.stringify([a, c.tokens, c.smtp.name]);
}
