/**
 * The shared-state backend on Redis, built from the config's `state.redis`: one
 * connection ({@link RedisState}) and the implementations of every seam on it (quotas,
 * connection permits, refresh-token store, access-token cache, refresh lease).
 * @module
 */
import type client from "prom-client";
import type { RelayConfig } from "../../config/load.ts";
import { FileTokenStore, type TokenStore } from "../../tokens/store.ts";
import { redisHost, RedisState } from "./client.ts";
import { RedisMetrics } from "./metrics.ts";
import { RedisAuthFailures } from "./auth_failures.ts";
import { RedisQuotas } from "../../quota/redis_quotas.ts";
import { RedisPermits } from "../../upstream/redis_permits.ts";
import {
  RedisAccessTokenCache,
  RedisRefreshLease,
  RedisTokenStore,
} from "../../tokens/redis_tokens.ts";

/** The `state.redis` settings (validated). */
export interface RedisSettings {
  /** `redis://` or `rediss://` URL, credentials included (secret). */
  readonly url: string;
  /** Prefix of every key. */
  readonly keyPrefix: string;
  /** Deadline of each call, ms. */
  readonly timeoutMs: number;
  /** Connection-permit lease length, seconds. */
  readonly permitLeaseSeconds: number;
  /** PEM CA file for `rediss://`, if not the system's roots. */
  readonly caFile?: string;
}

/** Every seam on one Redis connection. */
export interface SharedState {
  /** The connection (health, host). */
  readonly redis: RedisState;
  /** This process's id in Redis (lease owners, permit members). */
  readonly instance: string;
  /** Quotas. */
  readonly quotas: RedisQuotas;
  /** Connection permits. */
  readonly permits: RedisPermits;
  /** Refresh tokens. */
  readonly tokenStore: RedisTokenStore;
  /** Access tokens. */
  readonly accessTokens: RedisAccessTokenCache;
  /** One refresh per account. */
  readonly refreshLease: RedisRefreshLease;
  /** Failed AUTHs per IP and per account, account locks. */
  readonly authFailures: RedisAuthFailures;
  /** Gives back held permits and closes the connection. */
  close(): Promise<void>;
}

/**
 * Fails with the flag to add when this process may not connect to Redis's `host:port`
 * (Deno would otherwise refuse every connection attempt, quietly, forever).
 */
export function checkRedisPermission(url: string): void {
  const host = redisHost(url);
  if (Deno.permissions.querySync({ name: "net", host }).state !== "granted") {
    throw new Error(`state.redis.url: Redis at ${host} needs --allow-net=${host} (not granted)`);
  }
}

/** A new instance id: process id and a random part (unique across hosts). */
export function instanceId(): string {
  return `${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

/**
 * Connects (waiting briefly; an unreachable Redis does not fail the start: the relay
 * comes up not ready and connects when Redis does) and builds the seams. `cap` is the
 * per-account connection cap as configured now; `onWanted`: another instance waits for
 * one of the account's connections (let idle ones go); `instance`: this instance's id
 * (a worker's id ends in its number).
 */
export async function openSharedState(
  settings: RedisSettings,
  cap: (account: string) => number,
  registry?: client.Registry,
  onWanted?: (account: string) => void,
  instance: string = instanceId(),
): Promise<SharedState> {
  checkRedisPermission(settings.url);
  const ca = settings.caFile ? await Deno.readTextFile(settings.caFile) : undefined;
  const redis = new RedisState({
    url: settings.url,
    keyPrefix: settings.keyPrefix,
    timeoutMs: settings.timeoutMs,
    ca,
  });
  if (registry) redis.observe(new RedisMetrics(registry));
  await redis.start();
  const permits = new RedisPermits(redis, cap, {
    instance,
    leaseMs: settings.permitLeaseSeconds * 1000,
    onWanted,
  });
  return {
    redis,
    instance,
    quotas: new RedisQuotas(redis, instance),
    permits,
    tokenStore: new RedisTokenStore(redis),
    accessTokens: new RedisAccessTokenCache(redis),
    refreshLease: new RedisRefreshLease(redis, { instance }),
    authFailures: new RedisAuthFailures(redis, instance),
    async close() {
      await permits.close();
      await redis.close();
    },
  };
}

/** A refresh-token store for the commands (`authorize`, `check`) and how to let go of it. */
export interface OpenedTokenStore {
  /** The store the relay uses: files in `stateDir`, or Redis. */
  readonly store: TokenStore;
  /** Closes the Redis connection, if any. */
  close(): Promise<void>;
}

/**
 * The refresh-token store `config` chooses, the same one the relay uses, so `authorize`
 * and `check` never work on another copy. With Redis, rejects (naming host and reason,
 * never the URL) when it cannot be reached.
 */
export async function openTokenStore(
  config: Pick<RelayConfig, "stateDir" | "state">,
): Promise<OpenedTokenStore> {
  const settings = config.state.redis;
  if (!settings) {
    return { store: new FileTokenStore(config.stateDir), close: () => Promise.resolve() };
  }
  checkRedisPermission(settings.url);
  const ca = settings.caFile ? await Deno.readTextFile(settings.caFile) : undefined;
  const redis = new RedisState({
    url: settings.url,
    keyPrefix: settings.keyPrefix,
    timeoutMs: settings.timeoutMs,
    ca,
  });
  await redis.start(Math.max(settings.timeoutMs * 3, 3_000));
  if (!redis.up) {
    const why = redis.reason;
    await redis.close();
    throw new Error(`Redis at ${redis.host} (state.redis.url) is unreachable: ${why}`);
  }
  return { store: new RedisTokenStore(redis), close: () => redis.close() };
}
