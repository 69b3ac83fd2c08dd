/**
 * Metrics of the Redis connection: calls and their outcome per operation, latency, and
 * whether Redis answers (`smtp_relay_redis_up`).
 * @module
 */
import client from "prom-client";
import type { RedisObserver } from "./client.ts";

/** Latency buckets, seconds: a loopback round trip to a call at its deadline. */
const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5];

/** Redis metrics in `registry`. */
export class RedisMetrics implements RedisObserver {
  readonly #calls: client.Counter<"op" | "result">;
  readonly #duration: client.Histogram<"op">;
  readonly #up: client.Gauge;

  /** Registers the series in `registry`. */
  constructor(registry: client.Registry) {
    const registers = [registry];
    this.#calls = new client.Counter({
      name: "smtp_relay_redis_calls_total",
      help: "Redis calls by operation and result (ok, timeout, unavailable, error)",
      labelNames: ["op", "result"],
      registers,
    });
    this.#duration = new client.Histogram({
      name: "smtp_relay_redis_call_duration_seconds",
      help: "Redis call latency by operation (failures included)",
      labelNames: ["op"],
      buckets: BUCKETS,
      registers,
    });
    this.#up = new client.Gauge({
      name: "smtp_relay_redis_up",
      help: "1 while Redis answers in time, 0 otherwise",
      registers,
    });
    for (const result of ["ok", "timeout", "unavailable", "error"]) {
      this.#calls.labels("quota_reserve", result).inc(0);
    }
  }

  /** See {@link RedisObserver.redisCall}. */
  redisCall(op: string, seconds: number, error?: "timeout" | "unavailable" | "error"): void {
    this.#calls.labels(op, error ?? "ok").inc();
    this.#duration.labels(op).observe(seconds);
  }

  /** See {@link RedisObserver.redisUp}. */
  redisUp(up: boolean): void {
    this.#up.set(up ? 1 : 0);
  }
}
