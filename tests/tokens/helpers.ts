/**
 * Helpers of the token tests: a virtual clock with timers, log capture, a state directory
 * that really refuses writes, and the operator surfaces of a harness relay.
 */
import { configure, jsonLinesFormatter, type LogRecord, reset } from "@logtape/logtape";
import type { AccountStatus } from "../../src/accounts.ts";
import type { Readiness } from "../../src/http.ts";
import type { Timing } from "../../src/tokens/clock.ts";
import { type Harness, sendMessage } from "../harness.ts";

/**
 * A clock the test moves. Sleeps advance it at once; timers run when {@link advance}
 * passes their time, in order.
 */
export class VirtualClock implements Timing {
  #now = Date.now();
  #timers = new Set<{ at: number; fn: () => void }>();
  /** Every sleep asked for, ms. */
  readonly slept: number[] = [];

  /** @inheritdoc */
  now(): number {
    return this.#now;
  }

  /** @inheritdoc */
  sleep(ms: number): Promise<void> {
    this.slept.push(ms);
    this.#now += ms;
    return Promise.resolve();
  }

  /** @inheritdoc */
  timer(ms: number, fn: () => void): () => void {
    const t = { at: this.#now + ms, fn };
    this.#timers.add(t);
    return () => this.#timers.delete(t);
  }

  /** Timers set and not yet run or cancelled. */
  get pending(): number {
    return this.#timers.size;
  }

  /** When the earliest pending timer is due, ms from now (undefined: none). */
  get nextTimerIn(): number | undefined {
    const at = Math.min(...[...this.#timers].map((t) => t.at));
    return Number.isFinite(at) ? at - this.#now : undefined;
  }

  /** Moves the clock by `ms` and runs the timers that came due. */
  advance(ms: number): void {
    this.#now += ms;
    const due = [...this.#timers].filter((t) => t.at <= this.#now).sort((a, b) => a.at - b.at);
    for (const t of due) {
      this.#timers.delete(t);
      t.fn();
    }
  }
}

/** Every log record of the relay's categories, as JSON lines, until {@link stop}. */
export class CapturedLogs {
  readonly records: LogRecord[] = [];
  readonly lines: string[] = [];

  /** Starts capturing (replaces any logging configuration). */
  static async start(): Promise<CapturedLogs> {
    const logs = new CapturedLogs();
    await configure({
      reset: true,
      sinks: {
        memory: (record: LogRecord) => {
          logs.records.push(record);
          logs.lines.push(jsonLinesFormatter(record));
        },
      },
      loggers: [
        { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["memory"] },
        { category: ["relay"], lowestLevel: "debug", sinks: ["memory"] },
      ],
    });
    return logs;
  }

  /** All lines as one text. */
  get text(): string {
    return this.lines.join("");
  }

  /** Stops capturing. */
  async stop(): Promise<void> {
    await reset();
  }
}

/** Sends one message for account `i`; the reply line (or the error). */
export const send = (h: Harness, i = 0): Promise<string> => sendMessage(h, i);

/** `/readyz`: status and body text. */
export async function readyz(
  h: Harness,
): Promise<{ status: number; text: string; body: Readiness & { ready: boolean } }> {
  const r = await fetch(`http://127.0.0.1:${h.relay.http.port}/readyz`);
  const text = await r.text();
  return { status: r.status, text, body: JSON.parse(text) };
}

/** `/accounts`: body text and parsed. */
export async function accounts(h: Harness): Promise<{ text: string; body: AccountStatus[] }> {
  const r = await fetch(`http://127.0.0.1:${h.relay.http.port}/accounts`);
  const text = await r.text();
  return { text, body: JSON.parse(text) };
}

/** A directory made to refuse writes, and how to undo it. */
export interface RefusingDirectory {
  /** The error code writes get. */
  readonly code: string;
  /** How: for the test report. */
  readonly how: string;
  /** Lets writes succeed again. */
  fix(): Promise<void>;
  /** Undoes everything (unmounts). */
  cleanup(): Promise<void>;
}

/** True when a chmod 0500 directory still takes writes (root, CAP_DAC_OVERRIDE). */
async function chmodDoesNotStopWrites(): Promise<boolean> {
  const dir = await Deno.makeTempDir({ prefix: "relay-chmod-" });
  try {
    await Deno.chmod(dir, 0o500);
    try {
      await Deno.writeTextFile(`${dir}/probe`, "x");
      return true;
    } catch {
      return false;
    }
  } finally {
    await Deno.chmod(dir, 0o700);
    await Deno.remove(dir, { recursive: true });
  }
}

async function run(cmd: string, args: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

/**
 * Makes the existing, empty directory `dir` refuse new files for real: as an ordinary
 * user, chmod 0500 (EACCES); as root, where chmod stops nothing, a 4 KiB tmpfs mounted on
 * it and filled (ENOSPC: a write really fails, after the file was created). Undefined
 * when neither works here (root without the right to mount).
 */
export async function refuseWrites(dir: string): Promise<RefusingDirectory | undefined> {
  if (!await chmodDoesNotStopWrites()) {
    await Deno.chmod(dir, 0o500);
    return {
      code: "EACCES",
      how: "chmod 0500 (not root)",
      fix: () => Deno.chmod(dir, 0o700),
      cleanup: () => Deno.chmod(dir, 0o700).catch(() => {}),
    };
  }
  if (!await run("mount", ["-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", dir])) {
    return undefined;
  }
  const filler = `${dir}/filler`;
  const file = await Deno.open(filler, { write: true, create: true });
  try {
    await file.write(new Uint8Array(64 * 1024)); // fills what it can
  } catch {
    // full
  } finally {
    file.close();
  }
  return {
    code: "ENOSPC",
    how: "a full 4 KiB tmpfs mounted on it (root: chmod does not stop writes)",
    fix: () => Deno.remove(filler),
    cleanup: async () => {
      await run("umount", [dir]);
    },
  };
}

/** Whether {@link refuseWrites} can work here (checked once, on a scratch directory). */
export async function canRefuseWrites(): Promise<boolean> {
  const dir = await Deno.makeTempDir({ prefix: "relay-refuse-" });
  try {
    const r = await refuseWrites(dir);
    if (!r) return false;
    await r.cleanup();
    return true;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
