/**
 * The one place that relies on nodemailer beyond its documented API: its SMTP pool
 * (`transport.transporter`) fed a hand-built mail, the pool's connection list (QUIT on
 * idle connections), the SIZE a server advertised (`SMTPConnection#_maxAllowedSize`) and
 * the shape of nodemailer's own "too big" error, how a `getSocket` handler's result
 * reaches the connection, and the pool's abort of a mail (`mail.data.signal`: the mail
 * leaves the queue, or the connection sending it is closed, and it fails with `EABORT`).
 * Everything else in the relay uses nodemailer's public API.
 *
 * {@link checkNodemailer} verifies each of these at start-up, by shape and by running
 * them against an in-memory SMTP server, and fails loudly, naming the missing piece.
 * @module
 */
import type net from "node:net";
import { Buffer } from "node:buffer";
import { MessageBody } from "../smtp/body.ts";
import { Duplex, Readable } from "node:stream";
import nodemailer from "nodemailer";
import type { SMTPPoolSentMessageInfo, Transporter } from "nodemailer";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import DataStream from "nodemailer/lib/smtp-connection/data-stream";
import nodemailerPackage from "nodemailer/package.json" with { type: "json" };

/** The nodemailer version this module was written against (deno.json pins it). */
export const PINNED_NODEMAILER_VERSION = "10.6.1";

/** The nodemailer version actually loaded (its package.json). */
export const LOADED_NODEMAILER_VERSION: string = nodemailerPackage.version;

/** A pooled transport: what `nodemailer.createTransport({ pool: true, … })` returns. */
export type PoolTransport = Transporter<SMTPPoolSentMessageInfo>;

/** One message for {@link sendRaw}: the envelope and its bytes, arriving or complete. */
export interface RawMessage {
  /** MAIL FROM address ("" for the null sender). */
  readonly from: string;
  /** RCPT TO addresses. */
  readonly to: readonly string[];
  /**
   * The message as it goes on the wire (before dot-stuffing, which nodemailer does), read
   * as it arrives: the envelope goes out at once, the bytes follow the provider's 354 and
   * the final dot follows the body's end. Read from the start again if the pool moves the
   * message to another connection (one that the provider closed before any byte of it).
   */
  readonly body: MessageBody;
  /** SIZE= for MAIL FROM (where offered), bytes; 0: none. */
  readonly size: number;
  /** Ask for BODY=8BITMIME (where the server offers it). */
  readonly use8BitMime: boolean;
  /**
   * Gives up on the message: still queued, it leaves the queue; being sent, the connection
   * sending it is closed (so a provider that has not had the final dot never gets it).
   * {@link sendRaw} then rejects with an error for which {@link isAbort} is true.
   */
  readonly signal?: AbortSignal;
  /**
   * Called when nodemailer starts reading the body: the provider accepted the envelope and
   * said 354 (nodemailer pipes the message only then).
   */
  readonly onStart?: () => void;
  /**
   * Called when the last byte of the message has been handed on towards the socket, just
   * before nodemailer writes the final dot: from then on the provider may have the whole
   * message, and giving up leaves its outcome unknown. Before it, closing the connection
   * means the message was not delivered.
   */
  readonly onEnd?: () => void;
}

/**
 * nodemailer refused to send a message larger than the SIZE the server advertised in
 * EHLO (it checks before MAIL FROM, so the server never saw the message).
 */
export class MessageTooBig extends Error {
  /** The server's advertised limit in bytes, when it could be read. */
  readonly limit?: number;
  /** The message's size in bytes. */
  readonly size: number;
  /** Creates the error; `limit` when known. */
  constructor(size: number, limit?: number) {
    super(`message of ${size} bytes is larger than the server's SIZE${limit ? ` ${limit}` : ""}`);
    this.name = "MessageTooBig";
    this.size = size;
    this.limit = limit;
  }
}

/** What a `getSocket` handler hands back to nodemailer. */
export type SocketCallback = (
  err: Error | null,
  socketOptions?: { connection: net.Socket; connectionTimeout?: number },
) => void;

