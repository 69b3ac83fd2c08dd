/**
 * `--workers N`: the supervisor on the main thread and N relay workers (Web Workers,
 * `src/workers_entry.ts`), each accepting on the same SMTP listeners (SO_REUSEPORT: the
 * kernel spreads connections) and sharing state through Redis as a fleet instance of its
 * own (instance id ending in `-w<N>`). The supervisor owns the HTTP endpoint, the reload
 * plan and the stop order: `/metrics` is the sum of every worker's metrics (prom-client's
 * `AggregatorRegistry.aggregate`) plus per-worker sessions and messages labelled
 * `worker="N"`; `/readyz` is ready when every worker is. A worker that dies (an uncaught
 * error) is logged and replaced; the process stays up.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import client from "prom-client";
import type { RelayConfig } from "./config/load.ts";
import { adminToken, checkSourceAddresses } from "./app.ts";
import { type HttpServer, isReady, type Readiness, startHttp } from "./http.ts";
import type { LogFormat } from "./log.ts";
import { planReload } from "./reload.ts";
import { RELAY_SOURCE_DIR } from "./permissions.ts";
import { instanceId } from "./state/redis/mod.ts";
import type { FromWorker, Question, ToWorker, WorkerMetrics } from "./workers_protocol.ts";

const log = getLogger(["relay", "workers"]);
const ENTRY = new URL("./workers_entry.ts", import.meta.url);
/** How long a worker may take to answer a question (metrics, readiness, accounts), ms. */
const ASK_TIMEOUT_MS = 5_000;
/** How long a worker may take to start, ms. */
const START_TIMEOUT_MS = 60_000;
/** Pause before another try at replacing a worker that could not start, ms. */
const RETRY_MS = 5_000;
/** Time a stopping worker gets beyond the drain deadline (pools QUIT, state flushed), ms. */
const STOP_GRACE_MS = 15_000;

/**
 * Metrics whose sum over workers would be wrong, and how to combine them instead
 * (prom-client aggregators): one process, one set of accounts.
 */
const AGGREGATORS: Record<string, "first" | "max" | "min"> = {
  smtp_relay_accounts: "first",
  smtp_relay_token_unsaved_accounts: "max",
  process_resident_memory_bytes: "first",
  smtp_relay_event_loop_lag_seconds: "max",
  smtp_relay_redis_up: "min",
};
/** Metrics the supervisor keeps itself (reloads are planned once). */
const SUPERVISOR_METRICS = new Set([
  "smtp_relay_config_reloads_total",
  "smtp_relay_config_last_reload_success",
]);

/** `--workers`: a count ≥ 1, or `auto` (the host's logical cores). */
export function parseWorkers(value: string): number | undefined {
  if (value === "auto") return Math.max(1, navigator.hardwareConcurrency || 1);
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 1024) return undefined;
  return Number(value);
}

/** The one start error for `--workers N` without shared state. */
export function needsSharedState(workers: number, configPath: string): string {
  return `error: --workers ${workers} needs shared state: set state.redis in ${configPath} ` +
    "(docs/redis.md)";
}

/** Settings of the worker pool. */
export interface WorkersOptions {
  /** How many workers (≥ 2). */
  readonly count: number;
  readonly logFormat: LogFormat;
  readonly logLevel: "debug" | "info" | "warning" | "error";
  /** The worker module (default `src/workers_entry.ts`; tests wrap it). */
  readonly entry?: URL;
}

/** The running supervisor: what `serve` drives. */
export interface RunningWorkers {
  /** SMTP listener address (shared by all workers). */
  readonly smtp: { host: string; port: number };
  /** HTTP listener address. */
  readonly http: { host: string; port: number };
  /** Reload counters (planned once, here). */
  readonly metrics: { configReloaded(result: "success" | "failure" | "timeout"): void };
  /** Plans the reload once, then every worker applies it; the notes of what waits. */
  reload(config: RelayConfig): Promise<string[]>;
  /** Every worker drains (in-flight messages get their real reply), then HTTP closes. */
  stop(deadlineMs: number): Promise<void>;
}

