/**
 * The machinery Graph and the Gmail API share (see `transport.ts` for what it promises):
 * request slots from the account's permits, a bearer token with one refresh and one
 * retry on 401, a throttled mailbox held until the time the API named, a timeout per
 * request, keep-alive connections (one `Deno.HttpClient` per transport), the body built
 * once. What differs per API is an {@link HttpApi} (`graph.ts`, `gmail_api.ts`).
 * @module
 */
import { Buffer } from "node:buffer";
import { type Reply, reply } from "../smtp/reply.ts";
import { concatChunks } from "../smtp/body.ts";
import { clip } from "../text.ts";
import {
  DEFAULT_PERMIT_WAIT_MS,
  type OutgoingMessage,
  type TokenProvider,
  type UpstreamResult,
} from "./pool.ts";
import type { ConnectionPermits } from "./permits.ts";
import { bccLine, envelopePlan, headerLength } from "./mime.ts";
import type { Transport, TransportObserver } from "./transport.ts";

/** Longest wait for one HTTPS answer, ms. */
export const DEFAULT_HTTP_TIMEOUT_MS = 60_000;
/** How long a throttled mailbox is held when the API named no time (429 without Retry-After), ms. */
export const DEFAULT_THROTTLE_HOLD_MS = 60_000;

/** One request an API wants, built once per message. */
export interface ApiRequest {
  /** Full URL. */
  readonly url: string;
  /** Headers besides Authorization. */
  readonly headers: Record<string, string>;
  /** The body (one encoded copy of the message at most). */
  readonly body: BodyInit;
}

/** An API error as the transports read it from the answer. */
export interface ApiError {
  /** HTTP status. */
  readonly status: number;
  /** The API's error code (Graph `error.code`, Google `errors[0].reason` or `error.status`). */
  readonly code: string;
  /** The API's message, one line, clipped. */
  readonly message: string;
  /** When the API said to come back (Retry-After), ms since the epoch. */
  readonly retryAt?: number;
}

/** What distinguishes Graph from the Gmail API; see `graph.ts` and `gmail_api.ts`. */
export interface HttpApi {
  /** `graph` or `gmail-api`. */
  readonly kind: "graph" | "gmail-api";
  /** The API's name in replies: "Microsoft Graph", "the Gmail API". */
  readonly name: string;
  /** The refusal for a message of `bytes` (with its Bcc line), if too big to send. */
  tooBig(bytes: number): Reply | undefined;
  /** The send request for the message `prefix` + `message` of mailbox `user`. */
  request(user: string, prefix: Uint8Array, message: Payload): ApiRequest;
  /** A request that sends nothing (an empty message) but needs a working token. */
  probe(user: string): ApiRequest;
  /** The reply for a successful answer (`body` read as text). */
  accepted(status: number, body: string): Reply;
  /**
   * The outcome of a refusal that is not throttling and not a 401: the API's own codes
   * mapped to SMTP replies (sender refused → 550 5.7.1, too big → 552 5.3.4, …).
   */
  refused(error: ApiError): UpstreamResult;
  /** True when this answer means "slow down" (429; Gmail's 403 rate limit reasons). */
  throttled(error: ApiError): boolean;
}

/** Options of {@link HttpTransport}. */
export interface HttpTransportOptions {
  /** The mailbox. */
  readonly user: string;
  /** Most requests at once (the account's connection permits cap them across runtimes). */
  readonly maxConnections: number;
  /** Where the permits come from (shared by every runtime of the address). */
  readonly permits: ConnectionPermits;
  /** Extra CA certificates (PEM), replacing the system's: the sandbox only. */
  readonly ca?: string;
  /** Longest wait for one answer, ms (default {@link DEFAULT_HTTP_TIMEOUT_MS}). */
  readonly timeoutMs?: number;
  /** Longest wait for a request slot, ms (default {@link DEFAULT_PERMIT_WAIT_MS}). */
  readonly permitWaitMs?: number;
  /** Metrics. */
  readonly observer?: TransportObserver;
}

/** Graph or the Gmail API behind the {@link Transport} interface. */
export class HttpTransport implements Transport {
  readonly kind: "graph" | "gmail-api";
  readonly #api: HttpApi;
  readonly #options: HttpTransportOptions;
  readonly #tokens: TokenProvider;
  readonly #client: Deno.HttpClient;
  /** Requests may not be sent before this (the API throttled the mailbox), ms epoch. */
  #holdUntil = 0;
  #holdReply?: Reply;
  #open = 0;
  #closed = false;
  /** Status of the latest answer (for {@link verify}). */
  #lastStatus = 0;

