/**
 * Several relay processes (the real binary under the start task's flags, plus
 * `--allow-net` for Redis) on one set of accounts, sharing state through a real
 * redis-server, in front of the sandbox provider; and a client that sends through any
 * of them and reports the reply line.
 * @module
 */
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import type { Sandbox } from "../../src/sandbox/mod.ts";
import {
  freePort,
  PASSWORD,
  rawMessage,
  startTaskArgs,
  type TaskPorts,
  type TestAccount,
} from "../harness.ts";
import { configText } from "../operations/relay_process.ts";
import type { TestLan } from "../clients/netns.ts";

const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

/**
 * An `accounts.ts` using Redis for state: the URL comes from `RELAY_REDIS_URL` (as an
 * operator would write it), `accountExtra` goes into each account.
 */
export function redisConfig(
  sandbox: Sandbox,
  accounts: TestAccount[],
  options: { accountExtra?: string; top?: string } = {},
): Promise<string> {
  return configText(sandbox, accounts, {
    prelude: `import { env } from "${CONFIG_MOD}";`,
    top: `state: { redis: { url: env("RELAY_REDIS_URL"), keyPrefix: "relay:",
      permitLeaseSeconds: 6 } },
      tokens: { failureHoldSeconds: 0 },
      ${options.top ?? ""}`,
    accountExtra: options.accountExtra,
  });
}

/** What a relay needs of its Redis: a `RedisServer` (redis_server.ts), or a {@link LanRedis}. */
export interface RedisAddress {
  /** Its port. */
  readonly port: number;
  /** `redis://host:port`. */
  readonly url: string;
}

/** Where a relay runs: a host (namespace) of a {@link TestLan} instead of this namespace. */
export interface LanPlace {
  readonly lan: TestLan;
  /** The host's name in the LAN. */
  readonly host: string;
}

/** One relay process on Redis. */
export class FleetRelay {
  readonly dir: string;
  readonly ports: TaskPorts;
  child: Deno.ChildProcess;
  log = "";
  /** Where it runs, when on a LAN host. */
  place?: LanPlace;
  readonly #redis: RedisAddress;
  #reader: Promise<void>;
  #status?: Promise<Deno.CommandStatus>;

  private constructor(dir: string, ports: TaskPorts, redis: RedisAddress) {
    this.dir = dir;
    this.ports = ports;
    this.#redis = redis;
    this.child = undefined as unknown as Deno.ChildProcess;
    this.#reader = Promise.resolve();
  }

  /**
   * Writes `config` as `accounts.ts` in a new directory and starts a relay there (in the
   * namespace of `place`'s host when given, through `ip netns exec`).
   */
  static async start(
    sandbox: Sandbox,
    redis: RedisAddress,
    config: string,
    place?: LanPlace,
  ): Promise<FleetRelay> {
    const dir = await Deno.makeTempDir({ prefix: "relay-fleet-" });
    await Deno.writeTextFile(`${dir}/accounts.ts`, config);
    const ports: TaskPorts = {
      smtp: freePort(),
      metrics: freePort(),
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const relay = new FleetRelay(dir, ports, redis);
    relay.place = place;
    await relay.restart();
    return relay;
  }

  /** Starts the process (again, after {@link kill}) on the same ports and directory. */
  async restart(): Promise<void> {
    const args = (await startTaskArgs(this.ports)).map((w) =>
      w.startsWith("--allow-net=") ? `${w},127.0.0.1:${this.#redis.port}` : w
    );
    this.log = "";
    const place = this.place;
    // `ip netns exec` execs the launcher: the child's PID is the launcher's.
    const [program, prefix] = place
      ? ["ip", ["netns", "exec", place.lan.hosts[place.host].ns, Deno.execPath()]]
      : [Deno.execPath(), []];
    this.child = new Deno.Command(program, {
      args: [...prefix, ...args, "--log-format", "json"],
      cwd: this.dir,
      env: { RELAY_REDIS_URL: this.#redis.url },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#status = this.child.status;
    const child = this.child;
    this.#reader = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.log += chunk;
      }
    })();
    await this.waitFor("SMTP on", 30_000);
  }

  /** Waits until `text` is in the log; throws on timeout (with the log's tail). */
  async waitFor(text: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.log.includes(text)) {
      if (Date.now() > deadline) {
        throw new Error(`no "${text}" in the relay's log:\n${this.log.slice(-3000)}`);
      }
      await new Promise((ok) => setTimeout(ok, 50));
    }
  }

  /** GET on the HTTP listener: status and body. */
  async http(path: string): Promise<{ status: number; body: string }> {
    const r = await fetch(`http://127.0.0.1:${this.ports.metrics}${path}`);
    return { status: r.status, body: await r.text() };
  }

