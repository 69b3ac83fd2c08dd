/**
 * {@link AuthFailureLedger} in Redis: failed AUTHs per IP and per account over the
 * window, and account locks, shared by every relay instance. Usernames are stored as a
 * hash only (clients put passwords in the username field by mistake).
 *
 * Keys: `<prefix>auth:ip:{<ip>}`: a sorted set of failed AUTHs from the address (score =
 * time on Redis's clock), expiring one window after the last; `<prefix>auth:try:{<ip>}`:
 * a sorted set of its password checks under way (score = when one lapses), judged and
 * counted in one script ({@link RedisAuthFailures.admit});
 * `<prefix>auth:user:{<sha256 of username>}`: a sorted set of failures towards the account
 * lock, expiring one window after the last;
 * `<prefix>auth:lock:{<hash>}`: a string that exists while the account is locked (PX =
 * the window).
 * @module
 */
import { createHash } from "node:crypto";
import type { AuthFailureLedger, FleetAuthView } from "../../ingress/auth_ledger.ts";
import { type RedisState, Script } from "./client.ts";

/**
 * KEYS: ip failures, ip checks. ARGV: window ms, limit, id, check lapse ms. Returns 0: cut
 * off, 2: wait (the checks under way fill the limit), 1: check `id` counted as under way.
 */
const ADMIT = new Script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local failures = redis.call('ZCARD', KEYS[1])
if failures >= tonumber(ARGV[2]) then return 0 end
if failures + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 2 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
`);

/** KEYS: ip failures, ip checks. ARGV: id, failed (1/0), window ms. */
const SETTLE = new Script(`
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
`);

/**
 * KEYS: ip, user, lock. ARGV: window ms, lock after, id, exempt (1/0). The IP's failure
 * is counted by {@link SETTLE}: here only read.
 */
const RECORD = new Script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local ipc, strikes, locked = 0, 0, 0
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[4] ~= '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], window)
  strikes = redis.call('ZCARD', KEYS[2])
  if strikes >= tonumber(ARGV[2]) and redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('SET', KEYS[3], '1', 'PX', window)
    redis.call('DEL', KEYS[2])
    locked = 1
  end
end
ipc = redis.call('ZCARD', KEYS[1])
local ttl = redis.call('PTTL', KEYS[3])
if ttl < 0 then ttl = 0 end
return {ipc, strikes, ttl, locked}
`);

/** Failures and locks in Redis; see the module comment. */
export class RedisAuthFailures implements AuthFailureLedger {
  readonly #redis: RedisState;
  readonly #instance: string;
  #seq = 0;

  /** `instance` makes failure ids unique across relays. */
  constructor(redis: RedisState, instance: string) {
    this.#redis = redis;
    this.#instance = instance;
  }

  /** See {@link AuthFailureLedger.record}. */
  async record(
    ip: string,
    account: string,
    exempt: boolean,
    windowMs: number,
    lockAfter: number,
  ): Promise<FleetAuthView> {
    const user = userHash(account);
    const r = await this.#redis.script("auth_failed", RECORD, [
      `${this.#redis.prefix}auth:ip:{${ip}}`,
      `${this.#redis.prefix}auth:user:{${user}}`,
      `${this.#redis.prefix}auth:lock:{${user}}`,
    ], [windowMs, lockAfter, `${this.#instance}:${++this.#seq}`, exempt ? 1 : 0]) as number[];
    return {
      ipFailures: Number(r[0]),
      strikes: Number(r[1]),
      lockedForMs: Number(r[2]),
      locked: Number(r[3]) === 1,
    };
  }

  /** See {@link AuthFailureLedger.admit}. */
  async admit(
    ip: string,
    id: string,
    windowMs: number,
    limit: number,
    checkMs: number,
  ): Promise<"check" | "wait" | "cut off"> {
    const r = Number(
      await this.#redis.script("auth_admit", ADMIT, this.#ipKeys(ip), [
        windowMs,
        limit,
        id,
        checkMs,
      ]),
    );
    return r === 1 ? "check" : r === 2 ? "wait" : "cut off";
  }

  /** See {@link AuthFailureLedger.settle}. */
  async settle(ip: string, id: string, failed: boolean, windowMs: number): Promise<void> {
    await this.#redis.script("auth_settle", SETTLE, this.#ipKeys(ip), [
      id,
      failed ? 1 : 0,
      windowMs,
    ]);
  }

  #ipKeys(ip: string): string[] {
    return [`${this.#redis.prefix}auth:ip:{${ip}}`, `${this.#redis.prefix}auth:try:{${ip}}`];
  }

  /** See {@link AuthFailureLedger.lockedForMs}. */
  async lockedForMs(account: string): Promise<number> {
    const ttl = Number(
      await this.#redis.call("auth_lock", [
        "PTTL",
        `${this.#redis.prefix}auth:lock:{${userHash(account)}}`,
      ]),
    );
    return ttl > 0 ? ttl : 0;
  }
}

function userHash(account: string): string {
  return createHash("sha256").update(account.toLowerCase()).digest("hex").slice(0, 32);
}
