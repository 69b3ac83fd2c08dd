/**
 * Access tokens for one account: cached until shortly before expiry, refreshed once
 * however many messages ask at the same time, refreshed ahead of expiry while the
 * account is in use, retried with backoff on transient failures, and parked in
 * `needs_reauth` when the provider says the refresh token is dead.
 *
 * Its state sits behind interfaces a shared backend can implement: the refresh-token
 * store (versioned, compare-and-set), the access-token cache, the refresh lease, and
 * the clock. The defaults are this process's files, memory, single flight and time.
 * @module
 */
import { createHash } from "node:crypto";
import type { ExpectedVersion } from "../state/store.ts";
import { type AccessTokenCache, type CachedAccessToken, MemoryAccessTokenCache } from "./cache.ts";
import { REAL_TIMING, type Timing } from "./clock.ts";
import { InProcessRefreshLease, type RefreshLease } from "./lease.ts";
import { type OAuthClient, refreshAccessToken, TokenError, type TokenGrant } from "./oauth.ts";
import type { RefreshTokenStore, StoredToken } from "./store.ts";

/** A bearer token and the time it stops being handed out (ms since the epoch). */
export interface AccessToken {
  /** The bearer token. */
  readonly token: string;
  /** Expiry minus the refresh margin: after this a new token is fetched. */
  readonly useUntil: number;
}

/**
 * Health of an account's tokens: `unknown` before the first refresh, `ok`, `failing`
 * (the latest refresh failed transiently), `needs_reauth` (the refresh token is dead or
 * missing; only `authorize` or a new token in the config helps).
 */
export type TokenState = "unknown" | "ok" | "failing" | "needs_reauth";

/** Retry policy of one refresh. */
export interface RetryPolicy {
  /** Attempts per refresh, first included. */
  readonly attempts: number;
  /** First backoff, ms; doubled per attempt, with full jitter. */
  readonly baseMs: number;
  /** No single wait is longer; a longer Retry-After ends the refresh instead. */
  readonly maxMs: number;
}

/** Settings for {@link AccountTokens}. */
export interface AccountTokensOptions {
  /** Mailbox address (store key). */
  readonly account: string;
  /** Token endpoint and client credentials. */
  readonly client: OAuthClient;
  /** The refresh token written in the config, if any. */
  readonly configRefreshToken?: string;
  /** Where rotated refresh tokens go (compare-and-set: a newer stored token wins). */
  readonly store: RefreshTokenStore;
  /** Where access tokens are cached (default: this manager's memory). */
  readonly cache?: AccessTokenCache;
  /** Who may refresh (default: one refresh at a time in this manager, shared by callers). */
  readonly lease?: RefreshLease;
  /** Clock and sleep, for expiry and backoff (default: real time). */
  readonly timing?: Timing;
  /** Tokens are refreshed this long before expiry, in ms (at least {@link MIN_LIFETIME_MS}). */
  readonly marginMs: number;
  /** Time allowed to one token call, in ms. */
  readonly timeoutMs: number;
  /** Retries of transient failures. */
  readonly retry: RetryPolicy;
  /** In `needs_reauth`, the store and the endpoint are tried again at most this often, ms. */
  readonly reauthRecheckMs: number;
  /** Called after every refresh (not every attempt). */
  readonly onRefresh?: (outcome: RefreshOutcome) => void;
}

/** What one refresh did, for metrics and logs (no secrets). */
export interface RefreshOutcome {
  /** Whether a new access token was obtained. */
  readonly ok: boolean;
  /** Why not. */
  readonly error?: TokenError;
  /** State after the refresh. */
  readonly state: TokenState;
  /** HTTP attempts made. */
  readonly attempts: number;
  /** Refreshed ahead of expiry, with a valid token still in hand. */
  readonly background: boolean;
  /** The provider issued a new refresh token. */
  readonly rotated: boolean;
  /** Writing the rotated refresh token failed: it lives in memory only until the next try. */
  readonly persistError?: string;
  /**
   * While this refresh ran, another writer (another process, `authorize`) stored a newer
   * refresh token: that one was adopted and the one this refresh got was dropped.
   */
  readonly adopted?: boolean;
}

/**
 * No token is handed out with less than this left: Microsoft's high-volume endpoint
 * refuses tokens close to expiry. (A token whose whole lifetime is under twice this is
 * used for half its life.)
 */
export const MIN_LIFETIME_MS = 120_000;

/** Share of a token's usable life after which use triggers a background refresh. */
const REFRESH_AHEAD_AT = 0.75;

/**
 * Fingerprint of the config's refresh token: enough to notice a change, useless to an
 * attacker. `""` when the config has none.
 */
export function fingerprint(refreshToken: string | undefined): string {
  if (refreshToken === undefined) return "";
  return createHash("sha256").update(refreshToken).digest("hex").slice(0, 16);
}

