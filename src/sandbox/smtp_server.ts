/**
 * Sandbox SMTP submission server, for the demo and integration tests.
 *
 * An smtp-server instance on 127.0.0.1 that behaves like Gmail's submission
 * port for an OAuth2 client: STARTTLS (no implicit TLS) with the public
 * sandbox certificate, AUTH XOAUTH2 only, required, refused before STARTTLS,
 * and accepted only for access tokens that {@link AccessTokenValidator} (the
 * sandbox token endpoint) vouches for. Accepted messages are kept in memory
 * byte for byte. {@link SmtpFaults} injects the failures a relay must survive.
 *
 * Never logs tokens.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { SMTPServer } from "smtp-server";
import type {
  SMTPServerAddress,
  SMTPServerAuthentication,
  SMTPServerAuthenticationResponse,
  SMTPServerDataStream,
  SMTPServerSession,
} from "smtp-server";
import type { Socket } from "node:net";
import { SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "./tls.ts";
import {
  captureNew,
  type Connection,
  connectionOf,
  destroySocket,
  onQuit,
  replaceNextLineHandler,
  sendReply,
} from "../compat/smtp_server.ts";

/** smtp-server calling `onConnection` with each new connection (see src/compat). */
class HookedServer extends SMTPServer {
  onConnection?: (connection: Connection) => void;

  override connect(socket: Socket, socketOptions?: Parameters<SMTPServer["connect"]>[1]): void {
    const connection = captureNew(this, () => super.connect(socket, socketOptions));
    if (connection) this.onConnection?.(connection);
  }
}

/** Checks access tokens; the sandbox `TokenEndpoint` is one. */
export interface AccessTokenValidator {
  /** True if `token` is a live access token issued for `email`. */
  validateAccessToken(email: string, token: string): boolean;
  /**
   * The reply for a live `token` used for a mailbox it may not send as (`535 5.7.3`,
   * `535 5.7.139`), or undefined; see the token endpoint's app-only grants.
   */
  mailboxVerdict?(email: string, token: string): string | undefined;
}

/** A message the sandbox accepted. */
export interface ReceivedMessage {
  /** XOAUTH2 user of the session that sent it. */
  user: string;
  /** MAIL FROM address ("" for the null sender). */
  from: string;
  /** RCPT TO addresses that were accepted, in order. */
  to: string[];
  /** Message exactly as received, after dot-unstuffing, ending with CRLF. */
  data: Uint8Array;
  /** MAIL FROM parameters as sent (upper-case names), e.g. `{ BODY: "8BITMIME", SIZE: "2048" }`. */
  mailParams: Record<string, string>;
  /** When the end of DATA was received. */
  receivedAt: Date;
  /** Address the relay connected from (its source address). */
  remoteAddress: string;
  /** The name the client gave in EHLO/HELO. */
  ehlo: string;
}

/**
 * Fault injection for tests. A plain mutable object: set fields at any time,
 * they apply to the next command that reaches the check. Replies are full
 * SMTP replies such as `"550 5.1.1 No such user"` and are sent verbatim.
 */
export interface SmtpFaults {
  /** Reject the next N AUTH attempts like a bad token (334, then 535 5.7.8), even with a valid token. */
  rejectAuthNext: number;
  /** Recipient address → reply to its RCPT TO, e.g. `"550 5.1.1 No such user"`. Looked up as given and lower-cased. */
  rejectRecipients: Map<string, string>;
  /** Sender address (`""`: the null sender) → reply to its MAIL FROM, as for recipients. */
  rejectSenders: Map<string, string>;
  /** Reply to the end of DATA instead of accepting, e.g. `"451 4.3.0 Try again later"`; null accepts. */
  rejectData: string | null;
  /** How many messages get {@link SmtpFaults.rejectData}; decremented per rejection. Infinity (default) = always. */
  rejectDataCount: number;
  /** Drop the connection in the middle of DATA (nothing recorded, no reply) for the next N messages. */
  dropDataNext: number;
  /**
   * Wait this long before answering MAIL FROM, each RCPT TO and the end of DATA: a slow
   * server, not a distant one. The waits add up one after another, pipelined or not (a
   * pipelined MAIL, RCPT and DATA wait one delay each in turn), so it cannot show what
   * pipelining saves; `bench/forwarder.ts` puts a provider at a distance.
   */
  replyDelayMs: number;
  /** Answer AUTH with `432 4.3.2` when the user already has this many authenticated sessions; null = no limit. */
  maxConnectionsPerUser: number | null;
}

