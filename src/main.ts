/**
 * Command line entry point: dispatches to the commands in `src/commands/`.
 * Usage errors and bad configs exit with status 2.
 * @module
 */
// Loaded up front so that accounts.ts can import it under --allow-read=./accounts.ts.
import "./config/mod.ts";
import { EXIT_USAGE, UsageError } from "./commands/common.ts";
import { SERVE_USAGE, serveCommand } from "./commands/serve.ts";
import { HASH_PASSWORD_USAGE, hashPasswordCommand } from "./commands/hash_password.ts";
import { CHECK_USAGE, checkCommand } from "./commands/check.ts";
import { AUTHORIZE_USAGE, authorizeCommand } from "./commands/authorize.ts";
import { STATUS_USAGE, statusCommand } from "./commands/status.ts";
import { LAUNCHED_FLAG } from "./launch.ts";
import { PERMISSIONS_USAGE, permissionsCommand } from "./commands/permissions.ts";

const COMMANDS: Record<string, { usage: string; run: (args: string[]) => Promise<number> }> = {
  serve: { usage: SERVE_USAGE, run: serveCommand },
  "hash-password": { usage: HASH_PASSWORD_USAGE, run: hashPasswordCommand },
  check: { usage: CHECK_USAGE, run: checkCommand },
  authorize: { usage: AUTHORIZE_USAGE, run: authorizeCommand },
  status: { usage: STATUS_USAGE, run: statusCommand },
  permissions: { usage: PERMISSIONS_USAGE, run: permissionsCommand },
};

const USAGE = "usage:\n" +
  Object.values(COMMANDS).map((c) => `  main.ts ${c.usage}`).join("\n");

/** Exits (status 1, one line) once the parent process is gone; checked every second. */
function exitWithParent(): void {
  const parent = Deno.ppid;
  const timer = setInterval(() => {
    if (Deno.ppid === parent) return;
    console.error("error: the launcher (src/launch.ts) is gone; stopping");
    Deno.exit(1);
  }, 1000);
  Deno.unrefTimer(timer);
}

/** Runs the CLI; resolves to the process exit status. */
export async function main(args: string[]): Promise<number> {
  if (args[0] === LAUNCHED_FLAG) {
    exitWithParent();
    args = args.slice(1);
  }
  if (args[0] === "--help" || args[0] === "-h" || args[0] === "help") {
    console.log(USAGE);
    return 0;
  }
  const named = args.length > 0 && !args[0].startsWith("-");
  const name = named ? args[0] : "serve";
  const command = COMMANDS[name];
  if (!command) return usage(`unknown command "${name}"`);
  const rest = named ? args.slice(1) : args;
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`usage: main.ts ${command.usage}`);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    // parseArgs throws TypeErrors with ERR_PARSE_ARGS_* codes for unknown or bad options.
    const code = (err as { code?: string }).code ?? "";
    if (err instanceof UsageError || code.startsWith("ERR_PARSE_ARGS")) {
      return usage((err as Error).message);
    }
    const denied = deniedLine(err);
    if (denied) {
      console.error(denied);
      return 1;
    }
    throw err;
  }
}

/**
 * One line for a permission the process lacks (`NotCapable`, e.g. a listener on 0.0.0.0
 * that the flags do not allow) or a file the system refuses; undefined for anything else.
 */
export function deniedLine(err: unknown): string | undefined {
  if (err instanceof Deno.errors.NotCapable) {
    return `error: ${err.message.split("\n")[0]} (deno task start computes the flags from the ` +
      "config; `deno task permissions` prints them)";
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return `error: ${err.message.split("\n")[0]} (the file system or the OS refused it)`;
  }
  return undefined;
}

/** Errors thrown outside any command's promise (library callbacks): one line, exit 1. */
function exitOnDenied(event: ErrorEvent | PromiseRejectionEvent): void {
  const err = "reason" in event ? event.reason : event.error;
  const line = deniedLine(err);
  if (!line) return;
  event.preventDefault();
  console.error(line);
  Deno.exit(1);
}

function usage(message: string): number {
  console.error(`error: ${message}\n${USAGE}`);
  return EXIT_USAGE;
}

if (import.meta.main) {
  globalThis.addEventListener("error", exitOnDenied);
  globalThis.addEventListener("unhandledrejection", exitOnDenied);
  Deno.exit(await main(Deno.args));
}
