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
import pkg from "smtp-server/package.json" with { type: "json" };
import { isIP, type Socket } from "node:net";
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
