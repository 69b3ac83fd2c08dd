/**
 * The token seams in Redis, shared by every relay instance:
 *
 * - {@link RedisTokenStore}: the refresh token per account, versioned, written by one
 *   compare-and-set script (a stale writer never replaces a newer token; the old token
 *   stays until the new one is stored). Key `<prefix>token:{a}`: hash `v` (version) and
 *   `value` (JSON {@link StoredToken}), no expiry.
 * - {@link RedisAccessTokenCache}: the access token per account in `<prefix>access:{a}`
 *   (JSON, expiring at its use-until time), mirrored in this process's memory: the hot
 *   path reads memory only, Redis is read once the local copy is due for refresh.
 * - {@link RedisRefreshLease}: one refresher per account across instances,
 *   `<prefix>lease:{a}` set with NX and an expiry; the others wait for it to go, then
 *   find the new token in the cache. A dead holder's lease lapses after `ttlMs`.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { type RedisState, Script } from "../state/redis/client.ts";
import {
  type CasResult,
  type ExpectedVersion,
  StateContentError,
  type Versioned,
} from "../state/store.ts";
import type { AccessTokenCache, CachedAccessToken } from "./cache.ts";
import type { RefreshLease } from "./lease.ts";
import type { RefreshTokenStore, StoredToken } from "./store.ts";

const log = getLogger(["relay", "tokens"]);

/** ARGV: expected version or "absent", value. {1, version} or {0[, version, value]}. */
const CAS = new Script(`
local v = redis.call('HGET', KEYS[1], 'v')
if (ARGV[1] == 'absent' and not v) or (v and v == ARGV[1]) then
  local nv = 0
  if v then nv = tonumber(v) + 1 end
  redis.call('HSET', KEYS[1], 'v', nv, 'value', ARGV[2])
  return {1, nv}
end
if not v then return {0} end
return {0, tonumber(v), redis.call('HGET', KEYS[1], 'value')}
`);

function isStoredToken(value: unknown): value is StoredToken {
  const v = value as StoredToken | null;
  return typeof v?.refreshToken === "string" && typeof v?.configFingerprint === "string";
}

/** {@link RefreshTokenStore} in Redis; see the module comment. */
export class RedisTokenStore implements RefreshTokenStore {
  readonly #redis: RedisState;

  /** Uses `redis`'s prefix. */
  constructor(redis: RedisState) {
    this.#redis = redis;
  }

  /** The key, for messages to operators. */
  pathOf(key: string): string {
    return `redis ${this.#redis.key("token", key)}`;
  }

  /** See {@link RefreshTokenStore.load}. */
  async load(key: string): Promise<Versioned<StoredToken> | undefined> {
    const [v, value] = await this.#redis.call("token_load", [
      "HMGET",
      this.#redis.key("token", key),
      "v",
      "value",
    ]) as [string | null, string | null];
    if (v === null || value === null) return undefined;
    return { version: Number(v), value: this.#parse(key, value) };
  }

  /** See {@link RefreshTokenStore.compareAndSet}. */
  async compareAndSet(
    key: string,
    expected: ExpectedVersion,
    value: StoredToken,
  ): Promise<CasResult<StoredToken>> {
    const r = await this.#redis.script("token_cas", CAS, [this.#redis.key("token", key)], [
      String(expected),
      JSON.stringify(value),
    ]) as [number, number?, string?];
    if (r[0] === 1) return { ok: true, version: Number(r[1]) };
    if (r[1] === undefined || r[2] === undefined) return { ok: false, current: undefined };
    return { ok: false, current: { version: Number(r[1]), value: this.#parse(key, r[2]) } };
  }

  #parse(key: string, text: string): StoredToken {
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      throw new StateContentError(this.pathOf(key), "not JSON");
    }
    if (!isStoredToken(data)) throw new StateContentError(this.pathOf(key), "unexpected content");
    return data;
  }
}

/** ARGV: token. Deletes the key if it still holds that token. */
const DELETE_IF = new Script(`
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v).token == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`);

/** {@link AccessTokenCache} in Redis with a local mirror; see the module comment. */
export class RedisAccessTokenCache implements AccessTokenCache {
  readonly #redis: RedisState;
  readonly #now: () => number;
  readonly #local = new Map<string, CachedAccessToken>();

  /** `now`: the clock of use-until times (ms since the epoch). */
  constructor(redis: RedisState, now: () => number = Date.now) {
    this.#redis = redis;
    this.#now = now;
  }

