/**
 * Every touch of smtp-server's internals, in one place. The relay's ingress and the
 * sandbox provider use the library's public options and callbacks, plus the few
 * connection-level hooks below; each is a field or method of `SMTPConnection` that the
 * library declares in its typings but does not document as API. {@link checkSmtpServer}
 * verifies at start-up that each one is still there, so a version bump that renames
 * one fails the start with a message instead of failing sessions at run time.
 * @module
 */
import { SMTPServer, type SMTPServerSession } from "smtp-server";
import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";
import { SMTPStream } from "smtp-server/lib/smtp-stream.js";
import pkg from "smtp-server/package.json" with { type: "json" };
import { isIP, type Socket } from "node:net";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { Command, IPv4ProxyAddress, IPv6ProxyAddress, V2ProxyProtocol } from "proxy-protocol-js";

/** The loaded version, named in the self-check's errors. */
export const SMTP_SERVER_VERSION: string = pkg.version;

/** One client connection of smtp-server (`SMTPConnection`). */
export type Connection = SMTPServer["connections"] extends Set<infer C> ? C : never;

/** The internal members relied on, for the self-check. */
interface ConnectionInternals {
  connectionReady: (next?: () => void) => void;
  send: (code: number, data?: string) => void;
  close: () => void;
  _resetSession: () => void;
  handler_QUIT: (command: unknown, callback: () => void) => void;
  handler_AUTH: (command: unknown, callback: () => void) => void;
  _onCommand: (command: unknown, callback?: () => void) => void;
  handler_DATA: (command: unknown, callback: () => void) => void;
  _closing: boolean;
  _socket: Socket;
  _nextHandler: false | ((line: unknown, done: () => void) => void);
  session: SMTPServerSession;
}

const METHODS = [
  "connectionReady",
  "send",
  "close",
  "_resetSession",
  "handler_QUIT",
  "handler_AUTH",
  "_onCommand",
  "handler_DATA",
] as const;

/**
 * Checks that the internals used here exist in the loaded smtp-server: inspects
 * `SMTPConnection.prototype` and a connection built over a socket that never connects
 * (the constructor only; nothing is started). `connection` replaces the class for the
 * test of the check itself. Throws an error naming the library, its version and the
 * missing piece.
 */
export function checkSmtpServer(connection: typeof SMTPConnection = SMTPConnection): void {
  const missing = (what: string) =>
    new Error(
      `smtp-server ${SMTP_SERVER_VERSION}: ${what} is missing (the relay relies on it; ` +
        `pin smtp-server or update src/compat/smtp_server.ts)`,
    );
  const server = new SMTPServer({ logger: false, name: "self-check" });
  if (!(server.connections instanceof Set)) throw missing("SMTPServer.connections (a Set)");
  if (typeof server.connect !== "function") throw missing("SMTPServer.connect()");
  const proto = connection.prototype as unknown as Record<string, unknown>;
  for (const name of METHODS) {
    if (typeof proto[name] !== "function") throw missing(`SMTPConnection.${name}()`);
  }
  const c = new connection(server, fakeSocket(), {}) as unknown as ConnectionInternals;
  if (typeof c._closing !== "boolean") throw missing("SMTPConnection._closing");
  if (c._nextHandler !== false) throw missing("SMTPConnection._nextHandler");
  if (!c._socket || typeof c._socket.destroy !== "function") {
    throw missing("SMTPConnection._socket");
  }
  if (typeof c.session !== "object" || c.session === null) {
    throw missing("SMTPConnection.session");
  }
  checkDataUnstuffing(missing);
}

/** A socket-like object that never connects: enough for SMTPConnection's constructor. */
function fakeSocket(): Socket {
  const noop = () => {};
  return {
    setNoDelay: noop,
    on: noop,
    once: noop,
    pipe: noop,
    destroy: noop,
    end: noop,
    write: () => true,
    remoteAddress: "127.0.0.1",
    remotePort: 0,
    localAddress: "127.0.0.1",
    localPort: 0,
  } as unknown as Socket;
}

/**
 * Runs `connect` (which must call `SMTPServer.connect`) and returns the connection it
 * added to `server.connections`, found as it is added (O(1), not a scan).
 */
