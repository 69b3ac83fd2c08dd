/**
 * The relay as a real process (the real binary, `Deno.execPath()`, under the start task's
 * flags) in a temporary directory with its own `accounts.ts`, for tests that signal it.
 * Its stderr (JSON log lines) is collected; {@link RelayProcess.waitFor} waits for text in it.
 * @module
 */
import type { Sandbox } from "../../src/sandbox/mod.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { freePort, PASSWORD, startTaskArgs, type TaskPorts, type TestAccount } from "../harness.ts";

const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

let hash: Promise<string> | undefined;

/**
 * The text of an `accounts.ts` for `accounts` on `sandbox`; `top` is spliced in as
 * top-level fields (e.g. `shutdownTimeoutSeconds: 5,`), `accountExtra` into each account.
 */
export async function configText(
  sandbox: Sandbox,
  accounts: TestAccount[],
  options: { top?: string; accountExtra?: string; prelude?: string } = {},
): Promise<string> {
  hash ??= hashPassword(PASSWORD);
  const provider = JSON.stringify({
    type: "sandbox",
    tokenUrl: sandbox.tokenUrl,
    smtpPort: sandbox.smtpPort,
  });
  return `import { defineConfig } from "${CONFIG_MOD}";
${options.prelude ?? ""}
export default defineConfig({
  limits: { maxClients: 2000, maxConnectionsPerIp: 2000 },
  ${options.top ?? ""}
  accounts: ${JSON.stringify(accounts)}.map((a) => ({
    email: a.email, provider: ${provider}, clientId: a.clientId, clientSecret: a.clientSecret,
    refreshToken: a.refreshToken, passwordHash: "${await hash}", ${options.accountExtra ?? ""}
  })),
});
`;
}

/** A relay child process. */
export class RelayProcess {
  readonly dir: string;
  readonly ports: TaskPorts;
  readonly child: Deno.ChildProcess;
  /** Everything it wrote to stderr so far. */
  log = "";
  readonly #reader: Promise<void>;
  readonly #waiters = new Set<() => void>();
  #status?: Deno.CommandStatus;

  private constructor(dir: string, ports: TaskPorts, child: Deno.ChildProcess) {
    this.dir = dir;
    this.ports = ports;
    this.child = child;
    this.#reader = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.log += chunk;
        for (const wake of this.#waiters) wake();
      }
    })();
  }

  /**
   * Writes `config` as `accounts.ts` in a new directory and starts the relay there, with
   * `args` after the start task's.
   */
  static async start(sandbox: Sandbox, config: string, args: string[] = []): Promise<RelayProcess> {
    const dir = await Deno.makeTempDir({ prefix: "relay-process-" });
    await Deno.writeTextFile(`${dir}/accounts.ts`, config);
    const ports: TaskPorts = {
      smtp: freePort(),
      metrics: freePort(),
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const child = new Deno.Command(Deno.execPath(), {
      args: [...await startTaskArgs(ports), "--log-format", "json", ...args],
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const relay = new RelayProcess(dir, ports, child);
    await relay.waitFor("SMTP on", 20_000);
    return relay;
  }

  /** Replaces `accounts.ts` (the next SIGHUP reads it). */
  async writeConfig(config: string): Promise<void> {
    await Deno.writeTextFile(`${this.dir}/accounts.ts.tmp`, config);
    await Deno.rename(`${this.dir}/accounts.ts.tmp`, `${this.dir}/accounts.ts`);
  }

  /** Log lines (parsed JSON) so far. */
  lines(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const line of this.log.split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line));
      } catch {
        // a line still being written
      }
    }
    return out;
  }

  /** Waits until `text` is in the log (counting from `from` characters); throws on timeout. */
  async waitFor(text: string | RegExp, timeoutMs = 10_000, from = 0): Promise<void> {
    const found = () =>
      typeof text === "string"
        ? this.log.indexOf(text, from) >= 0
        : text.test(this.log.slice(from));
    const deadline = Date.now() + timeoutMs;
    while (!found()) {
      const left = deadline - Date.now();
      if (left <= 0 || this.#status) {
        if (found()) return;
        throw new Error(`no ${text} in the relay's log:\n${this.log.slice(-3000)}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      let wake: (() => void) | undefined;
      await new Promise<void>((ok) => {
        wake = ok;
        this.#waiters.add(ok);
        timer = setTimeout(ok, Math.min(left, 200));
      });
      clearTimeout(timer);
      this.#waiters.delete(wake!);
    }
  }

  /** Scrapes /metrics. */
  async metrics(): Promise<string> {
    const r = await fetch(`http://127.0.0.1:${this.ports.metrics}/metrics`);
    return await r.text();
  }

  /** Sends a signal. */
  kill(signal: Deno.Signal): void {
    this.child.kill(signal);
  }

  /** Waits for the exit (and the end of its log). */
  async exited(): Promise<Deno.CommandStatus> {
    this.#status ??= await this.child.status;
    await this.#reader;
    return this.#status;
  }

  /** Kills it if still running, waits, removes its directory. */
  async close(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.exited();
    await Deno.remove(this.dir, { recursive: true });
  }
}