/** The refresh token in use, and the store version it was read at or written as. */
interface HeldToken {
  readonly token: string;
  readonly seen: ExpectedVersion;
}

/** Compare-and-set rounds when what is stored belongs to another config token. */
const CAS_ROUNDS = 3;
/** Time allowed to the store (lock, write) within one lease, on top of the token calls. */
const LEASE_STORE_ALLOWANCE_MS = 30_000;

/** The token source of one account. */
export class AccountTokens {
  readonly #o: AccountTokensOptions;
  readonly #cache: AccessTokenCache;
  readonly #lease: RefreshLease;
  readonly #timing: Timing;
  #held?: HeldToken;
  /** Refreshes this manager is running or waiting for. */
  #running = 0;
  #state: TokenState = "unknown";
  #lastError?: TokenError;
  #recheckAt = 0;

  /** Nothing is read or fetched until the first {@link get}. */
  constructor(options: AccountTokensOptions) {
    this.#o = options;
    this.#cache = options.cache ?? new MemoryAccessTokenCache();
    this.#lease = options.lease ?? new InProcessRefreshLease();
    this.#timing = options.timing ?? REAL_TIMING;
  }

  /** Current state; see {@link TokenState}. */
  get state(): TokenState {
    return this.#state;
  }

  /** The latest failure (secret-free), cleared by a success. */
  get lastError(): TokenError | undefined {
    return this.#lastError;
  }

  /**
   * A token with at least the margin left; refreshes (once, shared) when needed. While
   * the account is in use, the next token is fetched in the background before this one
   * runs out. In `needs_reauth` it fails at once, except for one recheck per interval.
   */
  async get(): Promise<AccessToken> {
    const now = this.#timing.now();
    const cached = await this.#cache.get(this.#o.account);
    if (cached && cached.useUntil > now) {
      if (now >= cached.refreshAt && this.#running === 0) {
        this.#refresh(true).catch(() => {}); // outcome reported through onRefresh
      }
      return cached;
    }
    if (this.#state === "needs_reauth" && now < this.#recheckAt && this.#running === 0) {
      throw this.#lastError;
    }
    return this.#refresh(false);
  }

  /**
   * The provider refused a token: forget it and fetch another. Callers that ask while a
   * refresh is running share it, so a burst of refusals costs one refresh.
   */
  async renew(): Promise<AccessToken> {
    const cached = await this.#cache.get(this.#o.account);
    if (cached) await this.#cache.delete(this.#o.account, cached.token);
    return this.#refresh(false, cached?.token);
  }

  /** Refreshes under the lease; `refused` is a token the provider refused (never reused). */
  #refresh(background: boolean, refused?: string): Promise<AccessToken> {
    const o = this.#o;
    const ttlMs = o.retry.attempts * (o.timeoutMs + o.retry.maxMs) + LEASE_STORE_ALLOWANCE_MS;
    this.#running++;
    return this.#lease.run(o.account, () => this.#doRefresh(background, refused), ttlMs)
      .finally(() => this.#running--);
  }