/** One worker slot: the current Web Worker in it and what is waiting on it. */
class Slot {
  worker?: Worker;
  ready = false;
  #next = 0;
  readonly #waiting = new Map<number, (value: unknown) => void>();
  #stopped?: () => void;

  constructor(readonly n: number) {}

  /** Sends a question; undefined after the timeout or when the worker is not running. */
  ask(what: Question): Promise<unknown> {
    const worker = this.worker;
    if (!worker || !this.ready) return Promise.resolve(undefined);
    const id = ++this.#next;
    return new Promise((ok) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        ok(undefined);
      }, ASK_TIMEOUT_MS);
      this.#waiting.set(id, (value) => {
        clearTimeout(timer);
        ok(value);
      });
      worker.postMessage({ t: "ask", id, what } satisfies ToWorker);
    });
  }

  /** Sends a reload; resolves to the notes, or throws the worker's error. */
  reload(config: RelayConfig): Promise<string[]> {
    const worker = this.worker;
    if (!worker || !this.ready) return Promise.resolve([]);
    const id = ++this.#next;
    return new Promise((ok, fail) => {
      this.#waiting.set(id, (value) => {
        const r = value as { notes?: string[]; error?: string };
        if (r.error) fail(new Error(`worker ${this.n}: ${r.error}`));
        else ok(r.notes ?? []);
      });
      worker.postMessage({ t: "reload", id, config } satisfies ToWorker);
    });
  }

  /** Asks the worker to drain; resolves when it has (or after the grace time). */
  stop(deadlineMs: number): Promise<void> {
    const worker = this.worker;
    if (!worker || !this.ready) return Promise.resolve();
    return new Promise((ok) => {
      const timer = setTimeout(() => {
        log.warn("worker {worker} did not stop within {seconds} s: ended", {
          worker: this.n,
          seconds: (deadlineMs + STOP_GRACE_MS) / 1000,
        });
        ok();
      }, deadlineMs + STOP_GRACE_MS);
      this.#stopped = () => {
        clearTimeout(timer);
        ok();
      };
      worker.postMessage({ t: "stop", deadlineMs } satisfies ToWorker);
    });
  }

  /** A message from the worker. */
  received(m: FromWorker): void {
    if (m.t === "answer") this.#take(m.id, m.value);
    else if (m.t === "reloaded") this.#take(m.id, m);
    else if (m.t === "stopped") this.#stopped?.();
  }

  /** The worker is gone: its pending questions get no answer. */
  gone(): void {
    this.ready = false;
    for (const wake of this.#waiting.values()) wake(undefined);
    this.#waiting.clear();
    this.#stopped?.();
  }

  #take(id: number, value: unknown): void {
    const wake = this.#waiting.get(id);
    this.#waiting.delete(id);
    wake?.(value);
  }
}

/**
 * Starts `count` workers on `config` (worker 1 first: with port 0 the others take the
 * port it bound) and the HTTP endpoint. Throws (one line) when a worker cannot start.
 */
