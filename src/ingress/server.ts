/**
 * The SMTP listeners clients talk to (smtp-server): EHLO, STARTTLS / implicit TLS,
 * AUTH PLAIN/LOGIN, trusted networks, PROXY protocol, abuse limits, SIZE and recipient
 * limits. Every decision about accounts goes to the {@link Backend}.
 * @module
 */
import {
  SMTPServer,
  type SMTPServerDataStream,
  type SMTPServerOptions,
  type SMTPServerSession,
} from "smtp-server";
import type { AddressInfo, Socket } from "node:net";
import { getLogger } from "@logtape/logtape";
import type { Backend, IngressObserver, Session } from "./backend.ts";
import { isLoopback, NetworkList, unmapped } from "./network.ts";
import { AuthThrottle, ConnectionLimiter, type LimitOptions } from "./limits.ts";
import { recipientProblem } from "./address.ts";
import {
  type AccountAttempt,
  type AuthAttempt,
  AuthCutOff,
  FleetAccountGate,
} from "./auth_ledger.ts";
import { classifyRefusal, type ReplyReason } from "./replies.ts";
import { DEFAULTS } from "../config/defaults.ts";
import { isPositive, type Reply, reply } from "../smtp/reply.ts";
import { BodyIncomplete, MessageBody } from "../smtp/body.ts";
import {
  acceptProxyV2,
  attach,
  attached,
  beforeData,
  captureNew,
  coalesceWrites,
  type Connection,
  guardAuth,
  onTransactionReset,
  type OutgoingReply,
  sendReply,
  skipGreetingPause,
  watchCommands,
  watchReplies,
} from "../compat/smtp_server.ts";

/** One listening socket. */
export interface ListenerOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port (0: any free port). */
  readonly port: number;
  /** TLS from the first byte (465 style) instead of plaintext + STARTTLS. */
  readonly implicitTls: boolean;
  /** Networks whose clients may send without AUTH (account chosen by MAIL FROM). */
  readonly trustedNetworks: readonly string[];
  /** Addresses (exact) allowed to send a PROXY protocol header. */
  readonly proxyFrom: readonly string[];
}

/** Certificate and key, PEM. */
export interface TlsMaterial {
  /** Certificate chain. */
  readonly cert: string;
  /** Private key. */
  readonly key: string;
}

/** Settings of the SMTP ingress. */
export interface IngressOptions {
  /** The listeners; the first is the main (submission) one. */
  readonly listeners: readonly ListenerOptions[];
  /** Name in the banner and EHLO reply. */
  readonly name: string;
  /** Certificate for STARTTLS and implicit TLS; without it STARTTLS is not offered. */
  readonly tls?: TlsMaterial;
  /** Accept AUTH without TLS from non-loopback clients. */
  readonly allowPlaintextAuth: boolean;
  /** Largest message accepted, bytes; advertised as SIZE and enforced. */
  readonly maxMessageSize: number;
  /** Most recipients per message. */
  readonly maxRecipients: number;
  /** Abuse limits. */
  readonly limits: LimitOptions & {
    readonly maxUnauthenticatedCommands: number;
    readonly maxCommandLength: number;
    readonly idleTimeoutMs: number;
    readonly sessionTimeoutMs: number;
  };
  /** Receives what to do with each message. */
  readonly backend: Backend;
  /** Metrics hooks. */
  readonly observer?: IngressObserver;
  /**
   * The configured account a (lower-cased) AUTH username names, for log lines; without it
   * (or for a name that is no account) no username is ever logged: clients put passwords
   * there.
   */
  readonly accountName?: (username: string) => string | undefined;
  /** Called when a backend call throws (a bug) or a socket fails: for logging. */
  readonly onError?: (err: unknown) => void;
  /** SO_REUSEPORT on every listener (`--workers N`: N workers accept on one port). */
  readonly reusePort?: boolean;
}

