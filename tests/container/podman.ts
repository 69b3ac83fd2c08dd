/**
 * podman for the container test: the image built by `container/build.sh`, commands run
 * with `container/containers.conf` (runc and ulimits this VM needs), and attached
 * `podman run` processes whose output is collected as it arrives.
 * @module
 */
import { fileURLToPath } from "node:url";

/** The repository's top directory, with a trailing slash. */
export const REPO = fileURLToPath(new URL("../../", import.meta.url));

/** The environment of every podman command of the tests. */
const ENV = { CONTAINERS_CONF: `${REPO}container/containers.conf` };

/** What a finished command printed. */
export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * podman's complaint, on a host without systemd, that it cannot set up the timer of a
 * HEALTHCHECK (the check itself still runs with `podman healthcheck run`).
 */
const NO_SYSTEMD = /^.*unable to get systemd connection.*\n?/gm;

/** Runs `podman args…`; throws with its stderr unless it exits 0 (or `allowFail`). */
export async function podman(
  args: string[],
  options: { allowFail?: boolean } = {},
): Promise<Output> {
  return await run("podman", args, options);
}

/** Runs a command to its end, collecting its output; throws unless it exits 0 (or `allowFail`). */
export async function run(
  command: string,
  args: string[],
  options: { allowFail?: boolean } = {},
): Promise<Output> {
  const out = await new Deno.Command(command, {
    args,
    env: ENV,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  const result = {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr).replace(NO_SYSTEMD, ""),
  };
  if (result.code !== 0 && !options.allowFail) {
    throw new Error(
      `${command} ${args.join(" ")}: exit ${result.code}\n${result.stderr}${result.stdout}`,
    );
  }
  return result;
}

/** Builds the image from this working tree (`container/build.sh`); resolves to its id. */
export async function buildImage(tag: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "relay-image-" });
  try {
    await run("bash", [`${REPO}container/build.sh`, "--tag", tag, "--iidfile", `${dir}/iid`]);
    return (await Deno.readTextFile(`${dir}/iid`)).trim();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * An attached `podman run …` (or any podman command that stays): stdout and stderr are
 * collected as they arrive; stdin is a pipe when asked for.
 */
export class Attached {
  /** Everything it wrote to stdout so far. */
  out = "";
  /** Everything it wrote to stderr so far (podman's systemd complaints removed). */
  err = "";
  readonly #child: Deno.ChildProcess;
  readonly #readers: Promise<void>[];
  readonly #writer?: WritableStreamDefaultWriter<Uint8Array>;
  readonly #waiters = new Set<() => void>();
  #status?: Deno.CommandStatus;

  /** Starts `podman args…`; with `stdin`, its standard input is a pipe for {@link send}. */
  constructor(args: string[], options: { stdin?: boolean } = {}) {
    this.#child = new Deno.Command("podman", {
      args,
      env: ENV,
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.stdin) this.#writer = this.#child.stdin.getWriter();
    const collect = async (stream: ReadableStream<Uint8Array>, into: "out" | "err") => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this[into] = (this[into] + chunk).replace(NO_SYSTEMD, "");
        for (const wake of this.#waiters) wake();
      }
    };
    this.#readers = [collect(this.#child.stdout, "out"), collect(this.#child.stderr, "err")];
    this.#child.status.then((status) => {
      this.#status = status;
      for (const wake of this.#waiters) wake();
    });
  }

  /** Writes one line (newline added) to its stdin. */
  async send(line: string): Promise<void> {
    await this.#writer!.write(new TextEncoder().encode(line + "\n"));
  }

  /** Closes its stdin (a sandbox runner then stops). */
  async endInput(): Promise<void> {
    await this.#writer?.close().catch(() => {});
  }

  /**
   * Waits until `found()` holds, checked whenever output arrives and every 200 ms; throws
   * after `timeoutMs` or when the process ended without it, with the output so far.
   */
  async waitUntil<T>(found: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const value = found();
      if (value !== undefined && value !== false) return value;
      const left = deadline - Date.now();
      if (left <= 0 || this.#status) {
        throw new Error(
          `no ${what} within ${timeoutMs} ms${this.#status ? " (exited)" : ""}:\n` +
            `stdout: ${this.out.slice(-3000)}\nstderr: ${this.err.slice(-3000)}`,
        );
      }
      let wake: (() => void) | undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((ok) => {
        wake = ok;
        this.#waiters.add(ok);
        timer = setTimeout(ok, Math.min(left, 200));
      });
      clearTimeout(timer);
      this.#waiters.delete(wake!);
    }
  }

  /** JSON lines written to `stream` so far (a line still being written is left out). */
  json(stream: "out" | "err"): Record<string, unknown>[] {
    const lines: Record<string, unknown>[] = [];
    for (const line of this[stream].split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        lines.push(JSON.parse(line));
      } catch {
        // incomplete
      }
    }
    return lines;
  }

  /** Waits for the exit and the end of its output. */
  async exited(): Promise<Deno.CommandStatus> {
    const status = await this.#child.status;
    await Promise.all(this.#readers);
    return status;
  }

  /** Ends its input, kills the podman client if still running, waits for it. */
  async close(): Promise<void> {
    await this.endInput();
    if (!this.#status) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    await this.exited();
  }
}
