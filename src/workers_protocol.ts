/**
 * The messages between the supervisor (main thread, `src/workers.ts`) and each relay
 * worker (`src/workers_entry.ts`) of `--workers N`. Everything is structured-cloned.
 * @module
 */
import type { RelayConfig } from "./config/load.ts";
import type { Readiness } from "./http.ts";
import type { LogFormat } from "./log.ts";
import type { MetricObjectWithValues, MetricValue } from "prom-client";

/** What a worker is asked to answer. */
export type Question = "metrics" | "readiness" | "accounts";

/** Supervisor → worker. */
export type ToWorker =
  | {
    readonly t: "start";
    /** 1…N. */
    readonly worker: number;
    readonly config: RelayConfig;
    readonly logFormat: LogFormat;
    readonly logLevel: "debug" | "info" | "warning" | "error";
    /** Shared-state instance id (ends in `-w<worker>`). */
    readonly instance: string;
  }
  | { readonly t: "ask"; readonly id: number; readonly what: Question }
  | { readonly t: "reload"; readonly id: number; readonly config: RelayConfig }
  | { readonly t: "stop"; readonly deadlineMs: number };

/** A worker's metrics as prom-client's `getMetricsAsJSON()` gives them. */
export type WorkerMetrics = MetricObjectWithValues<MetricValue<string>>[];

/** Worker → supervisor. */
export type FromWorker =
  | {
    readonly t: "started";
    readonly smtp: { host: string; port: number };
    readonly smtps?: { host: string; port: number };
    readonly instance?: string;
  }
  | { readonly t: "failed"; readonly message: string }
  | { readonly t: "answer"; readonly id: number; readonly value: unknown }
  | { readonly t: "reloaded"; readonly id: number; readonly notes?: string[]; error?: string }
  | { readonly t: "stopped" };

/** A worker's `/readyz` part. */
export type WorkerReadiness = Readiness;