/** The running listeners. */
export interface Ingress {
  /** Where each listener listens, in the order given. */
  readonly addresses: readonly { host: string; port: number }[];
  /** Replaces the certificate for new sessions; open sessions keep theirs. */
  updateTls(tls: TlsMaterial): void;
  /** Open client sessions. */
  readonly sessions: number;
  /**
   * Graceful stop: no new connections; idle sessions get `421 4.3.2`, and so does every
   * session right after the reply to its message; a message whose DATA was accepted (354)
   * finishes and its client gets the real reply, until `deadlineMs`. Then `atDeadline`
   * runs (the backend gives up on the messages it is delivering: their clients get its
   * reply), and a message still arriving is cut with `421 4.3.2` and a log line.
   * Resolves when every session is gone.
   */
  drain(deadlineMs: number, atDeadline?: () => void): Promise<void>;
  /** Stops listening and closes sessions at once. */
  close(): Promise<void>;
}

/** The ingress's state of one client, attached to smtp-server's session object. */
class Client {
  readonly connection: Connection;
  ip = "";
  trusted = false;
  /** Outside the AUTH-failure limits (trusted network or `authFailureExempt`). */
  exempt = false;
  /** Last sign of progress towards a login (connect, EHLO, RSET, STARTTLS, AUTH), ms. */
  lastActive = performance.now();
  /** An AUTH is being checked (or waits for its turn): not to be shed. */
  authenticating = false;
  /** The backend's session; opened once the client is admitted. */
  session?: Session;
  /** Logged in since the session (re)started. */
  authenticated = false;
  unauthenticatedRefusals = 0;
  timer?: ReturnType<typeof setTimeout>;
  /** Between DATA and the reply to it: the transaction the drain lets finish. */
  busy = false;
  /** While busy: the message is still arriving (not yet handed to the backend). */
  arriving?: SMTPServerDataStream;
  /** The command being answered (upper case) and, for MAIL and RCPT, its argument. */
  command = "";
  argument = "";
  /** Why the next refusal is sent, when the relay itself refuses (see {@link refuse}). */
  pending?: ReplyReason;
  /** The configured account the last AUTH named (only a configured one), for logs. */
  authAccount?: string;
  /** The client sent QUIT, or the relay sent a 421: the end is no aborted transaction. */
  ending = false;
  /** The client vanished mid-DATA (logged once): later replies are not refusals. */
  gone = false;
  /** From DATA to its reply: the message as it arrives, handed to the backend at DATA. */
  body?: MessageBody;
  /** From DATA to its reply: the backend's reply to the message (never rejects). */
  reply?: Promise<Reply>;

  constructor(connection: Connection) {
    this.connection = connection;
  }

  /** Sends a reply (a 421 also closes the connection), counted and logged as `reason`. */
  send(code: number, text: string, reason?: ReplyReason): void {
    this.pending = reason;
    sendReply(this.connection, code, text);
  }
}

const log = getLogger(["relay", "ingress"]);
const AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid");
const AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required");
const NEEDS_TLS = reply(
  538,
  "5.7.11",
  "Encryption required for requested authentication mechanism",
);
const THROTTLED = reply(421, "4.7.0", "Too many failed authentications, try again later");
const ACCOUNT_LOCKED = reply(
  454,
  "4.7.0",
  "Too many failed authentications for this account, try again later",
);
const IDLE_SHED = "4.4.2 Idle too long, closing";
const SESSION_LIMIT = "4.4.2 Session time limit exceeded, closing";
const SHUTTING_DOWN = reply(421, "4.3.2", "Service shutting down, try again later");
const LOCAL_ERROR = reply(451, "4.3.0", "Local error in processing, try again later");

/** An error smtp-server turns into a reply line. */
function smtpError(r: Reply): Error & { responseCode: number } {
  return Object.assign(new Error(`${r.enhanced} ${r.text}`), { responseCode: r.code });
}

/**
 * The error for a refusal the relay decides: `reason` is what the reply is counted and
 * logged as when it goes out (which happens within the callback it is passed to).
 */
function refuse(c: Client, reason: ReplyReason, r: Reply): Error & { responseCode: number } {
  c.pending = reason;
  return smtpError(r);
}

/** The client of a session; every callback after onConnect has one. */
function clientOf(session: SMTPServerSession): Client {
  return attached<Client>(session)!;
}

/**
 * smtp-server with each new connection prepared before smtp-server greets it: writes
 * coalesced, the relay's per-client state attached, transaction resets passed to the
 * backend's session, and the 100 ms early-talker pause skipped for clients that need no
 * such protection (loopback and trusted networks). Nothing in the library's files is
 * changed; the hooks live in `src/compat/smtp_server.ts`.
 */
