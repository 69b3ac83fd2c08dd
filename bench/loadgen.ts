/**
 * The benchmark's own SMTP load generator. It shares no code with the relay's SMTP path
 * (no smtp-server, no nodemailer): a small client over `Deno.connect` / `Deno.startTls`
 * that pipelines MAIL/RCPT/DATA when the server offers PIPELINING (lock-step otherwise).
 *
 * Two ways to log in, so the same generator drives the relay and the sandbox directly:
 * AUTH PLAIN in plaintext (the relay) or STARTTLS + AUTH XOAUTH2 (the sandbox provider).
 *
 * Load shapes: C concurrent sessions, M messages per session (M = 1: a new connection per
 * message), S-byte messages, N accounts; closed loop (each session sends as fast as replies
 * come back) or open loop at a fixed rate (messages are issued on a clock and wait for an
 * idle session). Every loop is bounded by a deadline and a message budget.
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** How a session logs in. */
export type LoginMethod =
  | {
    /** AUTH PLAIN without TLS (the relay's listener). */
    readonly kind: "plain";
    /** Password of every account. */
    readonly password: string;
  }
  | {
    /** STARTTLS, then AUTH XOAUTH2 (the sandbox provider). */
    readonly kind: "xoauth2";
    /** Name the server certificate must be valid for. */
    readonly tlsHostname: string;
    /** Extra trusted CA certificates (PEM). */
    readonly caCerts: readonly string[];
    /** The access token of an account. */
    readonly token: (email: string) => string;
  };

/** Where the generator connects and how it logs in. */
export interface Target {
  /** IP address (the benchmark uses 127.0.0.1 only). */
  readonly host: string;
  /** TCP port. */
  readonly port: number;
  /** Login method. */
  readonly login: LoginMethod;
}

/** One load run. */
export interface LoadOptions {
  /** Server to load. */
  readonly target: Target;
  /** Account addresses (the AUTH user and MAIL FROM). */
  readonly accounts: readonly string[];
  /** Concurrent sessions (C). */
  readonly sessions: number;
  /** Messages per session before QUIT and reconnect (M); 1 = a connection per message. */
  readonly messagesPerSession: number;
  /**
   * Account of session `s` on its `k`-th connection: `accounts[(s + k * stride) % N]`
   * (default stride = sessions, so the sessions walk through all accounts).
   */
  readonly accountStride?: number;
  /** Maps a session index to its first account index (default: identity). */
  readonly accountOfSession?: (session: number) => number;
  /** The message (see {@link buildMessage}). */
  readonly message: Uint8Array;
  /** RCPT TO address. */
  readonly recipient: string;
  /** Stop issuing messages after this long, ms. */
  readonly durationMs: number;
  /** Stop issuing messages after this many (including failed attempts). */
  readonly maxMessages: number;
  /** Open loop: messages per second issued on a clock; closed loop when absent. */
  readonly rate?: number;
  /** Longest wait for any reply (and for connect), ms. */
  readonly replyTimeoutMs: number;
  /** Spread session starts over this long, ms (default 0). */
  readonly rampUpMs?: number;
  /**
   * Open every session (connect, EHLO, AUTH) before the clock starts (default: when
   * M > 1 or in open-loop mode), so the first messages do not pay for the login.
   */
  readonly preOpen?: boolean;
  /** Stop every session after this many messages (a per-session budget; default none). */
  readonly maxMessagesPerWorker?: number;
}

/** p50/p95/p99/max of a sample, milliseconds. */
export interface Percentiles {
  /** Number of samples. */
  readonly count: number;
  /** Median. */
  readonly p50: number;
  /** 95th percentile. */
  readonly p95: number;
  /** 99th percentile. */
  readonly p99: number;
  /** Largest. */
  readonly max: number;
  /** Arithmetic mean. */
  readonly mean: number;
}

/** What one load run observed. */
export interface LoadResult {
  /** Messages the generator tried to send (acked + failed). */
  readonly attempted: number;
  /** Messages answered 2xx at the end of DATA. */
  readonly acked: number;
  /** Failed messages by class: `4xx`, `5xx`, `connect`, `tls`, `closed`, `timeout`, `protocol`, `overload`. */
  readonly failures: Record<string, number>;
  /** A few failure descriptions (stage, reply), for diagnosis. */
  readonly failureSamples: readonly string[];
  /** From the first message issued to the last reply, seconds. */
  readonly elapsedS: number;
  /** End of DATA (terminating dot written) to the final reply, acked messages only. */
  readonly latency: Percentiles;
  /** MAIL FROM written to the final reply, acked messages only. */
  readonly transactionLatency: Percentiles;
  /** Open loop only: how late messages started versus their scheduled time. */
  readonly startLag?: Percentiles;
  /** Connections opened (successfully logged in). */
  readonly sessionsOpened: number;
}