  /** Creates the transport; nothing connects until the first message. */
  constructor(api: HttpApi, tokens: TokenProvider, options: HttpTransportOptions) {
    this.kind = api.kind;
    this.#api = api;
    this.#tokens = tokens;
    this.#options = options;
    // One client per transport: keep-alive connections to the API, at most as many idle
    // ones as requests may run at once.
    this.#client = Deno.createHttpClient({
      ...(options.ca ? { caCerts: [options.ca] } : {}),
      poolMaxIdlePerHost: options.maxConnections,
      poolIdleTimeout: 30_000,
    });
  }

  /** Requests in flight now. */
  get openConnections(): number {
    return this.#open;
  }

  /** See {@link Transport.send}. */
  async send(message: OutgoingMessage): Promise<UpstreamResult> {
    const signal = message.signal;
    if (signal?.aborted) return { kind: "abandoned", endSent: false };
    // An API request needs the whole message: it waits for the client's final dot. A body
    // that never completes (client gone, over the size limit) is never sent.
    message.body.want(); // the client may send its body now (no upstream 354 to wait for)
    let payload: Payload;
    try {
      payload = new Payload(await message.body.parts());
    } catch {
      return { kind: "abandoned", endSent: false };
    }
    if (signal?.aborted) return { kind: "abandoned", endSent: false };
    const header = payload.header();
    const plan = envelopePlan(header, message.to);
    if (!plan.ok) {
      return { kind: "rejected", reply: strangersReply(this.#api.name, plan.strangers) };
    }
    const prefix = bccLine(plan.bcc, header);
    const tooBig = this.#api.tooBig(prefix.length + payload.length);
    if (tooBig) return { kind: "rejected", reply: tooBig };
    const held = this.#held();
    if (held) return held;
    const request = this.#api.request(this.#options.user, prefix, payload);
    return await this.#exchange(request, message);
  }

  /**
   * See {@link Transport.verify}: an empty message, refused with 400 when the token and the
   * mailbox work (any other answer is reported as it is).
   */
  async verify(): Promise<UpstreamResult> {
    this.#lastStatus = 0;
    const r = await this.#exchange(this.#api.probe(this.#options.user), undefined);
    if (r.kind === "rejected" && this.#lastStatus === 400) {
      // The API read the (empty) message and refused it: the token and mailbox work.
      return {
        kind: "sent",
        reply: reply(250, "2.0.0", `${this.#api.name} accepted the token`),
        refusedRecipients: [],
      };
    }
    return r;
  }

  /** Nothing to say goodbye to over HTTP: closes. */
  quit(): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  /** Idle keep-alive connections close by themselves (30 s). */
  quitIdle(): void {}

  /** Closes the HTTP client; later sends fail as unreachable. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }

  /** The throttled reply while the mailbox is held, else undefined. */
  #held(): UpstreamResult | undefined {
    if (this.#holdReply && Date.now() < this.#holdUntil) {
      return { kind: "rejected", reply: this.#holdReply };
    }
    return undefined;
  }

  /** Takes a request slot, sends with a token, renews it once on 401, maps the answer. */
  async #exchange(request: ApiRequest, message?: OutgoingMessage): Promise<UpstreamResult> {
    if (this.#closed) return { kind: "unreachable", detail: `${this.#api.name}: transport closed` };
    const signal = message?.signal;
    const waitMs = this.#options.permitWaitMs ?? DEFAULT_PERMIT_WAIT_MS;
    const waitSignal = AbortSignal.any([
      AbortSignal.timeout(waitMs),
      ...(signal ? [signal] : []),
    ]);
    let permit;
    try {
      permit = await this.#options.permits.acquire(this.#options.user, waitSignal);
    } catch {
      if (signal?.aborted) return { kind: "abandoned", endSent: false };
      return {
        kind: "unreachable",
        detail: `no ${this.#api.name} request slot free within ${waitMs / 1000} s ` +
          `(${this.#options.maxConnections} at once per mailbox)`,
      };
    }
    this.#open++;
    try {
      // Throttled while it waited for a slot: no request.
      const held = message ? this.#held() : undefined;
      if (held) return held;
      let token: string;
      try {
        token = (await this.#tokens(false)).token;
      } catch (err) {
        return { kind: "token", error: err instanceof Error ? err : new Error(String(err)) };
      }
      let answer = await this.#post(request, token, message, permit.revoked);
      if ("kind" in answer) return answer;
      if (answer.status === 401) {
        // The API refused the token: one refresh, one retry.
        try {
          token = (await this.#tokens(true)).token;
        } catch (err) {
          return { kind: "token", error: err instanceof Error ? err : new Error(String(err)) };
        }
        answer = await this.#post(request, token, message, permit.revoked);
        if ("kind" in answer) return answer;
        if (answer.status === 401) {
          const e = apiError(answer.status, answer.headers, answer.body);
          return {
            kind: "auth",
            reply: reply(
              535,
              "5.7.8",
              `${this.#api.name} answered 401 ${e.code} after a token refresh: ${e.message}`,
            ),
          };
        }
      }
      if (answer.status >= 200 && answer.status < 300) {
        return {
          kind: "sent",
          reply: this.#api.accepted(answer.status, answer.body),
          refusedRecipients: [],
        };
      }
      const error = apiError(answer.status, answer.headers, answer.body);
      if (this.#api.throttled(error) || (error.status === 503 && error.retryAt !== undefined)) {
        const until = error.retryAt ?? Date.now() + DEFAULT_THROTTLE_HOLD_MS;
        const r = reply(
          451,
          "4.7.0",
          `${this.#api.name} is throttling ${this.#options.user} (${error.status} ${error.code}), ` +
            `retry after ${isoSeconds(until)}`,
        );
        if (until > this.#holdUntil) {
          this.#holdUntil = until;
          this.#holdReply = r;
        }
        return { kind: "rejected", reply: r };
      }
      return this.#api.refused(error);
    } finally {
      this.#open--;
      permit.release();
    }
  }

  /**
   * One POST; an answer, or the outcome when there is none. A `revoked` request slot (a
   * shared backend lost its lease) ends the request at once.
   */
  async #post(
    request: ApiRequest,
    token: string,
    message: OutgoingMessage | undefined,
    revoked: AbortSignal,
  ): Promise<{ status: number; headers: Headers; body: string } | UpstreamResult> {
    const signal = message?.signal;
    const timeoutMs = this.#options.timeoutMs ?? DEFAULT_HTTP_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(timeoutMs);
    const started = performance.now();
    const done = (status: string) =>
      this.#options.observer?.httpRequestDone(
        this.kind,
        status,
        (performance.now() - started) / 1000,
      );
    // From here the API may get the whole message: giving up now leaves the outcome unknown.
    if (message?.progress) message.progress.endSent = true;
    try {
      const response = await fetch(request.url, {
        method: "POST",
        client: this.#client,
        headers: { ...request.headers, authorization: `Bearer ${token}` },
        body: request.body,
        signal: AbortSignal.any([timeout, revoked, ...(signal ? [signal] : [])]),
      });
      const body = await response.text();
      this.#lastStatus = response.status;
      done(String(response.status));
      return { status: response.status, headers: response.headers, body };
    } catch (err) {
      if (signal?.aborted) {
        done("abandoned");
        return { kind: "abandoned", endSent: true };
      }
      if (timeout.aborted) {
        done("timeout");
        return {
          kind: "unreachable",
          detail: `no answer from ${this.#api.name} within ${timeoutMs / 1000} s ` +
            "(it may have sent the message)",
        };
      }
      done("error");
      if (revoked.aborted) {
        return { kind: "unreachable", detail: `${this.#api.name}: request slot revoked` };
      }
      const text = err instanceof Error ? err.message : String(err);
      return { kind: "unreachable", detail: `${this.#api.name}: ${clip(text, 200)}` };
    }
  }
}

/** Reads an API error answer: Graph's `{error: {code, message}}` or Google's shape. */
export function apiError(status: number, headers: Headers, body: string): ApiError {
  let code = "";
  let message = "";
  try {
    const e = JSON.parse(body)?.error;
    if (e && typeof e === "object") {
      const reason = Array.isArray(e.errors) ? e.errors[0]?.reason : undefined;
      code = typeof e.code === "string"
        ? e.code
        : typeof reason === "string"
        ? reason
        : typeof e.status === "string"
        ? e.status
        : "";
      message = typeof e.message === "string" ? e.message : "";
    }
  } catch {
    message = body;
  }
  return {
    status,
    code: code || `HTTP${status}`,
    message: clip(message.replace(/\s+/g, " ").trim(), 200),
    retryAt: retryAfter(headers.get("retry-after")),
  };
}

/** `Retry-After` (seconds or an HTTP date) as ms since the epoch. */
export function retryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return now + Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : at;
}