export function captureNew(server: SMTPServer, connect: () => void): Connection | undefined {
  let connection: Connection | undefined;
  const set = server.connections;
  set.add = (c: Connection) => {
    connection = c;
    return Set.prototype.add.call(set, c) as typeof set;
  };
  try {
    connect();
  } finally {
    delete (set as { add?: unknown }).add;
  }
  return connection;
}

/**
 * Skips the 100 ms early-talker pause for this connection: `init()` armed a timer that
 * calls `connectionReady()`; it is called now and the timer's call becomes a no-op.
 */
export function skipGreetingPause(connection: Connection): void {
  const c = connection as unknown as ConnectionInternals;
  const ready = c.connectionReady.bind(connection);
  c.connectionReady = () => {};
  if (!c._closing) ready();
}

/** Sends one reply line on the connection (a 421 also closes it, as smtp-server does). */
export function sendReply(connection: Connection, code: number, text: string): void {
  (connection as unknown as ConnectionInternals).send(code, text);
}

/**
 * One reply as smtp-server is about to write it: its code, its text (one line, or the
 * lines of a multi-line reply such as EHLO's) and smtp-server's own context tag
 * (`MESSAGE_TOO_BIG`, `MAILBOX_SYNTAX_ERROR`, a command name, … or undefined).
 */
export interface OutgoingReply {
  /** Reply code. */
  readonly code: number;
  /** The text after the code (for a multi-line reply, its lines). */
  readonly text: string | readonly string[];
  /** smtp-server's context argument of `send` (a string tag), if any. */
  readonly context?: string;
}

/**
 * Passes every reply of the connection through `rewrite` before smtp-server writes it: the
 * relay's own replies (callback errors, {@link sendReply}) and smtp-server's (syntax
 * errors, timeouts, EHLO). `rewrite` returns the reply to send instead (code and text),
 * or undefined to send it unchanged. One place that sees every reply: for enhanced
 * codes, logging and counting. smtp-server's enhanced-code option stays off, so the text
 * returned is written as it is (`code text`).
 */
export function watchReplies(
  connection: Connection,
  rewrite: (reply: OutgoingReply) => { code: number; text: string | string[] } | undefined,
): void {
  const c = connection as unknown as ConnectionInternals;
  const send = c.send;
  c.send = function (this: unknown, code: number, data?: unknown, context?: unknown) {
    const text = Array.isArray(data) ? data.map(String) : data == null ? "" : String(data);
    const out = rewrite({ code, text, context: typeof context === "string" ? context : undefined });
    if (out) {
      return (send as (...a: unknown[]) => void).call(this, out.code, out.text, false);
    }
    return (send as (...a: unknown[]) => void).call(this, code, data, context);
  };
}

/**
 * Runs `refuse` when the client sends AUTH (the command itself, before smtp-server asks
 * for any credential with a 334): a reply it returns is sent instead of starting the
 * exchange. RFC 4954 section 4: a server that will not accept the mechanism without TLS
 * refuses the command, so no password is ever sent in clear.
 */
export function guardAuth(
  connection: Connection,
  refuse: () => { code: number; text: string } | undefined,
): void {
  const c = connection as unknown as ConnectionInternals;
  const auth = c.handler_AUTH;
  c.handler_AUTH = function (this: unknown, command: unknown, callback: () => void) {
    const refusal = refuse();
    if (!refusal) return auth.call(this, command, callback);
    c.send(refusal.code, refusal.text);
    callback();
  };
}

/**
 * Calls `onCommand` with each command's name (upper case) and, for MAIL and RCPT only,
 * the rest of the line, before smtp-server handles it. A line that continues an AUTH
 * exchange (a base64 credential) is reported as `AUTH` with no text: credentials never
 * reach the callback.
 */
export function watchCommands(
  connection: Connection,
  onCommand: (name: string, argument: string) => void,
): void {
  const c = connection as unknown as ConnectionInternals;
  const handle = c._onCommand;
  c._onCommand = function (this: unknown, command: unknown, callback?: () => void) {
    if (c._nextHandler) onCommand("AUTH", "");
    else {
      const line = String(command ?? "");
      const name = line.split(" ", 1)[0].toUpperCase();
      const argument = name === "MAIL" || name === "RCPT" ? line.slice(name.length + 1) : "";
      onCommand(name, argument);
    }
    return handle.call(this, command, callback);
  };
}

