/**
 * The refresh lease: one refresher per account at a time; the others wait for its
 * result. In one process that is a single-flight promise ({@link InProcessRefreshLease});
 * a shared implementation (a Redis lease with an expiry) makes it one refresher per
 * account across relay instances.
 *
 * The lease saves token requests; it is not what keeps refresh tokens safe. If a lease
 * expires under a slow holder and two refreshes overlap, the refresh-token store's
 * compare-and-set still lets only one rotated token win, and the other refresher adopts
 * it.
 * @module
 */

/** Mutual exclusion of refreshes, per account. */
export interface RefreshLease {
  /**
   * Runs `refresh` as the account's only refresher. A caller that arrives while a
   * refresh of the account runs waits for it: the in-process lease hands it that
   * refresh's result; a shared lease may instead run the caller's `refresh` once the
   * holder is done, so `refresh` must first look for a result another holder left (the
   * token manager re-reads its access-token cache and the store). `ttlMs` is the longest
   * a refresh can take: a shared lease expires after it, so a crashed holder does not
   * block the account.
   */
  run<T>(account: string, refresh: () => Promise<T>, ttlMs: number): Promise<T>;
}

/** A {@link RefreshLease} for this process: callers share the refresh in progress. */
export class InProcessRefreshLease implements RefreshLease {
  readonly #running = new Map<string, Promise<unknown>>();

  /** See {@link RefreshLease.run}; `ttlMs` is not needed in one process. */
  run<T>(account: string, refresh: () => Promise<T>, _ttlMs: number): Promise<T> {
    const key = account.toLowerCase();
    const running = this.#running.get(key);
    if (running) return running as Promise<T>;
    const started: Promise<T> = Promise.resolve().then(refresh).finally(() => {
      if (this.#running.get(key) === started) this.#running.delete(key);
    });
    this.#running.set(key, started);
    return started;
  }
}