/** Counters of a {@link SandboxSmtpServer}. */
export interface SmtpStats {
  /** TCP connections accepted. */
  connections: number;
  /** AUTH attempts answered 235. */
  authSuccesses: number;
  /** AUTH attempts that ended in any other reply (530, 535, 432). */
  authFailures: number;
  /** Socket and TLS errors, e.g. clients that reject the certificate. */
  errors: number;
  /** QUIT commands received (clients that said goodbye). */
  quits: number;
  /** DATA commands accepted (354 sent), whether or not the message was then completed. */
  dataStarted: number;
  /** Message bytes received as they arrive (dot-unstuffed), completed messages or not. */
  dataBytes: number;
  /** TCP connections open now. */
  open: number;
  /** Most TCP connections open at once so far. */
  peakOpen: number;
}

/** Options of {@link SandboxSmtpServer.start}. */
export interface SandboxSmtpOptions {
  /** Decides which access tokens are valid (the sandbox token endpoint). */
  tokens: AccessTokenValidator;
  /** TCP port on 127.0.0.1; 0 (default) picks an ephemeral port. */
  port?: number;
  /** Advertised and enforced message size limit in bytes (default 50 MiB). */
  size?: number;
  /** Called for every accepted message, after it was added to `received`. */
  onMessage?: (message: ReceivedMessage) => void;
}

/** An Error that smtp-server turns into the reply `code text`. */
type ReplyError = Error & { responseCode: number };

/** Turns `"550 5.1.1 No such user"` into an error smtp-server sends verbatim. */
function replyError(reply: string): ReplyError {
  const match = reply.match(/^([2-5]\d\d)[ -]?(.*)$/s);
  const error = new Error(match ? match[2] : reply) as ReplyError;
  error.responseCode = match ? Number(match[1]) : 550;
  return error;
}

/** Fault settings with nothing injected. */
function noFaults(): SmtpFaults {
  return {
    rejectAuthNext: 0,
    rejectRecipients: new Map(),
    rejectSenders: new Map(),
    rejectData: null,
    rejectDataCount: Infinity,
    dropDataNext: 0,
    replyDelayMs: 0,
    maxConnectionsPerUser: null,
  };
}

const AUTH_FAILED = "5.7.8 Username and Password not accepted";
const NEEDS_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first";
const TOO_MANY_SESSIONS = "432 4.3.2 Concurrent connections limit exceeded";
const SHUTTING_DOWN = "4.3.2 Service shutting down";

/** The sandbox SMTP server. Create with {@link SandboxSmtpServer.start}. */
export class SandboxSmtpServer {
  /** Address the server listens on. */
  readonly host = "127.0.0.1";
  /** Accepted messages, oldest first. Tests may clear it. */
  readonly received: ReceivedMessage[] = [];
  /** Fault injection; see {@link SmtpFaults}. */
  readonly faults: SmtpFaults = noFaults();
  /** Counters. */
  readonly stats: SmtpStats = {
    connections: 0,
    authSuccesses: 0,
    authFailures: 0,
    errors: 0,
    quits: 0,
    dataStarted: 0,
    dataBytes: 0,
    open: 0,
    peakOpen: 0,
  };

  readonly #server: HookedServer;
  readonly #tokens: AccessTokenValidator;
  readonly #size: number;
  readonly #onMessage?: (message: ReceivedMessage) => void;
  /** session id → user, for authenticated sessions still open. */
  readonly #sessions = new Map<string, string>();
  /** Pending reply delays, cleared by close(). */
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #port = 0;
  #closed: Promise<void> | undefined;
  #messageCount = 0;

