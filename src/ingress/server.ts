/**
 * The SMTP listener clients talk to (smtp-server): EHLO, AUTH PLAIN/LOGIN, SIZE and
 * recipient limits. Every message goes to a {@link Backend}, whose reply the client gets.
 * @module
 */
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from "smtp-server";
import type { AddressInfo } from "node:net";
import type { Backend, IngressObserver, Principal } from "./backend.ts";
import { isPositive, type Reply, reply } from "../smtp/reply.ts";

/** Settings of the SMTP listener. */
export interface IngressOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port to listen on (0: any free port). */
  readonly port: number;
  /** Name in the banner and EHLO reply. */
  readonly name: string;
  /** Largest message accepted, bytes; advertised as SIZE and enforced. */
  readonly maxMessageSize: number;
  /** Most recipients per message. */
  readonly maxRecipients: number;
  /** Idle client timeout, ms. */
  readonly idleTimeoutMs: number;
  /** Receives what to do with each message. */
  readonly backend: Backend;
  /** Metrics hooks. */
  readonly observer?: IngressObserver;
  /** Called when a backend call throws (a bug): for logging. */
  readonly onError?: (err: unknown) => void;
}

/** A running listener. */
export interface Ingress {
  /** Where it listens. */
  readonly address: { host: string; port: number };
  /** Stops listening and closes sessions. */
  close(): Promise<void>;
}

const AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid");
const AUTH_REQUIRED = "5.7.0 Authentication required";

/** An error smtp-server turns into a reply line. */
function smtpError(r: Reply): Error & { responseCode: number } {
  return Object.assign(new Error(`${r.enhanced} ${r.text}`), { responseCode: r.code });
}

/** Starts the SMTP listener. */
export async function startIngress(o: IngressOptions): Promise<Ingress> {
  const observer = o.observer;
  const server = new SMTPServer({
    name: o.name,
    banner: "ESMTP OAuth2 relay",
    disableReverseLookup: true,
    size: o.maxMessageSize,
    authMethods: ["PLAIN", "LOGIN"],
    authRequiredMessage: AUTH_REQUIRED,
    // Client TLS is not configured yet: STARTTLS is not offered, AUTH works in plaintext.
    disabledCommands: ["STARTTLS"],
    allowInsecureAuth: true,
    socketTimeout: o.idleTimeoutMs,
    logger: false,
    onConnect(_session, callback) {
      observer?.sessionOpened();
      callback();
    },
    onClose() {
      observer?.sessionClosed();
    },
    onAuth(auth, session, callback) {
      const address = session.remoteAddress;
      o.backend.authenticate(auth.username ?? "", auth.password ?? "", { address }).then(
        (principal) => {
          if (principal) return callback(null, { user: principal });
          observer?.refused("auth");
          callback(smtpError(AUTH_FAILED));
        },
        (err) => {
          o.onError?.(err);
          callback(smtpError(reply(454, "4.7.0", "Temporary authentication failure")));
        },
      );
    },
    onRcptTo(_address, session, callback) {
      if (session.envelope.rcptTo.length >= o.maxRecipients) {
        observer?.refused("recipients");
        return callback(
          smtpError(reply(452, "4.5.3", `Too many recipients (at most ${o.maxRecipients})`)),
        );
      }
      callback();
    },
    onData(stream, session, callback) {
      collect(stream).then((message) => {
        if ((stream as SMTPServerDataStream).sizeExceeded) {
          observer?.refused("size");
          return callback(smtpError(reply(
            552,
            "5.3.4",
            `Message exceeds fixed maximum message size of ${o.maxMessageSize} bytes`,
          )));
        }
        return deliver(o, session, message).then((r) => {
          if (isPositive(r)) callback(null, `${r.enhanced} ${r.text}`);
          else callback(smtpError(r));
        });
      }).catch((err) => {
        o.onError?.(err);
        callback(smtpError(reply(451, "4.3.0", "Local error in processing, try again later")));
      });
    },
  });
  server.on("error", (err) => o.onError?.(err));
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(o.port, o.host, () => {
      server.off("error", fail);
      ok();
    });
  });
  const bound = server.server.address() as AddressInfo;
  return {
    address: { host: bound.address, port: bound.port },
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  };
}

function deliver(o: IngressOptions, session: SMTPServerSession, message: Uint8Array) {
  const envelope = session.envelope;
  const from = envelope.mailFrom ? envelope.mailFrom.address : "";
  return o.backend.deliver(session.user as unknown as Principal, {
    from,
    to: envelope.rcptTo.map((r) => r.address),
    message,
  });
}

/** Reads the DATA stream into one buffer (drained to the end even when oversized). */
async function collect(stream: SMTPServerDataStream): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let length = 0;
  let keep = true;
  for await (const chunk of stream as AsyncIterable<Uint8Array>) {
    if (keep && (stream as SMTPServerDataStream).sizeExceeded) {
      keep = false;
      chunks.length = 0;
    }
    if (keep) {
      chunks.push(chunk);
      length += chunk.length;
    }
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
