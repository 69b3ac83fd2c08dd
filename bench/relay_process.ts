/**
 * The relay in a process of its own, started exactly as `src/main.ts` would start it
 * (`startRelay(parseConfig(config))`, JSON log lines on stderr), but configured over the
 * control channel (`./control.ts`) instead of from `accounts.ts`. Started by
 * `bench/main.ts`; not meant to be run by hand.
 *
 * Commands: `start {config, logLevel}` → the SMTP and HTTP ports.
 * @module
 */
import type { LogLevel } from "@logtape/logtape";
import { parseConfig } from "../src/config/load.ts";
import { type RunningRelay, startRelay } from "../src/app.ts";
import { setupLogging } from "../src/log.ts";
import { serveControl } from "./control.ts";

const LEVELS: readonly string[] = ["debug", "info", "warning", "error"];
let relay: RunningRelay | undefined;

await serveControl({
  async start(request) {
    if (relay) throw new Error("already started");
    const level = String(request.logLevel ?? "info");
    if (!LEVELS.includes(level)) throw new Error(`unknown log level ${level}`);
    await setupLogging("json", level as LogLevel);
    relay = await startRelay(parseConfig(request.config));
    return { smtpPort: relay.smtp.port, httpPort: relay.http.port };
  },
}, async () => {
  await relay?.close();
});