/** A failure with the class it is counted under. */
class SmtpFailure extends Error {
  /** Counted class. */
  readonly kind: string;
  /** True when the session can no longer be used. */
  readonly fatal: boolean;
  constructor(kind: string, message: string, fatal: boolean) {
    super(message);
    this.kind = kind;
    this.fatal = fatal;
  }
}

interface SmtpReply {
  code: number;
  text: string;
}

function replyFailure(stage: string, r: SmtpReply, fatal: boolean): SmtpFailure {
  const kind = r.code >= 500 ? "5xx" : r.code >= 400 ? "4xx" : "protocol";
  return new SmtpFailure(kind, `${stage}: ${r.text.split("\n")[0]}`, fatal);
}

/** Writes every byte (Deno's `write` may write part of a buffer). */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

/** Sessions waiting for a reply, watched by one timer per load run. */
class Watchdog {
  readonly #clients = new Set<SmtpClient>();
  readonly #timer: ReturnType<typeof setInterval>;
  constructor(periodMs: number) {
    this.#timer = setInterval(() => {
      const now = performance.now();
      for (const c of this.#clients) c.checkDeadline(now);
    }, periodMs);
  }
  add(c: SmtpClient): void {
    this.#clients.add(c);
  }
  remove(c: SmtpClient): void {
    this.#clients.delete(c);
  }
  stop(): void {
    clearInterval(this.#timer);
    for (const c of this.#clients) c.abort("load run ended");
    this.#clients.clear();
  }
}

/** One SMTP client session. */
class SmtpClient {
  #conn: Deno.Conn;
  #buf = new Uint8Array(8192);
  #start = 0;
  #end = 0;
  #deadline = Infinity;
  #timedOut = false;
  #closed = false;
  readonly #timeoutMs: number;
  /** Server advertised PIPELINING. */
  pipelining = false;
  /** Messages sent on this connection. */
  sent = 0;

  private constructor(conn: Deno.Conn, timeoutMs: number) {
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
  }

  /** Connects, reads the greeting, says EHLO, upgrades to TLS if asked, logs in. */
  static async open(
    target: Target,
    email: string,
    timeoutMs: number,
    watchdog: Watchdog,
  ): Promise<SmtpClient> {
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: target.host, port: target.port });
    } catch (err) {
      throw new SmtpFailure("connect", `connect: ${(err as Error).message}`, true);
    }
    conn.setNoDelay(true);
    const c = new SmtpClient(conn, timeoutMs);
    watchdog.add(c);
    try {
      await c.#expect("greeting", 220);
      await c.#ehlo();
      const login = target.login;
      if (login.kind === "xoauth2") {
        await c.#write("STARTTLS\r\n");
        await c.#expect("STARTTLS", 220);
        c.#armDeadline();
        try {
          c.#conn = await Deno.startTls(conn, {
            hostname: login.tlsHostname,
            caCerts: [...login.caCerts],
          });
        } catch (err) {
          throw new SmtpFailure("tls", `TLS: ${(err as Error).message}`, true);
        } finally {
          c.#disarm();
        }
        c.#start = c.#end = 0;
        await c.#ehlo();
        const xoauth2 = btoa(`user=${email}\x01auth=Bearer ${login.token(email)}\x01\x01`);
        await c.#write(`AUTH XOAUTH2 ${xoauth2}\r\n`);
        let r = await c.#reply("AUTH");
        if (r.code === 334) {
          await c.#write("\r\n");
          r = await c.#reply("AUTH");
        }
        if (r.code !== 235) throw replyFailure("AUTH", r, true);
      } else {
        await c.#write(`AUTH PLAIN ${btoa(`\0${email}\0${login.password}`)}\r\n`);
        await c.#expect("AUTH", 235);
      }
      return c;
    } catch (err) {
      c.abort("login failed");
      watchdog.remove(c);
      throw err;
    }
  }

  /**
   * Sends one message; resolves to the end-of-DATA latency and the whole transaction's,
   * in ms, or throws an {@link SmtpFailure}.
   */
  async send(
    envelope: Uint8Array,
    message: Uint8Array,
  ): Promise<{ latency: number; transaction: number }> {
    const started = performance.now();
    if (this.pipelining) {
      await this.#writeBytes(envelope);
      const mail = await this.#reply("MAIL");
      const rcpt = await this.#reply("RCPT");
      const data = await this.#reply("DATA");
      if (mail.code !== 250) throw this.#txFailure("MAIL", mail, data);
      if (rcpt.code !== 250 && rcpt.code !== 251) throw this.#txFailure("RCPT", rcpt, data);
      if (data.code !== 354) throw replyFailure("DATA", data, false);
    } else {
      const lines = decoder.decode(envelope).split("\r\n");
      await this.#write(`${lines[0]}\r\n`);
      const mail = await this.#reply("MAIL");
      if (mail.code !== 250) throw replyFailure("MAIL", mail, false);
      await this.#write(`${lines[1]}\r\n`);
      const rcpt = await this.#reply("RCPT");
      if (rcpt.code !== 250 && rcpt.code !== 251) {
        await this.#rset();
        throw replyFailure("RCPT", rcpt, false);
      }
      await this.#write("DATA\r\n");
      const data = await this.#reply("DATA");
      if (data.code !== 354) throw replyFailure("DATA", data, false);
    }
    await this.#writeBytes(message);
    const endOfData = performance.now();
    const final = await this.#reply("end of DATA");
    const done = performance.now();
    this.sent++;
    if (final.code < 200 || final.code > 299) throw replyFailure("end of DATA", final, false);
    return { latency: done - endOfData, transaction: done - started };
  }

  /** QUIT, then wait for the server to close first (its side keeps TIME_WAIT). */
  async quit(): Promise<void> {
    try {
      await this.#write("QUIT\r\n");
      await this.#reply("QUIT");
      this.#armDeadline(Math.min(this.#timeoutMs, 2000));
      const scratch = new Uint8Array(512);
      for (let i = 0; i < 16; i++) {
        if (await this.#conn.read(scratch) === null) break;
      }
    } catch {
      // The server may close without a reply; nothing to count.
    } finally {
      this.abort("quit");
    }
  }

  /** Closes the socket (pending reads fail). Idempotent. */
  abort(_why: string): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  /** Called by the watchdog: closes the session if a reply is overdue. */
  checkDeadline(now: number): void {
    if (now > this.#deadline) {
      this.#timedOut = true;
      this.abort("timeout");
    }
  }

  /** A failed MAIL/RCPT in a pipelined group: the DATA reply must be a refusal too. */
  #txFailure(stage: string, r: SmtpReply, data: SmtpReply): SmtpFailure {
    // A server that accepted DATA after a refused envelope expects a message: give up.
    return replyFailure(stage, r, data.code === 354);
  }

  async #rset(): Promise<void> {
    await this.#write("RSET\r\n");
    await this.#reply("RSET");
  }

  async #ehlo(): Promise<void> {
    await this.#write("EHLO loadgen.bench.test\r\n");
    const r = await this.#expect("EHLO", 250);
    this.pipelining = /^250[ -]PIPELINING\s*$/im.test(r.text);
  }

  async #expect(stage: string, code: number): Promise<SmtpReply> {
    const r = await this.#reply(stage);
    if (r.code !== code) throw replyFailure(stage, r, true);
    return r;
  }

  #write(line: string): Promise<void> {
    return this.#writeBytes(encoder.encode(line));
  }

  async #writeBytes(bytes: Uint8Array): Promise<void> {
    this.#armDeadline();
    try {
      await writeAll(this.#conn, bytes);
    } catch (err) {
      throw this.#ioFailure(err);
    } finally {
      this.#disarm();
    }
  }

  #armDeadline(ms = this.#timeoutMs): void {
    this.#deadline = performance.now() + ms;
  }

  #disarm(): void {
    this.#deadline = Infinity;
  }

  #ioFailure(err: unknown): SmtpFailure {
    if (err instanceof SmtpFailure) return err;
    if (this.#timedOut) return new SmtpFailure("timeout", "no reply in time", true);
    return new SmtpFailure("closed", `connection: ${(err as Error).message}`, true);
  }

  /** Reads one (possibly multi-line) reply. */
  async #reply(stage: string): Promise<SmtpReply> {
    this.#armDeadline();
    try {
      let text = "";
      for (let lines = 0; lines < 64; lines++) {
        const line = await this.#line();
        if (line === null) {
          throw new SmtpFailure("closed", `${stage}: connection closed by server`, true);
        }
        text = text ? `${text}\n${line}` : line;
        if (line.length < 4 || line[3] === " ") {
          const code = Number(line.slice(0, 3));
          if (!Number.isInteger(code) || code < 200 || code > 599) {
            throw new SmtpFailure("protocol", `${stage}: unreadable reply ${line}`, true);
          }
          return { code, text };
        }
      }
      throw new SmtpFailure("protocol", `${stage}: reply too long`, true);
    } catch (err) {
      throw this.#ioFailure(err);
    } finally {
      this.#disarm();
    }
  }

  /** One line without its CRLF, or null at end of stream. Lines over 64 KiB are refused. */
  async #line(): Promise<string | null> {
    for (;;) {
      const nl = this.#buf.subarray(this.#start, this.#end).indexOf(0x0a);
      if (nl >= 0) {
        const stop = this.#start + nl;
        const line = decoder.decode(
          this.#buf.subarray(
            this.#start,
            stop > this.#start && this.#buf[stop - 1] === 0x0d ? stop - 1 : stop,
          ),
        );
        this.#start = stop + 1;
        return line;
      }
      if (this.#start > 0) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      if (this.#end === this.#buf.length) {
        if (this.#buf.length >= 65536) throw new SmtpFailure("protocol", "line too long", true);
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
      const n = await this.#conn.read(this.#buf.subarray(this.#end));
      if (n === null) return null;
      this.#end += n;
    }
  }
}