/** Closes the connection's socket at once, without a reply. */
export function destroySocket(connection: Connection): void {
  (connection as unknown as ConnectionInternals)._socket.destroy();
}

/**
 * Calls `onReset` whenever smtp-server resets the transaction (go-smtp's `Reset`): RSET,
 * EHLO/HELO, STARTTLS, XCLIENT/XFORWARD and after the reply to each DATA.
 */
export function onTransactionReset(connection: Connection, onReset: () => void): void {
  const c = connection as unknown as ConnectionInternals;
  const reset = c._resetSession;
  c._resetSession = function (this: unknown) {
    reset.call(this);
    onReset();
  };
}

/** Calls `onQuit` when the client sends QUIT (before the 221 goes out). */
export function onQuit(connection: Connection, onQuit: () => void): void {
  const c = connection as unknown as ConnectionInternals;
  const quit = c.handler_QUIT;
  c.handler_QUIT = function (this: unknown, command: unknown, callback: () => void) {
    onQuit();
    quit.call(this, command, callback);
  };
}

/**
 * Runs `hook` when the client sends DATA after at least one accepted RCPT, before
 * smtp-server handles it (calls `onData`, then sends its 354); smtp-server reads no further
 * command until `hook` calls `proceed` (once). A DATA that smtp-server will refuse (no
 * recipient) proceeds at once, without the hook.
 */
export function beforeData(connection: Connection, hook: (proceed: () => void) => void): void {
  const c = connection as unknown as ConnectionInternals;
  const data = c.handler_DATA;
  c.handler_DATA = function (this: unknown, command: unknown, callback: () => void) {
    const proceed = () => data.call(this, command, callback);
    if (!c.session.envelope.rcptTo.length) return proceed();
    let done = false;
    hook(() => {
      if (done) return;
      done = true;
      proceed();
    });
  };
}

/** The connection whose session is `session`, if it is still open (a scan: rare paths only). */
export function connectionOf(
  server: SMTPServer,
  session: SMTPServerSession,
): Connection | undefined {
  for (const c of server.connections) {
    if ((c as unknown as ConnectionInternals).session === session) return c;
  }
  return undefined;
}

/**
 * Replaces the handler smtp-server queued for the client's next line (e.g. its 535 after a
 * 334 challenge). False when nothing is queued.
 */
export function replaceNextLineHandler(
  connection: Connection,
  handler: (reply: (code: number, text: string) => void) => void,
): boolean {
  const c = connection as unknown as ConnectionInternals;
  if (!c._nextHandler) return false;
  c._nextHandler = (_line, done) => {
    handler((code, text) => c.send(code, text));
    done();
  };
  return true;
}

/**
 * smtp-server writes every reply line on its own; a pipelining client's MAIL, RCPT and
 * DATA get three replies in the same turn of the event loop. Holding writes until the
 * turn's microtasks have run sends them in one system call (writev). Relies on
 * smtp-server writing each reply as one string: a 220 (the greeting, and the go-ahead for
 * STARTTLS, after which smtp-server hands the socket to TLS in the same turn) is never
 * held: it leaves at once, after anything held.
 */
export function coalesceWrites(socket: Socket): void {
  const write = socket.write;
  let held = false;
  const release = () => {
    if (!held) return;
    held = false;
    socket.uncork();
  };
  socket.write = function (this: Socket, ...args: Parameters<Socket["write"]>) {
    if (typeof args[0] === "string" && args[0].startsWith("220")) {
      release();
    } else if (!held && !socket.destroyed) {
      held = true;
      socket.cork();
      queueMicrotask(release);
    }
    return write.apply(this, args);
  } as Socket["write"];
}

const SLOT = Symbol("smtp-oauth2-relay.session");

/** Attaches the relay's per-client state to smtp-server's session object. */
export function attach<T>(session: SMTPServerSession, state: T): void {
  (session as unknown as Record<symbol, unknown>)[SLOT] = state;
}

/** The state {@link attach}ed to a session, if any. */
export function attached<T>(session: SMTPServerSession): T | undefined {
  return (session as unknown as Record<symbol, T | undefined>)[SLOT];
}

/** The internals {@link acceptProxyV2} wraps: smtp-server's PROXY v1 reader. */
interface ProxyInternals {
  _handleProxy: (socket: Socket, callback: ProxyCallback) => void;
  _expectsProxyHeader: (socket: Socket) => boolean;
}

