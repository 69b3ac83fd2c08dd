/**
 * Access tokens for one account: cached until shortly before expiry, refreshed once
 * however many messages ask at the same time, refreshed ahead of expiry while the
 * account is in use, retried with backoff on transient failures, and parked in
 * `needs_reauth` when the provider says the refresh token is dead.
 * @module
 */
import { createHash } from "node:crypto";
import { type OAuthClient, refreshAccessToken, TokenError } from "./oauth.ts";
import type { TokenStore } from "./store.ts";

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
  /** Where rotated refresh tokens go. */
  readonly store: TokenStore;
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

interface Cached extends AccessToken {
  readonly refreshAt: number;
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** The token source of one account. */
export class AccountTokens {
  readonly #o: AccountTokensOptions;
  #refreshToken?: string;
  #cached?: Cached;
  #inflight?: Promise<AccessToken>;
  #state: TokenState = "unknown";
  #lastError?: TokenError;
  #recheckAt = 0;

  /** Nothing is read or fetched until the first {@link get}. */
  constructor(options: AccountTokensOptions) {
    this.#o = options;
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
  get(): Promise<AccessToken> {
    const now = Date.now();
    const cached = this.#cached;
    if (cached && cached.useUntil > now) {
      if (now >= cached.refreshAt && !this.#inflight) {
        this.#refresh(true).catch(() => {}); // outcome reported through onRefresh
      }
      return Promise.resolve(cached);
    }
    if (this.#state === "needs_reauth" && now < this.#recheckAt && !this.#inflight) {
      return Promise.reject(this.#lastError);
    }
    return this.#refresh(false);
  }

  /**
   * The provider refused a token: forget it and fetch another. Callers that ask while a
   * refresh is running share it, so a burst of refusals costs one refresh.
   */
  renew(): Promise<AccessToken> {
    this.#cached = undefined;
    return this.#refresh(false);
  }

  #refresh(background: boolean): Promise<AccessToken> {
    this.#inflight ??= this.#doRefresh(background).finally(() => this.#inflight = undefined);
    return this.#inflight;
  }

  async #doRefresh(background: boolean): Promise<AccessToken> {
    const o = this.#o;
    let attempts = 0;
    let invalidGrantRetried = false;
    try {
      // After a verdict of needs_reauth, `authorize` may have stored a new token.
      if (this.#state === "needs_reauth") this.#refreshToken = undefined;
      let current = this.#refreshToken ??= await this.#initialRefreshToken();
      while (true) {
        attempts++;
        try {
          const grant = await refreshAccessToken(o.client, current, o.timeoutMs);
          return await this.#accept(grant, current, attempts, background);
        } catch (err) {
          const error = toTokenError(err);
          // A single invalid_grant can be a provider hiccup, or `authorize` stored a new
          // token meanwhile: one more try, with the stored token, before the verdict.
          const retryGrant: boolean = error.oauthError === "invalid_grant" && !invalidGrantRetried;
          if (error.kind === "permanent" && !retryGrant) throw error;
          if (retryGrant) {
            invalidGrantRetried = true;
            current = this.#refreshToken = await this.#initialRefreshToken().catch(() => current);
          }
          const delay = backoff(o.retry, attempts, error.retryAfterMs);
          if (attempts >= o.retry.attempts || delay === undefined) throw error;
          await sleep(delay);
        }
      }
    } catch (err) {
      const error = toTokenError(err);
      this.#lastError = error;
      this.#state = error.kind === "permanent" ? "needs_reauth" : "failing";
      if (this.#state === "needs_reauth") {
        this.#cached = undefined;
        this.#recheckAt = Date.now() + o.reauthRecheckMs;
      }
      o.onRefresh?.({ ok: false, error, state: this.#state, attempts, background, rotated: false });
      throw error;
    }
  }

  async #accept(
    grant: { accessToken: string; expiresAt: number; refreshToken?: string },
    current: string,
    attempts: number,
    background: boolean,
  ): Promise<AccessToken> {
    const o = this.#o;
    const rotated = grant.refreshToken !== undefined && grant.refreshToken !== current;
    let persistError: string | undefined;
    if (rotated) {
      this.#refreshToken = grant.refreshToken;
      try {
        await o.store.save(o.account, {
          refreshToken: grant.refreshToken!,
          configFingerprint: fingerprint(o.configRefreshToken),
          updatedAt: new Date().toISOString(),
        });
      } catch (err) {
        persistError = err instanceof Error ? err.message : String(err);
      }
    }
    const now = Date.now();
    const lifetime = grant.expiresAt - now;
    const margin = Math.min(Math.max(o.marginMs, MIN_LIFETIME_MS), lifetime / 2);
    const useUntil = grant.expiresAt - margin;
    const token: Cached = {
      token: grant.accessToken,
      useUntil,
      refreshAt: now + (useUntil - now) * REFRESH_AHEAD_AT,
    };
    this.#cached = token;
    this.#state = "ok";
    this.#lastError = undefined;
    o.onRefresh?.({ ok: true, state: "ok", attempts, background, rotated, persistError });
    return token;
  }

  /**
   * The persisted token, unless the config's token changed since it was stored (the
   * operator put a new one there). Without either, the account needs `authorize`.
   */
  async #initialRefreshToken(): Promise<string> {
    const configured = this.#o.configRefreshToken;
    const stored = await this.#o.store.load(this.#o.account);
    if (stored && stored.configFingerprint === fingerprint(configured)) {
      return stored.refreshToken;
    }
    if (configured !== undefined) return configured;
    throw new TokenError(
      "no refresh token in the config or the state directory",
      "permanent",
      "no_refresh_token",
    );
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
