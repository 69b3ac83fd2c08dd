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
  const config = {
    ...loaded,
    smtp: { ...loaded.smtp, host: values.host ?? loaded.smtp.host, port: port ?? loaded.smtp.port },
    http: { ...loaded.http, port: metricsPort ?? loaded.http.port },
  };
  await setupLogging(format as LogFormat, level);
  let relay;
  try {
    relay = await startRelay(config);
  } catch (err) {
    console.error(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const log = getLogger(["relay", "app"]);
  const onHangup = () => {
    relay.reloadTls().catch((err) =>
      log.error("TLS reload failed, keeping the old certificate: {error}", {
        error: err instanceof Error ? err.message : String(err),
      })
    );
  };
  Deno.addSignalListener("SIGHUP", onHangup);
  await new Promise<void>((done) => {
    Deno.addSignalListener("SIGINT", done);
    Deno.addSignalListener("SIGTERM", done);
  });
  Deno.removeSignalListener("SIGHUP", onHangup);
  await relay.close();
  return 0;
}