/**
 * The result of a `getSocket` handler for an opened socket. nodemailer starts the
 * connection deadline (`connectionTimeout`, which also bounds the greeting) *before* it
 * calls `getSocket`, so time spent there (waiting for a connection permit) would eat into
 * it and a long wait would time the fresh connection out at once. The options returned
 * are merged into the connection's, so `connectionTimeout` is extended by `waitedMs`: the
 * new connection gets its full `connectTimeoutMs` from the moment the wait ended.
 */
export function socketHandOver(
  socket: net.Socket,
  waitedMs: number,
  connectTimeoutMs: number,
): { connection: net.Socket; connectionTimeout: number } {
  return { connection: socket, connectionTimeout: Math.max(0, waitedMs) + connectTimeoutMs };
}

/** The parts of nodemailer's SMTP pool (`lib/smtp-pool`) the relay uses directly. */
interface InternalPool {
  send(
    mail: InternalMail,
    callback: (err: Error | null, info: SMTPPoolSentMessageInfo) => void,
  ): boolean;
  _connections: InternalResource[];
  /** The pool's options; `maxConnections` is read each time it considers a new connection. */
  options: { maxConnections: number };
}

/** A pool resource (`lib/smtp-pool/pool-resource`): one pooled connection. */
interface InternalResource {
  /** Idle and connected or not yet used: the pool may hand it a message. */
  available: boolean;
  /** The SMTP connection, once `connect()` ran. */
  connection?: InternalConnection;
  /** The queue entry it is sending (set by the pool before it calls `send`). */
  queueEntry?: { mail: InternalMail } | false;
}

/** What the relay reads from nodemailer's `SMTPConnection`. */
interface InternalConnection {
  quit(): void;
  /** SIZE from the server's EHLO reply; 0 when none was advertised. */
  _maxAllowedSize: number;
}

/** What nodemailer's pool reads from a queued mail (normally built by its Mailer). */
interface InternalMail {
  readonly data: { readonly signal?: AbortSignal };
  readonly message: {
    getEnvelope(): { from: string; to: string[]; size: number; use8BitMime: boolean };
    messageId(): string;
    getHeader(name: string): string;
    /** Called again if the pool moves the message to another connection. */
    createReadStream(): Readable;
  };
}

/** The pool behind a transport, typed as far as the relay uses it. */
function internalPool(transport: PoolTransport): InternalPool {
  return (transport as unknown as { transporter: InternalPool }).transporter;
}

/** The message as nodemailer's pool expects it: envelope plus a fresh stream each time. */
function internalMail(
  message: RawMessage,
  tooBig: (size: number) => MessageTooBig | undefined,
): InternalMail {
  return {
    data: message.signal ? { signal: message.signal } : {},
    message: {
      // A new object each time: nodemailer writes the outcome (`mailError`, accepted,
      // rejected) into the envelope it is given, and a message moved to a new connection
      // after the provider closed the old one would otherwise fail with the old error.
      getEnvelope: () => ({
        from: message.from,
        to: [...message.to],
        size: message.size,
        use8BitMime: message.use8BitMime,
      }),
      messageId: () => "",
      getHeader: () => "",
      createReadStream: () => bodyStream(message, tooBig),
    },
  };
}

/**
 * A stream of `message.body` from its first byte, following it as it arrives: it ends at
 * the body's end (then nodemailer writes the final dot) and is destroyed if the body fails
 * or grows past the provider's SIZE (`tooBig`), and nodemailer then closes the connection
 * without a final dot.
 */
