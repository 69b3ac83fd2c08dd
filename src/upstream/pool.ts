/**
 * Upstream delivery for one account: a nodemailer pool speaking STARTTLS (or implicit
 * TLS) with certificate checks and AUTH XOAUTH2, over sockets the relay opens itself by
 * host name with TCP_NODELAY. Each socket holds a connection permit
 * ({@link ConnectionPermits}) from before it opens until it closes: the permits are the
 * cap on an account's connections, nodemailer's `maxConnections` only a local bound.
 * Outcomes come back as data ({@link UpstreamResult}). A caller may give up on a message
 * ({@link OutgoingMessage.signal}): it is then never sent, or its connection is closed
 * before the final dot, or (the dot already written) its outcome is reported unknown.
 * @module
 */
import net from "node:net";
import { domainToASCII } from "node:url";
import nodemailer from "nodemailer";
import type { NodemailerError } from "nodemailer";
import { classEnhanced, formatReply, parseReply, type Reply, reply } from "../smtp/reply.ts";
import type { UpstreamTls } from "../config/providers.ts";
import {
  boundConnections,
  connectionBound,
  isAbort,
  MessageTooBig,
  type PoolTransport,
  quitIdleConnections,
  sendRaw,
  type SocketCallback,
  socketHandOver,
} from "../compat/nodemailer.ts";
import { type ConnectionPermits, LocalPermits, type Permit } from "./permits.ts";
import type { MessageBody } from "../smtp/body.ts";

/** Where and how one account's mail goes. */
export interface UpstreamTarget {
  /** Mailbox address: the XOAUTH2 user. */
  readonly user: string;
  /** SMTP host name (connected to by name, so host:port permissions suffice). */
  readonly host: string;
  /** SMTP port. */
  readonly port: number;
  /** STARTTLS (required) or implicit TLS. */
  readonly tls: UpstreamTls;
  /** Extra trusted CA certificates (PEM); the system store otherwise. */
  readonly ca?: string;
  /** Name sent in EHLO. */
  readonly ehloName: string;
  /**
   * Most connections this pool opens at once (the permits are the account's cap; without
   * permits given to the pool, this is the cap).
   */
  readonly maxConnections: number;
  /** Messages per connection before it is replaced. */
  readonly messagesPerConnection: number;
  /** Connect + greeting timeout, ms, from the moment the connection permit is granted. */
  readonly connectTimeoutMs: number;
  /**
   * Longest wait for a connection permit, ms (default {@link DEFAULT_PERMIT_WAIT_MS}); the
   * message waiting for that connection then fails as `unreachable` (try again later).
   */
  readonly permitWaitMs?: number;
  /** Wait for any single reply, ms. */
  readonly socketTimeoutMs: number;
  /** Idle pooled connections are closed after this, ms. */
  readonly idleTimeoutMs: number;
  /** Local address to connect from (never silently replaced by another). */
  readonly sourceAddress?: string;
}

/** Hands out access tokens; `renew` means the provider refused the last one. */
export type TokenProvider = (renew: boolean) => Promise<{ token: string; useUntil: number }>;

/** Counts sockets, for the upstream connection gauge. */
export interface UpstreamObserver {
  /** A socket to the provider connected. */
  connectionOpened(): void;
  /** A socket to the provider closed. */
  connectionClosed(): void;
}

/**
 * A recipient the provider refused while it accepted the message for others. Naming
 * across the relay: a *rejected* message (the whole of it, `kind: "rejected"`), a
 * *refused* recipient (one RCPT TO).
 */
export interface RefusedRecipient {
  /** The address. */
  readonly recipient: string;
  /** The provider's reply to its RCPT. */
  readonly reply: Reply;
}

