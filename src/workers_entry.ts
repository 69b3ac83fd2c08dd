/**
 * One relay worker of `--workers N` (a Web Worker: its own isolate, event loop and
 * thread): the SMTP ingress on the shared listeners (SO_REUSEPORT), delivery, its own
 * Redis client and pools. It answers the supervisor's questions (metrics as JSON,
 * readiness, accounts), applies reloads and drains on stop. No HTTP listener and no
 * signal handler of its own: the supervisor (`src/workers.ts`) owns those.
 * @module
 */
import { type RunningRelay, startRelay } from "./app.ts";
import { setupLogging } from "./log.ts";
import type { FromWorker, ToWorker } from "./workers_protocol.ts";

/** The worker's global scope (the DOM lib's types are not loaded). */
const scope = self as unknown as {
  postMessage(message: FromWorker): void;
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  close(): void;
};

let relay: RunningRelay | undefined;

async function handle(m: ToWorker): Promise<void> {
  switch (m.t) {
    case "start": {
      // Every line this worker logs says which worker it is (`"worker": N` in JSON).
      await setupLogging(m.logFormat, m.logLevel, { worker: m.worker });
      try {
        relay = await startRelay(m.config, {
          http: false,
          reusePort: true,
          instance: m.instance,
        });
      } catch (err) {
        scope.postMessage({
          t: "failed",
          message: err instanceof Error ? err.message : String(err),
        });
        return;
      }
      scope.postMessage({
        t: "started",
        smtp: relay.smtp,
        smtps: relay.smtps,
        instance: relay.instance,
      });
      return;
    }
    case "ask": {
      if (!relay) return;
      const value = m.what === "metrics"
        ? await relay.metrics.registry.getMetricsAsJSON()
        : m.what === "readiness"
        ? await relay.readiness()
        : await relay.accounts();
      scope.postMessage({ t: "answer", id: m.id, value });
      return;
    }
    case "reload": {
      if (!relay) return;
      try {
        const notes = await relay.reload(m.config);
        scope.postMessage({ t: "reloaded", id: m.id, notes });
      } catch (err) {
        const error = err instanceof Error ? err.message : String(err);
        scope.postMessage({ t: "reloaded", id: m.id, error });
      }
      return;
    }
    case "stop": {
      await relay?.stop(m.deadlineMs);
      scope.postMessage({ t: "stopped" });
      return;
    }
  }
}

scope.onmessage = (event) => {
  // A rejection here is a bug: it becomes the worker's uncaught error, which the
  // supervisor logs before it starts a new worker.
  handle(event.data).catch((err) => {
    throw err;
  });
};
