/**
 * The relay in a process of its own for the `workers` scenario: one relay
 * (`startRelay`, as `bench/relay_process.ts`) or N workers (`startWorkers`, as
 * `main.ts serve --workers N` does it), configured over the control channel
 * (`./control.ts`). The child's CPU figures cover every thread, so every worker.
 *
 * Commands: `start {config, workers, logLevel}` → the SMTP and HTTP ports.
 * @module
 */
import { parseConfig } from "../src/config/load.ts";
import { type RunningRelay, startRelay } from "../src/app.ts";
import { setupLogging } from "../src/log.ts";
import { type RunningWorkers, startWorkers } from "../src/workers.ts";
import { serveControl } from "./control.ts";

const LEVELS = ["debug", "info", "warning", "error"] as const;
let relay: RunningRelay | undefined;
let workers: RunningWorkers | undefined;

await serveControl({
  async start(request) {
    if (relay || workers) throw new Error("already started");
    const level = String(request.logLevel ?? "info") as typeof LEVELS[number];
    if (!LEVELS.includes(level)) throw new Error(`unknown log level ${level}`);
    const count = Number(request.workers ?? 1);
    await setupLogging("json", level);
    const config = parseConfig(request.config);
    if (count > 1) {
      workers = await startWorkers(config, { count, logFormat: "json", logLevel: level });
      return { smtpPort: workers.smtp.port, httpPort: workers.http.port };
    }
    relay = await startRelay(config);
    return { smtpPort: relay.smtp.port, httpPort: relay.http.port };
  },
}, async () => {
  await workers?.stop(0);
  await relay?.close();
});
