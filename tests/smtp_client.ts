/**
 * The raw SMTP client of the tests, for exact replies, PROXY headers, STARTTLS by hand and
 * hostile input: every byte is sent as given, every reply the server sends is read in the
 * background and recorded (so a 10 MB write cannot stall on unread replies and a closed
 * connection is noticed), and no wait is without a deadline.
 *
 * STARTTLS: a 220 after the greeting is the server's go-ahead for the handshake, so the
 * reader stops there and {@link RawSmtp.startTls} can take over the socket. Replies are
 * decoded as latin1: every byte is one character.
 * @module
 */

/** One complete SMTP reply (all lines of a multi-line reply). */
export interface Reply {
  /** The three-digit code. */
  readonly code: number;
  /** The lines as received, without CRLF. */
  readonly lines: readonly string[];
  /** The last line, e.g. `250 2.0.0 OK`. */
  readonly last: string;
}

/** How long {@link RawSmtp.reply} waits by default, ms. */
const REPLY_TIMEOUT_MS = 15_000;

const encoder = new TextEncoder();

/** Encodes text as bytes (UTF-8). */
export function bytesOf(text: string): Uint8Array {
  return encoder.encode(text);
}

/** base64 of `\0user\0password` for AUTH PLAIN. */
export function plain(user: string, password: string): string {
  return btoa(String.fromCharCode(...encoder.encode(`\0${user}\0${password}`)));
}

/**
 * A client connection that records every reply line the server sends. Replies are parsed
 * as they arrive; a line that is not `ddd<SP|->text` lands in {@link RawSmtp.malformed}.
 */
export class RawSmtp {
  /** Every complete reply, in order. */
  readonly replies: Reply[] = [];
  /** Reply lines that did not parse (must stay empty). */
  readonly malformed: string[] = [];
  /** Bytes sent so far. */
  sent = 0;
  #conn: Deno.Conn;
  #reader: Promise<void>;
  #decoder = new TextDecoder("latin1");
  #buffer = "";
  #pending: string[] = [];
  #consumed = 0;
  #eof = false;
  #closedByUs = false;
  /** The reader stopped after the go-ahead for STARTTLS. */
  #held = false;
  readonly #waiters = new Set<() => void>();

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#reader = this.#read();
  }

  /**
   * Connects to 127.0.0.1:`port`. With `proxy`, a PROXY v1 header claiming that source
   * address goes first. Reads nothing: see {@link RawSmtp.connect} for the greeting.
   */
  static async open(port: number, options: { proxy?: string } = {}): Promise<RawSmtp> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const client = new RawSmtp(conn);
    if (options.proxy) {
      await client.send(`PROXY TCP4 ${options.proxy} 127.0.0.1 40000 ${port}`);
    }
    return client;
  }

  /** {@link RawSmtp.open}, then the greeting is read unless `greeting` is false. */
  static async connect(
    port: number,
    options: { proxy?: string; greeting?: boolean } = {},
  ): Promise<{ client: RawSmtp; greeting?: Reply }> {
    const client = await RawSmtp.open(port, options);
    if (options.greeting === false) return { client };
    return { client, greeting: await client.reply() };
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
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        this.#buffer += this.#decoder.decode(chunk.subarray(0, n), { stream: true });
        const before = this.replies.length;
        this.#parse();
        this.#notify();
        const last = this.replies.length - 1;
        if (last >= before && last > 0 && this.replies[last].code === 220) {
          // The go-ahead for STARTTLS: no read may be pending when the handshake starts.
          this.#held = true;
          return;
        }
      }
    } catch {
      // reset by the server, or closed by us: either way the session is over
    }
    this.#ended();
  }

  #ended(): void {
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
        this.replies.push({ code, lines: this.#pending, last: line });
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
    if (!ready() && this.#held && !this.#eof) {
      // More is wanted after the go-ahead for STARTTLS, in plaintext: read on.
      this.#held = false;
      this.#reader = this.#read();
    }
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

  /** The next unread reply; throws if the connection closes or none comes in `timeoutMs`. */
  async reply(timeoutMs = REPLY_TIMEOUT_MS): Promise<Reply> {
    const r = await this.next(timeoutMs);
    if (typeof r !== "string") return r;
    throw new Error(`no reply (${r}); got: ${[...this.#pending, this.#buffer].join(" | ")}`);
  }

  /** Sends one line (CRLF added) and reads its reply. */
  async command(line: string): Promise<Reply> {
    await this.send(line);
    return await this.reply();
  }

  /** Writes one line (CRLF added); throws if the connection failed. */
  async send(line: string): Promise<void> {
    if (!await this.write(line + "\r\n")) throw new Error(`cannot send ${line.slice(0, 40)}`);
  }

  /** Waits until `count` replies arrived in all, or the server closed. False on timeout. */
  waitReplies(count: number, timeoutMs: number): Promise<boolean> {
    return this.#until(() => this.replies.length >= count || this.#eof, timeoutMs);
  }

  /** Waits for the connection to end. False on timeout. */
  waitClosed(timeoutMs: number): Promise<boolean> {
    return this.#until(() => this.#eof, timeoutMs);
  }

  /** True once the server has closed the connection (waits up to `timeoutMs`). */
  async closedByServer(timeoutMs = 3_000): Promise<boolean> {
    return await this.waitClosed(timeoutMs) && !this.#closedByUs;
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

  /**
   * Upgrades the connection with TLS, after the server's 220 to STARTTLS (verified for
   * `hostname` against `caCerts`). Throws if there was no go-ahead, or if plaintext
   * followed it.
   */
  async startTls(caCerts: string[], hostname = "localhost"): Promise<void> {
    if (!this.#held) throw new Error("startTls: no 220 to STARTTLS (or the reader went on)");
    await this.#reader;
    if (this.#buffer.length > 0) throw new Error(`plaintext after the 220: ${this.#buffer}`);
    this.#conn = await Deno.startTls(this.#conn as Deno.TcpConn, { hostname, caCerts });
    this.#held = false;
    this.#decoder = new TextDecoder("latin1");
    this.#reader = this.#read();
  }

  #abort(): void {
    if (this.#closedByUs) return;
    this.#closedByUs = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
    if (this.#held) {
      this.#held = false;
      this.#ended();
    }
  }

  /** Closes the connection (an abrupt disconnect if the server has not closed) and waits for the reader. */
  async close(): Promise<void> {
    this.#abort();
    await this.#reader;
  }
}
