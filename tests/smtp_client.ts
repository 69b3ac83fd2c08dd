/**
 * A raw SMTP client for tests that need exact replies, PROXY headers, STARTTLS by hand
 * or misbehaviour: every line is sent as given and every reply read as it arrives.
 * @module
 */

/** One reply: its code and all its lines. */
export interface RawReply {
  code: number;
  lines: string[];
  /** The last line, e.g. `250 2.0.0 OK`. */
  last: string;
}

/** A line-oriented SMTP connection. */
export class RawSmtp {
  #conn: Deno.Conn;
  #buffer = "";
  readonly #decoder = new TextDecoder();

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /**
   * Connects to 127.0.0.1:`port`. With `proxy`, a PROXY v1 header claiming that source
   * address goes first. Unless `greeting` is false, the greeting is read.
   */
  static async connect(
    port: number,
    options: { proxy?: string; greeting?: boolean } = {},
  ): Promise<{ client: RawSmtp; greeting?: RawReply }> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const client = new RawSmtp(conn);
    if (options.proxy) {
      await client.send(`PROXY TCP4 ${options.proxy} 127.0.0.1 40000 ${port}`);
    }
    if (options.greeting === false) return { client };
    return { client, greeting: await client.reply() };
  }

  /** Writes one line (CRLF added). */
  async send(line: string): Promise<void> {
    await this.write(new TextEncoder().encode(line + "\r\n"));
  }

  /** Writes raw bytes. */
  async write(bytes: Uint8Array): Promise<void> {
    let rest = bytes;
    while (rest.length > 0) rest = rest.subarray(await this.#conn.write(rest));
  }

  /** Reads one (possibly multi-line) reply; rejects when the server closes first. */
  async reply(): Promise<RawReply> {
    const lines: string[] = [];
    while (true) {
      const end = this.#buffer.indexOf("\r\n");
      if (end >= 0) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        lines.push(line);
        if (/^\d{3} /.test(line) || /^\d{3}$/.test(line)) {
          return { code: Number(line.slice(0, 3)), lines, last: line };
        }
        continue;
      }
      const chunk = new Uint8Array(16 * 1024);
      const n = await this.#conn.read(chunk);
      if (n === null) throw new Error(`connection closed; got: ${lines.join(" | ")}`);
      this.#buffer += this.#decoder.decode(chunk.subarray(0, n));
    }
  }

  /** Sends a command and reads its reply. */
  async command(line: string): Promise<RawReply> {
    await this.send(line);
    return await this.reply();
  }

  /** True once the server has closed the connection (reads until EOF, bounded). */
  async closedByServer(timeoutMs = 3_000): Promise<boolean> {
    const timer = setTimeout(() => this.close(), timeoutMs);
    try {
      const chunk = new Uint8Array(1024);
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) return true;
      }
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Upgrades the connection with TLS (after a 220 to STARTTLS). */
  async startTls(caCerts: string[]): Promise<void> {
    this.#conn = await Deno.startTls(this.#conn as Deno.TcpConn, {
      hostname: "localhost",
      caCerts,
    });
  }

  /** Closes the socket (idempotent). */
  close(): void {
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }
}

/** base64 of `\0user\0password` for AUTH PLAIN. */
export function plain(user: string, password: string): string {
  return btoa(String.fromCharCode(...new TextEncoder().encode(`\0${user}\0${password}`)));
}
