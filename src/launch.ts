/**
 * The start path (`deno task start`, `deno task permissions`, `deno task compile`): runs
 * `src/main.ts` with exactly the permissions its config needs.
 *
 * 1. A first child, allowed to read the config file only (and `RELAY_*` variables), loads
 *    and validates it and answers the permission set (`main.ts permissions --format json`).
 *    A bad or missing config ends here: its lines are printed, exit status 2.
 * 2. The second child is the command itself with that set (`--no-prompt`: a missing
 *    permission is an error, never a question). SIGHUP, SIGTERM and SIGINT are forwarded
 *    to it and the launcher exits with its status.
 *
 * The launcher itself reads no file and no variable: it needs `--allow-run` only, to run
 * `Deno.execPath()` (the real binary, whatever `deno` on PATH is).
 * @module
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { NO_PERMISSIONS, permissionFlags, type PermissionSet } from "./permissions.ts";
import { runtimeEnv, runtimeFlags } from "./runtime_flags.ts";

const MAIN = fileURLToPath(new URL("./main.ts", import.meta.url));
/** The module each `--workers` worker runs (see src/workers.ts). */
const WORKER_ENTRY = fileURLToPath(new URL("./workers_entry.ts", import.meta.url));

/** Commands that get their permissions from the config (or the command line, `status`). */
const DERIVED = new Set(["serve", "check", "status", "authorize"]);
/** Commands that need no permission at all. */
const NONE = new Set(["hash-password", "help"]);

/**
 * First argument the launcher puts before the command: main.ts then exits when the
 * launcher is gone (killed with SIGKILL, which cannot be forwarded), so no orphaned relay
 * keeps the ports.
 */
export const LAUNCHED_FLAG = "--launched";

/** Where the compile task writes the binary. */
export const COMPILE_OUTPUT = "smtp-oauth2-relay";

/** The command a `main.ts` argument list runs and the arguments after its name. */
export function commandOf(args: readonly string[]): [string, string[]] {
  if (args.length > 0 && !args[0].startsWith("-")) return [args[0], args.slice(1)];
  if (args[0] === "--help" || args[0] === "-h") return ["help", args.slice(1)];
  return ["serve", [...args]];
}

/** The `--config` value in an argument list (default `./accounts.ts`). */
export function configArg(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--config" && i + 1 < args.length) return args[i + 1];
    if (args[i].startsWith("--config=")) return args[i].slice("--config=".length);
  }
  return "./accounts.ts";
}

/**
 * The flags that let the permissions command load the config: that file, `RELAY_*`, and
 * the files the config names (key files) once a first probe has named them.
 */
function loaderFlags(config: string, files: readonly string[] = []): string[] {
  return [
    "--no-prompt",
    `--allow-read=${[resolve(config), ...files].join(",")}`,
    "--allow-env=RELAY_*",
  ];
}

/**
 * The permission set `main.ts <command> <rest>` needs, from the permissions command run
 * with read access to the config only; its exit status instead when it failed (it printed
 * why: a bad or missing config, a usage error).
 */
export async function derivePermissions(
  command: string,
  rest: readonly string[],
): Promise<PermissionSet | number> {
  if (NONE.has(command) || rest.includes("--help") || rest.includes("-h")) return NO_PERMISSIONS;
  const out = await probe(
    ["permissions", "--format", "json", "--strict", "--command", command, ...rest],
    configArg(rest),
  );
  if (typeof out === "number") return out;
  return JSON.parse(new TextDecoder().decode(out)) as PermissionSet;
}

/**
 * Runs `main.ts <args> --probe` allowed to read the config alone; if the config names
 * files it may not read yet (credential keys), once more with those readable too. A third
 * answer asking for more is a config that changes between loads: an error. Resolves to
 * the final stdout, or to the exit status when the run failed (it printed why).
 */
async function probe(args: readonly string[], config: string): Promise<Uint8Array | number> {
  let files: readonly string[] = [];
  for (let attempt = 0; attempt < 2; attempt++) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", ...loaderFlags(config, files), MAIN, ...args, "--probe"],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!out.success) return out.code || 1;
    const text = new TextDecoder().decode(out.stdout);
    if (!text.startsWith('{"needRead":')) return out.stdout;
    files = [...files, ...(JSON.parse(text) as { needRead: string[] }).needRead];
  }
  console.error(`${config}: the files it names changed while it was loaded twice`);
  return 2;
}

/**
 * Runs `deno <args>` with stdio inherited (and `env` over the inherited environment),
 * forwarding signals; resolves to its status.
 */
export async function runForwarding(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...args],
    env,
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const signals: Deno.Signal[] = ["SIGHUP", "SIGTERM", "SIGINT"];
  const forward = signals.map((signal) => {
    const handler = () => {
      try {
        child.kill(signal);
      } catch {
        // already exited
      }
    };
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  const status = await child.status;
  for (const [signal, handler] of forward) Deno.removeSignalListener(signal, handler);
  if (status.signal) return 128 + signalNumber(status.signal);
  return status.code;
}

function signalNumber(signal: Deno.Signal): number {
  const numbers: Partial<Record<Deno.Signal, number>> = {
    SIGHUP: 1,
    SIGINT: 2,
    SIGKILL: 9,
    SIGTERM: 15,
  };
  return numbers[signal] ?? 0;
}

/**
 * `deno compile` with the serve permissions of the config named in `rest`, the relay's V8
 * flags, and the worker module (`--workers` loads it by URL, so it is no static import).
 */
export function compileArgs(set: PermissionSet, output = COMPILE_OUTPUT): string[] {
  return [
    "compile",
    ...permissionFlags(set),
    ...runtimeFlags(),
    `--include=${WORKER_ENTRY}`,
    "--output",
    output,
    MAIN,
  ];
}

/** Runs the launcher; resolves to the exit status. */
export async function launch(args: readonly string[]): Promise<number> {
  const [command, rest] = commandOf(args);
  if (command === "permissions") {
    if (rest.includes("--help") || rest.includes("-h")) {
      return await runForwarding(["run", MAIN, ...args]);
    }
    // The permissions command itself, reading the config alone (then its named files).
    const out = await probe(args, configArg(rest));
    if (typeof out === "number") return out;
    await Deno.stdout.write(out);
    return 0;
  }
  if (command === "compile") {
    const print = rest.includes("--print");
    const serveArgs = rest.filter((a) => a !== "--print");
    const set = await derivePermissions("serve", serveArgs);
    if (typeof set === "number") return set;
    const compile = compileArgs(set);
    if (print) {
      console.log(["deno", ...compile].join(" "));
      return 0;
    }
    return await runForwarding(compile);
  }
  if (!DERIVED.has(command) && !NONE.has(command)) {
    // Unknown commands: main.ts says what is wrong.
    return await runForwarding(["run", "--no-prompt", MAIN, ...args]);
  }
  const set = await derivePermissions(command, rest);
  if (typeof set === "number") return set;
  const run = ["run", ...runtimeFlags(), ...permissionFlags(set), MAIN, LAUNCHED_FLAG, ...args];
  return await runForwarding(run, runtimeEnv());
}

if (import.meta.main) {
  Deno.exit(await launch(Deno.args));
}