  /**
   * The command line of the relay itself (the launcher's child, run with the derived
   * permission set), split at spaces (`ps`: Deno reads /proc only with all permissions);
   * empty while there is none.
   */
  async relayCommandLine(): Promise<string[]> {
    const out = await new Deno.Command("ps", {
      args: ["-ww", "-o", "args=", "--ppid", String(this.child.pid)],
      stdout: "piped",
      stderr: "null",
    }).output();
    const line = new TextDecoder().decode(out.stdout).trim().split("\n")[0] ?? "";
    return line.split(/\s+/).filter(Boolean);
  }

  /** SIGKILL, and waits for the exit. */
  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.#status;
    await this.#reader;
  }

  /** Kills it and removes its directory. */
  async close(): Promise<void> {
    await this.kill();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Sends one message with `subject` through the relay on `port` as `account` (a new
 * connection each time) and returns the reply line to DATA (or the error's reply).
 */
export async function send(port: number, account: TestAccount, subject: string): Promise<string> {
  const t = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    secure: false,
    ignoreTLS: true,
    name: "client.test",
    auth: { user: account.email, pass: PASSWORD, method: "PLAIN" },
    logger: false,
    connectionTimeout: 60_000,
    socketTimeout: 120_000,
  });
  try {
    const info = await t.sendMail({
      envelope: { from: account.email, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(account.email, "r@example.net", `${subject}\r\n`, subject)),
    });
    return info.response;
  } catch (err) {
    return (err as { response?: string }).response ?? String(err);
  } finally {
    t.close();
  }
}

/**
 * Sends one message per subject, one after the other, over one SMTP session (one AUTH)
 * through the relay on `port`; returns the reply lines.
 */
export async function sendInOneSession(
  port: number,
  account: TestAccount,
  subjects: string[],
): Promise<string[]> {
  const t = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    secure: false,
    ignoreTLS: true,
    pool: true,
    maxConnections: 1,
    maxMessages: Infinity,
    name: "client.test",
    auth: { user: account.email, pass: PASSWORD, method: "PLAIN" },
    logger: false,
  });
  const replies: string[] = [];
  try {
    for (const subject of subjects) {
      try {
        const info = await t.sendMail({
          envelope: { from: account.email, to: ["r@example.net"] },
          raw: Buffer.from(rawMessage(account.email, "r@example.net", `${subject}\r\n`, subject)),
        });
        replies.push(info.response);
      } catch (err) {
        replies.push((err as { response?: string }).response ?? String(err));
      }
    }
    return replies;
  } finally {
    t.close();
  }
}

/** How many messages with `subject` the sandbox received. */
export function deliveredCount(sandbox: Sandbox, subject: string): number {
  const needle = `Subject: ${subject}\r\n`;
  return sandbox.received.filter((m) => new TextDecoder().decode(m.data).includes(needle)).length;
}

/**
 * A redis-server on a host (namespace) of a {@link TestLan}, bound to the host's LAN
 * address, as a separate Redis host would be; same settings as redis_server.ts.
 * The test process (loopback only) reaches it through a forwarder on 127.0.0.1 at the
 * same port ({@link LanRedis.command}).
 */
export class LanRedis implements RedisAddress {
  /** Port (in its namespace; the forwarder uses the same on 127.0.0.1). */
  readonly port: number;
  /** Its LAN address. */
  readonly host: string;
  readonly dir: string;
  readonly #child: Deno.ChildProcess;

  private constructor(port: number, host: string, dir: string, child: Deno.ChildProcess) {
    this.port = port;
    this.host = host;
    this.dir = dir;
    this.#child = child;
  }

  /** Starts it on `lan`'s host `name`. */
  static async start(lan: TestLan, name: string): Promise<LanRedis> {
    const dir = await Deno.makeTempDir({ prefix: "relay-redis-" });
    const port = freePort();
    const host = lan.hosts[name].address;
    const child = lan.command(name, "redis-server", [
      ...["--port", String(port), "--bind", host, "--dir", dir, "--save", ""],
      ...["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
      ...["--loglevel", "warning", "--protected-mode", "no"],
    ], { stdin: "null", stdout: "null", stderr: "null" }).spawn();
    return new LanRedis(port, host, dir, child);
  }

  /** `redis://<LAN address>:<port>`: what the relays use. */
  get url(): string {
    return `redis://${this.host}:${this.port}`;
  }

  /** One command through the loopback forwarder; the raw RESP reply. */
  command(args: string[]): Promise<string> {
    return respCommand(this.port, args);
  }

  /** SIGKILL (by its PID) and removes its directory. */
  async close(): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // gone
    }
    await this.#child.status;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Sends one command (RESP) to 127.0.0.1:`port` and returns the raw reply (one read). */
export async function respCommand(port: number, args: string[]): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    const body = `*${args.length}\r\n` +
      args.map((a) => `$${enc.encode(a).length}\r\n${a}\r\n`).join("");
    await conn.write(enc.encode(body));
    const buf = new Uint8Array(1 << 16);
    const n = await conn.read(buf);
    return n === null ? "" : new TextDecoder().decode(buf.subarray(0, n));
  } finally {
    conn.close();
  }
}