/** `2026-11-29T01:02:03Z`, rounded up to the second. */
export function isoSeconds(ms: number): string {
  return new Date(Math.ceil(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/** How much of a message is joined to find the end of its header before all of it is. */
const HEADER_SEARCH_BYTES = 64 * 1024;

/**
 * A message for an API request: the chunks as the client sent them, joined only when a
 * request needs one buffer (the JSON forms), so a large upload (a `Blob` of the parts)
 * holds the message once besides what fetch keeps (`deno task bench:fetch-body`).
 */
export class Payload {
  /** The chunks, in order. */
  readonly parts: readonly Uint8Array[];
  /** Total bytes. */
  readonly length: number;
  #whole?: Uint8Array;

  /** `parts` are kept, not copied. */
  constructor(parts: readonly Uint8Array[]) {
    this.parts = parts;
    this.length = parts.reduce((n, p) => n + p.length, 0);
  }

  /** A payload of one buffer. */
  static of(bytes: Uint8Array): Payload {
    return new Payload([bytes]);
  }

  /** The whole message in one buffer (joined at the first call, then kept). */
  bytes(): Uint8Array {
    if (this.parts.length === 1) return this.parts[0];
    return this.#whole ??= concatChunks(this.parts, this.length);
  }

  /**
   * The header block (up to and including its empty line), or the whole message when it
   * has no body: what the envelope checks read. Only the first chunks are joined for it
   * unless the header runs past {@link HEADER_SEARCH_BYTES}.
   */
  header(): Uint8Array {
    const first: Uint8Array[] = [];
    let n = 0;
    for (const p of this.parts) {
      if (n >= HEADER_SEARCH_BYTES) break;
      first.push(p);
      n += p.length;
    }
    if (n < this.length) {
      const head = first.length === 1 ? first[0] : concatChunks(first, n);
      // Not found there (or ending exactly at its end): search the whole message.
      const end = headerLength(head);
      if (end < head.length) return head.subarray(0, end);
    }
    const whole = this.bytes();
    return whole.subarray(0, headerLength(whole));
  }
}

/** base64 of `prefix` + `raw` without copying `raw` (the prefix is a multiple of 3 bytes). */
export function base64Of(prefix: Uint8Array, raw: Uint8Array, url = false): string {
  const encoding = url ? "base64url" : "base64";
  const head = prefix.length ? Buffer.from(prefix).toString(encoding) : "";
  return head + Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString(encoding);
}

/** The refusal of a message whose header names people outside the envelope. */
function strangersReply(api: string, strangers: readonly string[]): Reply {
  const named = strangers.slice(0, 3).map((a) => `<${a}>`).join(", ") +
    (strangers.length > 3 ? ` and ${strangers.length - 3} more` : "");
  return reply(
    550,
    "5.7.1",
    `Header recipients not in the envelope: ${named}; ${api} delivers to every To/Cc/Bcc ` +
      "address, so this message cannot be sent without reaching them",
  );
}

/**
 * The usual mapping of an API refusal, after the API's own special cases: 413 → 552 5.3.4
 * naming `limit`; 403 → `auth` (the token lacks the scope, or may not use the mailbox);
 * 5xx → 451 4.3.0 (try again later); other 4xx → 554 5.6.0 (the API refused this
 * message). The API's code and message are in the text.
 */
export function usualRefusal(api: string, e: ApiError, limit: string): UpstreamResult {
  const what = `${e.status} ${e.code}${e.message ? `: ${e.message}` : ""}`;
  if (e.status === 413) {
    return {
      kind: "rejected",
      reply: reply(552, "5.3.4", `Message too big for ${api} (${e.status} ${e.code}; ${limit})`),
    };
  }
  if (e.status === 403) {
    return { kind: "auth", reply: reply(535, "5.7.8", `${api} answered ${what}`) };
  }
  if (e.status >= 500) {
    return {
      kind: "rejected",
      reply: reply(451, "4.3.0", `${api} failed (${what}), try again later`),
    };
  }
  return { kind: "rejected", reply: reply(554, "5.6.0", `${api} refused the message (${what})`) };
}
