/**
 * Test harness: the sandbox provider plus a relay in this process, wired over real
 * loopback sockets, and nodemailer clients pointed at the relay.
 * @module
 */
import { fileURLToPath } from "node:url";
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import type { SMTPSentMessageInfo, Transporter } from "nodemailer";
import { parseConfig, type RelayConfig } from "../src/config/load.ts";
import { type RunningRelay, startRelay } from "../src/app.ts";
import { type Sandbox, type SandboxOptions, startSandbox } from "../src/sandbox/mod.ts";
import { hashPassword } from "../src/relay/password.ts";

/** One test account: what the sandbox knows and what the client logs in with. */
export interface TestAccount {
  email: string;
  password: string;
  clientId: string;
  clientSecret: string;
  refreshToken: string;
}

/** Client password used by every test account (hash computed once). */
export const PASSWORD = "correct horse battery staple";
let passwordHash: Promise<string> | undefined;

/** Options for {@link startHarness}. */
export interface HarnessOptions {
  /** Number of accounts (default 1). */
  accounts?: number;
  /** Sandbox options. */
  sandbox?: SandboxOptions;
  /** Overrides merged into the relay config object before validation. */
  config?: Record<string, unknown>;
  /** Extra fields for account `i` (aliases, senders, ...). */
  accountExtras?: (i: number) => Record<string, unknown>;
  /** Reuse this state directory (restart tests). */
  stateDir?: string;
}

/** A running sandbox + relay. */
export interface Harness {
  sandbox: Sandbox;
  relay: RunningRelay;
  config: RelayConfig;
  accounts: TestAccount[];
  stateDir: string;
  /** A nodemailer client logged in as `account` (PLAIN unless `method` says LOGIN). */
  client(
    account?: TestAccount,
    options?: { password?: string; method?: "PLAIN" | "LOGIN"; pool?: boolean },
  ): Transporter<SMTPSentMessageInfo>;
  /** Scrapes /metrics. */
  metrics(): Promise<string>;
  /** Stops the relay, then the sandbox; removes the state directory unless kept. */
  close(options?: { keepState?: boolean }): Promise<void>;
}

/** Makes test accounts with random refresh tokens. */
export function makeAccounts(n: number): TestAccount[] {
  return Array.from({ length: n }, (_, i) => ({
    email: `user${i}@example.com`,
    password: PASSWORD,
    clientId: `client-${i}.apps.example`,
    clientSecret: `client-secret-${crypto.randomUUID()}`,
    refreshToken: `refresh-${crypto.randomUUID()}`,
  }));
}

/** The config object (as `accounts.ts` would export it) for accounts on a sandbox. */
export async function sandboxConfig(
  sandbox: Sandbox,
  accounts: TestAccount[],
  stateDir: string,
  extra: Record<string, unknown> = {},
  accountExtras: (i: number) => Record<string, unknown> = () => ({}),
): Promise<Record<string, unknown>> {
  passwordHash ??= hashPassword(PASSWORD);
  const hash = await passwordHash;
  return {
    smtp: { port: 0 },
    http: { port: 0 },
    stateDir,
    accounts: accounts.map((a, i) => ({
      email: a.email,
      provider: { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort },
      clientId: a.clientId,
      clientSecret: a.clientSecret,
      refreshToken: a.refreshToken,
      passwordHash: hash,
      ...accountExtras(i),
    })),
    ...extra,
  };
}

/** Starts a sandbox and a relay configured for it. */
export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const sandbox = await startSandbox(options.sandbox);
  const accounts = makeAccounts(options.accounts ?? 1);
  for (const a of accounts) sandbox.addAccount(a);
  const stateDir = options.stateDir ?? await Deno.makeTempDir({ prefix: "relay-test-" });
  const config = parseConfig(
    await sandboxConfig(sandbox, accounts, stateDir, options.config, options.accountExtras),
  );
  const relay = await startRelay(config);
  const clients: Transporter[] = [];
  const h: Harness = {
    sandbox,
    relay,
    config,
    accounts,
    stateDir,
    client(account = accounts[0], o = {}) {
      const t = nodemailer.createTransport({
        host: "127.0.0.1",
        port: h.relay.smtp.port,
        secure: false,
        ignoreTLS: true,
        pool: o.pool ?? false,
        maxConnections: 50,
        name: "client.test",
        auth: {
          user: account.email,
          pass: o.password ?? account.password,
          method: o.method ?? "PLAIN",
        },
        logger: false,
      });
      clients.push(t);
      return t as Transporter<SMTPSentMessageInfo>;
    },
    async metrics() {
      const r = await fetch(`http://127.0.0.1:${h.relay.http.port}/metrics`);
      return await r.text();
    },
    async close(o = {}) {
      for (const c of clients) c.close();
      await h.relay.close();
      await sandbox.close();
      if (!o.keepState && !options.stateDir) await Deno.remove(stateDir, { recursive: true });
    },
  };
  return h;
}

