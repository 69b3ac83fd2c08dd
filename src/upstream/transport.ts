/**
 * How an account's mail leaves the relay: SMTP (the nodemailer pool, the default), or
 * over HTTPS through Microsoft Graph's `sendMail` or the Gmail API's `messages.send`.
 * Every transport takes an {@link OutgoingMessage} and answers an {@link UpstreamResult},
 * so the relay's replies, quotas and deadlines are the same whatever the transport;
 * {@link createTransport} is the one place that picks it.
 *
 * The HTTPS transports (`http_transport.ts`) share: the envelope stays authoritative
 * (see `mime.ts` {@link envelopePlan}: header recipients outside the envelope are refused
 * with `550 5.7.1`, envelope recipients missing from the header go as `Bcc:`), size
 * limits decided before sending (`552 5.3.4`), at most `maxConnections` requests per
 * mailbox at once (the account's connection permits), one token refresh and one retry
 * on 401, throttling (429, or 503 with Retry-After) answered `451 4.7.0` naming the time
 * and held until then without asking the API again, a timeout per request, keep-alive
 * connections, and the request body built once.
 * @module
 */
import {
  type OutgoingMessage,
  type TokenProvider,
  type UpstreamObserver,
  UpstreamPool,
  type UpstreamResult,
  type UpstreamTarget,
} from "./pool.ts";
import type { ConnectionPermits } from "./permits.ts";
import { HttpTransport, type HttpTransportOptions } from "./http_transport.ts";
import { graphApi } from "./graph.ts";
import { gmailApi } from "./gmail_api.ts";

/** The transports an account can use. */
export type TransportKind = "smtp" | "graph" | "gmail-api";

/** An account's transport, resolved from its config. */
export type TransportSettings =
  | { readonly kind: "smtp" }
  | {
    readonly kind: "graph";
    /** Graph's base URL (`https://graph.microsoft.com`; the sandbox's on loopback). */
    readonly apiUrl: string;
    /** Graph's request size limit, bytes of the base64 body (4 MiB). */
    readonly maxRequestBytes: number;
    /** A copy lands in Sent Items: always, for a MIME sendMail (see docs/https-transports.md). */
    readonly saveToSentItems: true;
  }
  | {
    readonly kind: "gmail-api";
    /** The Gmail API's base URL (`https://gmail.googleapis.com`; the sandbox's on loopback). */
    readonly apiUrl: string;
    /** The Gmail API's message size limit, bytes (35 MB). */
    readonly maxMessageBytes: number;
    /** Messages larger than this go through the media upload endpoint, bytes. */
    readonly mediaAbove: number;
  };

/** What the relay needs of a transport: {@link UpstreamPool}'s shape. */
export interface Transport {
  /** Which one it is (metrics, status). */
  readonly kind: TransportKind;
  /** Sends one message; never throws. */
  send(message: OutgoingMessage): Promise<UpstreamResult>;
  /**
   * Proves the account can send without sending anything (`check --smtp`): SMTP logs in;
   * HTTPS posts an empty message, which a working token gets a 400 for.
   */
  verify(): Promise<UpstreamResult>;
  /** Connections (SMTP) or requests (HTTPS) open now. */
  readonly openConnections: number;
  /** Says goodbye to idle connections and closes (shutdown). */
  quit(): Promise<void>;
  /** Lets up to `max` (default all) idle connections go; stays usable. */
  quitIdle(max?: number): void;
  /** Closes at once. */
  close(): void;
}

/** Metrics of the transports (implemented by `Metrics`). */
export interface TransportObserver {
  /** One HTTPS request ended: its status (`202`, `429`, …, or `error`, `timeout`). */
  httpRequestDone(transport: TransportKind, status: string, seconds: number): void;
  /** One message (or report) left a transport with this outcome. */
  deliveryDone(transport: TransportKind, result: UpstreamResult["kind"]): void;
}

/** True when `o` has the {@link TransportObserver} hooks. */
export function isTransportObserver(o: unknown): o is TransportObserver {
  return typeof o === "object" && o !== null && "httpRequestDone" in o && "deliveryDone" in o;
}

/** Options of {@link createTransport}. */
export interface TransportDeps {
  /** The account's connection permits. */
  readonly permits: ConnectionPermits;
  /** Socket counting (SMTP) and transport metrics (HTTPS; when it has the hooks). */
  readonly observer?: UpstreamObserver;
}

/**
 * The one place that picks an account's transport: an SMTP pool for `smtp`, an
 * {@link HttpTransport} over Graph or the Gmail API otherwise.
 */
export function createTransport(
  settings: TransportSettings,
  target: UpstreamTarget,
  tokens: TokenProvider,
  deps: TransportDeps,
): Transport {
  if (settings.kind === "smtp") {
    const pool = new UpstreamPool(target, tokens, deps.observer, deps.permits);
    return Object.assign(pool, { kind: "smtp" as const });
  }
  const options: HttpTransportOptions = {
    user: target.user,
    maxConnections: target.maxConnections,
    permits: deps.permits,
    ca: target.ca,
    observer: isTransportObserver(deps.observer) ? deps.observer : undefined,
  };
  if (settings.kind === "graph") {
    return new HttpTransport(graphApi(settings), tokens, options);
  }
  return new HttpTransport(gmailApi(settings), tokens, options);
}
