/**
 * The fleet's memory of failed AUTHs, for relay instances that share state: an
 * {@link AuthThrottle} that has one counts every failure there too and learns from it
 * what the other instances saw (failures per IP, account locks), so N instances do not
 * give an attacker N times the guesses. Without one, each instance counts alone.
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
   * Records a failure from `ip` as `account` (`exempt`: only looked at, not counted) and
   * locks the account for `windowMs` once `lockAfter` failures fall in the window.
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
}
