/**
 * {@link Quotas} in Redis, shared by every relay instance: one Lua script per
 * reservation, on Redis's clock (`TIME`), so two instances cannot both take the last
 * message of a window, and instances with skewed clocks agree. The windows are those of
 * the local counters (`quota.ts`): messages in the last minute (exact send times),
 * messages and recipients in the last 24 hours (per-minute buckets).
 *
 * Keys, per account `a` (lower-cased), all expiring 24 h + 2 min after the last write:
 * - `<prefix>quota:{a}:recent`: sorted set, one member per reservation, score = its time (ms);
 * - `<prefix>quota:{a}:buckets`: hash, `m:<minute>` messages and `r:<minute>` recipients
 *   of each minute, `tm`/`tr` their sums;
 * - `<prefix>quota:{a}:minutes`: sorted set of the minutes that have a bucket.
 *
 * A reservation counts from the moment it is granted; `commit` costs nothing, `release`
 * runs a second script that gives the use back. Hot path: one round trip per message.
 * If Redis does not answer in time, `reserve` rejects ({@link RedisUnavailableError}) and
 * the message is deferred; a `release` that fails leaves the use counted (never more
 * than the quota is sent).
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type RedisState, Script } from "../state/redis/client.ts";
import type { QuotaExceeded, QuotaKind, QuotaLimits, QuotaUsage, Reservation } from "./quota.ts";
import type { Quotas } from "./quotas.ts";

const log = getLogger(["relay", "quota"]);

/** Prunes the windows; shared head of the scripts. KEYS: recent, buckets, minutes. */
const PRUNE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MINUTE, DAY = 60000, 86400000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - MINUTE)
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - DAY - MINUTE)
for _, m in ipairs(old) do
  local msgs = tonumber(redis.call('HGET', KEYS[2], 'm:' .. m) or '0')
  local rcpts = tonumber(redis.call('HGET', KEYS[2], 'r:' .. m) or '0')
  redis.call('HINCRBY', KEYS[2], 'tm', -msgs)
  redis.call('HINCRBY', KEYS[2], 'tr', -rcpts)
  redis.call('HDEL', KEYS[2], 'm:' .. m, 'r:' .. m)
  redis.call('ZREM', KEYS[3], m)
end
local tm = tonumber(redis.call('HGET', KEYS[2], 'tm') or '0')
local tr = tonumber(redis.call('HGET', KEYS[2], 'tr') or '0')
`;

/**
 * ARGV: messagesPerMinute, messagesPerDay, recipientsPerDay, recipients, reservation id.
 * Returns {'ok', minute, now} or {kind, limit, retryAt}.
 */
const RESERVE = new Script(`${PRUNE}
local perMinute, perDay, rcptDay, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function freeAt(prefix, excess)
  local freed = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], prefix .. m) or '0')
    if freed >= excess then return tonumber(m) + MINUTE + DAY end
  end
  return now + DAY
end
if perMinute > 0 then
  local c = redis.call('ZCARD', KEYS[1])
  if c + 1 > perMinute then
    local e = redis.call('ZRANGE', KEYS[1], c - perMinute, c - perMinute, 'WITHSCORES')
    return {'messages_per_minute', perMinute, tonumber(e[2]) + MINUTE}
  end
end
if perDay > 0 and tm + 1 > perDay then
  return {'messages_per_day', perDay, freeAt('m:', tm + 1 - perDay)}
end
if rcptDay > 0 and tr + n > rcptDay then
  return {'recipients_per_day', rcptDay, freeAt('r:', tr + n - rcptDay)}