export async function startWorkers(
  initial: RelayConfig,
  o: WorkersOptions,
): Promise<RunningWorkers> {
  if (Deno.permissions.querySync({ name: "read", path: RELAY_SOURCE_DIR }).state !== "granted") {
    throw new Error(
      `--workers ${o.count}: a worker loads the relay's modules and needs ` +
        `--allow-read=${RELAY_SOURCE_DIR} (deno task start adds it)`,
    );
  }
  let config = initial;
  const slots = Array.from({ length: o.count }, (_, i) => new Slot(i + 1));
  let stopping = false;
  const registry = new client.Registry();
  const reloads = new client.Counter({
    name: "smtp_relay_config_reloads_total",
    help: "Configuration reloads (SIGHUP), by result (success, failure, timeout).",
    labelNames: ["result"],
    registers: [registry],
  });
  for (const result of ["success", "failure", "timeout"]) reloads.inc({ result }, 0);
  const lastReload = new client.Gauge({
    name: "smtp_relay_config_last_reload_success",
    help:
      "1 if the latest configuration reload succeeded (or none happened), 0 if it failed or timed out.",
    registers: [registry],
  });
  lastReload.set(1);
  const running = new client.Gauge({
    name: "smtp_relay_workers",
    help: "Relay workers running (--workers N).",
    registers: [registry],
  });
  const restarts = new client.Counter({
    name: "smtp_relay_worker_restarts_total",
    help: "Relay workers that died (uncaught error) and were replaced.",
    registers: [registry],
  });
  restarts.inc(0);

  /** Starts (or restarts) the worker in `slot`; resolves once it listens. */
  const spawn = (slot: Slot): Promise<FromWorker & { t: "started" }> => {
    const worker = new Worker(o.entry ?? ENTRY, { type: "module", name: `relay-worker-${slot.n}` });
    slot.worker = worker;
    slot.ready = false;
    const { promise, resolve, reject } = Promise.withResolvers<FromWorker & { t: "started" }>();
    const timer = setTimeout(
      () => reject(new Error(`worker ${slot.n} did not start within 60 s`)),
      START_TIMEOUT_MS,
    );
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const m = event.data;
      if (m.t === "started") {
        clearTimeout(timer);
        slot.ready = true;
        running.set(slots.filter((s) => s.ready).length);
        resolve(m);
      } else if (m.t === "failed") {
        clearTimeout(timer);
        worker.terminate();
        reject(new Error(m.message));
      } else {
        slot.received(m);
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      // Without preventDefault an uncaught error in a worker ends the whole process.
      event.preventDefault();
      clearTimeout(timer);
      const wasReady = slot.ready;
      worker.terminate();
      if (slot.worker === worker) slot.gone();
      running.set(slots.filter((s) => s.ready).length);
      const error = event.message || String(event.error);
      if (!wasReady) {
        reject(new Error(`worker ${slot.n}: ${error}`));
        return;
      }
      log.error("worker {worker} died ({error}); its sessions were cut; starting a new one", {
        worker: slot.n,
        error,
      });
      if (stopping) return;
      restarts.inc();
      replace(slot);
    };
    worker.postMessage(
      {
        t: "start",
        worker: slot.n,
        config,
        logFormat: o.logFormat,
        logLevel: o.logLevel,
        instance: `${instanceId()}-w${slot.n}`,
      } satisfies ToWorker,
    );
    return promise;
  };

  /** Starts a new worker in `slot`; one that cannot start is tried again after a pause. */
  const replace = (slot: Slot): void => {
    spawn(slot).then(
      (m) =>
        log.info("worker {worker} replaced (instance {instance})", {
          worker: slot.n,
          instance: m.instance,
        }),
      (err) => {
        log.error("worker {worker} could not be replaced ({error}); next try in {seconds} s", {
          worker: slot.n,
          error: err instanceof Error ? err.message : String(err),
          seconds: RETRY_MS / 1000,
        });
        const timer = setTimeout(() => {
          if (!stopping) replace(slot);
        }, RETRY_MS);
        Deno.unrefTimer(timer);
      },
    );
  };

  const stopAll = async (deadlineMs: number) => {
    stopping = true;
    await Promise.all(slots.map((s) => s.stop(deadlineMs)));
    for (const s of slots) {
      s.worker?.terminate();
      s.gone();
    }
    running.set(0);
  };

  let http: HttpServer | undefined;
  let first: FromWorker & { t: "started" };
  try {
    first = await spawn(slots[0]);
    // Port 0 (tests): every other worker binds the port the first one got.
    config = {
      ...config,
      smtp: { ...config.smtp, port: first.smtp.port },
      ...(config.smtps && first.smtps
        ? { smtps: { ...config.smtps, port: first.smtps.port } }
        : {}),
    };
    await Promise.all(slots.slice(1).map((s) => spawn(s)));
    http = await startHttp({
      host: config.http.host,
      port: config.http.port,
      registry: {
        contentType: registry.contentType,
        metrics: async () => (await fleetRegistry(slots, registry)).metrics(),
      },
      accounts: async () => {
        for (const s of slots) {
          const a = await s.ask("accounts");
          if (Array.isArray(a)) return a;
        }
        throw new Error("no worker answered");
      },
      adminToken: adminToken(),
      readiness: () => fleetReadiness(slots),
    });
  } catch (err) {
    await stopAll(0);
    throw err;
  }
  log.info("SMTP on {smtp}, metrics on {http}, {workers} workers", {
    smtp: `${first.smtp.host}:${first.smtp.port}`,
    http: `${http.address.host}:${http.address.port}`,
    workers: o.count,
  });

  return {
    smtp: first.smtp,
    http: http.address,
    metrics: {
      configReloaded(result) {
        reloads.inc({ result });
        lastReload.set(result === "success" ? 1 : 0);
      },
    },
    async reload(next) {
      // Planned and checked once here: a reload refused is refused for every worker.
      const plan = planReload(config, next);
      checkSourceAddresses(plan.config);
      const notes = await Promise.all(slots.map((s) => s.reload(next)));
      config = plan.config;
      return notes[0];
    },
    async stop(deadlineMs) {
      await stopAll(deadlineMs);
      await http?.close();
    },
  };
}