function bodyStream(
  message: RawMessage,
  tooBig: (size: number) => MessageTooBig | undefined,
): Readable {
  const body = message.body;
  let next = 0;
  let started = false;
  let waiting = false;
  const pull = () => {
    waiting = false;
    while (!stream.destroyed) {
      const chunk = body.chunkAt(next);
      if (chunk) {
        const refusal = tooBig(body.length);
        if (refusal) return void stream.destroy(refusal);
        next++;
        if (!stream.push(chunk)) return;
        continue;
      }
      if (body.complete) return void stream.push(null);
      if (body.failure) return void stream.destroy(body.failure);
      if (!waiting) {
        waiting = true;
        body.changed(pull);
      }
      return;
    }
  };
  const stream = new Readable({
    read() {
      if (!started) {
        started = true;
        message.onStart?.();
      }
      pull();
    },
  });
  // Registered before nodemailer pipes the stream into its dot-stuffing stream, so it
  // runs before that stream is ended (which is when it writes the final dot).
  if (message.onEnd) stream.once("end", message.onEnd);
  return stream;
}

/**
 * Sends one finished message straight to the transport's SMTP pool: nodemailer's Mailer
 * would parse and re-serialise the MIME tree of a `raw` message (a third of the relay's
 * CPU per message) for the same bytes. Rejects with nodemailer's error, or with
 * {@link MessageTooBig} when nodemailer refused the message against the server's SIZE.
 */
export function sendRaw(
  transport: PoolTransport,
  message: RawMessage,
): Promise<SMTPPoolSentMessageInfo> {
  const pool = internalPool(transport);
  let refused: MessageTooBig | undefined;
  let limit: number | undefined;
  // A body that grows past the SIZE the provider advertised (it was not known when MAIL
  // FROM went out) is cut before its end: the provider would refuse it after the dot.
  const tooBig = (size: number) => {
    limit ??= sizeLimit(pool, mail) ?? 0;
    if (limit > 0 && size > limit) refused ??= new MessageTooBig(size, limit);
    return refused;
  };
  const mail = internalMail(message, tooBig);
  return new Promise((ok, fail) => {
    pool.send(mail, (err, info) => {
      if (!err) return ok(info);
      if (refused) return fail(refused);
      // Read now: the pool lets go of the connection's entry right after this callback.
      fail(
        isSizeRefusal(err)
          ? new MessageTooBig(message.size || message.body.length, sizeLimit(pool, mail))
          : err,
      );
    });
  });
}

/** True for the error {@link sendRaw} rejects with when the message's `signal` aborted it. */
export function isAbort(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "EABORT";
}

/**
 * nodemailer's own refusal of a message over the server's SIZE (`SMTPConnection#send`):
 * an EMESSAGE at MAIL FROM that carries no server reply. A server's own refusal of
 * MAIL FROM always has a reply code.
 */
function isSizeRefusal(err: unknown): boolean {
  const e = err as { code?: unknown; command?: unknown; responseCode?: unknown } | null;
  return e?.code === "EMESSAGE" && e.command === "MAIL FROM" && e.responseCode === undefined;
}

/** The SIZE advertised on the connection that was sending `mail`, if it can be found. */
function sizeLimit(pool: InternalPool, mail: InternalMail): number | undefined {
  const resource = pool._connections.find((r) => r.queueEntry && r.queueEntry.mail === mail);
  const limit = resource?.connection?._maxAllowedSize;
  return typeof limit === "number" && limit > 0 ? limit : undefined;
}

/**
 * Sets how many connections the pool may have (nodemailer reads `maxConnections` each time
 * it considers opening one; those it has stay). `undefined`: as many as it has now, at
 * least 1 — queued messages then wait for the existing connections instead of a new one.
 * Returns the bound set.
 */
export function boundConnections(transport: PoolTransport, max?: number): number {
  const pool = internalPool(transport);
  const bound = Math.max(1, max ?? pool._connections.length);
  pool.options.maxConnections = bound;
  return bound;
}

/** How many connections the pool may have now (see {@link boundConnections}). */
export function connectionBound(transport: PoolTransport): number {
  return internalPool(transport).options.maxConnections;
}

/**
 * Says QUIT on up to `max` idle pooled connections (nodemailer closes them without one,
 * except on its own idle timer) and takes them out of use, as that timer does. Returns
 * how many it asked to quit; their sockets close when the server answers.
 */