/** The value of one metric line (`name{labels} value`), 0 when absent. */
export function metricValue(text: string, series: string): number {
  for (const line of text.split("\n")) {
    if (line.startsWith(series + " ")) return Number(line.slice(series.length + 1));
  }
  return 0;
}

/** A raw message with CRLF line endings. */
export function rawMessage(from: string, to: string, body: string, subject = "test"): Uint8Array {
  const head = `From: <${from}>\r\nTo: <${to}>\r\nSubject: ${subject}\r\n` +
    `Message-ID: <${crypto.randomUUID()}@test>\r\nMIME-Version: 1.0\r\n` +
    `Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`;
  return new TextEncoder().encode(head + body);
}

/**
 * Polls `condition` every 20 ms until it holds or `timeoutMs` passes; says which. For
 * work the relay does after its reply (non-delivery reports), never for timing.
 */
export async function until(
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() >= deadline) return false;
    await new Promise((ok) => setTimeout(ok, 20));
  }
  return true;
}

/**
 * Watches for something that must not happen: polls `condition` every 20 ms for `forMs`
 * and says false as soon as it holds, true if it never did. Only where nothing marks the
 * end of the work in question; where something does (a reply, a closed connection, a
 * drained relay), wait for that instead and assert the absence at once.
 */
export async function never(
  condition: () => boolean | Promise<boolean>,
  options: { forMs: number },
): Promise<boolean> {
  const deadline = Date.now() + options.forMs;
  while (true) {
    if (await condition()) return false;
    const left = deadline - Date.now();
    if (left <= 0) return true;
    await new Promise((ok) => setTimeout(ok, Math.min(20, left)));
  }
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bound as port 0, read back,
 * released), for a child process that must be told its port. Listeners in this process
 * bind port 0 themselves and report the port they got.
 */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Ports for a relay run as a child process under the start task's flags. */
export interface TaskPorts {
  /** The relay's SMTP listener on 127.0.0.1 (`--port`). */
  smtp: number;
  /** The relay's metrics listener on 127.0.0.1 (`--metrics-port`). */
  metrics: number;
  /** The sandbox's token endpoint on 127.0.0.1. */
  sandboxToken: number;
  /** The sandbox's SMTP server, reached as localhost. */
  sandboxSmtp: number;
}

/**
 * The `start` task of deno.json as arguments for `Deno.execPath()`, its entry point made
 * absolute, with `--port`/`--metrics-port` appended for a relay on `ports` instead of the
 * fixed ones (which `deno task demo` or a running relay may hold). The task runs the
 * launcher (src/launch.ts), which derives every permission from the config, so no flag is
 * swapped. Throws when the task no longer runs the launcher with `--allow-run` alone.
 */
export async function startTaskArgs(ports: TaskPorts): Promise<string[]> {
  const root = new URL("../", import.meta.url);
  const json = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
  const words: string[] = json.tasks.start.split(/\s+/);
  if (words[0] !== "deno") throw new Error(`the start task does not run deno: ${words[0]}`);
  const launcher = fileURLToPath(new URL("src/launch.ts", root));
  const args = words.slice(1).map((word) => word === "src/launch.ts" ? launcher : word);
  if (!args.includes(launcher)) throw new Error("the start task does not run src/launch.ts");
  const allows = args.filter((w) => w.startsWith("--allow") || w === "-A");
  if (allows.join(" ") !== "--allow-run") {
    throw new Error(`the start task's launcher should have --allow-run only: ${allows}`);
  }
  return [...args, "--port", String(ports.smtp), "--metrics-port", String(ports.metrics)];
}

/**
 * Sends a small message as account `i` (nodemailer, AUTH PLAIN) and returns the relay's
 * final reply line, also for a refusal.
 */
export async function sendMessage(
  h: Harness,
  i = 0,
  to: string[] = ["r@example.net"],
  password = PASSWORD,
): Promise<string> {
  const a = h.accounts[i];
  try {
    const info = await h.client(a, { password }).sendMail({
      envelope: { from: a.email, to },
      raw: Buffer.from(rawMessage(a.email, to[0], "x\r\n")),
    });
    return info.response;
  } catch (err) {
    return (err as { response?: string }).response ?? String(err);
  }
}
