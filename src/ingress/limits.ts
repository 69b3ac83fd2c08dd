/**
 * Abuse limits of the SMTP listeners: concurrent clients overall and per IP (with a
 * reserve for trusted networks), and authentication failures per IP and per account
 * (tarpit, then disconnect per IP; a lock per account).
 * @module
 */
import { DEFAULTS } from "../config/defaults.ts";
import type { AuthFailureLedger } from "./auth_ledger.ts";

/** Limit settings; the defaults live in config/defaults.ts. */
export interface LimitOptions {
  /** Concurrent client sessions, all listeners together. */
  readonly maxClients: number;
  /** Concurrent sessions from one IP address. */
  readonly maxConnectionsPerIp: number;
  /** Failures (per IP or per account) after which each further AUTH reply is delayed. */
  readonly authFailuresBeforeTarpit: number;
  /** Failures from one IP after which its sessions are closed with 421. */
  readonly authFailuresBeforeDisconnect: number;
  /** Failures are forgotten after this long, ms; also how long an account lock lasts. */
  readonly authFailureWindowMs: number;
  /** Delay per failure beyond the tarpit threshold, ms (capped at 10 s). */
  readonly tarpitStepMs: number;
  /**
   * Failures for one username (from clients not exempt, any addresses) within the window
   * after which AUTH as that username is refused without a password check for one window.
   * Default {@link DEFAULTS.authFailuresBeforeAccountLock}.
   */
  readonly authFailuresBeforeAccountLock?: number;
  /**
   * Networks (CIDR) whose clients are not cut off per IP, bypass account locks and do not
   * count towards them (trusted networks are always treated so). Default none.
   */
  readonly authFailureExempt?: readonly string[];
  /** Sessions only clients from trusted networks may use. Default {@link DEFAULTS.trustedReserve}. */
  readonly trustedReserve?: number;
  /**
   * From this share of the cap (%), a new client closes the longest-idle session that has not
   * logged in if it has been idle {@link idleShedSeconds}. Default {@link DEFAULTS.idleShedPercent}.
   */
  readonly idleShedPercent?: number;
  /** See {@link idleShedPercent}, seconds. Default {@link DEFAULTS.idleShedSeconds}. */
  readonly idleShedSeconds?: number;
  /**
   * Failed AUTHs shared with other relay instances (Redis): counted there too, and what
   * the others saw (per-IP failures, account locks) applies here. Default: none.
   */
  readonly authFailureLedger?: AuthFailureLedger;
}

/** Counts open sessions overall and per address. */
export class ConnectionLimiter {
  readonly #o: LimitOptions;
  readonly #perIp = new Map<string, number>();
  #total = 0;

  /** Uses the max* fields and `trustedReserve` of `options`. */
  constructor(options: LimitOptions) {
    this.#o = options;
  }

  /** Open sessions. */
  get total(): number {
    return this.#total;
  }

  /**
   * Admits a session from `ip` or says why not ("ip" or "clients"). Clients outside
   * trusted networks are capped `trustedReserve` below `maxClients`. An admitted session
   * must be {@link release}d exactly once.
   */
  admit(ip: string, trusted = false): "ok" | "clients" | "ip" {
    const n = this.#perIp.get(ip) ?? 0;
    if (n >= this.#o.maxConnectionsPerIp) return "ip";
    const reserve = trusted ? 0 : this.#o.trustedReserve ?? DEFAULTS.trustedReserve;
    if (this.#total >= this.#o.maxClients - reserve) return "clients";
    this.#perIp.set(ip, n + 1);
    this.#total++;
    return "ok";
  }

  /** Ends an admitted session. */
  release(ip: string): void {
    const n = this.#perIp.get(ip) ?? 0;
    if (n <= 1) this.#perIp.delete(ip);
    else this.#perIp.set(ip, n - 1);
    this.#total--;
  }
}

const MAX_TARPIT_MS = 10_000;

/** What {@link AuthThrottle} knows about one username. */
interface AccountRecord {
  /** Failures of every client in the window: the tarpit. */
  failures: number[];
  /** Failures of clients that are not exempt since the last lock: towards the next. */
  strikes: number[];
  /** Locked until this time (Date.now() ms); 0: not locked. */
  lockedUntil: number;
  /** Password checks under way for clients that are not exempt. */
  checking: number;
  /** Attempts waiting for a check to end. */
  waiting: (() => void)[];
}

/** What a failed AUTH costs: the reply's delay, and whether it locked the account. */
export interface Failure {
  /** Hold the 535 back this long, ms. */
  readonly delayMs: number;
  /** This failure locked the account (it was not locked before). */
  readonly locked: boolean;
  /** Failures that led to the lock, within the window. */
  readonly strikes: number;
}

/** Sliding-window failure counts per IP and per account, and account locks. */
export class AuthThrottle {
  readonly #o: LimitOptions;
  readonly #lockAfter: number;
  readonly #byIp = new Map<string, number[]>();
  readonly #byAccount = new Map<string, AccountRecord>();

  /** Uses the auth* and tarpit fields of `options`. */
  constructor(options: LimitOptions) {
    this.#o = options;
    this.#lockAfter = options.authFailuresBeforeAccountLock ??
      DEFAULTS.authFailuresBeforeAccountLock;
  }

  /** True when `ip` failed too often recently: its sessions are to be closed. */
  blocked(ip: string): boolean {
    const now = Date.now();
    return this.#recent(this.#byIp, ip, now) >= this.#o.authFailuresBeforeDisconnect ||
      this.#fleetBlocked(ip, now);
  }

  /** Failures from other instances (through the ledger), as last seen: count and when. */
  readonly #fleetIp = new Map<string, { count: number; at: number }>();

  /** The fleet's count for `ip`, kept one window after it was seen (a conservative bound). */
  #fleetBlocked(ip: string, now: number): boolean {
    const seen = this.#fleetIp.get(ip);
    if (!seen) return false;
    if (seen.at <= now - this.#o.authFailureWindowMs) {
      this.#fleetIp.delete(ip);
      return false;
    }
    return seen.count >= this.#o.authFailuresBeforeDisconnect;
  }

  /** An account lock another instance set (through the ledger), before a password check. */
  async #fleetLocked(account: string): Promise<boolean> {
    const ledger = this.#o.authFailureLedger;
    if (!ledger) return false;
    const ms = await ledger.lockedForMs(account).catch(() => 0); // unreachable: count alone
    if (ms <= 0) return false;
    const r = this.#account(account);
    r.lockedUntil = Math.max(r.lockedUntil, Date.now() + ms);
    return true;
  }