export function quitIdleConnections(transport: PoolTransport, max = Infinity): number {
  let quit = 0;
  for (const resource of internalPool(transport)?._connections ?? []) {
    if (quit >= max) break;
    if (resource.available && resource.connection) {
      resource.available = false;
      resource.connection.quit();
      quit++;
    }
  }
  return quit;
}

/** nodemailer's `DataStream#_transform` (dot-stuffing, line ends), as it came. */
type Transform = (
  this: DataStreamInternals,
  chunk: Buffer | string,
  encoding: string,
  done: () => void,
) => void;

/** What the replacement transform uses of a `DataStream`. */
interface DataStreamInternals {
  inByteCount: number;
  outByteCount: number;
  lastByte: number | false;
  push(chunk: Uint8Array): boolean;
}

const dataStreamProto = DataStream.prototype as unknown as { _transform: Transform };
/** nodemailer's own byte-by-byte transform: the fallback, and the reference of the check. */
const byteByByte: Transform = dataStreamProto._transform;
const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const STUFFED_DOT = Buffer.from(".");
/** A CR not followed by LF, or an LF not preceded by CR. */
const BARE_LINE_END = /\r(?!\n)|(?<!\r)\n/g;

/**
 * nodemailer's dot-stuffing without a JavaScript loop over every byte: the usual chunk
 * (every line ending CRLF) is searched natively, for bare line ends (a regular expression
 * over its one-byte-per-character text) and for dots that start a line; only those dots are
 * inserted, and a chunk without one passes through uncopied. A chunk with a bare CR or LF
 * goes to nodemailer's own transform, which rewrites those; the output is the same byte
 * for byte (checked at start-up by {@link checkNodemailer}).
 */
const nativeSearch: Transform = function (chunk, encoding, done) {
  if (typeof chunk === "string" || chunk.length === 0) {
    return byteByByte.call(this, chunk, encoding, done);
  }
  const len = chunk.length;
  const prev = this.lastByte;
  if ((prev === CR) !== (chunk[0] === LF)) return byteByByte.call(this, chunk, encoding, done);
  // One byte per UTF-16 unit (latin1) so indexes match; Buffer's latin1 is ~3x cheaper than
  // TextDecoder's (measured with the same expression: 0.9 vs 3.2 ms per MiB of text).
  const text = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).toString("latin1");
  BARE_LINE_END.lastIndex = 0;
  for (let m = BARE_LINE_END.exec(text); m; m = BARE_LINE_END.exec(text)) {
    // A CR that ends the chunk is judged with the next chunk; an LF that starts it was.
    if (m.index === len - 1 && chunk[m.index] === CR) continue;
    if (m.index === 0 && prev === CR) continue;
    return byteByByte.call(this, chunk, encoding, done);
  }
  const dots: number[] = [];
  if (chunk[0] === DOT && (prev === LF || prev === false)) dots.push(0);
  for (let at = text.indexOf("\n."); at !== -1; at = text.indexOf("\n.", at + 2)) {
    dots.push(at + 1);
  }
  this.inByteCount += len;
  this.lastByte = chunk[len - 1];
  if (dots.length === 0) {
    this.outByteCount += len;
    this.push(chunk);
    return done();
  }
  const parts: Uint8Array[] = [];
  let from = 0;
  for (const at of dots) {
    if (at > from) parts.push(chunk.subarray(from, at));
    parts.push(STUFFED_DOT);
    from = at;
  }
  parts.push(chunk.subarray(from));
  const out = Buffer.concat(parts, len + dots.length);
  this.outByteCount += out.length;
  this.push(out);
  done();
};
if (typeof byteByByte === "function") dataStreamProto._transform = nativeSearch;

/** Runs `transform` over `chunks` on a fresh DataStream; the bytes it produced. */
function stuffWith(transform: Transform, chunks: Uint8Array[]): Uint8Array {
  const stream = new DataStream() as unknown as DataStreamInternals;
  const out: Uint8Array[] = [];
  stream.push = (chunk) => out.push(chunk) > 0;
  for (const c of chunks) transform.call(stream, Buffer.from(c), "buffer", () => {});
  return Buffer.concat(out);
}

