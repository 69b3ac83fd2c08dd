/**
 * Access tokens for one account: cached until shortly before expiry, refreshed once
 * however many messages ask at the same time, rotated refresh tokens persisted at once.
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

/** Health of an account's tokens, as far as the relay knows. */
export type TokenState = "unknown" | "ok" | "failing";

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
  /** Tokens are refreshed this long before expiry, in ms. */
  readonly marginMs: number;
  /** Time allowed to one token call, in ms. */
  readonly timeoutMs: number;
  /** Called after every refresh attempt. */
  readonly onRefresh?: (outcome: RefreshOutcome) => void;
}

/** What one refresh attempt did, for metrics and logs (no secrets). */
export interface RefreshOutcome {
  /** Whether a new access token was obtained. */
  readonly ok: boolean;
  /** Why not. */
  readonly error?: TokenError;
  /** The provider issued a new refresh token. */
  readonly rotated: boolean;
  /** Writing the rotated refresh token failed: it lives in memory only until the next try. */
  readonly persistError?: string;
}

/**
 * Fingerprint of the config's refresh token: enough to notice a change, useless to an
 * attacker. `""` when the config has none.
 */
export function fingerprint(refreshToken: string | undefined): string {
  if (refreshToken === undefined) return "";
  return createHash("sha256").update(refreshToken).digest("hex").slice(0, 16);
}

/** The token source of one account. */
export class AccountTokens {
  readonly #o: AccountTokensOptions;
  #refreshToken?: string;
  #cached?: AccessToken;
  #inflight?: Promise<AccessToken>;
  #state: TokenState = "unknown";
  #lastError?: string;

  /** Nothing is read or fetched until the first {@link get}. */
  constructor(options: AccountTokensOptions) {
    this.#o = options;
  }

  /** `unknown` before the first refresh, then `ok` or `failing` after the latest. */
  get state(): TokenState {
    return this.#state;
  }

  /** Message of the latest failed refresh (secret-free), cleared by a success. */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** A token valid for at least the margin; refreshes (once, shared) when needed. */
  get(): Promise<AccessToken> {
    const cached = this.#cached;
    if (cached && cached.useUntil > Date.now()) return Promise.resolve(cached);
    return this.#refresh();
  }

  /**
   * The provider refused a token: forget it and fetch another. Callers that ask while a
   * refresh is running share it, so a burst of refusals costs one refresh.
   */
  renew(): Promise<AccessToken> {
    this.#cached = undefined;
    return this.#refresh();
  }

  #refresh(): Promise<AccessToken> {
    this.#inflight ??= this.#doRefresh().finally(() => this.#inflight = undefined);
    return this.#inflight;
  }

  async #doRefresh(): Promise<AccessToken> {
    const o = this.#o;
    const current = this.#refreshToken ??= await this.#initialRefreshToken();
    let grant;
    try {
      grant = await refreshAccessToken(o.client, current, o.timeoutMs);
    } catch (err) {
      const error = err instanceof TokenError
        ? err
        : new TokenError(`failed: ${String(err)}`, "transient");
      this.#state = "failing";
      this.#lastError = error.message;
      o.onRefresh?.({ ok: false, error, rotated: false });
      throw error;
    }
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
    this.#state = "ok";
    this.#lastError = undefined;
    // A token shorter-lived than twice the margin is used for half its life.
    const now = Date.now();
    const margin = Math.min(o.marginMs, (grant.expiresAt - now) / 2);
    const token: AccessToken = { token: grant.accessToken, useUntil: grant.expiresAt - margin };
    this.#cached = token;
    o.onRefresh?.({ ok: true, rotated, persistError });
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
      "no refresh token in the config or the state directory: run `deno task authorize`",
      "permanent",
      "no_refresh_token",
    );
  }
}