type ProxyCallback = (err: Error | null, options?: Record<string, unknown>) => void;

/** The 12-byte signature a PROXY protocol v2 header starts with. */
const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
/** A v2 header longer than this is refused (addresses plus a few TLVs fit easily). */
const MAX_V2_HEADER = 536;
/** How long a listed proxy may take to send its header, ms. */
const PROXY_HEADER_TIMEOUT_MS = 10_000;

/**
 * Lets `server` read PROXY protocol v2 headers (HAProxy's `send-proxy-v2`) besides the v1
 * lines smtp-server reads itself, from the proxies its `useProxy` lists only. Wraps the
 * library's `_handleProxy`: a connection from a listed proxy whose first bytes are the v2
 * signature gets its header parsed here (proxy-protocol-js) and the client's address
 * handed to `connect()` as smtp-server's own v1 reader would; anything else goes to that
 * reader untouched. Throws at start if the library no longer has the hook.
 */
export function acceptProxyV2(server: SMTPServer): void {
  const s = server as unknown as ProxyInternals;
  if (typeof s._handleProxy !== "function" || typeof s._expectsProxyHeader !== "function") {
    throw new Error(
      `smtp-server ${SMTP_SERVER_VERSION}: SMTPServer._handleProxy() is missing (PROXY v2 ` +
        `relies on it; pin smtp-server or update src/compat/smtp_server.ts)`,
    );
  }
  const v1 = s._handleProxy.bind(server);
  s._handleProxy = (socket, callback) => {
    if (!s._expectsProxyHeader.call(server, socket)) return v1(socket, callback);
    readProxyV2(socket, callback, () => v1(socket, callback));
  };
}

/** Reads a v2 header, or hands the socket (bytes put back) to `other` when it is not one. */
function readProxyV2(socket: Socket, callback: ProxyCallback, other: () => void): void {
  let buffered = new Uint8Array(0);
  let finished = false;
  const timer = setTimeout(
    () => fail(new Error("no PROXY header in time")),
    PROXY_HEADER_TIMEOUT_MS,
  );
  const cleanup = () => {
    clearTimeout(timer);
    socket.removeListener("readable", onReadable);
    socket.removeListener("error", fail);
    socket.removeListener("close", onClose);
  };
  function fail(err: Error): void {
    if (finished) return;
    finished = true;
    cleanup();
    socket.on("error", () => {}); // a late error must not surface uncaught
    socket.destroy();
    callback(err);
  }
  const onClose = () => fail(new Error("socket closed before the PROXY header"));
  function onReadable(): void {
    let chunk: Uint8Array | null;
    while ((chunk = socket.read() as Uint8Array | null) !== null) {
      const next = new Uint8Array(buffered.length + chunk.length);
      next.set(buffered);
      next.set(chunk, buffered.length);
      buffered = next;
    }
    const n = Math.min(buffered.length, V2_SIGNATURE.length);
    for (let i = 0; i < n; i++) {
      if (buffered[i] !== V2_SIGNATURE[i]) {
        // Not v2: smtp-server's v1 reader gets the bytes back.
        finished = true;
        cleanup();
        socket.unshift(buffered);
        return other();
      }
    }
    if (buffered.length < 16) return;
    const length = 16 + ((buffered[14] << 8) | buffered[15]);
    if (length > MAX_V2_HEADER) return fail(new Error("PROXY v2 header too long"));
    if (buffered.length < length) return;
    finished = true;
    cleanup();
    const rest = buffered.subarray(length);
    if (rest.length > 0) socket.unshift(rest);
    let options: Record<string, unknown>;
    try {
      options = proxyV2Options(buffered.subarray(0, length));
    } catch (err) {
      finished = false;
      return fail(err instanceof Error ? err : new Error(String(err)));
    }
    callback(null, options);
  }
  socket.on("readable", onReadable);
  socket.on("error", fail);
  socket.on("close", onClose);
}