/**
 * A message of exactly `size` bytes (headers, then 78-byte lines), CRLF line endings, no
 * line starting with a dot, followed by the terminating `.CRLF`.
 */
export function buildMessage(size: number, from: string, to: string): Uint8Array {
  const head = `From: <${from}>\r\nTo: <${to}>\r\nSubject: relay benchmark\r\n` +
    `Date: ${new Date().toUTCString()}\r\nMessage-ID: <${crypto.randomUUID()}@bench.test>\r\n` +
    `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n`;
  const headBytes = encoder.encode(head);
  if (size < headBytes.length + 2) throw new Error(`message size ${size} is below the headers`);
  const out = new Uint8Array(size + 3);
  out.set(headBytes);
  const line = encoder.encode(
    `${"abcdefghijklmnopqrstuvwxyz0123456789".repeat(3).slice(0, 76)}\r\n`,
  );
  let at = headBytes.length;
  while (size - at > line.length) {
    out.set(line, at);
    at += line.length;
  }
  // Last line: fill up to size - 2, then CRLF.
  out.fill(0x78, at, size - 2);
  out[size - 2] = 0x0d;
  out[size - 1] = 0x0a;
  out.set(encoder.encode(".\r\n"), size);
  return out;
}

/** p50/p95/p99/max/mean of `samples` (ms); zeros when empty. */
export function percentiles(samples: readonly number[]): Percentiles {
  const n = samples.length;
  if (n === 0) return { count: 0, p50: 0, p95: 0, p99: 0, max: 0, mean: 0 };
  const sorted = Float64Array.from(samples).sort();
  const at = (q: number) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))];
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: n,
    p50: at(0.5),
    p95: at(0.95),
    p99: at(0.99),
    max: sorted[n - 1],
    mean: sum / n,
  };
}