/** Inputs on which the two transforms must agree: every line-end and dot case, split. */
const STUFFING_CASES = [
  "a\r\n.b\r\n..c\r\n.\r\n",
  ".start\r\nx\ny\rz\r\n\r.\n.",
  "\r\n\r\n.\r\r\n\n\n.\r",
  "no line end at all",
];

/** The pieces of nodemailer {@link checkNodemailer} examines; the real ones by default. */
export interface NodemailerLibrary {
  /** The version loaded. */
  readonly version: string;
  /** `nodemailer.createTransport`. */
  readonly createTransport: (options: Record<string, unknown>) => unknown;
  /** `nodemailer/lib/smtp-connection`'s default export. */
  readonly SMTPConnection: new (options: Record<string, unknown>) => unknown;
}

/** What {@link checkNodemailer} found. */
export interface NodemailerCheck {
  /** The version loaded. */
  readonly version: string;
  /** The version this module was written against. */
  readonly pinned: string;
}

const REAL_LIBRARY: NodemailerLibrary = {
  version: LOADED_NODEMAILER_VERSION,
  createTransport: nodemailer.createTransport as NodemailerLibrary["createTransport"],
  SMTPConnection: SMTPConnection as unknown as NodemailerLibrary["SMTPConnection"],
};

/** How long the in-memory run of {@link checkNodemailer} may take, ms. */
const CHECK_TIMEOUT_MS = 5_000;

/**
 * Start-up self-check: verifies every nodemailer shape this module relies on and throws
 * an Error naming the library, its version and the missing piece when one is gone, e.g.
 * `nodemailer 10.7.0: SMTPPool.prototype.send is missing (the relay relies on it; pin
 * nodemailer 10.6.1 or update src/compat/nodemailer.ts)`.
 *
 * By shape, without connecting: a pooled transport has `transporter` with `send`, the
 * `getSocket` it was given and a `_connections` array; `SMTPConnection.prototype` has
 * `send` and `quit`; a new connection has a numeric `_maxAllowedSize`.
 *
 * By behaviour, against an in-memory SMTP server handed over through `getSocket` (no
 * network) after a wait longer than `connectionTimeout`: the hand-built mail of
 * {@link sendRaw} is delivered byte for byte (so the wait did not time the connection
 * out: {@link socketHandOver}); a message over the advertised SIZE is refused by
 * nodemailer as {@link MessageTooBig} with the server's limit read from the connection;
 * a mail whose `signal` is already aborted fails with `EABORT` ({@link isAbort}) and is not
 * sent; {@link quitIdleConnections} finds the idle connection and the server sees QUIT.
 *
 * `library` replaces the real nodemailer (tests pass broken ones); `timeoutMs` bounds each
 * step of the run. A version other than the pinned one is no error by itself: the result
 * tells, and the shapes decide.
 */