/** smtp-server's socket options for a parsed v2 header (LOCAL: the proxy's own address). */
function proxyV2Options(header: Uint8Array): Record<string, unknown> {
  const id = BigInt("0x" + randomBytes(10).toString("hex")).toString(32).padStart(16, "0");
  const p = V2ProxyProtocol.parse(header);
  if (p.command === Command.LOCAL) return { id };
  const a = p.proxyAddress;
  let address: string;
  if (a instanceof IPv4ProxyAddress) address = a.sourceAddress.address.join(".");
  else if (a instanceof IPv6ProxyAddress) {
    const b = a.sourceAddress.address;
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(((b[i] << 8) | b[i + 1]).toString(16));
    address = groups.join(":");
  } else {
    return { id }; // UNIX or UNSPEC: the proxy's own connection stands
  }
  if (!isIP(address)) throw new Error("invalid PROXY v2 source address");
  return { id, remoteAddress: address, remotePort: a.sourcePort };
}

// ---------------------------------------------------------------------------------------
// DATA: dot-unstuffing and the end-of-data search without a JavaScript loop per byte.

/** The members of smtp-server's `SMTPStream` (its input parser) the DATA phase uses. */
interface StreamInternals {
  _dataStream: DataSink | null;
  _atDataStart: boolean;
  _lastBytes: Uint8Array | false;
  _maxBytes: number;
  dataBytes: number;
  _countDataBytes(len: number): void;
  _endDataMode(last: Uint8Array | false, remainder: Uint8Array, done: Done): void;
  startDataMode(maxBytes?: number): unknown;
  _feedDataStream: Feed;
  [UNSTUFF]?: UnstuffState;
}

/** What the DATA phase writes the message to (smtp-server's PassThrough). */
interface DataSink {
  readonly writable: boolean;
  readonly destroyed: boolean;
  write(chunk: Uint8Array): boolean;
  once(event: string, listener: () => void): unknown;
  removeListener(event: string, listener: () => void): unknown;
}

type Done = (err?: Error | null) => void;
/** `SMTPStream#_feedDataStream`: one chunk of the DATA phase. */
type Feed = (this: StreamInternals, chunk: Uint8Array, done: Done) => void;

const UNSTUFF = Symbol("smtp-oauth2-relay.unstuff");

/** Where the native search stands in one message (the bytes before the next to read). */
interface UnstuffState {
  /** The message's data stream (a new one: a new message). */
  readonly sink: DataSink;
  /** Bytes of the DATA stream before `held` (removed escape dots included). */
  seen: number;
  /** The two bytes before `held` (-1: none). */
  before2: number;
  before1: number;
  /** A dot that starts a line and what follows it, undecided until the next chunk. */
  held: Uint8Array | null;
}

const streamProto = SMTPStream.prototype as unknown as StreamInternals;
/** smtp-server's own per-byte `_feedDataStream`: the reference of the check. */
const perByteFeed: Feed = streamProto._feedDataStream;
const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/**
 * smtp-server's DATA phase without its loop over every byte (and without its copy of every
 * chunk): the chunk's one-byte-per-character text is searched natively for a dot that
 * starts a line (`\n.`); only there is anything decided. The rules are smtp-server's
 * exactly (checked at start-up on every split of a fixed corpus, {@link checkSmtpServer},
 * and on random splits by tests/compat): the message ends at CRLF `.` CRLF (or `.` CRLF as
 * its first bytes); a dot that starts a line (after CRLF or a bare LF) and is followed by
 * another dot is an escape and is removed; the message's second byte is never taken for a
 * line start (smtp-server's scan starts at the third). A dot at the end of a chunk (with a
 * CR after it, if the terminator is possible) is held for the next chunk; everything before
 * it goes out at once, as subarrays of the received chunk (no copy). Sizes are counted by
 * smtp-server's own `_countDataBytes`, so `sizeExceeded` and `byteLength` behave as before.
 */
