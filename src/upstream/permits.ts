/**
 * Connection permits: the cap on an account's concurrent upstream connections. A pool
 * takes a permit before it opens a socket to the provider and gives it back when that
 * socket closes, so the cap holds across every pool that shares the permits: two pools
 * of one account in this process ({@link LocalPermits}), or relay instances sharing a
 * backend (leases in Redis, say) behind the same interface.
 * @module
 */

/** The right to hold one upstream connection of an account until it is released. */
export interface Permit {
  /** Gives the permit back. Only the first call counts; later calls do nothing. */
  release(): void;
  /**
   * Aborted if the permit is taken away before it was released: a shared backend whose
   * lease could not be renewed in time. The holder must close its connection at once.
   * A backend with leases renews them itself while the permit is held (only it knows the
   * lease's length); {@link LocalPermits} never takes a permit away.
   */
  readonly revoked: AbortSignal;
  /**
   * True when the cap was full when this permit was asked for (it came after a wait): the
   * holder then knows more connections would only wait too.
   */
  readonly contended?: boolean;
}

/** Hands out connection permits per account. */
export interface ConnectionPermits {
  /**
   * Resolves with a permit for `account` once one is free, first come first served. If
   * `signal` aborts first, rejects with its reason and forgets the wait: nothing is held.
   */
  acquire(account: string, signal?: AbortSignal): Promise<Permit>;
  /**
   * A shared backend: every instance's permits of `account` now (instance id → count),
   * for the operator's view of the fleet.
   */
  holders?(account: string): Promise<Record<string, number>>;
}

/** A signal that never aborts, for permits nobody can take away. */
const NEVER: AbortSignal = new AbortController().signal;

interface Waiter {
  grant(): void;
}

interface AccountState {
  held: number;
  readonly queue: Waiter[];
}

/**
 * Permits within one process: at most `cap` per account, waiters served in arrival
 * order, each permit released exactly once. Share one instance between every pool of
 * the process so that pools of the same account (a reload's old and new one) share
 * the cap.
 */
export class LocalPermits implements ConnectionPermits {
  readonly #cap: (account: string) => number;
  readonly #accounts = new Map<string, AccountState>();

  /**
   * `cap`: permits per account, the same for all or per account (read on every grant,
   * so a changed cap applies to the next one). Less than 1 counts as 1.
   */
  constructor(cap: number | ((account: string) => number)) {
    this.#cap = typeof cap === "function" ? cap : () => cap;
  }

  /** {@inheritDoc ConnectionPermits.acquire} */
  acquire(account: string, signal?: AbortSignal): Promise<Permit> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const state = this.#state(account);
    if (state.queue.length === 0 && state.held < this.#capOf(account)) {
      state.held++;
      return Promise.resolve(this.#permit(account, false));
    }
    return new Promise<Permit>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve(this.#permit(account, true));
        },
      };
      const onAbort = () => {
        const i = state.queue.indexOf(waiter);
        if (i >= 0) state.queue.splice(i, 1);
        this.#forgetIfUnused(account, state);
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      state.queue.push(waiter);
    });
  }

  /** Permits of `account` held now. */
  held(account: string): number {
    return this.#accounts.get(account)?.held ?? 0;
  }

  /** Callers waiting for a permit of `account` now. */
  waiting(account: string): number {
    return this.#accounts.get(account)?.queue.length ?? 0;
  }

  #capOf(account: string): number {
    return Math.max(1, Math.floor(this.#cap(account)));
  }

  #state(account: string): AccountState {
    let state = this.#accounts.get(account);
    if (!state) this.#accounts.set(account, state = { held: 0, queue: [] });
    return state;
  }

  #permit(account: string, contended: boolean): Permit {
    let released = false;
    return {
      revoked: NEVER,
      contended,
      release: () => {
        if (released) return;
        released = true;
        const state = this.#state(account);
        state.held--;
        while (state.queue.length > 0 && state.held < this.#capOf(account)) {
          state.held++;
          state.queue.shift()!.grant();
        }
        this.#forgetIfUnused(account, state);
      },
    };
  }

  #forgetIfUnused(account: string, state: AccountState): void {
    if (state.held === 0 && state.queue.length === 0) this.#accounts.delete(account);
  }
}