  async #doRefresh(background: boolean, refused?: string): Promise<AccessToken> {
    const o = this.#o;
    // Under a shared lease, the previous holder may have left a fresh token.
    const fresh = await this.#cache.get(o.account);
    if (fresh && fresh.token !== refused && this.#timing.now() < fresh.refreshAt) {
      this.#state = "ok";
      this.#lastError = undefined;
      return fresh;
    }
    let attempts = 0;
    let invalidGrantRetried = false;
    try {
      // After a verdict of needs_reauth, `authorize` may have stored a new token.
      if (this.#state === "needs_reauth") this.#held = undefined;
      let held = await this.#refreshTokenToUse();
      while (true) {
        attempts++;
        try {
          const now = () => this.#timing.now();
          const grant = await refreshAccessToken(o.client, held.token, o.timeoutMs, now);
          return await this.#accept(grant, held, attempts, background);
        } catch (err) {
          const error = toTokenError(err);
          // A single invalid_grant can be a provider hiccup, or `authorize` stored a new
          // token meanwhile: one more try, with the stored token, before the verdict.
          const retryGrant: boolean = error.oauthError === "invalid_grant" && !invalidGrantRetried;
          if (error.kind === "permanent" && !retryGrant) throw error;
          if (retryGrant) {
            invalidGrantRetried = true;
            const refusedToken = held;
            this.#held = undefined;
            held = await this.#refreshTokenToUse().catch(() => this.#held = refusedToken);
          }
          const delay = backoff(o.retry, attempts, error.retryAfterMs);
          if (attempts >= o.retry.attempts || delay === undefined) throw error;
          await this.#timing.sleep(delay);
        }
      }
    } catch (err) {
      const error = toTokenError(err);
      this.#lastError = error;
      this.#state = error.kind === "permanent" ? "needs_reauth" : "failing";
      if (this.#state === "needs_reauth") {
        const cached = await this.#cache.get(o.account).catch(() => undefined);
        if (cached) await this.#cache.delete(o.account, cached.token).catch(() => {});
        this.#recheckAt = this.#timing.now() + o.reauthRecheckMs;
      }
      o.onRefresh?.({ ok: false, error, state: this.#state, attempts, background, rotated: false });
      throw error;
    }
  }

  async #accept(
    grant: TokenGrant,
    used: HeldToken,
    attempts: number,
    background: boolean,
  ): Promise<AccessToken> {
    const o = this.#o;
    const rotated = grant.refreshToken !== undefined && grant.refreshToken !== used.token;
    let persistError: string | undefined;
    let adopted = false;
    if (rotated) {
      // Held at once: if storing fails, the next refresh still uses the newest token.
      this.#held = { token: grant.refreshToken!, seen: used.seen };
      try {
        adopted = await this.#persist(grant.refreshToken!, used.seen);
      } catch (err) {
        persistError = err instanceof Error ? err.message : String(err);
      }
    }
    const now = this.#timing.now();
    const lifetime = grant.expiresAt - now;
    const margin = Math.min(Math.max(o.marginMs, MIN_LIFETIME_MS), lifetime / 2);
    const useUntil = grant.expiresAt - margin;
    const token: CachedAccessToken = {
      token: grant.accessToken,
      useUntil,
      refreshAt: now + (useUntil - now) * REFRESH_AHEAD_AT,
    };
    await this.#cache.set(o.account, token);
    this.#state = "ok";
    this.#lastError = undefined;
    o.onRefresh?.({
      ok: true,
      state: "ok",
      attempts,
      background,
      rotated,
      persistError,
      ...(adopted ? { adopted } : {}),
    });
    return token;
  }

  /**
   * Stores a rotated refresh token by compare-and-set against the version it replaces.
   * If another writer stored a newer token for this config meanwhile, that one wins: it
   * is adopted (resolves true) and ours is dropped; the access token just obtained stays
   * good either way. A newer token stored for another config token does not win (the
   * config's token, which ours descends from, takes precedence, as at start-up).
   */
  async #persist(token: string, expected: ExpectedVersion): Promise<boolean> {
    const o = this.#o;
    const mine = fingerprint(o.configRefreshToken);
    const value: StoredToken = {
      refreshToken: token,
      configFingerprint: mine,
      updatedAt: new Date().toISOString(),
    };
    for (let round = 0; round < CAS_ROUNDS; round++) {
      const r = await o.store.compareAndSet(o.account, expected, value);
      if (r.ok) {
        this.#held = { token, seen: r.version };
        return false;
      }
      const current = r.current;
      if (current && current.value.configFingerprint === mine) {
        this.#held = { token: current.value.refreshToken, seen: current.version };
        return true;
      }
      expected = current?.version ?? "absent";
      this.#held = { token, seen: expected };
    }
    throw new Error("the stored refresh token kept changing under other writers");
  }

  /**
   * The refresh token to use, read from the store on every refresh (another process or
   * `authorize` may have stored a newer one). The token held here is kept while the
   * store is unchanged since it was read or written: it is as new or newer (a rotation
   * whose write failed lives only here). Otherwise the stored token, unless the config's
   * token changed since it was stored (the operator put a new one there: the config's
   * wins). Without either, the account needs `authorize`.
   */
  async #refreshTokenToUse(): Promise<HeldToken> {
    const o = this.#o;
    let stored;
    try {
      stored = await o.store.load(o.account);
    } catch (err) {
      if (this.#held) return this.#held;
      throw err;
    }
    const seen: ExpectedVersion = stored?.version ?? "absent";
    const held = this.#held;
    if (held && held.seen === seen) return held;
    if (stored && stored.value.configFingerprint === fingerprint(o.configRefreshToken)) {
      return this.#held = { token: stored.value.refreshToken, seen };
    }
    const token = held?.token ?? o.configRefreshToken;
    if (token === undefined) {
      throw new TokenError(
        "no refresh token in the config or the state directory",
        "permanent",
        "no_refresh_token",
      );
    }
    return this.#held = { token, seen };
  }
}

/** The wait before the next attempt, or undefined when a Retry-After is too long. */
function backoff(p: RetryPolicy, attempt: number, retryAfterMs?: number): number | undefined {
  if (retryAfterMs !== undefined) return retryAfterMs <= p.maxMs ? retryAfterMs : undefined;
  return Math.random() * Math.min(p.maxMs, p.baseMs * 2 ** (attempt - 1));
}

function toTokenError(err: unknown): TokenError {
  if (err instanceof TokenError) return err;
  return new TokenError(`failed: ${err instanceof Error ? err.message : String(err)}`, "transient");
}