export async function checkNodemailer(
  library: NodemailerLibrary = REAL_LIBRARY,
  timeoutMs: number = CHECK_TIMEOUT_MS,
): Promise<NodemailerCheck> {
  const missing = (piece: string) =>
    new Error(
      `nodemailer ${library.version}: ${piece} (the relay relies on it; pin nodemailer ` +
        `${PINNED_NODEMAILER_VERSION} or update src/compat/nodemailer.ts)`,
    );

  if (typeof byteByByte !== "function") {
    throw missing("DataStream.prototype._transform (its dot-stuffing) is missing");
  }
  for (const text of STUFFING_CASES) {
    const bytes = new TextEncoder().encode(text);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const chunks = [bytes.subarray(0, cut), bytes.subarray(cut)];
      if (!equalBytes(stuffWith(nativeSearch, chunks), stuffWith(byteByByte, chunks))) {
        throw missing(
          `DataStream's dot-stuffing differs from the relay's on ${JSON.stringify(text)}`,
        );
      }
    }
  }

  const proto = (library.SMTPConnection as { prototype?: Record<string, unknown> }).prototype;
  if (typeof proto?.send !== "function") throw missing("SMTPConnection.prototype.send is missing");
  if (typeof proto?.quit !== "function") throw missing("SMTPConnection.prototype.quit is missing");
  const connection = new library.SMTPConnection({ name: "relay.invalid", logger: false });
  if (typeof (connection as Partial<InternalConnection>)._maxAllowedSize !== "number") {
    throw missing("SMTPConnection#_maxAllowedSize (the SIZE from EHLO) is missing");
  }

  const server = new FakeSmtpServer(40);
  const waitMs = 60;
  const getSocket = (_options: unknown, callback: SocketCallback) => {
    const started = Date.now();
    setTimeout(
      () => callback(null, socketHandOver(server.asSocket(), Date.now() - started, 1_000)),
      waitMs,
    );
  };
  const transport = library.createTransport({
    pool: true,
    host: "relay.invalid",
    port: 25,
    secure: false,
    ignoreTLS: true,
    name: "relay.invalid",
    maxConnections: 1,
    connectionTimeout: waitMs / 3,
    greetingTimeout: 1_000,
    socketTimeout: 1_000,
    logger: false,
    getSocket,
  }) as PoolTransport;
  try {
    const pool = (transport as unknown as { transporter?: Partial<InternalPool> & object })
      ?.transporter;
    if (!pool) throw missing("Mail#transporter (the SMTP pool of a pooled transport) is missing");
    if (typeof pool.send !== "function") throw missing("SMTPPool.prototype.send is missing");
    if ((pool as { getSocket?: unknown }).getSocket !== getSocket) {
      throw missing("SMTPPool#getSocket (the getSocket option) is not used");
    }
    if (!Array.isArray(pool._connections)) throw missing("SMTPPool#_connections is not an array");
    if ((pool as { options?: { maxConnections?: unknown } }).options?.maxConnections !== 1) {
      throw missing("SMTPPool#options.maxConnections (the maxConnections option) is not kept");
    }

    const step = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        return await Promise.race([
          run(),
          new Promise<never>((_, fail) => {
            timer = setTimeout(() => fail(new Error("timed out")), timeoutMs);
          }),
        ]);
      } catch (err) {
        throw missing(`${name} failed (${err instanceof Error ? err.message : String(err)})`);
      } finally {
        clearTimeout(timer);
      }
    };

    const small = new TextEncoder().encode("Subject: x\r\n\r\n.\r\n");
    const info = await step(
      "SMTPPool#send with the relay's raw mail (after a getSocket wait)",
      () =>
        sendRaw(transport, {
          from: "a@relay.invalid",
          to: ["b@relay.invalid"],
          body: MessageBody.of(small),
          size: small.length,
          use8BitMime: false,
        }),
    );
    if (!/^250/.test(String(info?.response)) || !equalBytes(server.received[0], small)) {
      throw missing("SMTPPool#send with the relay's raw mail did not deliver it byte for byte");
    }

    const big = new Uint8Array(64).fill(0x41);
    const refusal = await step(
      "the SIZE refusal",
      () =>
        sendRaw(transport, {
          from: "a@relay.invalid",
          to: ["b@relay.invalid"],
          body: MessageBody.of(big),
          size: big.length,
          use8BitMime: false,
        })
          .then(() => new Error("a message over SIZE was sent"), (err) => err),
    );
    if (!(refusal instanceof MessageTooBig)) {
      throw missing(
        "the SIZE refusal (EMESSAGE at MAIL FROM without a reply) has changed" +
          (refusal instanceof Error ? `: ${refusal.message}` : ""),
      );
    }
    if (refusal.limit !== server.size) {
      throw missing("SMTPConnection#_maxAllowedSize of the sending connection is not readable");
    }

    const aborted = await step(
      "aborting a queued mail (mail.data.signal)",
      () =>
        sendRaw(transport, {
          from: "a@relay.invalid",
          to: ["b@relay.invalid"],
          body: MessageBody.of(small),
          size: small.length,
          use8BitMime: false,
          signal: AbortSignal.abort(),
        }).then(() => new Error("an aborted mail was sent"), (err) => err),
    );
    if (!isAbort(aborted) || server.received.length !== 1) {
      throw missing(
        "the abort of a mail (mail.data.signal, EABORT) has changed" +
          (aborted instanceof Error ? `: ${aborted.message}` : ""),
      );
    }

    await step("quitting an idle pooled connection", async () => {
      const deadline = Date.now() + timeoutMs / 2;
      while (quitIdleConnections(transport) === 0) {
        if (Date.now() > deadline) throw new Error("no idle connection with a `quit` was found");
        await new Promise((ok) => setTimeout(ok, 5));
      }
      await server.gone;
    });
    if (!server.commands.includes("QUIT")) {
      throw missing("PoolResource#connection.quit() did not send QUIT");
    }
  } finally {
    transport?.close?.();
    server.destroy();
  }
  return { version: library.version, pinned: PINNED_NODEMAILER_VERSION };
}