class Listener extends SMTPServer {
  readonly #fast: (address: string) => boolean;
  readonly #prepare: (client: Client) => void;

  constructor(
    options: SMTPServerOptions,
    fast: (address: string) => boolean,
    prepare: (client: Client) => void,
  ) {
    super(options);
    this.#fast = fast;
    this.#prepare = prepare;
  }

  override connect(socket: Socket, socketOptions?: Parameters<SMTPServer["connect"]>[1]): void {
    // Replies are small writes: without this, Nagle holds one back until the client's
    // (delayed) ACK of the previous one arrives.
    socket.setNoDelay?.(true);
    coalesceWrites(socket);
    const connection = captureNew(this, () => super.connect(socket, socketOptions));
    if (!connection) return;
    const client = new Client(connection);
    attach(connection.session, client);
    onTransactionReset(connection, () => {
      client.lastActive = performance.now();
      if (client.authenticated && !connection.session.user) client.authenticated = false;
      client.session?.reset();
    });
    this.#prepare(client);
    if (this.#fast(connection.remoteAddress)) skipGreetingPause(connection);
  }
}

/** Starts the listeners. */
export async function startIngress(o: IngressOptions): Promise<Ingress> {
  const observer = o.observer;
  const limiter = new ConnectionLimiter(o.limits);
  const throttle = new AuthThrottle(o.limits);
  const cutOff = new AuthCutOff(o.limits);
  const accountGate = new FleetAccountGate(o.limits, DEFAULTS.authFailuresBeforeAccountLock);
  const authExempt = new NetworkList(o.limits.authFailureExempt ?? []);
  /** Admitted clients. */
  const clients = new Set<Client>();
  /** From this many open sessions on, a new client sheds an idle one (see {@link shed}). */
  const shedFrom = Math.ceil(
    o.limits.maxClients * (o.limits.idleShedPercent ?? DEFAULTS.idleShedPercent) / 100,
  );
  const shedIdleMs = (o.limits.idleShedSeconds ?? DEFAULTS.idleShedSeconds) * 1000;
  const servers: Listener[] = [];
  const goAheadMs = Math.min(GO_AHEAD_WAIT_MS, o.limits.idleTimeoutMs / 4);

  let draining = false;
  let drained: (() => void) | undefined;
  const checkDrained = () => {
    if (draining && clients.size === 0) drained?.();
  };
  /** The drain's deadline came while `c`'s message was still arriving, or with no reply. */
  const cutAtDeadline = (c: Client) => {
    const session = c.connection.session;
    const props = {
      ip: c.ip,
      account: session.user ?? "",
      from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
      bytes: c.arriving?.byteLength ?? 0,
    };
    if (c.arriving) {
      log.warn(
        "shutdown deadline: message from {ip} ({account} <{from}>) cut while arriving " +
          "({bytes} bytes so far): not delivered, the client got 421 4.3.2",
        props,
      );
    } else {
      // The backend had it and did not answer at its deadline: nothing is known of it here.
      log.warn(
        "shutdown deadline: message from {ip} ({account} <{from}>) had no reply: " +
          "outcome unknown, the client got 421 4.3.2",
        props,
      );
    }
    c.busy = false;
    c.send(SHUTTING_DOWN.code, formatText(SHUTTING_DOWN), "shutdown");
  };

  /** Says that AUTH as `username` is locked; names it only if it is a configured account. */
  const logLock = (username: string, failures: number, ip: string) => {
    const account = o.accountName?.(username);
    const props = { account, failures, ip, seconds: o.limits.authFailureWindowMs / 1000 };
    const why = "{failures} failed logins within {seconds} s, the last from {ip}";
    if (account) log.warn(`AUTH as {account} locked for {seconds} s: ${why}`, props);
    else if (o.accountName) {
      log.warn(
        `AUTH as a name that is no configured account locked for {seconds} s: ${why}`,
        props,
      );
    } else log.warn(`AUTH as one username (not logged) locked for {seconds} s: ${why}`, props);
  };

  /**
   * AUTH from this client would carry credentials in clear: no TLS yet, not loopback, not
   * on a trusted network, and `allowPlaintextAuth` is off. EHLO then offers no AUTH and
   * the AUTH command itself is refused (538 5.7.11) before any 334 prompt.
   */
  const needsTls = (c: Client): boolean =>
    !c.connection.session.secure && !o.allowPlaintextAuth && !c.trusted && !isLoopback(c.ip);

  /** One info line per refusal: the client, the account if known, the command, the reply. */
  const logRefusal = (c: Client, code: number, text: string, reason: ReplyReason) => {
    const connectionLevel = !c.command || CONNECTION_REASONS.has(reason);
    const command = connectionLevel ? "connection" : c.command;
    const address = !connectionLevel && c.argument ? addressOf(c.argument) : "";
    const user = c.connection.session.user;
    // Logged in: that account. A refused AUTH: the configured account it named, if any.
    const named = command === "AUTH" ? c.authAccount ?? "" : "";
    const account = typeof user === "string" ? user : named;
    const props = { ip: c.ip, account, command, address, reply: `${code} ${text}`, reason };
    const what = address ? "{command} {address}" : "{command}";
    const who = account ? "{ip} as {account}" : "{ip}";
    log.info(`refused ${what} from ${who}: {reply}`, props);
  };

  /** Every reply of every session passes here before it is written (see watchReplies). */
  const onReply = (c: Client, r: OutgoingReply) => {
    if (typeof r.text !== "string") {
      // EHLO's features: no AUTH where the AUTH command would be refused for want of TLS.
      if (r.code === 250 && needsTls(c)) {
        return { code: r.code, text: r.text.filter((line) => !/^AUTH\b/i.test(line)) };
      }
      return undefined;
    }
    if (r.code < 400) {
      c.pending = undefined;
      return undefined;
    }
    const refusal = classifyRefusal({ ...r, text: r.text }, c.command, c.argument, c.pending);
    c.pending = undefined;
    if (refusal.code === 421) c.ending = true;
    // A reply to a client that is gone already (its message cut off) is not a refusal.
    if (c.gone) return undefined;
    if (refusal.reason !== "message") observer?.refused(refusal.reason);
    logRefusal(c, refusal.code, refusal.text, refusal.reason);
    if (refusal.code === r.code && refusal.text === r.text) return undefined;
    return { code: refusal.code, text: refusal.text };
  };

  /** The client left without QUIT in the middle of a transaction: one info line. */
  const logAborted = (c: Client) => {
    if (c.ending || c.gone) return;
    const session = c.connection.session;
    const user = session.user;
    const props = {
      ip: c.ip,
      account: typeof user === "string" ? user : "",
      from: session.envelope?.mailFrom ? session.envelope.mailFrom.address : "",
      recipients: session.envelope?.rcptTo?.length ?? 0,
      command: c.command,
    };
    if (c.busy) {
      log.info(
        "client {ip} ({account} <{from}>) left before the reply to its message: " +
          "the relay still finishes it and logs its outcome",
        props,
      );
    } else if (session.envelope?.mailFrom) {
      log.info(
        "client {ip} ({account} <{from}>) left after {command} with {recipients} recipients " +
          "and no message: transaction aborted",
        props,
      );
    }
  };

  /** The client vanished while its message was arriving: not delivered, one info line. */
  const logCutOff = (c: Client, bytes: number) => {
    c.gone = true;
    const session = c.connection.session;
    const user = session.user;
    log.info(
      "client {ip} ({account} <{from}>) left during DATA after {bytes} bytes: " +
        "transaction aborted, message not delivered",
      {
        ip: c.ip,
        account: typeof user === "string" ? user : "",
        from: session.envelope?.mailFrom ? session.envelope.mailFrom.address : "",
        bytes,
      },
    );
  };

  /** The relay's hooks on a new connection, before smtp-server greets it. */
  const prepare = (c: Client) => {
    // For refusals before onConnect (an early talker); onConnect sets it again (PROXY).
    c.ip = unmapped(c.connection.remoteAddress ?? "");
    watchCommands(c.connection, (name, argument) => {
      c.command = name;
      c.argument = argument;
      if (name === "QUIT") c.ending = true;
    });
    guardAuth(c.connection, () => {
      if (!needsTls(c)) return undefined;
      c.pending = "auth_plaintext";
      return { code: NEEDS_TLS.code, text: formatText(NEEDS_TLS) };
    });
    watchReplies(c.connection, (r) => onReply(c, r));
  };

  /** Forgets an admitted client (once): its capacity is free from now on. */
  const release = (c: Client) => {
    if (!clients.delete(c)) return;
    clearTimeout(c.timer);
    limiter.release(c.ip);
    observer?.sessionClosed();
    c.body?.fail(new BodyIncomplete("gone", "the client went away before the end of the message"));
    try {
      c.session?.logout();
    } catch (err) {
      o.onError?.(err);
    }
    checkDrained();
  };

  /**
   * Closes the session idle longest among those that have not logged in (not trusted, no
   * AUTH under way, so none in a transaction) if it has been idle `minIdleMs`. Its capacity
   * is free at once. True if one was closed.
   */
  const shed = (minIdleMs: number): boolean => {
    let idlest: Client | undefined;
    for (const c of clients) {
      if (c.authenticated || c.trusted || c.authenticating || c.busy) continue;
      if (!idlest || c.lastActive < idlest.lastActive) idlest = c;
    }
    if (!idlest || performance.now() - idlest.lastActive < minIdleMs) return false;
    log.debug("closed an idle session from {ip} that had not logged in: {open} sessions open", {
      ip: idlest.ip,
      open: limiter.total,
    });
    idlest.send(421, IDLE_SHED, "idle_shed");
    release(idlest);
    return true;
  };

  for (const l of o.listeners) {
    const trusted = new NetworkList(l.trustedNetworks);
    const options: SMTPServerOptions = {
      name: o.name,
      banner: "OAuth2 relay",
      disableReverseLookup: true,
      size: o.maxMessageSize,
      authMethods: ["PLAIN", "LOGIN"],
      authRequiredMessage: `${AUTH_REQUIRED.enhanced} ${AUTH_REQUIRED.text}`,
      // With trusted networks, MAIL without AUTH must reach onMailFrom, which decides.
      authOptional: l.trustedNetworks.length > 0,
      // Plaintext AUTH is refused in onAuth (538), with loopback excepted.
      allowInsecureAuth: true,
      secure: l.implicitTls,
      ...(o.tls ? { key: o.tls.key, cert: o.tls.cert, minVersion: "TLSv1.2" as const } : {}),
      disabledCommands: o.tls ? [] : ["STARTTLS"],
      useProxy: l.proxyFrom.length > 0 ? (l.proxyFrom as string[]) : false,
      maxAllowedUnauthenticatedCommands: o.limits.maxUnauthenticatedCommands,
      maxCommandLength: o.limits.maxCommandLength,
      socketTimeout: o.limits.idleTimeoutMs,
      closeTimeout: 1_000,
      logger: false,

      onConnect(session, callback) {
        const c = clientOf(session);
        c.ip = unmapped(session.remoteAddress);
        c.trusted = trusted.has(c.ip);
        c.exempt = c.trusted || authExempt.has(c.ip);
        if (draining) return callback(refuse(c, "shutdown", SHUTTING_DOWN));
        // Under pressure, idle sessions that have not logged in make room for new clients:
        // from `idleShedPercent` one idle `idleShedSeconds`, at the cap the idlest one.
        const open = limiter.total;
        let admitted = limiter.admit(c.ip, c.trusted);
        if (admitted === "clients") {
          if (shed(0)) admitted = limiter.admit(c.ip, c.trusted);
        } else if (admitted === "ok" && open >= shedFrom) {
          shed(shedIdleMs);
        }
        if (admitted !== "ok") {
          const why = admitted === "ip" ? "from your address" : "";
          const r = reply(421, "4.7.0", `Too many connections ${why}`.trim());
          return callback(refuse(c, admitted === "ip" ? "per_ip" : "clients", r));
        }
        try {
          c.session = o.backend.newSession({ address: c.ip, trusted: c.trusted });
        } catch (err) {
          limiter.release(c.ip);
          o.onError?.(err);
          const r = reply(421, "4.3.0", "Local error in processing, try later");
          return callback(refuse(c, "local_error", r));
        }
        beforeData(c.connection, (proceed) => beginData(c, proceed, goAheadMs, o.onError));
        clients.add(c);
        observer?.sessionOpened();
        c.timer = setTimeout(
          () => c.send(421, SESSION_LIMIT, "session_timeout"),
          o.limits.sessionTimeoutMs,
        );
        callback();
      },

      onClose(session) {
        const c = attached<Client>(session);
        if (!c) return;
        logAborted(c);
        release(c);
      },

      onAuth(auth, session, callback) {
        const c = clientOf(session);
        // Refused at the AUTH command already (guardAuth); this is the backstop.
        if (needsTls(c)) return callback(refuse(c, "auth_plaintext", NEEDS_TLS));
        const username = (auth.username ?? "").trim().toLowerCase();
        c.authAccount = o.accountName?.(username);
        c.authenticating = true;
        c.lastActive = performance.now();
        // Trusted networks and `authFailureExempt` are not cut off (one broken local app must
        // not lock out the others); their failures are still tarpitted per account. Others
        // take a slot of the per-IP limit before the check, in one step with the verdict
        // (across instances too): a failure keeps it, anything else gives it back.
        let attempt: AuthAttempt | undefined;
        let strike: AccountAttempt | undefined;
        const admitted = c.exempt ? Promise.resolve(undefined) : cutOff.admit(c.ip);
        // An account that failed too often is locked for clients that are not exempt: they
        // are refused without a password check, so a guess cannot succeed during the lock.
        // This instance's turn first, then the fleet's (judged and counted in one step).
        const turn = admitted.then(async (a) => {
          attempt = a;
          if (!c.exempt && !a) return "cut off" as const;
          if (c.exempt) return "check" as const;
          const local = await throttle.begin(username);
          if (local !== "check") return local;
          const fleet = await accountGate.admit(username);
          if (fleet === "locked") throttle.checked(username);
          else strike = fleet;
          return fleet === "locked" ? fleet : local;
        });
        turn.then((decision) => {
          if (decision === "cut off") {
            c.authenticating = false;
            log.warn("too many failed authentications from {ip}: disconnected", { ip: c.ip });
            return callback(refuse(c, "auth_throttled", THROTTLED)); // 421: the session ends
          }
          if (decision === "locked") {
            attempt?.forgive(); // no password checked: nothing counts
            c.authenticating = false;
            return callback(refuse(c, "auth_account_locked", ACCOUNT_LOCKED));
          }
          const done = () => {
            c.authenticating = false;
            c.lastActive = performance.now();
            if (!c.exempt) throttle.checked(username);
          };
          // Gone while waiting for its turn: the backend's session is logged out already.
          if (!clients.has(c)) {
            attempt?.forgive();
            strike?.forgive();
            return done();
          }
          c.session!.auth(auth.username ?? "", auth.password ?? "").then((ok) => {
            if (ok) {
              attempt?.forgive();
              strike?.forgive();
              done();
              c.authenticated = true;
              return callback(null, { user: username });
            }
            // Tarpit: the failure reply waits, a correct login never does.
            attempt?.failed();
            const failure = throttle.failed(c.ip, username, c.exempt);
            done();
            if (failure.locked) logLock(username, failure.strikes, c.ip);
            // The fleet's lock: logged by the instance whose strike set it.
            strike?.failed().then((f) => {
              if (f?.locked && !failure.locked) logLock(username, f.strikes, c.ip);
            });
            const delayMs = failure.delayMs;
            if (delayMs > 0) setTimeout(() => callback(refuse(c, "auth", AUTH_FAILED)), delayMs);
            else callback(refuse(c, "auth", AUTH_FAILED));
          }, (err) => {
            attempt?.forgive();
            strike?.forgive();
            done();
            o.onError?.(err);
            const r = reply(454, "4.7.0", "Temporary authentication failure");
            callback(refuse(c, "local_error", r));
          });
        });
      },

      onMailFrom(address, session, callback) {
        const c = clientOf(session);
        if (!c.authenticated && !c.trusted) {
          if (++c.unauthenticatedRefusals >= o.limits.maxUnauthenticatedCommands) {
            const r = reply(421, "4.7.0", "Too many unauthenticated commands");
            return callback(refuse(c, "unauthenticated", r));
          }
          return callback(refuse(c, "unauthenticated", AUTH_REQUIRED));
        }
        c.session!.mail(address.address ?? "", c.authenticated).then((refused) => {
          if (!refused) return callback();
          callback(refuse(c, "sender", refused));
        }, (err) => {
          o.onError?.(err);
          callback(refuse(c, "local_error", LOCAL_ERROR));
        });
      },

      onRcptTo(address, session, callback) {
        const c = clientOf(session);
        const lower = address.address.toLowerCase();
        // A repeated recipient is not a new one (smtp-server drops the duplicate).
        if (session.envelope.rcptTo.some((r) => r.address.toLowerCase() === lower)) {
          return callback();
        }
        const problem = recipientProblem(address.address);
        if (problem) {
          return callback(refuse(c, "recipient_syntax", reply(550, "5.1.3", problem)));
        }
        if (session.envelope.rcptTo.length >= o.maxRecipients) {
          const r = reply(452, "4.5.3", `Too many recipients (at most ${o.maxRecipients})`);
          return callback(refuse(c, "recipients", r));
        }
        c.session!.rcpt(address.address).then((refused) => {
          if (!refused) return callback();
          callback(refuse(c, "recipient", refused));
        }, (err) => {
          o.onError?.(err);
          callback(refuse(c, "local_error", LOCAL_ERROR));
        });
      },

      onData(stream_, session, reply_) {
        // smtp-server calls this when it accepts DATA, before it sends the 354: from here
        // on the client may send the message, so the drain lets the transaction finish.
        // The backend has had the message since the DATA command (beginData).
        const c = clientOf(session);
        const stream = stream_ as SMTPServerDataStream;
        if (!c.body || !c.reply) beginData(c, () => {}, 0, o.onError);
        const body = c.body!;
        const pending = c.reply!;
        c.busy = true;
        c.arriving = stream;
        const callback: typeof reply_ = (err, message) => {
          c.busy = false;
          c.arriving = undefined;
          c.body = undefined;
          c.reply = undefined;
          // The stream has ended (read to its end, or destroyed), so smtp-server writes the
          // reply within this call, then reads on: a command pipelined after the message is
          // dispatched, but a DATA cannot be, since MAIL and RCPT answer asynchronously.
          reply_(err, message);
          // A draining relay ends the session right after the reply, in the same turn: a
          // later 421 (a timer) could reach a client that meanwhile had its next message
          // accepted and sent, and that message would be delivered after a 421.
          const closed = (err as { responseCode?: number } | null)?.responseCode === 421;
          if (draining && !c.busy && !closed) {
            c.send(SHUTTING_DOWN.code, formatText(SHUTTING_DOWN), "shutdown");
          }
        };
        // The bytes go to the backend as they arrive; over the size limit the message is
        // given up at once (never completed upstream) and the rest is read and dropped.
        stream.on("data", (chunk: Uint8Array) => {
          if (stream.sizeExceeded) {
            body.fail(new BodyIncomplete("size", "the message exceeds the size limit"));
          } else body.push(chunk);
        });
        // The client went away mid-message (smtp-server destroys the stream): never complete.
        stream.once("error", (err) => {
          if ((err as { code?: string }).code === "ECONNECTION") {
            logCutOff(c, stream.byteLength ?? 0);
          }
          o.onError?.(err);
          body.fail(
            new BodyIncomplete("gone", "the client went away before the end of the message"),
          );
        });
        stream.once("end", () => {
          c.arriving = undefined;
          if (stream.sizeExceeded) {
            body.fail(new BodyIncomplete("size", "the message exceeds the size limit"));
            return callback(refuse(
              c,
              "size",
              reply(
                552,
                "5.3.4",
                `Message exceeds fixed maximum message size of ${o.maxMessageSize} bytes`,
              ),
            ));
          }
          body.end();
          pending.then((r) => {
            if (isPositive(r)) callback(null, formatText(r));
            else callback(refuse(c, "message", r));
          });
        });
      },
    };
    const fast = (address: string) => isLoopback(address) || trusted.has(address);
    const server = new Listener(options, fast, prepare);
    // PROXY v2 (HAProxy send-proxy-v2) besides smtp-server's own v1, from listed proxies.
    if (l.proxyFrom.length > 0) acceptProxyV2(server);
    // A failed TLS handshake or a reset socket must not take the process down.
    server.on("error", (err) => o.onError?.(err));
    servers.push(server);
  }

  const addresses: { host: string; port: number }[] = [];
  try {
    for (const [i, server] of servers.entries()) {
      const l = o.listeners[i];
      await new Promise<void>((ok, fail) => {
        server.server.once("error", fail);
        server.listen({ port: l.port, host: l.host, reusePort: o.reusePort === true }, () => {
          server.server.off("error", fail);
          ok();
        });
      });
      const bound = server.server.address() as AddressInfo;
      addresses.push({ host: bound.address, port: bound.port });
    }
  } catch (err) {
    await Promise.all(servers.map((s) => closeServer(s)));
    throw err;
  }
  return {
    addresses,
    updateTls(tls) {
      for (const server of servers) {
        server.updateSecureContext({ key: tls.key, cert: tls.cert, minVersion: "TLSv1.2" });
      }
    },
    get sessions() {
      return clients.size;
    },
    async drain(deadlineMs, atDeadline) {
      draining = true;
      const done = new Promise<void>((ok) => drained = ok);
      for (const server of servers) server.server.close();
      for (const c of clients) {
        if (!c.busy) c.send(SHUTTING_DOWN.code, formatText(SHUTTING_DOWN), "shutdown");
      }
      checkDrained();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const deadline = new Promise<"deadline">((ok) =>
        timer = setTimeout(ok, deadlineMs, "deadline")
      );
      const ended = await Promise.race([done, deadline]);
      clearTimeout(timer);
      if (ended === "deadline" && clients.size > 0) {
        // Messages being delivered: the backend gives up on them and their replies go out
        // (within this turn's promise jobs, so one timer turn later they are written).
        atDeadline?.();
        await new Promise((ok) => setTimeout(ok, 0));
        for (const c of clients) if (c.busy) cutAtDeadline(c);
      }
      await Promise.all(servers.map((s) => closeServer(s)));
    },
    close: () => Promise.all(servers.map((s) => closeServer(s))).then(() => {}),
  };
}

/** Refusals that end or refuse the whole session rather than answer its last command. */
const CONNECTION_REASONS = new Set<ReplyReason>([
  "clients",
  "per_ip",
  "idle_timeout",
  "session_timeout",
  "idle_shed",
  "shutdown",
  "early_talker",
  "line_too_long",
]);

/** The address in a MAIL/RCPT argument (`FROM:<a@b> SIZE=1` → `<a@b>`), for logs. */
function addressOf(argument: string): string {
  const m = /<[^>]*>/.exec(argument);
  const text = m ? m[0] : argument.replace(/^(FROM|TO):/i, "").split(" ")[0];
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x1f\x7f]/g, "?").slice(0, 256);
}

