/**
 * The access-token cache: the current access token per account and when to stop using
 * it. In memory here; a shared implementation (Redis) lets several relay instances use
 * one token per account instead of refreshing one each.
 * @module
 */

/** A cached access token (secret) with its use-until and refresh-ahead times. */
export interface CachedAccessToken {
  /** The bearer token. */
  readonly token: string;
  /** Handed out until this time (ms since the epoch): expiry minus the refresh margin. */
  readonly useUntil: number;
  /** From this time on, use triggers a background refresh (ms since the epoch). */
  readonly refreshAt: number;
}

/**
 * Access tokens per account. Keys are account addresses (case-insensitive). A shared
 * implementation may drop an entry once its `useUntil` has passed.
 */
export interface AccessTokenCache {
  /** The account's cached token, if any (possibly past its `useUntil`). */
  get(account: string): Promise<CachedAccessToken | undefined>;
  /** Caches `token` for the account, replacing what was there. */
  set(account: string, token: CachedAccessToken): Promise<void>;
  /**
   * Forgets the account's token if it is still `token` (the provider refused it); a
   * newer one cached meanwhile (by another instance) stays.
   */
  delete(account: string, token: string): Promise<void>;
}

/** An {@link AccessTokenCache} in this process's memory. */
export class MemoryAccessTokenCache implements AccessTokenCache {
  readonly #entries = new Map<string, CachedAccessToken>();

  /** See {@link AccessTokenCache.get}. */
  get(account: string): Promise<CachedAccessToken | undefined> {
    return Promise.resolve(this.#entries.get(account.toLowerCase()));
  }

  /** See {@link AccessTokenCache.set}. */
  set(account: string, token: CachedAccessToken): Promise<void> {
    this.#entries.set(account.toLowerCase(), token);
    return Promise.resolve();
  }

  /** See {@link AccessTokenCache.delete}. */
  delete(account: string, token: string): Promise<void> {
    const key = account.toLowerCase();
    if (this.#entries.get(key)?.token === token) this.#entries.delete(key);
    return Promise.resolve();
  }
}