end
local minute = now - (now % MINUTE)
redis.call('HINCRBY', KEYS[2], 'm:' .. minute, 1)
redis.call('HINCRBY', KEYS[2], 'r:' .. minute, n)
redis.call('HINCRBY', KEYS[2], 'tm', 1)
redis.call('HINCRBY', KEYS[2], 'tr', n)
redis.call('ZADD', KEYS[3], minute, minute)
redis.call('ZADD', KEYS[1], now, ARGV[5])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], DAY + 2 * MINUTE) end
return {'ok', minute, now}
`);

/**
 * ARGV: recipients, reservation id. Gives a reservation back: its minute is found from
 * its time in `recent` (a reservation older than a minute stays counted in its day bucket,
 * as in the local counters, unless `ARGV[3]` names its minute).
 */
const RELEASE = new Script(`
local at = redis.call('ZSCORE', KEYS[1], ARGV[2])
local minute = ARGV[3]
if at then minute = tostring(tonumber(at) - (tonumber(at) % 60000)) end
if minute and minute ~= '' and redis.call('ZSCORE', KEYS[3], minute) and (at or ARGV[3] ~= '') then
  redis.call('HINCRBY', KEYS[2], 'm:' .. minute, -1)
  redis.call('HINCRBY', KEYS[2], 'r:' .. minute, -tonumber(ARGV[1]))
  redis.call('HINCRBY', KEYS[2], 'tm', -1)
  redis.call('HINCRBY', KEYS[2], 'tr', -tonumber(ARGV[1]))
end
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
`);

/** Returns {messages in the last minute, messages today, recipients today}. */
const USAGE = new Script(`${PRUNE}
return {redis.call('ZCARD', KEYS[1]), tm, tr}
`);

/** {@link Quotas} in Redis; see the module comment. */
export class RedisQuotas implements Quotas {
  readonly #redis: RedisState;
  readonly #instance: string;
  #seq = 0;

  /** `instance` makes reservation ids unique across relays. */
  constructor(redis: RedisState, instance: string) {
    this.#redis = redis;
    this.#instance = instance;
  }

  #keys(account: string): string[] {
    const r = this.#redis;
    return [
      r.key("quota", account, ":recent"),
      r.key("quota", account, ":buckets"),
      r.key("quota", account, ":minutes"),
    ];
  }

  /** See {@link Quotas.reserve}; rejects when Redis does not answer in time. */
  async reserve(
    account: string,
    limits: QuotaLimits,
    recipients: number,
  ): Promise<Reservation | QuotaExceeded> {
    const keys = this.#keys(account);
    const id = `${this.#instance}:${++this.#seq}`;
    let r: [string, number, number];
    try {
      r = await this.#redis.script("quota_reserve", RESERVE, keys, [
        limits.messagesPerMinute,
        limits.messagesPerDay,
        limits.recipientsPerDay,
        recipients,
        id,
      ]) as [string, number, number];
    } catch (err) {
      // No answer in time: the script may still have run. Give it back (best effort; if
      // this fails too, the use stays counted: never more than the quota is sent).
      this.#release(account, keys, recipients, id, "");
      throw err;
    }
    if (r[0] !== "ok") {
      return { kind: r[0] as QuotaKind, limit: Number(r[1]), retryAt: Number(r[2]) };
    }
    const minute = Number(r[1]);
    let settled = false;
    return {
      commit: () => {
        settled = true;
      },
      release: () => {
        if (settled) return;
        settled = true;
        this.#release(account, keys, recipients, id, String(minute));
      },
    };
  }

  #release(account: string, keys: string[], recipients: number, id: string, minute: string): void {
    this.#redis.script("quota_release", RELEASE, keys, [recipients, id, minute]).catch((err) =>
      log.warn("quota use of {account} not given back (it stays counted): {error}", {
        account,
        error: err instanceof Error ? err.message : String(err),
      })
    );
  }

  /** See {@link Quotas.usage}. */
  async usage(account: string): Promise<QuotaUsage> {
    const r = await this.#redis.script("quota_usage", USAGE, this.#keys(account), []) as number[];
    return { lastMinute: Number(r[0]), messagesToday: Number(r[1]), recipientsToday: Number(r[2]) };
  }
}