const nativeFeed: Feed = function (chunk, done) {
  const sink = this._dataStream;
  if (!sink || (this._lastBytes && this._lastBytes.length)) {
    return perByteFeed.call(this, chunk, done);
  }
  let st = this[UNSTUFF];
  if (!st || st.sink !== sink) {
    st = this[UNSTUFF] = { sink, seen: 0, before2: -1, before1: -1, held: null };
  }
  let b: Uint8Array = chunk;
  if (st.held) {
    // Rare (a chunk that ended just after a line's leading dot): a copy of this chunk.
    b = Buffer.concat([st.held, chunk]);
    st.held = null;
  }
  const len = b.length;
  if (len === 0) return done();
  const pieces: Uint8Array[] = [];
  let from = 0;
  const hold = (at: number) => {
    // Keep b[at..] (a line's leading dot and what follows) for the next chunk.
    if (at > from) pieces.push(b.subarray(from, at));
    st.before2 = at >= 2 ? b[at - 2] : at === 1 ? st.before1 : st.before2;
    st.before1 = at >= 1 ? b[at - 1] : st.before1;
    st.seen += at;
    st.held = b.subarray(at);
    emit(this, sink, pieces, done);
  };
  if (st.seen === 0 && b[0] === DOT) {
    // The message's first byte: `.` CRLF ends an empty message, `..` is an escape.
    if (len < 2 || (b[1] === CR && len < 3)) return hold(0);
    if (b[1] === CR && b[2] === LF) return this._endDataMode(false, b.subarray(3), done);
    if (b[1] === DOT) from = 1;
  }
  // The first position that may be a line's leading dot: the message's third byte on.
  const first = Math.max(0, 2 - st.seen);
  const text = latin1Text(b);
  let at = first === 0 && b[0] === DOT && st.before1 === LF ? 0 : nextLeadingDot(text, first);
  while (at !== -1) {
    if (at + 1 >= len) return hold(at);
    const next = b[at + 1];
    if (next === DOT) {
      // An escape: drop this dot, the next one is content.
      if (at > from) pieces.push(b.subarray(from, at));
      from = at + 1;
      at = nextLeadingDot(text, at + 3);
      continue;
    }
    const twoBefore = at >= 2 ? b[at - 2] : at === 1 ? st.before1 : st.before2;
    if (next === CR && twoBefore === CR) {
      if (at + 2 >= len) return hold(at);
      if (b[at + 2] === LF) {
        // CRLF . CRLF: the message ends with the CRLF before the dot.
        const last = b.subarray(from, at);
        const sinkNow = sink;
        for (const p of pieces) write(this, sinkNow, p);
        this._countDataBytes(last.length);
        return this._endDataMode(last.length ? last : false, b.subarray(at + 3), done);
      }
    }
    at = nextLeadingDot(text, at + 1);
  }
  if (from < len) pieces.push(b.subarray(from));
  st.before2 = len >= 2 ? b[len - 2] : st.before1;
  st.before1 = b[len - 1];
  st.seen += len;
  emit(this, sink, pieces, done);
};

/** The first dot at `from` or later that follows an LF (its index), or -1. */
function nextLeadingDot(text: string, from: number): number {
  const at = text.indexOf("\n.", from > 0 ? from - 1 : 0);
  return at === -1 ? -1 : at + 1;
}

/** The bytes as a one-byte-per-character string (native: no loop here). */
function latin1Text(b: Uint8Array): string {
  return (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.length))
    .toString("latin1");
}

/** Counts and writes one piece as smtp-server would (a destroyed stream gets nothing). */
function write(stream: StreamInternals, sink: DataSink, piece: Uint8Array): boolean {
  stream._countDataBytes(piece.length);
  return sink.writable ? sink.write(piece) : true;
}

/** Writes the pieces, then calls `done` at once or when the data stream drains. */
function emit(stream: StreamInternals, sink: DataSink, pieces: Uint8Array[], done: Done): void {
  let flowing = true;
  for (const p of pieces) flowing = write(stream, sink, p);
  if (flowing || sink.destroyed || !sink.writable) return done();
  // A stream that the application destroys never drains, it only closes.
  const onDrain = () => {
    sink.removeListener("drain", onDrain);
    sink.removeListener("close", onDrain);
    done();
  };
  sink.once("drain", onDrain);
  sink.once("close", onDrain);
}

if (typeof perByteFeed === "function") streamProto._feedDataStream = nativeFeed;

/** What one run of a DATA phase produced (see {@link unstuffWith}). */
export interface UnstuffOutcome {
  /** The message as the data stream received it. */
  readonly body: Uint8Array;
  /** True once the end of data was found. */
  readonly ended: boolean;
  /** The bytes after the end of data (back to commands), all chunks' rest included. */
  readonly after: Uint8Array;
  /** smtp-server's byte count of the message. */
  readonly dataBytes: number;
  /** The data stream's `sizeExceeded` at the end. */
  readonly sizeExceeded: boolean;
}