const sleep = (ms: number) => new Promise<void>((done) => setTimeout(done, ms));

/** A job queue for the open-loop mode: issued messages waiting for an idle session. */
class JobQueue {
  readonly #jobs: number[] = [];
  #head = 0;
  readonly #waiting: ((job: number | null) => void)[] = [];
  #closed = false;

  get length(): number {
    return this.#jobs.length - this.#head;
  }

  push(scheduledAt: number): void {
    const waiter = this.#waiting.shift();
    if (waiter) return waiter(scheduledAt);
    this.#jobs.push(scheduledAt);
  }

  /** The next job's scheduled time, or null once closed and empty. */
  take(): Promise<number | null> {
    if (this.#head < this.#jobs.length) {
      const job = this.#jobs[this.#head++];
      if (this.#head > 4096) {
        this.#jobs.splice(0, this.#head);
        this.#head = 0;
      }
      return Promise.resolve(job);
    }
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  close(): void {
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w(null);
  }
}

/** Runs one load and reports what the client saw. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  if (o.sessions < 1 || o.messagesPerSession < 1) throw new Error("sessions and M must be >= 1");
  const watchdog = new Watchdog(100);
  const failures: Record<string, number> = {};
  const failureSamples: string[] = [];
  const latency: number[] = [];
  const transaction: number[] = [];
  const startLag: number[] = [];
  const envelopes = o.accounts.map((a) =>
    encoder.encode(`MAIL FROM:<${a}>\r\nRCPT TO:<${o.recipient}>\r\nDATA\r\n`)
  );
  const n = o.accounts.length;
  const stride = o.accountStride ?? o.sessions;
  let issued = 0;
  let acked = 0;
  let sessionsOpened = 0;
  let lastDone = 0;

  const fail = (err: unknown) => {
    const f = err instanceof SmtpFailure ? err : new SmtpFailure("protocol", String(err), true);
    failures[f.kind] = (failures[f.kind] ?? 0) + 1;
    if (failureSamples.length < 8) failureSamples.push(`${f.kind}: ${f.message}`);
    lastDone = performance.now();
    return f;
  };

  const accountOf = (s: number, connection: number) =>
    ((o.accountOfSession?.(s) ?? s) + connection * stride) % n;
  const ramp = (s: number) => o.rampUpMs ? sleep((o.rampUpMs * s) / o.sessions) : undefined;

  // Optional first phase: every session logs in before the clock starts.
  const opened: (SmtpClient | undefined)[] = new Array(o.sessions);
  if (o.preOpen ?? (o.messagesPerSession > 1 || o.rate !== undefined)) {
    await Promise.all(
      opened.fill(undefined).map(async (_, s) => {
        await ramp(s);
        try {
          opened[s] = await SmtpClient.open(
            o.target,
            o.accounts[accountOf(s, 0)],
            o.replyTimeoutMs,
            watchdog,
          );
          sessionsOpened++;
        } catch (err) {
          fail(err);
        }
      }),
    );
  }

  const t0 = performance.now();
  const deadline = t0 + o.durationMs;

  /** One session's life: returns when its budget or the clock runs out. */
  async function worker(s: number, nextJob: () => Promise<number | null>): Promise<void> {
    let client = opened[s];
    let connection = client ? 1 : 0;
    let account = accountOf(s, 0);
    if (!client) await ramp(s);
    let sentByWorker = 0;
    try {
      for (;;) {
        if (o.maxMessagesPerWorker !== undefined && sentByWorker >= o.maxMessagesPerWorker) break;
        const scheduled = await nextJob();
        if (scheduled === null) break;
        sentByWorker++;
        if (scheduled >= 0) startLag.push(performance.now() - scheduled);
        try {
          if (!client) {
            account = accountOf(s, connection);
            connection++;
            client = await SmtpClient.open(
              o.target,
              o.accounts[account],
              o.replyTimeoutMs,
              watchdog,
            );
            sessionsOpened++;
          }
          const t = await client.send(envelopes[account], o.message);
          acked++;
          lastDone = performance.now();
          latency.push(t.latency);
          transaction.push(t.transaction);
          if (client.sent >= o.messagesPerSession) {
            const c = client;
            client = undefined;
            await c.quit();
            watchdog.remove(c);
          }
        } catch (err) {
          const f = fail(err);
          if (f.fatal && client) {
            client.abort("failed");
            watchdog.remove(client);
            client = undefined;
          }
          if (f.fatal) await sleep(10); // no hot loop against a refusing server
        }
      }
    } finally {
      if (client) {
        await client.quit();
        watchdog.remove(client);
      }
    }
  }