function equalBytes(a: Uint8Array | undefined, b: Uint8Array): boolean {
  return !!a && a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * An SMTP server on the other end of an in-memory socket, for {@link checkNodemailer}:
 * no TLS, no AUTH, SIZE `size`; records what it received (dot-unstuffed) and commands.
 */
class FakeSmtpServer extends Duplex {
  readonly size: number;
  readonly received: Uint8Array[] = [];
  readonly commands: string[] = [];
  readonly gone: Promise<void>;
  #input = "";
  #data = false;
  #ended = false;
  #greeted = false;

  constructor(size: number) {
    super();
    this.size = size;
    this.gone = new Promise((ok) => this.once("close", () => ok()));
    this.once("finish", () => this.#reply(null));
  }

  /** The greeting comes a little after nodemailer starts reading, as over a network. */
  override _read(): void {
    if (this.#greeted) return;
    this.#greeted = true;
    const timer = setTimeout(() => this.#reply("220 check.invalid ESMTP\r\n"), 20);
    this.once("close", () => clearTimeout(timer));
  }

  /** This, typed as what nodemailer takes from `getSocket` (it uses no more than a Duplex). */
  asSocket(): net.Socket {
    return this as unknown as net.Socket;
  }

  /** nodemailer sets socket timeouts; an in-memory socket has none. */
  setTimeout(): this {
    return this;
  }

  /** Replies come later, as from a real peer: nodemailer queues its handler after writing. */
  #reply(text: string | null): void {
    queueMicrotask(() => {
      if (this.#ended) return;
      if (text === null) this.#ended = true;
      this.push(text);
    });
  }

  override _write(chunk: Buffer | string, _enc: string, done: (err?: Error | null) => void): void {
    this.#input += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("latin1");
    for (;;) {
      if (this.#data) {
        const end = this.#input.indexOf("\r\n.\r\n");
        if (end < 0) break;
        const body = this.#input.slice(0, end + 2).replace(/^\.\./gm, ".");
        this.#input = this.#input.slice(end + 5);
        this.#data = false;
        this.received.push(Uint8Array.from(body, (c) => c.charCodeAt(0)));
        this.#reply("250 2.0.0 accepted\r\n");
        continue;
      }
      const eol = this.#input.indexOf("\r\n");
      if (eol < 0) break;
      const line = this.#input.slice(0, eol);
      this.#input = this.#input.slice(eol + 2);
      const verb = line.split(" ")[0].toUpperCase();
      this.commands.push(verb);
      if (verb === "EHLO") {
        this.#reply(`250-check.invalid\r\n250-SIZE ${this.size}\r\n250 8BITMIME\r\n`);
      } else if (verb === "DATA") {
        this.#data = true;
        this.#reply("354 go ahead\r\n");
      } else if (verb === "QUIT") {
        this.#reply("221 2.0.0 bye\r\n");
        this.#reply(null);
      } else this.#reply("250 2.0.0 ok\r\n");
    }
    done();
  }
}