/** What happened to one message upstream. */
export type UpstreamResult =
  | {
    /** The provider accepted the message for at least one recipient. */
    readonly kind: "sent";
    /** The provider's final reply. */
    readonly reply: Reply;
    /** Recipients it refused. */
    readonly refusedRecipients: readonly RefusedRecipient[];
  }
  | {
    /** The provider rejected the message: 4xx/5xx to the envelope or to the message. */
    readonly kind: "rejected";
    /** That reply, as the provider worded it. */
    readonly reply: Reply;
  }
  | {
    /** The provider refused our access token, also after one renewal. */
    readonly kind: "auth";
    /** Its reply. */
    readonly reply: Reply;
  }
  | {
    /** No access token could be had (the token provider threw this). */
    readonly kind: "token";
    /** The token provider's error. */
    readonly error: Error;
  }
  | {
    /** Connection, TLS or timeout failure: nothing is known to be delivered. */
    readonly kind: "unreachable";
    /** Secret-free description. */
    readonly detail: string;
  }
  | {
    /**
     * The caller gave up ({@link OutgoingMessage.signal}): the message left the queue, or
     * the connection sending it was closed.
     */
    readonly kind: "abandoned";
    /**
     * The end of the message (the final dot) may have reached the provider, with no reply
     * yet: the outcome is unknown. False: the provider never had the whole message, so it
     * was not delivered.
     */
    readonly endSent: boolean;
  };

/** One secret-free line for an outcome: the provider's reply, or what went wrong. */
export function describeResult(r: UpstreamResult): string {
  switch (r.kind) {
    case "sent":
      return formatReply(r.refusedRecipients.length ? r.refusedRecipients[0].reply : r.reply);
    case "unreachable":
      return r.detail;
    case "abandoned":
      return r.endSent
        ? "given up after the end of the message was sent, before the provider answered"
        : "given up before the end of the message was sent";
    case "token":
      return r.error.message;
    default:
      return formatReply(r.reply);
  }
}

/** One message to send. */
export interface OutgoingMessage {
  /** MAIL FROM address ("" for the null sender). */
  readonly from: string;
  /** RCPT TO addresses. */
  readonly to: readonly string[];
  /**
   * The message exactly as the client sends it (after dot-unstuffing), possibly still
   * arriving: the envelope goes upstream at once and the body follows as it arrives; the
   * final dot only once it is complete, never if it fails. A transport that needs the
   * whole message in one buffer awaits `body.bytes()`.
   */
  readonly body: MessageBody;
  /**
   * The size for MAIL FROM's SIZE= while the body is still arriving (the client's own
   * SIZE=, if it gave one); a complete body's length is used when this is absent.
   */
  readonly size?: number;
  /**
   * Gives up on the message (its deadline, shutdown): {@link UpstreamPool.send} then
   * resolves to `abandoned` at once. Not yet sent, it never will be: it leaves the queue, or
   * the connection sending it is closed before the final dot.
   */
  readonly signal?: AbortSignal;
  /** Filled in while it is sent, for a caller that gives up before `send` resolves. */
  readonly progress?: SendProgress;
}

/** How far one message got, as {@link UpstreamPool.send} goes. */
export interface SendProgress {
  /**
   * Set once the end of the message may have reached the provider (the final dot is being
   * written): from then on, giving up leaves the outcome unknown.
   */
  endSent: boolean;
}

/** A marker so token failures are told apart from nodemailer's own errors. */
class TokenUnavailable extends Error {
  readonly reason: Error;
  constructor(reason: Error) {
    super(reason.message);
    this.reason = reason;
  }
}

/** Default for {@link UpstreamTarget.permitWaitMs}: how long a message waits for a connection. */
export const DEFAULT_PERMIT_WAIT_MS = 60_000;

/**
 * After a permit came only after a wait (the account's cap full, e.g. taken by other
 * instances), the pool opens no further connections for this long: its messages queue for
 * the connections it has. Otherwise each new connection nodemailer opens waits for a
 * permit with a message bound to it, and the pool must QUIT an idle connection to free
 * one (a reconnect per message). Then the pool may try for more again.
 */
export const CONTENDED_HOLD_MS = 5_000;

/** The pooled upstream of one account. */
export class UpstreamPool {
  readonly #transport: PoolTransport;
  readonly #target: UpstreamTarget;
  readonly #permits: ConnectionPermits;
  /** Permit waits in progress, aborted by {@link UpstreamPool.close}. */
  readonly #waits = new Set<AbortController>();
  #open = 0;
  #closed = false;
  /** Set while the pool keeps to the connections it has ({@link CONTENDED_HOLD_MS}). */
  #holdTimer?: ReturnType<typeof setTimeout>;

