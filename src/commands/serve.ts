/**
 * `serve` (the default command): loads the config and runs the relay until
 * SIGINT/SIGTERM; SIGHUP reloads the config, each reload within a deadline.
 * @module
 */
import { parseArgs } from "node:util";
import { getLogger } from "@logtape/logtape";
import { startRelay } from "../app.ts";
import { type LogFormat, setupLogging } from "../log.ts";
import { EXIT_USAGE, loadConfigOrReport, parsePort, UsageError } from "./common.ts";
import { ConfigError, loadConfig, type RelayConfig } from "../config/load.ts";
import { computePermissions, missingPermissions, RELOAD_SOURCES } from "../permissions.ts";
import { resolve } from "node:path";
import { needsSharedState, parseWorkers, startWorkers } from "../workers.ts";

/** Usage line of this command. */
export const SERVE_USAGE = "[serve] [--config PATH] [--host HOST] [--port N] [--metrics-port N]\n" +
  "        [--log-format auto|pretty|json] [--log-level debug|info|warning|error]\n" +
  "        [--reload-timeout SECONDS] [--workers N|auto]";

/**
 * How long a reload (SIGHUP) may take to import and validate the config before it is
 * given up on, s (`--reload-timeout`). An import cannot be cancelled: a config module that
 * never finishes (a top-level await that never resolves) is left behind, its late result
 * ignored, and the next SIGHUP imports the file afresh.
 */
export const DEFAULT_RELOAD_TIMEOUT_SECONDS = 30;

/** The command line's `--host`, `--port` and `--metrics-port`, where given. */
export interface ListenOverrides {
  /** SMTP listen address (`--host`). */
  readonly host?: string;
  /** SMTP port (`--port`). */
  readonly port?: number;
  /** HTTP port (`--metrics-port`). */
  readonly metricsPort?: number;
}

/** The config with the command line's listener overrides applied. */
export function withListenOverrides(c: RelayConfig, o: ListenOverrides): RelayConfig {
  return {
    ...c,
    smtp: { ...c.smtp, host: o.host ?? c.smtp.host, port: o.port ?? c.smtp.port },
    http: { ...c.http, port: o.metricsPort ?? c.http.port },
  };
}

/**
 * A reloaded config whose accounts need hosts this process may not reach (a new provider,
 * a new source address) is refused as a whole, naming the flags: permissions are fixed at
 * start (`deno task start` derives them from the config then), so it needs a restart.
 */
function refuseBeyondPermissions(config: RelayConfig, path: string): void {
  const input = { config, configPath: resolve(path), envRead: [], cwd: Deno.cwd() };
  const missing = missingPermissions(computePermissions(input, RELOAD_SOURCES));
  if (missing.length > 0) {
    throw new ConfigError([
      `needs permissions the relay was not started with; restart it to apply: ${missing.join(" ")}`,
    ]);
  }
}

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
      "reload-timeout": { type: "string", default: String(DEFAULT_RELOAD_TIMEOUT_SECONDS) },
      workers: { type: "string", default: "1" },
    },
  });
  const workers = parseWorkers(values.workers);
  if (workers === undefined) {
    throw new UsageError(`--workers: expected a number >= 1 or auto, got "${values.workers}"`);
  }
  const reloadTimeout = values["reload-timeout"];
  if (!/^\d+$/.test(reloadTimeout) || Number(reloadTimeout) < 1) {
    throw new UsageError(`--reload-timeout: expected seconds >= 1, got "${reloadTimeout}"`);
  }
  const reloadTimeoutMs = Number(reloadTimeout) * 1000;
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
  const withOverrides = (c: RelayConfig) =>
    withListenOverrides(c, { host: values.host, port, metricsPort });
  const config = withOverrides(loaded);
  if (workers > 1 && !config.state.redis) {
    console.error(needsSharedState(workers, values.config));
    return EXIT_USAGE;
  }
  await setupLogging(format as LogFormat, level);
  let relay;
  try {
    relay = workers > 1
      ? await startWorkers(config, {
        count: workers,
        logFormat: format as LogFormat,
        logLevel: level,
      })
      : await startRelay(config);
  } catch (err) {
    console.error(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const log = getLogger(["relay", "app"]);
  let generation = 0;
  /** One reload at a time; SIGHUPs during one make one more after it (the file as it is then). */
  let reloading = false;
  let again = false;
  const reloadOnce = async () => {
    const id = ++generation;
    const loading = loadConfig(values.config, id);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<undefined>((ok) => {
      timer = setTimeout(() => ok(undefined), reloadTimeoutMs);
    });
    try {
      const next = await Promise.race([loading, expired]);
      if (!next) {
        relay.metrics.configReloaded("timeout");
        const props = { config: values.config, seconds: reloadTimeoutMs / 1000 };
        log.error(
          "reload given up: loading {config} did not finish within {seconds} s (does it wait " +
            "for something at top level?); the previous configuration stays in force",
          props,
        );
        // It cannot be cancelled; whatever it ends with later is not applied.
        loading.then(
          () => log.warn("the reload given up after {seconds} s finished late: ignored", props),
          () => log.warn("the reload given up after {seconds} s failed late: ignored", props),
        );
        return;
      }
      refuseBeyondPermissions(next, values.config);
      await relay.reload(withOverrides(next));
      relay.metrics.configReloaded("success");
    } catch (err) {
      relay.metrics.configReloaded("failure");
      const problems = err instanceof ConfigError
        ? err.problems
        : [err instanceof Error ? err.message : String(err)];
      log.error("reload failed, the previous configuration stays in force: {problems}", {
        problems: problems.join("; "),
      });
    } finally {
      clearTimeout(timer);
    }
  };
  const onHangup = () => {
    if (reloading) {
      again = true;
      log.info("SIGHUP: a reload is under way; {config} is read again after it", {
        config: values.config,
      });
      return;
    }
    reloading = true;
    (async () => {
      do {
        again = false;
        log.info("SIGHUP: reloading {config}", { config: values.config });
        await reloadOnce();
      } while (again);
      reloading = false;
    })();
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
