/**
 * Command line: `serve` (default) runs the relay; `hash-password` hashes a client
 * password for `accounts.ts`. Usage errors and bad configs exit with status 2.
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError, loadConfig, type RelayConfig } from "./config/load.ts";
// Loaded up front so that accounts.ts can import it under --allow-read=./accounts.ts.
import "./config/mod.ts";
import { startRelay } from "./app.ts";
import { type LogFormat, setupLogging } from "./log.ts";
import { hashPassword } from "./relay/password.ts";

const USAGE = `usage:
  main.ts [serve] [--config PATH] [--host HOST] [--port N] [--metrics-port N]
          [--log-format auto|pretty|json] [--log-level debug|info|warning|error]
  main.ts hash-password        (reads the password from stdin)`;

/** A command-line mistake: printed as one line, exit status 2. */
export class UsageError extends Error {}

function parsePort(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) {
    throw new UsageError(`--${flag}: expected a port number 0-65535, got "${value}"`);
  }
  return n;
}

/** Runs the CLI; resolves to the process exit status. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        config: { type: "string", default: "./accounts.ts" },
        host: { type: "string" },
        port: { type: "string" },
        "metrics-port": { type: "string" },
        "log-format": { type: "string", default: "auto" },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    return usage(err instanceof Error ? err.message : String(err));
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const command = positionals[0] ?? "serve";
  if (positionals.length > 1) return usage(`unexpected argument "${positionals[1]}"`);
  if (command === "hash-password") return await hashPasswordCommand();
  if (command !== "serve") return usage(`unknown command "${command}"`);

  const format = values["log-format"];
  if (format !== "auto" && format !== "pretty" && format !== "json") {
    return usage(`--log-format: expected auto, pretty or json, got "${format}"`);
  }
  const level = values["log-level"];
  if (!["debug", "info", "warning", "error"].includes(level)) {
    return usage(`--log-level: expected debug, info, warning or error, got "${level}"`);
  }
  let config: RelayConfig;
  try {
    const port = parsePort("port", values.port);
    const metricsPort = parsePort("metrics-port", values["metrics-port"]);
    const loaded = await loadConfig(values.config);
    config = {
      ...loaded,
      smtp: {
        ...loaded.smtp,
        host: values.host ?? loaded.smtp.host,
        port: port ?? loaded.smtp.port,
      },
      http: { ...loaded.http, port: metricsPort ?? loaded.http.port },
    };
  } catch (err) {
    if (err instanceof UsageError) return usage(err.message);
    if (err instanceof ConfigError) {
      console.error(`${values.config}: invalid configuration`);
      for (const p of err.problems) console.error(`  ${p}`);
      return 2;
    }
    throw err;
  }
  await setupLogging(format as LogFormat, level as "info");
  let relay;
  try {
    relay = await startRelay(config);
  } catch (err) {
    console.error(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  await new Promise<void>((done) => {
    const stop = () => done();
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
  });
  await relay.close();
  return 0;
}

function usage(message: string): number {
  console.error(`error: ${message}\n${USAGE}`);
  return 2;
}

async function hashPasswordCommand(): Promise<number> {
  const password = await readPassword();
  if (!password) {
    console.error("error: empty password");
    return 2;
  }
  console.log(await hashPassword(password));
  return 0;
}

/** One line from stdin; not echoed when stdin is a terminal. */
async function readPassword(): Promise<string> {
  const tty = Deno.stdin.isTerminal();
  if (tty) {
    Deno.stderr.writeSync(new TextEncoder().encode("password: "));
    Deno.stdin.setRaw(true);
  }
  const bytes: number[] = [];
  const buf = new Uint8Array(1);
  try {
    while (true) {
      const n = await Deno.stdin.read(buf);
      if (n === null || buf[0] === 0x0a || buf[0] === 0x0d) break;
      if (tty && buf[0] === 0x03) throw new Error("interrupted");
      bytes.push(buf[0]);
    }
  } finally {
    if (tty) {
      Deno.stdin.setRaw(false);
      Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    }
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
