/**
 * Raw-socket SMTP client for hostile-input tests: writes any bytes, collects every reply
 * in the background, and never waits without a deadline. Also a seeded PRNG so fuzz runs
 * are reproducible.
 * @module
 */

/** One complete SMTP reply (all lines of a multi-line reply). */
export interface Reply {
  /** The three-digit code. */
  readonly code: number;
  /** The lines as received, without CRLF. */
  readonly lines: readonly string[];
}

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Helpers over a PRNG. */
export class Rng {
  readonly #next: () => number;
  /** Seeds from `seed` (32 bits). */
  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }
  /** Uniform in [0, 1). */
  float(): number {
    return this.#next();
  }
  /** Integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.#next() * (max - min + 1));
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.#next() < p;
  }
  /** One element. */
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#next() * items.length)];
  }
  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.#next() * 256);
    return out;
  }
  /** A string of `n` characters drawn from `alphabet`. */
  chars(n: number, alphabet: string): string {
    let s = "";
    for (let i = 0; i < n; i++) s += alphabet[Math.floor(this.#next() * alphabet.length)];
    return s;
  }
}

/** Derives a per-item seed from a run seed and an index (splitmix-style mixing). */
export function seedFor(seed: number, index: number): number {
  let z = (seed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

const encoder = new TextEncoder();

/** Encodes text as bytes (UTF-8). */
export function bytesOf(text: string): Uint8Array {
  return encoder.encode(text);
}

/**
 * A client connection that records every reply line the server sends. Replies are parsed
 * as they arrive; a line that is not `ddd<SP|->text` lands in {@link malformed}.
 */
export class RawSession {
  /** Every complete reply, in order. */
  readonly replies: Reply[] = [];
  /** Reply lines that did not parse (must stay empty). */
  readonly malformed: string[] = [];
  /** Bytes sent so far. */
  sent = 0;
  readonly #conn: Deno.TcpConn;
  readonly #reader: Promise<void>;
  #buffer = "";
  #pending: string[] = [];
  #consumed = 0;
  #eof = false;
  #closedByUs = false;
  readonly #waiters = new Set<() => void>();

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reader = this.#read();
  }

  /** Connects to 127.0.0.1:`port`. */
  static async open(port: number): Promise<RawSession> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    return new RawSession(conn);
  }

  /** True once the server closed (EOF or reset) or we closed. */
  get closed(): boolean {
    return this.#eof;
  }

  /** Replies not yet returned by {@link next}. */
  get unread(): number {
    return this.replies.length - this.#consumed;
  }

  async #read(): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    const decoder = new TextDecoder("latin1");
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        this.#buffer += decoder.decode(chunk.subarray(0, n), { stream: true });
        this.#parse();
        this.#notify();
      }
    } catch {
      // reset by the server, or closed by us: either way the session is over
    }
    this.#eof = true;
    if (this.#buffer.length > 0 && !this.#closedByUs) {
      this.malformed.push(`partial: ${this.#buffer}`);
    }
    this.#notify();
  }

  #parse(): void {
    while (true) {
      const end = this.#buffer.indexOf("\r\n");
      if (end < 0) {
        // A bare LF inside a reply would be a protocol violation; it shows up here.
        if (this.#buffer.length > 100_000) {
          this.malformed.push(`no CRLF in ${this.#buffer.length} bytes`);
          this.#buffer = "";
        }
        return;
      }
      const line = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      const m = /^([2-5]\d\d)([ -])(.*)$/.exec(line) ?? /^([2-5]\d\d)()$/.exec(line);
      if (!m || line.includes("\n") || line.includes("\r")) {
        this.malformed.push(line);
        continue;
      }
      this.#pending.push(line);
      if (m[2] !== "-") {
        const code = Number(m[1]);
        if (this.#pending.some((l) => Number(l.slice(0, 3)) !== code)) {
          this.malformed.push(`mixed codes: ${this.#pending.join(" | ")}`);
        }
        this.replies.push({ code, lines: this.#pending });
        this.#pending = [];
      }
    }
  }

  #notify(): void {
    for (const wake of this.#waiters) wake();
    this.#waiters.clear();
  }

  /** Waits until `ready()` or the deadline; true if ready. */
  async #until(ready: () => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let wake: (() => void) | undefined;
      await new Promise<void>((resolve) => {
        wake = resolve;
        this.#waiters.add(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.#waiters.delete(wake!);
    }
    return true;
  }

  /** The next unread reply; `closed` if the server closed first; `timeout` after `timeoutMs`. */
  async next(timeoutMs: number): Promise<Reply | "closed" | "timeout"> {
    const ok = await this.#until(() => this.unread > 0 || this.#eof, timeoutMs);
    if (this.unread > 0) return this.replies[this.#consumed++];
    return ok ? "closed" : "timeout";
  }

  /** Waits until `count` replies arrived in all, or the server closed. False on timeout. */
  waitReplies(count: number, timeoutMs: number): Promise<boolean> {
    return this.#until(() => this.replies.length >= count || this.#eof, timeoutMs);
  }

  /** Waits for the server to close the connection. False on timeout. */
  waitClosed(timeoutMs: number): Promise<boolean> {
    return this.#until(() => this.#eof, timeoutMs);
  }

  /** Marks every reply so far as read. */
  skipAll(): void {
    this.#consumed = this.replies.length;
  }

  /**
   * Writes all of `data`; false if the connection failed (typically: the server closed
   * it). A write that does not finish within `timeoutMs` closes the connection.
   */
  async write(data: Uint8Array | string, timeoutMs = 10_000): Promise<boolean> {
    let bytes = typeof data === "string" ? bytesOf(data) : data;
    const timer = setTimeout(() => this.#abort(), timeoutMs);
    try {
      while (bytes.length > 0) {
        const n = await this.#conn.write(bytes);
        this.sent += n;
        bytes = bytes.subarray(n);
      }
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  #abort(): void {
    if (this.#closedByUs) return;
    this.#closedByUs = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  /** Closes the connection (an abrupt disconnect if the server has not closed) and waits for the reader. */
  async close(): Promise<void> {
    this.#abort();
    await this.#reader;
  }
}