/**
 * Runs one DATA phase of a fresh smtp-server parser over `chunks` (synchronously, with a
 * sink for a data stream) with smtp-server's own per-byte implementation (`library`) or the
 * relay's (`native`), and returns what it produced. The start-up check and the tests
 * compare the two.
 */
export function unstuffWith(
  which: "native" | "library",
  chunks: readonly Uint8Array[],
  maxBytes = Infinity,
): UnstuffOutcome {
  const feed = which === "native" ? nativeFeed : perByteFeed;
  const parser = new SMTPStream() as unknown as StreamInternals;
  parser._feedDataStream = feed; // its own recursion (an escape dot) uses the same one
  parser.startDataMode(maxBytes);
  const out: Uint8Array[] = [];
  const after: Uint8Array[] = [];
  let ended = false;
  const sink = {
    writable: true,
    destroyed: false,
    byteLength: 0,
    sizeExceeded: false,
    write: (piece: Uint8Array) => out.push(Uint8Array.from(piece)) > 0,
    once: () => sink,
    removeListener: () => sink,
  };
  parser._dataStream = sink;
  parser._endDataMode = (last, remainder, done) => {
    if (last && last.length) out.push(Uint8Array.from(last));
    after.push(Uint8Array.from(remainder));
    sink.sizeExceeded = parser.dataBytes > parser._maxBytes;
    ended = true;
    done();
  };
  // smtp-server defers the rest of a chunk after an escape dot (setImmediate): run it now.
  const deferred: (() => void)[] = [];
  const g = globalThis as unknown as { setImmediate: (f: () => void) => unknown };
  const setImmediate = g.setImmediate;
  g.setImmediate = (f) => deferred.push(f);
  try {
    for (const c of chunks) {
      if (ended) {
        after.push(Uint8Array.from(c));
        continue;
      }
      feed.call(parser, Buffer.from(c), () => {});
      while (deferred.length > 0) deferred.shift()!();
    }
  } finally {
    g.setImmediate = setImmediate;
  }
  return {
    body: Buffer.concat(out),
    ended,
    after: Buffer.concat(after),
    dataBytes: parser.dataBytes,
    sizeExceeded: sink.sizeExceeded,
  };
}

/**
 * True when the two runs produced the same: both ended, with the same message, the same
 * bytes after it and the same count; or neither ended (a message without its end is never
 * delivered, and the two hold back different tails of it meanwhile).
 */
export function sameOutcome(a: UnstuffOutcome, b: UnstuffOutcome): boolean {
  if (!a.ended || !b.ended) return a.ended === b.ended;
  return a.dataBytes === b.dataBytes &&
    a.sizeExceeded === b.sizeExceeded && Buffer.compare(a.body, b.body) === 0 &&
    Buffer.compare(a.after, b.after) === 0;
}

/** Messages on which the two must agree: every dot, line-end and terminator case. */
const UNSTUFF_CASES = [
  ".\r\nQUIT\r\n",
  "..\r\n.\r\n",
  "\r\n.\r\n",
  "\n..x\r\n.\r\n",
  "a\r\n..b\r\n.c\r\n...\r\n\n..\n.\r\n.\r\nRSET\r\n",
  "x\r\n.\n.\r.\r\n\r\n..\r\n.\r\n",
  "\r\r\n.\r\n",
];

/** Compares the native DATA phase with smtp-server's on every split of {@link UNSTUFF_CASES}. */
function checkDataUnstuffing(missing: (what: string) => Error): void {
  if (typeof perByteFeed !== "function") throw missing("SMTPStream._feedDataStream()");
  for (const name of ["_countDataBytes", "_endDataMode", "startDataMode"] as const) {
    if (typeof streamProto[name] !== "function") throw missing(`SMTPStream.${name}()`);
  }
  for (const text of UNSTUFF_CASES) {
    const bytes = Buffer.from(text, "latin1");
    for (let cut = 0; cut <= bytes.length; cut++) {
      // Every other split with a size limit the message overruns.
      const limit = cut % 2 === 0 ? Infinity : 4;
      const chunks = [bytes.subarray(0, cut), bytes.subarray(cut)];
      const native = unstuffWith("native", chunks, limit);
      if (!sameOutcome(native, unstuffWith("library", chunks, limit))) {
        throw missing(
          `SMTPStream's DATA phase (${JSON.stringify(text)}, split at ${cut}) as the relay ` +
            `reads it`,
        );
      }
    }
  }
}