  /**
   * The local copy while it is not due for refresh (no round trip); else Redis's, which
   * another instance may have refreshed. If Redis cannot be read, a local copy that is
   * still usable is returned; otherwise the call rejects.
   */
  async get(account: string): Promise<CachedAccessToken | undefined> {
    const key = account.toLowerCase();
    const local = this.#local.get(key);
    const now = this.#now();
    if (local && now < local.refreshAt) return local;
    let text: string | null;
    try {
      text = await this.#redis.call("access_get", ["GET", this.#redis.key("access", key)]) as
        | string
        | null;
    } catch (err) {
      if (local && now < local.useUntil) return local;
      throw err;
    }
    const shared = text === null ? undefined : parseCached(text);
    if (!shared) return local && now < local.useUntil ? local : undefined;
    if (!local || shared.useUntil >= local.useUntil) this.#local.set(key, shared);
    return this.#local.get(key);
  }

  /** Caches locally and in Redis until its use-until; a failed write is logged, not thrown. */
  async set(account: string, token: CachedAccessToken): Promise<void> {
    const key = account.toLowerCase();
    this.#local.set(key, token);
    const ttl = Math.floor(token.useUntil - this.#now());
    if (ttl <= 0) return;
    try {
      await this.#redis.call("access_set", [
        "SET",
        this.#redis.key("access", key),
        JSON.stringify(token),
        "PX",
        String(ttl),
      ]);
    } catch (err) {
      log.warn("access token of {account} not shared (kept here only): {error}", {
        account: key,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }

  /** Forgets `token` here and, if Redis still holds it, there. */
  async delete(account: string, token: string): Promise<void> {
    const key = account.toLowerCase();
    if (this.#local.get(key)?.token === token) this.#local.delete(key);
    try {
      await this.#redis.script("access_delete", DELETE_IF, [this.#redis.key("access", key)], [
        token,
      ]);
    } catch (err) {
      log.warn("refused access token of {account} still in Redis: {error}", {
        account: key,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }
}

function parseCached(text: string): CachedAccessToken | undefined {
  try {
    const v = JSON.parse(text) as CachedAccessToken;
    if (typeof v.token === "string" && typeof v.useUntil === "number") return v;
  } catch {
    // not ours: treated as absent
  }
  return undefined;
}

/** ARGV: owner. Deletes the lease if this owner still holds it. */
const RELEASE_LEASE = new Script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`);

/** Options of {@link RedisRefreshLease}. */
export interface RedisRefreshLeaseOptions {
  /** This instance's id (the lease's value). */
  readonly instance: string;
  /** How often a waiter looks whether the lease is gone, ms (default 50). */
  readonly pollMs?: number;
}

/** {@link RefreshLease} across instances; see the module comment. */
export class RedisRefreshLease implements RefreshLease {
  readonly #redis: RedisState;
  readonly #instance: string;
  readonly #pollMs: number;
  readonly #running = new Map<string, Promise<unknown>>();
  #seq = 0;

  /** Uses `redis`'s prefix. */
  constructor(redis: RedisState, options: RedisRefreshLeaseOptions) {
    this.#redis = redis;
    this.#instance = options.instance;
    this.#pollMs = options.pollMs ?? 50;
  }

  /**
   * Callers in this process share one run; across processes, one holds the lease and
   * the others wait until it is gone, then run `refresh` (which finds the holder's token).
   */
  run<T>(account: string, refresh: () => Promise<T>, ttlMs: number): Promise<T> {
    const key = account.toLowerCase();
    const running = this.#running.get(key);
    if (running) return running as Promise<T>;
    const started: Promise<T> = this.#underLease(key, refresh, ttlMs).finally(() => {
      if (this.#running.get(key) === started) this.#running.delete(key);
    });
    this.#running.set(key, started);
    return started;
  }

  async #underLease<T>(key: string, refresh: () => Promise<T>, ttlMs: number): Promise<T> {
    const lease = this.#redis.key("lease", key);
    const owner = `${this.#instance}:${++this.#seq}`;
    const giveUpAt = Date.now() + ttlMs * 2;
    while (true) {
      const got = await this.#redis.call("lease_acquire", [
        "SET",
        lease,
        owner,
        "NX",
        "PX",
        String(Math.max(1, Math.ceil(ttlMs))),
      ]);
      if (got === "OK") break;
      if (Date.now() > giveUpAt) {
        throw new Error(`another relay instance has been refreshing ${key} for too long`);
      }
      await new Promise((ok) => setTimeout(ok, this.#pollMs * (0.5 + Math.random())));
    }
    try {
      return await refresh();
    } finally {
      await this.#redis.script("lease_release", RELEASE_LEASE, [lease], [owner]).catch(() => {
        // it lapses by itself after ttlMs
      });
    }
  }
}
