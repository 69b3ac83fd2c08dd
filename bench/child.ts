/**
 * The runner side of the control channel (see `./control.ts`): spawns a Deno child process,
 * sends it requests and waits for the matching replies. Children are stopped by closing
 * their stdin; one that does not exit in time is killed (it is always our own child).
 * @module
 */
import { fileURLToPath } from "node:url";
import type { ProcessStats } from "./control.ts";

/** The repository root (children run with it as their working directory). */
export const REPO_ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/**
 * The Deno binary to spawn: this process's own when `--allow-run` names it, else `deno`
 * from PATH (so a task can say `--allow-run=deno`).
 */
export function denoBinary(): string {
  const self = Deno.execPath();
  const state = Deno.permissions.querySync({ name: "run", command: self }).state;
  return state === "granted" ? self : "deno";
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** A running child process that speaks the control protocol. */
export class Child {
  /** Name used in messages. */
  readonly name: string;
  readonly #process: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pending = new Map<number, Pending>();
  readonly #done: Promise<void>;
  #nextId = 1;
  #exited = false;

  private constructor(name: string, process: Deno.ChildProcess) {
    this.name = name;
    this.#process = process;
    this.#writer = process.stdin.getWriter();
    this.#done = this.#readReplies();
  }

  /**
   * Spawns `deno <denoArgs>` in the repository root. `stderr: "inherit"` shows the child's
   * logs; `"null"` discards them (the relay then still formats and writes every log line).
   * `env` goes over the inherited environment.
   */
  static spawn(
    name: string,
    denoArgs: string[],
    stderr: "inherit" | "null",
    env: Record<string, string> = {},
  ): Child {
    const process = new Deno.Command(denoBinary(), {
      args: denoArgs,
      env,
      cwd: REPO_ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr,
    }).spawn();
    return new Child(name, process);
  }

  /** Sends `cmd` with `args`; resolves to the child's result or rejects with its error. */
  request<T = unknown>(cmd: string, args: Record<string, unknown> = {}, timeoutMs = 30_000) {
    if (this.#exited) return Promise.reject(new Error(`${this.name} has exited`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${this.name}: no reply to ${cmd} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      const line = new TextEncoder().encode(JSON.stringify({ ...args, id, cmd }) + "\n");
      this.#writer.write(line).catch((err) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new Error(`${this.name}: cannot send ${cmd}: ${err}`));
      });
    });
  }

  /** The child's own CPU and memory figures. */
  stats(): Promise<ProcessStats> {
    return this.request<ProcessStats>("process");
  }

  /** Closes stdin (the child shuts down and exits); kills it after `timeoutMs`. */
  async stop(timeoutMs = 25_000): Promise<Deno.CommandStatus> {
    await this.#writer.close().catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((done) => {
      timer = setTimeout(() => {
        try {
          this.#process.kill("SIGKILL");
        } catch {
          // already gone
        }
        done();
      }, timeoutMs);
    });
    await Promise.race([this.#process.status, killed]);
    clearTimeout(timer);
    const status = await this.#process.status;
    await this.#done;
    return status;
  }

  async #readReplies(): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    try {
      for await (const chunk of this.#process.stdout) {
        pending += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          this.#onLine(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      }
    } finally {
      this.#exited = true;
      for (const [id, p] of this.#pending) {
        clearTimeout(p.timer);
        p.reject(new Error(`${this.name} exited before answering request ${id}`));
      }
      this.#pending.clear();
    }
  }

  #onLine(line: string): void {
    let reply: { id?: number; ok?: boolean; result?: unknown; error?: string };
    try {
      reply = JSON.parse(line);
    } catch {
      console.error(`[${this.name}] ${line}`);
      return;
    }
    const p = reply.id === undefined ? undefined : this.#pending.get(reply.id);
    if (!p) return;
    this.#pending.delete(reply.id!);
    clearTimeout(p.timer);
    if (reply.ok) p.resolve(reply.result);
    else p.reject(new Error(`${this.name}: ${reply.error}`));
  }
}
