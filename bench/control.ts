/**
 * The child side of the benchmark's control channel: requests arrive as JSON lines on stdin
 * (`{"id":1,"cmd":"stats",...}`), replies leave as JSON lines on stdout
 * (`{"id":1,"ok":true,"result":...}`). End of stdin means "stop": the child closes what it
 * runs and exits, so a runner that dies takes its children with it.
 *
 * Every child answers `process` (its own CPU time and memory, measured in-process because
 * Deno 2.9 grants `/proc/<pid>/*` only under `--allow-all`), `mark` (restart the peak-RSS
 * and event-loop-lag sampler) and `gc` (a full garbage collection, when started with
 * `--expose-gc`).
 * @module
 */
import process from "node:process";

/** Handles one request; the value is sent back as `result`. */
export type Handler = (request: Record<string, unknown>) => unknown;

/** CPU and memory of a child process, as it measures itself. */
export interface ProcessStats {
  /** Process id (of the Deno binary itself, even behind a launcher). */
  readonly pid: number;
  /** User CPU time since start, seconds (all threads). */
  readonly cpuUserS: number;
  /** System CPU time since start, seconds (all threads). */
  readonly cpuSystemS: number;
  /** Resident set size now, bytes. */
  readonly rssBytes: number;
  /** Peak resident set size since start (getrusage maxrss), bytes. */
  readonly maxRssBytes: number;
  /** Peak resident set size since the last `mark`, sampled every 20 ms, bytes. */
  readonly peakRssBytes: number;
  /** V8 heap in use now, bytes. */
  readonly heapUsedBytes: number;
  /** V8 heap reserved now, bytes. */
  readonly heapTotalBytes: number;
  /** Memory of ArrayBuffers and other objects outside the V8 heap, bytes. */
  readonly externalBytes: number;
  /** Event-loop lag since the last `mark` (how late a 20 ms timer fired), ms. */
  readonly loopLag: { readonly p99: number; readonly max: number; readonly over50: number };
}

const SAMPLE_MS = 20;
const MAX_LAG_SAMPLES = 100_000;
const STOP_LIMIT_MS = 20_000;

/** Peak RSS and event-loop lag, sampled by one timer. */
class Sampler {
  peakRss = 0;
  lags: number[] = [];
  #expected = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  start(): void {
    this.#expected = performance.now() + SAMPLE_MS;
    this.#timer = setTimeout(() => this.#tick(), SAMPLE_MS);
  }

  stop(): void {
    clearTimeout(this.#timer);
  }

  mark(): void {
    this.peakRss = process.memoryUsage.rss();
    this.lags = [];
  }

  lag(): ProcessStats["loopLag"] {
    const sorted = Float64Array.from(this.lags).sort();
    const n = sorted.length;
    return {
      p99: n ? sorted[Math.min(n - 1, Math.ceil(0.99 * n) - 1)] : 0,
      max: n ? sorted[n - 1] : 0,
      over50: this.lags.filter((l) => l > 50).length,
    };
  }

  #tick(): void {
    const now = performance.now();
    if (this.lags.length < MAX_LAG_SAMPLES) this.lags.push(Math.max(0, now - this.#expected));
    this.peakRss = Math.max(this.peakRss, process.memoryUsage.rss());
    this.#expected = now + SAMPLE_MS;
    this.#timer = setTimeout(() => this.#tick(), SAMPLE_MS);
  }
}

/** This process's {@link ProcessStats}. */
function processStats(sampler: Sampler): ProcessStats {
  const cpu = process.cpuUsage();
  const usage = process.resourceUsage();
  const mem = Deno.memoryUsage();
  return {
    pid: Deno.pid,
    cpuUserS: cpu.user / 1e6,
    cpuSystemS: cpu.system / 1e6,
    rssBytes: mem.rss,
    maxRssBytes: usage.maxRSS * 1024,
    peakRssBytes: Math.max(sampler.peakRss, mem.rss),
    heapUsedBytes: mem.heapUsed,
    heapTotalBytes: mem.heapTotal,
    externalBytes: mem.external,
    loopLag: sampler.lag(),
  };
}

/**
 * Serves requests from stdin until it ends, then runs `stop` and exits the process
 * (status 0, or 1 if `stop` fails or takes over 20 s).
 */
export async function serveControl(
  handlers: Record<string, Handler>,
  stop: () => Promise<void>,
): Promise<never> {
  const sampler = new Sampler();
  sampler.start();
  const all: Record<string, Handler> = {
    process: () => processStats(sampler),
    mark: () => {
      sampler.mark();
      return null;
    },
    gc: () => {
      // Only with --v8-flags=--expose-gc: a full collection, so that what remains is live.
      const gc = (globalThis as { gc?: () => void }).gc;
      if (!gc) return false;
      gc();
      return true;
    },
    ...handlers,
  };
  const out = new TextEncoder();
  const send = (value: unknown) => {
    let bytes = out.encode(JSON.stringify(value) + "\n");
    while (bytes.length > 0) bytes = bytes.subarray(Deno.stdout.writeSync(bytes));
  };
  const handle = async (line: string) => {
    let id: unknown = null;
    try {
      const request = JSON.parse(line) as Record<string, unknown>;
      id = request.id;
      const handler = all[String(request.cmd)];
      if (!handler) throw new Error(`unknown command ${String(request.cmd)}`);
      send({ id, ok: true, result: (await handler(request)) ?? null });
    } catch (err) {
      send({ id, ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) });
    }
  };

  let pending = "";
  const decoder = new TextDecoder();
  for await (const chunk of Deno.stdin.readable) {
    pending += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line) void handle(line);
    }
  }
  sampler.stop();
  const limit = setTimeout(() => Deno.exit(1), STOP_LIMIT_MS);
  let status = 0;
  try {
    await stop();
  } catch (err) {
    console.error(`stop failed: ${err instanceof Error ? err.message : String(err)}`);
    status = 1;
  }
  clearTimeout(limit);
  Deno.exit(status);
}
