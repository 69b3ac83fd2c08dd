/**
 * {@link ConnectionPermits} shared through Redis: the account's connection cap holds
 * across every relay instance. Each permit is a lease (the KumoMTA way): a member of the
 * sorted set `<prefix>conn:{account}` whose score is its expiry on Redis's clock. A
 * grant is one script (drop expired leases, count, add if under the cap); the holder
 * renews its leases every third of their length while its connections are open, and
 * removes the member when the connection closes. An instance that dies stops renewing:
 * its leases lapse within `leaseMs` and the cap frees up for the others.
 *
 * A lease that could not be renewed before it ran out (Redis unreachable, or the member
 * is gone) revokes the permit: the pool closes that connection at once, so the cap is
 * never exceeded by an instance that lost touch. A caller waiting for a permit tries
 * again on every local release and every `pollMs`; while Redis is unreachable it fails
 * at once (the message gets a 4xx).
 *
 * Members are `<instance>:<n>`, so the fleet view can tell which instance holds which
 * connections ({@link RedisPermits.holders}).
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type RedisState, type RedisUnavailableError, Script } from "../state/redis/client.ts";
import type { ConnectionPermits, Permit } from "./permits.ts";

const log = getLogger(["relay", "upstream"]);

/**
 * KEYS: leases, wait mark. ARGV: cap, lease ms, member, wait-mark ms. 1 granted, 0 full
 * (then the wait mark names the waiter, so holders elsewhere let idle connections go).
 */
const ACQUIRE = new Script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 0
`);

/**
 * KEYS: leases, wait mark. ARGV: lease ms, members…; extends those still held. Returns
 * {members that are gone, the waiting member or ''}.
 */
const RENEW = new Script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i]) == 0 and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return {lost, redis.call('GET', KEYS[2]) or ''}
`);

/** Options of {@link RedisPermits}. */
export interface RedisPermitsOptions {
  /** This instance's id (part of each member). */
  readonly instance: string;
  /** Lease length, ms (default 15 s). */
  readonly leaseMs?: number;
  /** A waiter tries again this often, ms (default 50). */
  readonly pollMs?: number;
  /**
   * Another instance waits for a permit of `account` while this one holds some: let idle
   * connections go (the pool's `quitIdle`), so an idle pooled connection does not starve
   * the others. Checked at every renewal.
   */
  readonly onWanted?: (account: string) => void;
}

interface Held {
  readonly member: string;
  readonly revoke: AbortController;
}

interface Waiter {
  /** Set once Redis answered "full" while this waiter was queued. */
  contended?: boolean;
  readonly account: string;
  readonly signal?: AbortSignal;
  resolve(p: Permit): void;
  reject(err: unknown): void;
}

/** Permits as leases in Redis; see the module comment. */
export class RedisPermits implements ConnectionPermits {
  readonly #redis: RedisState;
  readonly #cap: (account: string) => number;
  readonly #instance: string;
  readonly #leaseMs: number;
  readonly #pollMs: number;
  readonly #onWanted?: (account: string) => void;
  /** Held leases per account (lower-cased). */
  readonly #held = new Map<string, Map<string, Held>>();
  readonly #waiting = new Map<string, Waiter[]>();
  readonly #pumping = new Set<string>();
  /** Last successful renewal per account (ms, local clock). */
  readonly #renewedAt = new Map<string, number>();
  readonly #renewer: ReturnType<typeof setInterval>;
  #seq = 0;
  #closed = false;