  private constructor(options: SandboxSmtpOptions) {
    this.#tokens = options.tokens;
    this.#size = options.size ?? 50 * 1024 * 1024;
    this.#onMessage = options.onMessage;
    this.#server = new HookedServer({
      name: "sandbox.localhost", // without it smtp-server calls os.hostname()
      banner: "ESMTP sandbox ready",
      disableReverseLookup: true,
      secure: false,
      key: SANDBOX_KEY_PEM,
      cert: SANDBOX_CERT_PEM,
      authMethods: ["XOAUTH2"],
      // smtp-server's own refusal would be "538 Error: ..."; onAuth answers
      // 530 5.7.0 like Gmail instead, before it looks at the token.
      allowInsecureAuth: true,
      authRequiredMessage: "5.7.0 Authentication Required",
      size: this.#size,
      logger: false,
      closeTimeout: 1000,
      onConnect: (_session, callback) => {
        this.stats.connections++;
        this.stats.open++;
        this.stats.peakOpen = Math.max(this.stats.peakOpen, this.stats.open);
        callback();
      },
      onAuth: (auth, session, callback) => this.#onAuth(auth, session, callback),
      onMailFrom: (address, _session, callback) => {
        const from = address.address ?? "";
        const refusal = this.faults.rejectSenders.get(from) ??
          this.faults.rejectSenders.get(from.toLowerCase());
        this.#reply(callback, refusal === undefined ? null : replyError(refusal));
      },
      onRcptTo: (address, _session, callback) => this.#onRcptTo(address, callback),
      onData: (stream, session, callback) => this.#onData(stream, session, callback),
      onClose: (session) => {
        this.stats.open--;
        this.#sessions.delete(session.id);
      },
    });
    this.#server.onConnection = (connection) => onQuit(connection, () => this.stats.quits++);
    // Without a listener, a client failing the TLS handshake (e.g. one that
    // does not trust the sandbox CA) would crash the process.
    this.#server.on("error", () => this.stats.errors++);
  }

  /** Starts listening on 127.0.0.1 (needs `--allow-net=127.0.0.1`). */
  static async start(options: SandboxSmtpOptions): Promise<SandboxSmtpServer> {
    const sandbox = new SandboxSmtpServer(options);
    const server = sandbox.#server.server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      sandbox.#server.listen(options.port ?? 0, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
    const address = server.address();
    sandbox.#port = typeof address === "object" && address ? address.port : 0;
    return sandbox;
  }

  /** Port the server listens on. */
  get port(): number {
    return this.#port;
  }

  /** Connections currently open. */
  get openConnections(): number {
    return this.#server.connections.size;
  }

  /** Puts every fault setting back to "no fault". */
  resetFaults(): void {
    Object.assign(this.faults, noFaults());
  }

  /**
   * Ends every open session the way a provider ends idle ones: with `421 4.4.2` first, or
   * (`silently`) by closing the socket with no reply at all. Keeps listening.
   */
  dropConnections(silently = false): void {
    for (const connection of [...this.#server.connections]) {
      if (!silently) sendReply(connection, 421, "4.4.2 Connection dropped due to timeout");
      destroySocket(connection);
    }
  }

  /** Sends 421 to every open session, drops it, stops listening and cancels pending delays. Idempotent. */
  close(): Promise<void> {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    return this.#closed ??= new Promise((resolve) => {
      this.#server.close(() => resolve());
      for (const connection of [...this.#server.connections]) {
        sendReply(connection, 421, SHUTTING_DOWN);
        // smtp-server's own close() only half-closes and waits for the client.
        destroySocket(connection);
      }
    });
  }

  #onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    callback: (
      err: Error | null | undefined,
      response?: SMTPServerAuthenticationResponse,
    ) => void,
  ): void {
    const user = auth.username ?? "";
    if (!session.secure) {
      this.stats.authFailures++;
      return callback(replyError(NEEDS_STARTTLS));
    }
    // The mailbox allowlist of app-only credentials, and SMTP AUTH switched off.
    const verdict = auth.method === "XOAUTH2"
      ? this.#tokens.mailboxVerdict?.(user, auth.accessToken ?? "")
      : undefined;
    if (verdict) {
      this.stats.authFailures++;
      return callback(replyError(verdict));
    }
    let valid = auth.method === "XOAUTH2" &&
      this.#tokens.validateAccessToken(user, auth.accessToken ?? "");
    if (this.faults.rejectAuthNext > 0) {
      this.faults.rejectAuthNext--;
      valid = false;
    }
    if (!valid) {
      this.stats.authFailures++;
      return this.#rejectXoauth2(session, callback);
    }
    const limit = this.faults.maxConnectionsPerUser;
    const key = user.toLowerCase();
    const open = [...this.#sessions.values()].filter((u) => u === key).length;
    if (limit !== null && open >= limit) {
      this.stats.authFailures++;
      return callback(replyError(TOO_MANY_SESSIONS));
    }
    this.#sessions.set(session.id, key);
    this.stats.authSuccesses++;
    callback(null, { user });
  }

  /**
   * Gmail's XOAUTH2 failure: a 334 challenge carrying the error JSON, then,
   * after the client's empty line, `535 5.7.8`. smtp-server sends the 334 and
   * queues its own 535 handler, whose text lacks 5.7.8, so that handler is
   * replaced on the connection (src/compat/smtp_server.ts).
   */
  #rejectXoauth2(
    session: SMTPServerSession,
    callback: (
      err: Error | null | undefined,
      response?: SMTPServerAuthenticationResponse,
    ) => void,
  ): void {
    callback(null, {
      data: {
        status: "401",
        schemes: "bearer",
        scope: "https://mail.google.com/",
      },
    });
    const connection = connectionOf(this.#server, session);
    if (connection) replaceNextLineHandler(connection, (send) => send(535, AUTH_FAILED));
  }

  #onRcptTo(
    address: SMTPServerAddress,
    callback: (err?: Error | null) => void,
  ): void {
    const rejections = this.faults.rejectRecipients;
    const reply = rejections.get(address.address) ??
      rejections.get(address.address.toLowerCase());
    this.#reply(callback, reply === undefined ? null : replyError(reply));
  }

  #onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void {
    const chunks: Buffer[] = [];
    const drop = this.faults.dropDataNext > 0;
    if (drop) this.faults.dropDataNext--;
    this.stats.dataStarted++;
    // Emitted when the connection goes away mid-message; nothing to record.
    stream.on("error", () => {});
    stream.on("data", (chunk: Buffer) => {
      this.stats.dataBytes += chunk.length;
      if (!drop) return void chunks.push(chunk);
      const connection = connectionOf(this.#server, session);
      if (connection) destroySocket(connection);
    });
    stream.on("end", () => {
      if (drop) return;
      if (stream.sizeExceeded) {
        return this.#reply(
          callback,
          replyError(
            `552 5.3.4 Message size exceeds fixed limit of ${this.#size} bytes`,
          ),
        );
      }
      const faults = this.faults;
      if (faults.rejectData !== null && faults.rejectDataCount > 0) {
        faults.rejectDataCount--;
        return this.#reply(callback, replyError(faults.rejectData));
      }
      const envelope = session.envelope;
      const message: ReceivedMessage = {
        user: String(session.user ?? ""),
        from: envelope.mailFrom ? envelope.mailFrom.address : "",
        to: envelope.rcptTo.map((rcpt) => rcpt.address),
        mailParams: mailParams(envelope.mailFrom ? envelope.mailFrom.args : false),
        data: new Uint8Array(Buffer.concat(chunks)),
        receivedAt: new Date(),
        remoteAddress: session.remoteAddress,
        ehlo: session.hostNameAppearsAs,
      };
      this.received.push(message);
      this.#onMessage?.(message);
      const id = ++this.#messageCount;
      this.#reply(callback, null, `2.0.0 OK ${id} - sandbox`);
    });
  }

  /** Answers through `callback`, after {@link SmtpFaults.replyDelayMs} if set. */
  #reply(
    callback: (err?: Error | null, message?: string) => void,
    err: Error | null = null,
    message?: string,
  ): void {
    const delay = this.faults.replyDelayMs;
    if (delay <= 0) return callback(err, message);
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      callback(err, message);
    }, delay);
    this.#timers.add(timer);
  }
}

/** smtp-server's MAIL FROM args (`false` when none) as a plain record of strings. */
function mailParams(args: unknown): Record<string, string> {
  if (!args || typeof args !== "object") return {};
  return Object.fromEntries(
    Object.entries(args as Record<string, unknown>).map(([k, v]) => [k.toUpperCase(), String(v)]),
  );
}
