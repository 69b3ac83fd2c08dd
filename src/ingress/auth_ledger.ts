/**
 * The fleet's memory of failed AUTHs, for relay instances that share state: an
 * {@link AuthThrottle} that has one counts every failure there too and learns from it
 * what the other instances saw (account locks), so N instances do not give an attacker N
 * times the guesses. Without one, each instance counts alone.
 *
 * The per-IP cut-off ({@link AuthCutOff}) is judged before the password check, in one
 * step with the count: an address with L failures in the window is cut off; one with
 * fewer failures, but L counting the checks under way, waits for those (on any instance)
 * to end; otherwise its check is counted as under way. A failed check becomes a failure,
 * a successful one (or one that checked no password) counts nothing. So with a limit of
 * L, however many attempts run at once on however many instances, exactly L are checked
 * and fail before the cut-off, and a right password is never cut off by others' checks.
 * {@link FleetAccountGate} does the same for an account's lock across instances.
 * @module
 */

/** What the fleet knows after a failure, or before a password check. */
export interface FleetAuthView {
  /** Failures from the IP in the window, every instance together. */
  readonly ipFailures: number;
  /** The account is locked for this much longer, ms (0: not locked). */
  readonly lockedForMs: number;
  /** This failure locked the account (it was not locked before). */
  readonly locked?: boolean;
  /** Failures towards the lock in the window, every instance together. */
  readonly strikes?: number;
}

/** Shared failure counters (Redis). Calls may fail: the throttle then counts alone. */
export interface AuthFailureLedger {
  /**
   * What the fleet knows after a failure from `ip` as `account`, which {@link settle} and
   * {@link settleAccount} counted (the lock included): the implementation may only read.
   */
  record(
    ip: string,
    account: string,
    exempt: boolean,
    windowMs: number,
    lockAfter: number,
  ): Promise<FleetAuthView>;
  /** The account's lock, before a password check. */
  lockedForMs(account: string): Promise<number>;
  /**
   * One step, on `ip`'s failures in the window and checks under way (every instance
   * together): "cut off" with `limit` failures; "wait" with `limit` counting the checks;
   * else "check", and check `id` is counted as under way (for at most `checkMs`).
   */
  admit(
    ip: string,
    id: string,
    windowMs: number,
    limit: number,
    checkMs: number,
  ): Promise<"check" | "wait" | "cut off">;
  /** Check `id` from `ip` ended: a failure (`failed`) counts from now on, else nothing. */
  settle(ip: string, id: string, failed: boolean, windowMs: number): Promise<void>;
  /**
   * The same for an account's lock, in one step: "locked" while it is locked; "wait" when
   * its strikes and the checks under way reach `lockAfter`; else "check", and check `id`
   * is counted as under way (for at most `checkMs`).
   */
  admitAccount(
    account: string,
    id: string,
    lockAfter: number,
    windowMs: number,
    checkMs: number,
  ): Promise<"check" | "wait" | "locked">;
  /**
   * Check `id` as `account` ended; a failure is a strike, and the strike that reaches
   * `lockAfter` locks the account for `windowMs` (`locked`: this one did).
   */
  settleAccount(
    account: string,
    id: string,
    failed: boolean,
    windowMs: number,
    lockAfter: number,
  ): Promise<{ strikes: number; locked: boolean }>;
}

/** An admitted attempt: call exactly one of its methods once the outcome is known. */
export interface AuthAttempt {
  /** The password check failed: the attempt stays counted. */
  failed(): void;
  /** The login succeeded, or no password was checked: the attempt no longer counts. */
  forgive(): void;
}

/** What {@link AuthCutOff} needs of the limits. */
export interface CutOffOptions {
  /** Failures per IP in the window before the cut-off. */
  readonly authFailuresBeforeDisconnect: number;
  /** The window, ms. */
  readonly authFailureWindowMs: number;
  /** Shared counts (Redis); without it this instance counts alone. */
  readonly authFailureLedger?: AuthFailureLedger;
}

/** A check under way that a crashed instance left behind stops counting after this. */
export const CHECK_LAPSE_MS = 30_000;
/** How often an attempt that waits for checks on other instances asks again, ms. */
const FLEET_POLL_MS = 25;

/** This process's counts for one address. */
interface IpRecord {
  /** Failure times in the window. */
  failures: number[];
  /** Checks under way (admitted here without the ledger). */
  checking: number;
  /** Attempts waiting for a check to end. */
  waiting: (() => void)[];
}

/**
 * The per-IP cut-off: {@link admit} before a password check, then the attempt's outcome.
 * With a ledger the verdict is the ledger's (every instance); while it cannot be reached,
 * and without one, this process's own counts decide.
 */
export class AuthCutOff {
  readonly #o: CutOffOptions;
  readonly #byIp = new Map<string, IpRecord>();
  readonly #instance = crypto.randomUUID().slice(0, 8);
  #seq = 0;

  /** Uses `authFailuresBeforeDisconnect`, `authFailureWindowMs` and the ledger. */
  constructor(options: CutOffOptions) {
    this.#o = options;
  }

