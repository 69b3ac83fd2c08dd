/**
 * `permissions`: loads and validates the config, then prints the exact Deno permission
 * flags a command needs for it (default `serve`), for the systemd unit, `deno compile` or
 * a container; `--format json` for the launcher (src/launch.ts).
 * @module
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULTS } from "../config/defaults.ts";
import {
  AUTHORIZE_SOURCES,
  authorizeListener,
  CHECK_SOURCES,
  computePermissions,
  NO_PERMISSIONS,
  permissionFlags,
  type PermissionSet,
  recordEnvReads,
  SERVE_SOURCES,
  statusPermissions,
  workerModules,
} from "../permissions.ts";
import { EXIT_USAGE, parsePort, reportConfigError, UsageError } from "./common.ts";
import { ConfigError, loadConfig } from "../config/load.ts";
import { takeDeniedConfigFiles } from "../config/schema.ts";
import { withListenOverrides } from "./serve.ts";
import { parseWorkers } from "../workers.ts";

/** Usage line of this command. */
export const PERMISSIONS_USAGE =
  "permissions [--command serve|check|status|authorize|hash-password]\n" +
  "        [--format flags|json] [--strict] [the command's options: --config PATH --host HOST\n" +
  "        --port N --metrics-port N --url URL]  (--strict: unset env() secrets are errors)";

/** The commands whose permissions can be printed. */
const COMMANDS = ["serve", "check", "status", "authorize", "hash-password"] as const;

/** Prints the permission set; resolves to the exit status (2 for a bad config). */
export async function permissionsCommand(args: string[]): Promise<number> {
  // The target command's options pass through: only those that change permissions are read.
  const { values } = parseArgs({
    args,
    strict: false,
    allowPositionals: true,
    options: {
      command: { type: "string", default: "serve" },
      format: { type: "string", default: "flags" },
      strict: { type: "boolean", default: false },
      probe: { type: "boolean", default: false },
      config: { type: "string", default: "./accounts.ts" },
      host: { type: "string" },
      port: { type: "string" },
      "metrics-port": { type: "string" },
      url: { type: "string" },
      account: { type: "string" },
      workers: { type: "string" },
    },
  });
  const str = (v: unknown) => typeof v === "string" ? v : undefined;
  const command = str(values.command) ?? "serve";
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw new UsageError(`--command: expected ${COMMANDS.join(", ")}, got "${command}"`);
  }
  const format = str(values.format);
  if (format !== "flags" && format !== "json") {
    throw new UsageError(`--format: expected flags or json, got "${values.format}"`);
  }
  const set = await permissionsFor(command, {
    config: str(values.config) ?? "./accounts.ts",
    host: str(values.host),
    port: parsePort("port", str(values.port)),
    metricsPort: parsePort("metrics-port", str(values["metrics-port"])),
    url: str(values.url),
    account: str(values.account),
    workers: workersOf(str(values.workers)),
    strict: values.strict === true,
    probe: values.probe === true,
  });
  if (!set) return EXIT_USAGE;
  if ("needRead" in set) {
    console.log(JSON.stringify(set));
    return 0;
  }
  console.log(format === "json" ? JSON.stringify(set) : permissionFlags(set).join(" "));
  return 0;
}

/** What decides a command's permissions. */
interface Wanted {
  readonly config: string;
  readonly host?: string;
  readonly port?: number;
  readonly metricsPort?: number;
  readonly url?: string;
  /** `authorize --account`: that account's hosts only. */
  readonly account?: string;
  /** `serve --workers N`. */
  readonly workers?: number;
  /** Unset `env("…")` secrets are errors (the start path: the command would fail anyway). */
  readonly strict?: boolean;
  /** The launcher's probe: answer {@link NeedRead} for files it may not read yet. */
  readonly probe?: boolean;
}

/** The probe's answer when the config names files it was not allowed to read. */
export interface NeedRead {
  /** Absolute paths to allow reading, then ask again. */
  readonly needRead: readonly string[];
}

/** The set for one command; undefined when the config is invalid (reported already). */
async function permissionsFor(
  command: string,
  w: Wanted,
): Promise<PermissionSet | NeedRead | undefined> {
  if (command === "hash-password") return NO_PERMISSIONS;
  if (command === "status") {
    const url = w.url ?? `http://${DEFAULTS.httpHost}:${DEFAULTS.httpPort}`;
    if (!URL.canParse(url)) {
      throw new UsageError(`--url: expected a URL such as http://127.0.0.1:9090, got "${url}"`);
    }
    return statusPermissions(url);
  }
  // Secrets need not be set to print the set (a build machine): env("…") may be unset.
  // The launcher's probe may read the config alone: files the config names (key files)
  // come back as `needRead`, and the launcher asks again with those readable too.
  takeDeniedConfigFiles();
  const [loaded, envRead] = await recordEnvReads(async () => {
    try {
      return await loadConfig(w.config, 0, { placeholderSecrets: !w.strict });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      const denied = takeDeniedConfigFiles();
      if (w.probe && denied.length > 0) return { needRead: denied.map((f) => resolve(f)) };
      reportConfigError(w.config, err);
      return undefined;
    }
  });
  if (!loaded || "needRead" in loaded) return loaded;
  const config = withListenOverrides(loaded, w);
  const input = { config, configPath: resolve(w.config), envRead, cwd: Deno.cwd() };
  if (command === "authorize") {
    // Its own port flag is the redirect listener's, not the SMTP listener's.
    const account = w.account?.toLowerCase();
    const accounts = config.accounts.filter((a) => a.email.toLowerCase() === account);
    return computePermissions(
      {
        ...input,
        config: { ...config, accounts: accounts.length > 0 ? accounts : config.accounts },
      },
      [...AUTHORIZE_SOURCES, authorizeListener(w.port)],
    );
  }
  if (command === "serve" && (w.workers ?? 1) > 1) {
    return computePermissions(input, [...SERVE_SOURCES, workerModules]);
  }
  return computePermissions(input, command === "check" ? CHECK_SOURCES : SERVE_SOURCES);
}

/** `--workers` as serve reads it (default 1). */
function workersOf(value: string | undefined): number {
  const n = parseWorkers(value ?? "1");
  if (n === undefined) {
    throw new UsageError(`--workers: expected a number >= 1 or auto, got "${value}"`);
  }
  return n;
}