  /**
   * Creates the pool; connections open on demand, each under a permit from `permits`
   * for `target.user`. Without `permits` the pool has its own, `target.maxConnections`
   * of them: pools of one account that must share the cap share one
   * {@link ConnectionPermits}.
   */
  constructor(
    target: UpstreamTarget,
    tokens: TokenProvider,
    observer?: UpstreamObserver,
    permits: ConnectionPermits = new LocalPermits(target.maxConnections),
  ) {
    this.#target = target;
    this.#permits = permits;
    this.#transport = nodemailer.createTransport({
      pool: true,
      host: target.host,
      port: target.port,
      secure: target.tls === "implicit",
      requireTLS: target.tls === "starttls",
      ignoreTLS: false,
      tls: {
        servername: target.host,
        rejectUnauthorized: true,
        minVersion: "TLSv1.2",
        ...(target.ca ? { ca: target.ca } : {}),
      },
      name: target.ehloName,
      auth: { type: "OAuth2", user: target.user },
      maxConnections: target.maxConnections,
      maxMessages: target.messagesPerConnection,
      idleTimeout: target.idleTimeoutMs,
      connectionTimeout: target.connectTimeoutMs,
      greetingTimeout: target.connectTimeoutMs,
      socketTimeout: target.socketTimeoutMs,
      disableFileAccess: true,
      disableUrlAccess: true,
      logger: false,
      getSocket: (_options: unknown, callback: SocketCallback) =>
        this.#connect(callback, {
          connectionOpened: () => {
            this.#open++;
            observer?.connectionOpened();
          },
          connectionClosed: () => {
            this.#open--;
            observer?.connectionClosed();
          },
        }),
    });
    this.#transport.set(
      "oauth2_provision_cb",
      (
        _user: string,
        renew: boolean,
        cb: (err: Error | null, token?: string, exp?: number) => void,
      ) =>
        tokens(renew).then(
          (t) => cb(null, t.token, t.useUntil),
          (err) => cb(new TokenUnavailable(err instanceof Error ? err : new Error(String(err)))),
        ),
    );
  }

  /**
   * Sends one message; never throws. With `message.signal` aborted or its body failed,
   * resolves to `abandoned` at once (see {@link OutgoingMessage.signal}).
   */
  async send(message: OutgoingMessage): Promise<UpstreamResult> {
    // A body that fails (the client went away mid-message) gives the message up as well.
    const signal = message.signal
      ? AbortSignal.any([message.signal, message.body.signal])
      : message.body.signal;
    let endSent = false;
    if (signal?.aborted) return { kind: "abandoned", endSent };
    try {
      const info = await sendRaw(this.#transport, {
        from: asciiDomain(message.from),
        to: message.to,
        body: message.body,
        // MAIL FROM carries SIZE= when the size is known (a provider refuses an oversized
        // message before it is sent) and BODY=8BITMIME, where offered: the envelope goes
        // out before the body is in, so whether it has 8-bit bytes is not known yet, and
        // RFC 6152 lets a sender declare 8BITMIME for any content (no scan of the bytes).
        size: message.size ?? (message.body.complete ? message.body.length : 0),
        use8BitMime: true,
        signal,
        onStart: () => message.body.want(),
        onEnd: () => {
          endSent = true;
          if (message.progress) message.progress.endSent = true;
        },
      });
      const errors: NodemailerError[] = info.rejectedErrors ?? [];
      return {
        kind: "sent",
        reply: parseReply(info.response) ?? reply(250, "2.0.0", info.response),
        refusedRecipients: errors.map((e) => ({
          recipient: e.recipient ?? "",
          reply: replyOf(e) ?? reply(550, "5.0.0", "recipient refused"),
        })),
      };
    } catch (err) {
      // Whatever else went wrong at the same moment, the caller has given up on it.
      if (isAbort(err) || signal?.aborted) return { kind: "abandoned", endSent };
      return classify(err);
    } finally {
      // The connection that sent it may now sit idle while a message of this pool waits
      // for a permit (for another connection): let that idle connection's permit move on.
      if (this.#waits.size > 0) setTimeout(() => this.#handOverIdle(), 0);
    }
  }

  /**
   * Connects, upgrades to TLS, authenticates with XOAUTH2 and quits, sending no mail
   * (for `check --smtp`). `sent` with the provider's AUTH reply means it worked.
   */
  async verify(): Promise<UpstreamResult> {
    try {
      await this.#transport.verify();
      return {
        kind: "sent",
        reply: reply(235, "2.7.0", "Authentication successful"),
        refusedRecipients: [],
      };
    } catch (err) {
      return classify(err);
    }
  }

  /** Connections open now. */
  get openConnections(): number {
    return this.#open;
  }

  /** Connections this pool waits for a permit to open. */
  get permitWaits(): number {
    return this.#waits.size;
  }

  /**
   * Says QUIT on every idle pooled connection and waits (at most `timeoutMs`) for them
   * to close; then closes the pool. For shutdown: the provider sees a clean goodbye.
   */
  async quit(timeoutMs = 2_000): Promise<void> {
    quitIdleConnections(this.#transport);
    const deadline = Date.now() + timeoutMs;
    while (this.#open > 0 && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 10));
    }
    this.close();
  }

  /**
   * Says QUIT on up to `max` idle pooled connections (all by default; their permits go back
   * as they close); the pool stays usable and opens new connections on demand. All for a
   * pool being retired, one at a time when another instance waits for the account's cap.
   */
  quitIdle(max = Infinity): void {
    if (!this.#closed) quitIdleConnections(this.#transport, max);
  }

  /**
   * Closes pooled connections at once (no QUIT). A message still waiting for a permit
   * fails (`unreachable`) and its wait ends: nothing stays held or queued.
   */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#holdTimer);
    this.#transport.close();
    for (const wait of [...this.#waits]) wait.abort(new Error("upstream pool closed"));
  }

  /**
   * nodemailer's `getSocket`: waits for a permit, then opens the socket. The permit goes
   * back when that socket closes, or at once if no socket comes of it.
   */
  #connect(callback: SocketCallback, observer: UpstreamObserver): void {
    if (this.#closed) {
      setTimeout(() => callback(new Error("upstream pool closed")), 0);
      return;
    }
    const target = this.#target;
    const waitMs = target.permitWaitMs ?? DEFAULT_PERMIT_WAIT_MS;
    const wait = new AbortController();
    this.#waits.add(wait);
    const timer = setTimeout(() => {
      const seconds = Math.round(waitMs / 100) / 10;
      wait.abort(new Error(`no upstream connection free within ${seconds} s (all in use)`));
    }, waitMs);
    const started = Date.now();
    const waited = () => {
      clearTimeout(timer);
      this.#waits.delete(wait);
      return Date.now() - started;
    };
    this.#permits.acquire(target.user, wait.signal).then(
      (permit) => {
        const waitedMs = waited();
        if (this.#closed) {
          permit.release();
          return callback(new Error("upstream pool closed"));
        }
        if (permit.contended) this.#keepToConnections();
        openSocket(target, permit, observer, (err, socket) => {
          if (err || !socket) return callback(err ?? new Error("connection failed"));
          // nodemailer's connection deadline started before the wait: move it past it.
          callback(null, socketHandOver(socket, waitedMs, target.connectTimeoutMs));
        });
      },
      (err) => {
        waited();
        callback(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }

  /** The cap was full: open no more connections than now for {@link CONTENDED_HOLD_MS}. */
  #keepToConnections(): void {
    boundConnections(this.#transport);
    clearTimeout(this.#holdTimer);
    this.#holdTimer = setTimeout(() => {
      this.#holdTimer = undefined;
      if (!this.#closed) boundConnections(this.#transport, this.#target.maxConnections);
    }, CONTENDED_HOLD_MS);
    Deno.unrefTimer(this.#holdTimer);
  }

  /** Connections this pool may have now: `maxConnections`, less while the cap is contended. */
  get connectionBound(): number {
    return connectionBound(this.#transport);
  }

  /** QUITs idle connections, one per permit wait at most, so their permits move on. */
  #handOverIdle(): void {
    if (this.#waits.size > 0 && !this.#closed) {
      quitIdleConnections(this.#transport, this.#waits.size);
    }
  }
}

/**
 * An address with an ASCII local part and an internationalised domain, with the domain in
 * its ASCII (punycode) form, so it needs no SMTPUTF8 upstream; other addresses unchanged.
 */
function asciiDomain(address: string): string {
  const at = address.lastIndexOf("@");
  if (at < 0 || !/[\u0080-\uffff]/.test(address.slice(at + 1))) return address;
  if (/[\u0080-\uffff]/.test(address.slice(0, at))) return address;
  const domain = domainToASCII(address.slice(at + 1));
  return domain ? `${address.slice(0, at)}@${domain}` : address;
}

/**
 * Opens a TCP socket to the provider under `permit`, which goes back when the socket
 * closes, whether it connected or not: exactly once, as a socket closes once. Connecting
 * may take `connectTimeoutMs` (TLS, greeting and login are nodemailer's to time). A
 * revoked permit destroys the socket.
 */
function openSocket(
  target: UpstreamTarget,
  permit: Permit,
  observer: UpstreamObserver,
  callback: (err: Error | null, socket?: net.Socket) => void,
): void {
  let socket: net.Socket;
  try {
    socket = net.connect({
      host: target.host,
      port: target.port,
      ...(target.sourceAddress ? { localAddress: target.sourceAddress } : {}),
    });
  } catch (err) {
    permit.release();
    return callback(err instanceof Error ? err : new Error(String(err)));
  }
  const revoke = () => socket.destroy(new Error("connection permit revoked"));
  permit.revoked.addEventListener("abort", revoke, { once: true });
  socket.once("close", () => {
    permit.revoked.removeEventListener("abort", revoke);
    permit.release();
  });
  if (permit.revoked.aborted) revoke();
  socket.setNoDelay(true);
  const timer = setTimeout(() => {
    const err = Object.assign(new Error("Connection timeout"), { code: "ETIMEDOUT" });
    socket.destroy(err);
  }, target.connectTimeoutMs);
  const fail = (err: Error) => {
    clearTimeout(timer);
    if (target.sourceAddress) {
      err.message = `from source address ${target.sourceAddress}: ${err.message}`;
    }
    callback(err);
  };
  socket.once("error", fail);
  socket.once("connect", () => {
    clearTimeout(timer);
    socket.off("error", fail);
    observer.connectionOpened();
    socket.once("close", () => observer.connectionClosed());
    callback(null, socket);
  });
}

function replyOf(err: NodemailerError): Reply | undefined {
  if (err.response) {
    const parsed = parseReply(err.response);
    if (parsed) return parsed;
  }
  if (err.responseCode) {
    return reply(err.responseCode, classEnhanced(err.responseCode), err.message);
  }
  return undefined;
}

function classify(err: unknown): UpstreamResult {
  if (err instanceof TokenUnavailable) return { kind: "token", error: err.reason };
  if (err instanceof MessageTooBig) {
    // nodemailer's own check against the SIZE the provider advertised: it never fits.
    const limit = err.limit ? ` (its limit: ${err.limit} bytes)` : "";
    return {
      kind: "rejected",
      reply: reply(552, "5.3.4", `Message too big for the provider${limit}`),
    };
  }
  const e = err as NodemailerError;
  const code = e?.responseCode;
  if (e?.code === "EAUTH") {
    // 535/534/530 (or no reply at all): the token was refused, after nodemailer's renewal.
    // Any other reply (Microsoft's 432 4.3.2 connection limit, say) is the provider's word.
    const r = replyOf(e);
    if (r && code !== undefined && code >= 400 && ![530, 534, 535].includes(code)) {
      return { kind: "rejected", reply: r };
    }
    return { kind: "auth", reply: r ?? reply(535, "5.7.8", "authentication failed") };
  }
  if ((e?.code === "EENVELOPE" || e?.code === "EMESSAGE") && code !== undefined && code >= 400) {
    const first = e.rejectedErrors?.length ? replyOf(e.rejectedErrors[0]) : undefined;
    const r = first ?? replyOf(e);
    if (r) return { kind: "rejected", reply: r };
  }
  // Connection, TLS (including a server without STARTTLS), greeting and protocol failures.
  const detail = [e?.code, e?.message?.split("\n")[0]].filter(Boolean).join(": ");
  return { kind: "unreachable", detail: detail || "connection failed" };
}