  try {
    if (o.rate === undefined) {
      // Closed loop: each session takes the next ticket while time and budget last.
      const nextTicket = () => {
        if (performance.now() >= deadline || issued >= o.maxMessages) {
          return Promise.resolve(null);
        }
        issued++;
        return Promise.resolve(-1);
      };
      await Promise.all(Array.from({ length: o.sessions }, (_, s) => worker(s, nextTicket)));
    } else {
      // Open loop: a clock issues messages; sessions take them when idle.
      const queue = new JobQueue();
      const rate = o.rate;
      const backlogLimit = Math.max(100, rate * 2);
      const workers = Array.from({ length: o.sessions }, (_, s) => worker(s, () => queue.take()));
      while (issued < o.maxMessages) {
        const now = performance.now();
        if (now >= deadline) break;
        const due = Math.min(o.maxMessages, Math.floor(((now - t0) * rate) / 1000) + 1);
        while (issued < due) {
          const scheduledAt = t0 + (issued * 1000) / rate;
          issued++;
          if (queue.length >= backlogLimit) {
            fail(new SmtpFailure("overload", "generator backlog over 2 s of messages", false));
          } else queue.push(scheduledAt);
        }
        await sleep(1);
      }
      queue.close();
      await Promise.all(workers);
    }
  } finally {
    watchdog.stop();
  }
  const attempted = acked + Object.values(failures).reduce((a, b) => a + b, 0);
  return {
    attempted,
    acked,
    failures,
    failureSamples,
    elapsedS: Math.max(1e-3, ((lastDone || performance.now()) - t0) / 1000),
    latency: percentiles(latency),
    transactionLatency: percentiles(transaction),
    startLag: o.rate === undefined ? undefined : percentiles(startLag),
    sessionsOpened,
  };
}
