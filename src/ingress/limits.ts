/**
 * Abuse limits of the SMTP listeners: concurrent clients overall and per IP, and
 * authentication failures per IP and per account (tarpit, then disconnect).
 * @module
 */

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
  /** Failures are forgotten after this long, ms. */
  readonly authFailureWindowMs: number;
  /** Delay per failure beyond the tarpit threshold, ms (capped at 10 s). */
  readonly tarpitStepMs: number;
}

/** Counts open sessions overall and per address. */
export class ConnectionLimiter {
  readonly #o: LimitOptions;
  readonly #perIp = new Map<string, number>();
  #total = 0;

  /** Uses the max* fields of `options`. */
  constructor(options: LimitOptions) {
    this.#o = options;
  }

  /** Open sessions. */
  get total(): number {
    return this.#total;
  }

  /**
   * Admits a session from `ip` or says why not ("clients" or "ip"). An admitted
   * session must be {@link release}d exactly once.
   */
  admit(ip: string): "ok" | "clients" | "ip" {
    if (this.#total >= this.#o.maxClients) return "clients";
    const n = this.#perIp.get(ip) ?? 0;
    if (n >= this.#o.maxConnectionsPerIp) return "ip";
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

/** Sliding-window failure counts per IP and per account. */
export class AuthThrottle {
  readonly #o: LimitOptions;
  readonly #byIp = new Map<string, number[]>();
  readonly #byAccount = new Map<string, number[]>();

  /** Uses the auth* and tarpit fields of `options`. */
  constructor(options: LimitOptions) {
    this.#o = options;
  }

  /** True when `ip` failed too often recently: its sessions are to be closed. */
  blocked(ip: string): boolean {
    return this.#recent(this.#byIp, ip, Date.now()) >= this.#o.authFailuresBeforeDisconnect;
  }

  /**
   * Records a failed attempt from `ip` as `account` (lower-cased username) and returns
   * how long to hold back the failure reply. `exempt` addresses (loopback, trusted) are
   * tarpitted per account only and never counted towards a block.
   */
  failed(ip: string, account: string, exempt = false): number {
    const now = Date.now();
    const keys: [Map<string, number[]>, string][] = [[this.#byAccount, account]];
    if (!exempt) keys.push([this.#byIp, ip]);
    let worst = 0;
    for (const [map, key] of keys) {
      const n = this.#recent(map, key, now);
      const list = map.get(key) ?? [];
      list.push(now);
      map.set(key, list);
      worst = Math.max(worst, n + 1);
    }
    // Keep memory bounded under a flood of distinct keys.
    if (this.#byIp.size + this.#byAccount.size > 100_000) this.#sweep(now);
    const excess = worst - this.#o.authFailuresBeforeTarpit;
    return excess > 0 ? Math.min(MAX_TARPIT_MS, excess * this.#o.tarpitStepMs) : 0;
  }

  #recent(map: Map<string, number[]>, key: string, now: number): number {
    const list = map.get(key);
    if (!list) return 0;
    const from = now - this.#o.authFailureWindowMs;
    while (list.length > 0 && list[0] < from) list.shift();
    if (list.length === 0) map.delete(key);
    return list.length;
  }

  #sweep(now: number): void {
    for (const map of [this.#byIp, this.#byAccount]) {
      for (const key of [...map.keys()]) this.#recent(map, key, now);
    }
  }
}
