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
 * lock, expiring one window after the last; `<prefix>auth:utry:{<hash>}`: its password
 * checks under way (score = when one lapses), judged and counted in one script
 * ({@link RedisAuthFailures.admitAccount});
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
 * KEYS: ip, user, lock. The fleet's view after a failure: the IP's failures, the
 * account's strikes and lock (counted by {@link SETTLE} and {@link SETTLE_USER}).
 */
const VIEW = new Script(`
local ttl = redis.call('PTTL', KEYS[3])
if ttl < 0 then ttl = 0 end
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]), ttl, 0}
`);

/**
 * KEYS: strikes, checks, lock. ARGV: lock after, window ms, id, check lapse ms. Returns
 * 0: locked, 2: wait (strikes and checks under way fill the limit), 1: check `id` counted
 * as under way.
 */
const ADMIT_USER = new Script(`
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local n = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[1]) then return 2 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
`);

/**
 * KEYS: strikes, checks, lock. ARGV: id, failed (1/0), window ms, lock after. Returns
 * {strikes, locked (1: this strike locked the account)}.
 */
const SETTLE_USER = new Script(`
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '1' then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
local strikes = redis.call('ZCARD', KEYS[1])
if strikes >= tonumber(ARGV[4]) and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], '1', 'PX', window)
  redis.call('DEL', KEYS[1])
  return {strikes, 1}
end
return {strikes, 0}
`);

/** Failures and locks in Redis; see the module comment. */
export class RedisAuthFailures implements AuthFailureLedger {
  readonly #redis: RedisState;

  /** `_instance`: ids are the callers' (each unique across relays). */
  constructor(redis: RedisState, _instance: string) {
    this.#redis = redis;
  }

  /**
   * See {@link AuthFailureLedger.record}: the failure was counted already (per IP by
   * {@link settle}, towards the lock by {@link settleAccount}); this reads what the fleet
   * knows now.
   */
  async record(ip: string, account: string): Promise<FleetAuthView> {
    const user = userHash(account);
    const r = await this.#redis.script("auth_failed", VIEW, [
      `${this.#redis.prefix}auth:ip:{${ip}}`,
      `${this.#redis.prefix}auth:user:{${user}}`,
      `${this.#redis.prefix}auth:lock:{${user}}`,
    ], []) as number[];
    return {
      ipFailures: Number(r[0]),
      strikes: Number(r[1]),
      lockedForMs: Number(r[2]),
      locked: false,
    };
  }

  /** See {@link AuthFailureLedger.admitAccount}. */
  async admitAccount(
    account: string,
    id: string,
    lockAfter: number,
    windowMs: number,
    checkMs: number,
  ): Promise<"check" | "wait" | "locked"> {
    const r = Number(
      await this.#redis.script("auth_admit_user", ADMIT_USER, this.#userKeys(account), [
        lockAfter,
        windowMs,
        id,
        checkMs,
      ]),
    );
    return r === 1 ? "check" : r === 2 ? "wait" : "locked";
  }

  /** See {@link AuthFailureLedger.settleAccount}. */
  async settleAccount(
    account: string,
    id: string,
    failed: boolean,
    windowMs: number,
    lockAfter: number,
  ): Promise<{ strikes: number; locked: boolean }> {
    const r = await this.#redis.script("auth_settle_user", SETTLE_USER, this.#userKeys(account), [
      id,
      failed ? 1 : 0,
      windowMs,
      lockAfter,
    ]) as number[];
    return { strikes: Number(r[0]), locked: Number(r[1]) === 1 };
  }

  #userKeys(account: string): string[] {
    const user = userHash(account);
    const p = this.#redis.prefix;
    return [`${p}auth:user:{${user}}`, `${p}auth:utry:{${user}}`, `${p}auth:lock:{${user}}`];
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