/** A reply's text as smtp-server sends it after the code: `enhanced text`. */
function formatText(r: Reply): string {
  return `${r.enhanced} ${r.text}`;
}

/** smtp-server's close: stop listening, then end every remaining session. */
function closeServer(server: SMTPServer): Promise<void> {
  return new Promise<void>((ok) => server.close(() => ok()));
}

/**
 * Longest the 354 waits for the backend's go-ahead (the provider's own 354), ms; at most a
 * quarter of the idle timeout, so a client never sits near its idle limit before the 354.
 */
export const GO_AHEAD_WAIT_MS = 1_000;

/**
 * DATA: hands the backend the message that is about to arrive, then lets smtp-server go on
 * (its 354) once the backend wants the bytes (the provider said 354), or has answered
 * already, or after {@link GO_AHEAD_WAIT_MS}: the client's message then starts when the
 * provider can take it, and its final dot is followed by the provider's at once.
 */
function beginData(
  c: Client,
  proceed: () => void,
  waitMs: number,
  onError?: (err: unknown) => void,
): void {
  const session = c.session;
  if (!session) return proceed();
  const body = new MessageBody();
  const args = c.connection.session.envelope.mailFrom
    ? (c.connection.session.envelope.mailFrom.args as Record<string, string> | false)
    : false;
  const declared = args && Number(args.SIZE);
  c.busy = true;
  c.body = body;
  let answer: Promise<Reply>;
  try {
    answer = session.data(body, declared && declared > 0 ? declared : undefined);
  } catch (err) {
    answer = Promise.reject(err);
  }
  c.reply = answer.catch((err) => {
    onError?.(err);
    return LOCAL_ERROR;
  });
  const timer = setTimeout(proceed, waitMs);
  const go = () => {
    clearTimeout(timer);
    proceed();
  };
  body.wanted.then(go);
  c.reply.then(go);
}
