/**
 * `serve` (the default command): loads the config and runs the relay until
 * SIGINT/SIGTERM.
 * @module
 */
import { parseArgs } from "node:util";
import { getLogger } from "@logtape/logtape";
import { startRelay } from "../app.ts";
import { type LogFormat, setupLogging } from "../log.ts";
import { EXIT_USAGE, loadConfigOrReport, parsePort, UsageError } from "./common.ts";
import { ConfigError, loadConfig, type RelayConfig } from "../config/load.ts";

/** Usage line of this command. */
export const SERVE_USAGE = "[serve] [--config PATH] [--host HOST] [--port N] [--metrics-port N]\n" +
  "        [--log-format auto|pretty|json] [--log-level debug|info|warning|error]";

/** Runs the relay; resolves to the exit status. */
export async function serveCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", default: "./accounts.ts" },
      host: { type: "string" },
      port: { type: "string" },
      "metrics-port": { type: "string" },
      "log-format": { type: "string", default: "auto" },
      "log-level": { type: "string", default: "info" },
    },
  });
  const format = values["log-format"];
  if (format !== "auto" && format !== "pretty" && format !== "json") {
    throw new UsageError(`--log-format: expected auto, pretty or json, got "${format}"`);
  }
  const level = values["log-level"];
  if (level !== "debug" && level !== "info" && level !== "warning" && level !== "error") {
    throw new UsageError(
      `--log-level: expected debug, info, warning or error, got "${level}"`,
    );
  }
  const port = parsePort("port", values.port);
  const metricsPort = parsePort("metrics-port", values["metrics-port"]);
  const loaded = await loadConfigOrReport(values.config);
  if (!loaded) return EXIT_USAGE;
  const withOverrides = (c: RelayConfig): RelayConfig => ({
    ...c,
    smtp: { ...c.smtp, host: values.host ?? c.smtp.host, port: port ?? c.smtp.port },
    http: { ...c.http, port: metricsPort ?? c.http.port },
  });
  const config = withOverrides(loaded);
  await setupLogging(format as LogFormat, level);
  let relay;
  try {
    relay = await startRelay(config);
  } catch (err) {
    console.error(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const log = getLogger(["relay", "app"]);
  let generation = 0;
  let reloading = Promise.resolve();
  const onHangup = () => {
    reloading = reloading.then(async () => {
      try {
        const next = await loadConfig(values.config, ++generation);
        await relay.reload(withOverrides(next));
        relay.metrics.configReloaded(true);
      } catch (err) {
        relay.metrics.configReloaded(false);
        const problems = err instanceof ConfigError
          ? err.problems
          : [err instanceof Error ? err.message : String(err)];
        log.error("reload failed, the previous configuration stays in force: {problems}", {
          problems: problems.join("; "),
        });
      }
    });
  };
  Deno.addSignalListener("SIGHUP", onHangup);
  const signal = await new Promise<string>((done) => {
    Deno.addSignalListener("SIGINT", () => done("SIGINT"));
    Deno.addSignalListener("SIGTERM", () => done("SIGTERM"));
  });
  Deno.removeSignalListener("SIGHUP", onHangup);
  log.info("{signal}: draining (up to {seconds} s)", {
    signal,
    seconds: config.shutdownTimeoutSeconds,
  });
  await relay.stop(config.shutdownTimeoutSeconds * 1000);
  log.info("stopped", {});
  return 0;
}