/** Every worker's metrics summed (see {@link AGGREGATORS}), with per-worker series. */
async function fleetRegistry(
  slots: readonly Slot[],
  own: client.Registry,
): Promise<client.Registry> {
  const answers = await Promise.all(slots.map((s) => s.ask("metrics")));
  const perWorker = new client.Registry();
  const sessions = new client.Gauge({
    name: "smtp_relay_worker_sessions_active",
    help: "Open client SMTP sessions, by worker.",
    labelNames: ["worker"],
    registers: [perWorker],
  });
  const messages = new client.Gauge({
    name: "smtp_relay_worker_messages_total",
    help: "Messages handed to the relay by each worker since it started, by worker and result.",
    labelNames: ["worker", "result"],
    registers: [perWorker],
  });
  const lists: WorkerMetrics[] = [];
  for (const [i, answer] of answers.entries()) {
    if (!Array.isArray(answer)) continue;
    const list = (answer as WorkerMetrics).filter((m) => !SUPERVISOR_METRICS.has(m.name));
    for (const m of list) {
      const aggregator = AGGREGATORS[m.name];
      if (aggregator) (m as { aggregator: string }).aggregator = aggregator;
      const worker = String(i + 1);
      if (m.name === "smtp_relay_sessions_active") {
        for (const v of m.values) sessions.set({ worker }, v.value);
      }
      if (m.name === "smtp_relay_messages_total") {
        for (const v of m.values) {
          messages.set({ worker, result: String(v.labels.result) }, v.value);
        }
      }
    }
    lists.push(list);
  }
  const summed = client.AggregatorRegistry.aggregate(lists as never);
  return client.Registry.merge([summed as client.Registry, own, perWorker]);
}

/** `/readyz`: the first worker's view, not ready unless every worker is. */
async function fleetReadiness(slots: readonly Slot[]): Promise<Readiness> {
  const answers = (await Promise.all(slots.map((s) => s.ask("readiness")))) as (
    | Readiness
    | undefined
  )[];
  const workers = answers.map((r, i) => ({ worker: i + 1, ready: r ? isReady(r) : false }));
  const base = answers.find((r) => r) ?? {
    listening: false,
    accounts: { total: 0, ok: 0, failing: 0, needsReauth: 0, stateCorrupt: 0, unsaved: 0 },
  };
  const down = answers.find((r) => r?.sharedState?.up === false)?.sharedState;
  return {
    ...base,
    listening: answers.every((r) => r?.listening === true),
    ...(down ? { sharedState: down } : {}),
    workers,
  };
}