  /** Counts a failure in the ledger and takes over what the fleet saw. */
  #share(ip: string, account: string, exempt: boolean): void {
    const ledger = this.#o.authFailureLedger;
    if (!ledger || exempt) return;
    ledger.record(ip, account, exempt, this.#o.authFailureWindowMs, this.#lockAfter).then(
      (view) => {
        const now = Date.now();
        this.#fleetIp.set(ip, { count: view.ipFailures, at: now });
        if (view.lockedForMs > 0) {
          const r = this.#account(account);
          r.lockedUntil = Math.max(r.lockedUntil, now + view.lockedForMs);
        }
      },
      () => {}, // unreachable: this instance counts alone meanwhile
    );
  }

  /**
   * Before a password check for `account` (lower-cased username) by a client that is not
   * exempt: "locked" while the account is locked, else "check" once the failures in the
   * window plus the checks under way are fewer than the lock threshold (waits for checks
   * under way to end otherwise, so concurrent guesses cannot overrun the lock). After
   * "check", call {@link checked} exactly once.
   */
  async begin(account: string): Promise<"check" | "locked"> {
    if (await this.#fleetLocked(account)) return "locked";
    while (true) {
      const r = this.#account(account);
      const now = Date.now();
      if (r.lockedUntil > now) return "locked";
      r.lockedUntil = 0;
      this.#prune(r.strikes, now);
      if (r.strikes.length + r.checking < this.#lockAfter) {
        r.checking++;
        return "check";
      }
      await new Promise<void>((wake) => r.waiting.push(wake));
    }
  }

  /** Ends a check that {@link begin} admitted (after {@link failed}, if it failed). */
  checked(account: string): void {
    const r = this.#byAccount.get(account);
    if (!r) return;
    r.checking--;
    const waiting = r.waiting.splice(0);
    for (const wake of waiting) wake();
    const clean = r.failures.length === 0 && r.strikes.length === 0 && r.lockedUntil === 0;
    if (clean && r.checking === 0 && waiting.length === 0) this.#byAccount.delete(account);
  }

  /**
   * Records a failed attempt from `ip` as `account` and says how long to hold back the
   * failure reply and whether it locked the account. `exempt` clients (trusted networks,
   * `authFailureExempt`) are tarpitted per account only, never counted towards a block or
   * a lock.
   */
  failed(ip: string, account: string, exempt = false): Failure {
    const now = Date.now();
    const r = this.#account(account);
    let worst = this.#prune(r.failures, now) + 1;
    r.failures.push(now);
    let locked = false;
    let strikes = 0;
    if (!exempt) {
      const ipFailures = this.#recent(this.#byIp, ip, now);
      const list = this.#byIp.get(ip) ?? [];
      list.push(now);
      this.#byIp.set(ip, list);
      worst = Math.max(worst, ipFailures + 1);
      this.#prune(r.strikes, now);
      r.strikes.push(now);
      strikes = r.strikes.length;
      if (strikes >= this.#lockAfter && r.lockedUntil <= now) {
        r.lockedUntil = now + this.#o.authFailureWindowMs;
        r.strikes = [];
        locked = true;
      }
    }
    this.#share(ip, account, exempt);
    // Keep memory bounded under a flood of distinct keys.
    if (this.#byIp.size + this.#byAccount.size + this.#fleetIp.size > 100_000) {
      this.#sweep(now);
      for (const ip of [...this.#fleetIp.keys()]) this.#fleetBlocked(ip, now);
    }
    const excess = worst - this.#o.authFailuresBeforeTarpit;
    const delayMs = excess > 0 ? Math.min(MAX_TARPIT_MS, excess * this.#o.tarpitStepMs) : 0;
    return { delayMs, locked, strikes };
  }

  #account(account: string): AccountRecord {
    let r = this.#byAccount.get(account);
    if (!r) {
      r = { failures: [], strikes: [], lockedUntil: 0, checking: 0, waiting: [] };
      this.#byAccount.set(account, r);
    }
    return r;
  }

  /** Drops entries older than the window from `list`; returns how many are left. */
  #prune(list: number[], now: number): number {
    const from = now - this.#o.authFailureWindowMs;
    while (list.length > 0 && list[0] < from) list.shift();
    return list.length;
  }

  #recent(map: Map<string, number[]>, key: string, now: number): number {
    const list = map.get(key);
    if (!list) return 0;
    const n = this.#prune(list, now);
    if (n === 0) map.delete(key);
    return n;
  }

  #sweep(now: number): void {
    for (const key of [...this.#byIp.keys()]) this.#recent(this.#byIp, key, now);
    for (const [key, r] of this.#byAccount) {
      this.#prune(r.failures, now);
      this.#prune(r.strikes, now);
      const idle = r.checking === 0 && r.waiting.length === 0 && r.lockedUntil <= now;
      if (idle && r.failures.length === 0 && r.strikes.length === 0) this.#byAccount.delete(key);
    }
  }
}