  /** `cap`: per account, read at every grant (less than 1 counts as 1). */
  constructor(
    redis: RedisState,
    cap: number | ((account: string) => number),
    options: RedisPermitsOptions,
  ) {
    this.#redis = redis;
    this.#cap = typeof cap === "function" ? cap : () => cap;
    this.#instance = options.instance;
    this.#leaseMs = options.leaseMs ?? 15_000;
    this.#pollMs = options.pollMs ?? 50;
    this.#onWanted = options.onWanted;
    this.#renewer = setInterval(() => void this.#renewAll(), Math.floor(this.#leaseMs / 3));
    Deno.unrefTimer(this.#renewer as unknown as number);
  }

  /** {@inheritDoc ConnectionPermits.acquire} */
  acquire(account: string, signal?: AbortSignal): Promise<Permit> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const key = account.toLowerCase();
    return new Promise<Permit>((resolve, reject) => {
      const waiter: Waiter = { account: key, signal, resolve, reject };
      const queue = this.#waiting.get(key) ?? [];
      queue.push(waiter);
      this.#waiting.set(key, queue);
      signal?.addEventListener("abort", () => {
        if (this.#drop(waiter)) reject(signal.reason);
      }, { once: true });
      void this.#pump(key);
    });
  }

  /** Permits of `account` this instance holds. */
  held(account: string): number {
    return this.#held.get(account.toLowerCase())?.size ?? 0;
  }

  /** Every instance's leases on `account` now: instance → count (one Redis call). */
  async holders(account: string): Promise<Record<string, number>> {
    const members = await this.#redis.call("conn_holders", [
      "ZRANGE",
      this.#redis.key("conn", account),
      "0",
      "-1",
    ]) as string[];
    const out: Record<string, number> = {};
    for (const m of members) {
      const instance = m.slice(0, m.lastIndexOf(":"));
      out[instance] = (out[instance] ?? 0) + 1;
    }
    return out;
  }

  /** Stops renewing; every held lease is removed (best effort). */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#renewer);
    for (const queue of this.#waiting.values()) {
      for (const w of queue.splice(0)) w.reject(new Error("relay stopping"));
    }
    const removals = [...this.#held].map(([account, held]) =>
      held.size === 0 ? Promise.resolve() : this.#redis.call("conn_release", [
        "ZREM",
        this.#redis.key("conn", account),
        ...held.keys(),
      ]).catch(() => {})
    );
    await Promise.all(removals);
  }

  #drop(waiter: Waiter): boolean {
    const queue = this.#waiting.get(waiter.account);
    const i = queue?.indexOf(waiter) ?? -1;
    if (i < 0) return false;
    queue!.splice(i, 1);
    if (queue!.length === 0) this.#waiting.delete(waiter.account);
    return true;
  }

  /** Serves `account`'s waiters in order while Redis grants leases. */
  async #pump(account: string): Promise<void> {
    if (this.#pumping.has(account)) return;
    this.#pumping.add(account);
    try {
      while (!this.#closed) {
        const head = this.#waiting.get(account)?.[0];
        if (!head) return;
        const member = `${this.#instance}:${++this.#seq}`;
        let granted: boolean;
        try {
          granted = await this.#redis.script(
            "conn_acquire",
            ACQUIRE,
            [this.#redis.key("conn", account), this.#redis.key("connwait", account)],
            [
              Math.max(1, Math.floor(this.#cap(account))),
              this.#leaseMs,
              member,
              Math.floor(this.#leaseMs / 3) + 1_000,
            ],
          ) === 1;
        } catch (err) {
          // The script may have run without its answer reaching us: give that lease back.
          this.#remove(account, member);
          // A slow answer while Redis is up: try again (each waiter has its own deadline).
          // Unreachable Redis: every waiter fails now rather than wait blind.
          if (this.#redis.up && (err as RedisUnavailableError).kind === "timeout") {
            await this.#sleep(account);
            continue;
          }
          for (const w of this.#waiting.get(account)?.splice(0) ?? []) w.reject(err);
          this.#waiting.delete(account);
          return;
        }
        if (granted) {
          if (!this.#drop(head)) {
            // Given up while the script ran: give the lease straight back.
            this.#remove(account, member);
            continue;
          }
          head.resolve(this.#permit(account, member, head.contended === true));
          continue;
        }
        for (const w of this.#waiting.get(account) ?? []) w.contended = true;
        await this.#sleep(account);
      }
    } finally {
      this.#pumping.delete(account);
    }
  }

  /** Waits `pollMs` (with jitter) or until a local release. */
  #sleep(account: string): Promise<void> {
    return new Promise((wake) => {
      const timer = setTimeout(done, this.#pollMs * (0.5 + Math.random()));
      const wakers = this.#wakers.get(account) ?? new Set();
      wakers.add(done);
      this.#wakers.set(account, wakers);
      function done() {
        clearTimeout(timer);
        wakers.delete(done);
        wake();
      }
    });
  }

  readonly #wakers = new Map<string, Set<() => void>>();

  #permit(account: string, member: string, contended: boolean): Permit {
    let held = this.#held.get(account);
    if (!held) this.#held.set(account, held = new Map());
    if (held.size === 0) this.#renewedAt.set(account, Date.now());
    const entry: Held = { member, revoke: new AbortController() };
    held.set(member, entry);
    let released = false;
    return {
      revoked: entry.revoke.signal,
      contended,
      release: () => {
        if (released) return;
        released = true;
        held.delete(member);
        if (held.size === 0) this.#held.delete(account);
        this.#remove(account, member);
      },
    };
  }

  #remove(account: string, member: string): void {
    this.#redis.call("conn_release", ["ZREM", this.#redis.key("conn", account), member])
      .catch(() => {}) // it lapses by itself
      .finally(() => {
        for (const wake of [...this.#wakers.get(account) ?? []]) wake();
      });
  }

  async #renewAll(): Promise<void> {
    if (this.#closed) return;
    await Promise.all([...this.#held].map(async ([account, held]) => {
      const members = [...held.keys()];
      if (members.length === 0) return;
      try {
        const [lost, waiter] = await this.#redis.script(
          "conn_renew",
          RENEW,
          [this.#redis.key("conn", account), this.#redis.key("connwait", account)],
          [this.#leaseMs, ...members],
        ) as [string[], string];
        this.#renewedAt.set(account, Date.now());
        for (const m of lost) this.#revoke(account, m, "its lease is gone");
        if (waiter && !waiter.startsWith(`${this.#instance}:`)) this.#onWanted?.(account);
      } catch {
        // Not renewed: once the leases may have run out, they are not ours any more.
        // The next round would come too late: revoke now, before Redis lets them lapse.
        const since = this.#renewedAt.get(account) ?? 0;
        const late = this.#leaseMs - Math.floor(this.#leaseMs / 3) - this.#redis.timeoutMs;
        if (Date.now() - since >= late) {
          for (const m of members) this.#revoke(account, m, "its lease could not be renewed");
        }
      }
    }));
  }

  #revoke(account: string, member: string, why: string): void {
    const entry = this.#held.get(account)?.get(member);
    if (!entry) return;
    log.warn("upstream connection of {account} closed: {why}", { account, why });
    entry.revoke.abort(new Error(`connection permit revoked: ${why}`));
  }
}