  /**
   * Waits for the verdict on an attempt from `ip`: the attempt (its check counted as under
   * way), or `undefined` when `ip` is cut off (nothing counted, no password to check).
   */
  async admit(ip: string): Promise<AuthAttempt | undefined> {
    const ledger = this.#o.authFailureLedger;
    if (ledger) {
      const id = `${this.#instance}:${++this.#seq}`;
      try {
        while (true) {
          const verdict = await ledger.admit(
            ip,
            id,
            this.#o.authFailureWindowMs,
            this.#o.authFailuresBeforeDisconnect,
            CHECK_LAPSE_MS,
          );
          if (verdict === "cut off") return undefined;
          if (verdict === "check") return this.#attempt(ip, id, ledger);
          await new Promise((go) => setTimeout(go, FLEET_POLL_MS * (1 + Math.random())));
        }
      } catch {
        // Unreachable: this process's own counts decide meanwhile.
      }
    }
    while (true) {
      const r = this.#record(ip);
      if (r.failures.length >= this.#o.authFailuresBeforeDisconnect) return undefined;
      if (r.failures.length + r.checking < this.#o.authFailuresBeforeDisconnect) {
        r.checking++;
        return this.#attempt(ip);
      }
      await new Promise<void>((wake) => r.waiting.push(wake));
    }
  }

  /** An admitted attempt: counted under way in the ledger (with `id`) or here. */
  #attempt(ip: string, id?: string, ledger?: AuthFailureLedger): AuthAttempt {
    let done = false;
    const end = (failed: boolean) => {
      if (done) return;
      done = true;
      const r = this.#record(ip);
      if (failed) r.failures.push(Date.now()); // here too, for when the ledger is away
      if (id === undefined) r.checking--;
      for (const wake of r.waiting.splice(0)) wake();
      if (r.failures.length === 0 && r.checking === 0) this.#byIp.delete(ip);
      // Unreachable: a failure was counted here; a check under way lapses by itself.
      if (id !== undefined) {
        ledger!.settle(ip, id, failed, this.#o.authFailureWindowMs).catch(() => {});
      }
    };
    return { failed: () => end(true), forgive: () => end(false) };
  }

  /** This process's record of `ip`, failures older than the window dropped. */
  #record(ip: string): IpRecord {
    const now = Date.now();
    let r = this.#byIp.get(ip);
    if (!r) {
      if (this.#byIp.size >= 100_000) this.#sweep(now);
      r = { failures: [], checking: 0, waiting: [] };
      this.#byIp.set(ip, r);
    }
    this.#prune(r, now);
    return r;
  }

  #prune(r: IpRecord, now: number): void {
    const from = now - this.#o.authFailureWindowMs;
    while (r.failures.length > 0 && r.failures[0] < from) r.failures.shift();
  }

  /** Keeps memory bounded under a flood of addresses. */
  #sweep(now: number): void {
    for (const [ip, r] of this.#byIp) {
      this.#prune(r, now);
      if (r.failures.length === 0 && r.checking === 0 && r.waiting.length === 0) {
        this.#byIp.delete(ip);
      }
    }
  }
}

/** An admitted check as an account across the fleet: exactly one method, once. */
export interface AccountAttempt {
  /** A strike; resolves to what it did (`undefined`: the ledger could not be reached). */
  failed(): Promise<{ strikes: number; locked: boolean } | undefined>;
  /** Not a strike (a success, or no password checked). */
  forgive(): void;
}

/** What {@link FleetAccountGate} needs of the limits. */
export interface AccountGateOptions {
  /** The window, ms; also how long a lock lasts. */
  readonly authFailureWindowMs: number;
  /** Strikes before the lock. */
  readonly authFailuresBeforeAccountLock?: number;
  /** Shared counts (Redis); without it the gate lets everything through. */
  readonly authFailureLedger?: AuthFailureLedger;
}

/**
 * The account lock across instances, after this instance's own turn
 * (`AuthThrottle.begin`): the ledger judges and counts the check in one step, so N
 * instances together check no more guesses than the lock allows. Without a ledger, or
 * while it cannot be reached, it admits (this instance's throttle decides alone).
 */
export class FleetAccountGate {
  readonly #o: AccountGateOptions;
  readonly #lockAfter: number;
  readonly #instance = crypto.randomUUID().slice(0, 8);
  #seq = 0;

  /** `lockAfter`: the default of the config when the options have none. */
  constructor(options: AccountGateOptions, lockAfter: number) {
    this.#o = options;
    this.#lockAfter = options.authFailuresBeforeAccountLock ?? lockAfter;
  }

  /** Waits for the fleet's verdict on a check as `account`: "locked", or the attempt. */
  async admit(account: string): Promise<AccountAttempt | "locked" | undefined> {
    const ledger = this.#o.authFailureLedger;
    if (!ledger) return undefined;
    const id = `${this.#instance}:${++this.#seq}`;
    const windowMs = this.#o.authFailureWindowMs;
    try {
      while (true) {
        const verdict = await ledger.admitAccount(
          account,
          id,
          this.#lockAfter,
          windowMs,
          CHECK_LAPSE_MS,
        );
        if (verdict === "locked") return "locked";
        if (verdict === "check") break;
        await new Promise((go) => setTimeout(go, FLEET_POLL_MS * (1 + Math.random())));
      }
    } catch {
      return undefined; // unreachable: this instance's throttle decides alone
    }
    let done = false;
    const end = (failed: boolean) => {
      if (done) return Promise.resolve(undefined);
      done = true;
      return ledger.settleAccount(account, id, failed, windowMs, this.#lockAfter)
        .catch(() => undefined); // unreachable: the check under way lapses by itself
    };
    return {
      failed: () => end(true),
      forgive: () => void end(false),
    };
  }
}
