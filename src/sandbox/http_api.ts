/**
 * Sandbox HTTPS mail APIs, for the demo and the tests: Microsoft Graph's MIME `sendMail`
 * and the Gmail API's `users.messages.send` (JSON `raw` and media upload), over HTTPS
 * with the sandbox certificate (`localhost`, `127.0.0.1`; see `./tls.ts`).
 *
 * - `POST /v1.0/users/{mailbox}/sendMail` (also `/v1.0/me/sendMail`): body the MIME
 *   message in base64, `Content-Type: text/plain`; 202 and no body.
 * - `POST /gmail/v1/users/{userId}/messages/send`: JSON `{"raw": base64url}`;
 *   `POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=media`: the message
 *   itself, `Content-Type: message/rfc822`; both 200 with `{id, threadId, labelIds}`.
 *
 * Each checks the bearer token (issued by the sandbox token endpoint for that mailbox and
 * not expired: else 401), its scope (Graph `Mail.Send`, Gmail `gmail.send` or
 * `mail.google.com`: else 403) and the size, and keeps what it accepted
 * ({@link ApiMessage}): the decoded MIME and the recipients it would deliver to, taken
 * from the header as the real APIs do (To, Cc, Bcc). A `From:` the mailbox may not send
 * as gets Graph's 403 `ErrorSendAsDenied`; Gmail instead sends as the mailbox
 * ({@link ApiMessage.sentAs}). Faults: {@link HttpApiFaults}. Never logs tokens.
 * @module
 */
import { Buffer } from "node:buffer";
import type { TokenEndpoint } from "./token_endpoint.ts";
import { SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "./tls.ts";
import { addressKey, fromAddress, headerRecipients } from "../upstream/mime.ts";

/** Which API a message came in through. */
export type ApiName = "graph" | "gmail";

/** One message a sandbox API accepted. */
export interface ApiMessage {
  /** The API. */
  readonly api: ApiName;
  /** The mailbox of the URL (`me` resolved to the token's), lower-cased. */
  readonly mailbox: string;
  /** The MIME message after base64 decoding, byte for byte as the relay sent it. */
  readonly mime: Uint8Array;
  /**
   * Whom the API would deliver to: the addresses of To, Cc and Bcc (and Resent-*) in the
   * header, lower-cased, each once, in header order.
   */
  readonly recipients: readonly string[];
  /** The `From:` address, lower-cased, if any. */
  readonly from?: string;
  /** The address it goes out as: the From address if the mailbox may use it, else the mailbox. */
  readonly sentAs: string;
  /** How it arrived: Graph's base64 body, Gmail's JSON `raw` or Gmail's media upload. */
  readonly upload: "base64" | "raw" | "media";
  /** Graph: a copy lands in Sent Items (MIME sendMail always saves one). */
  readonly savedToSentItems: boolean;
  /** When it was accepted. */
  readonly receivedAt: Date;
}

/**
 * Fault injection: a plain mutable object, set fields between requests. Checked in this
 * order: `hang`, `delayMs`, `failNext`. `api` limits them to one API.
 */
export interface HttpApiFaults {
  /** Only requests to this API are affected (both when unset). */
  api?: ApiName;
  /** Answer the next N send requests with `failStatus` and `failBody`. */
  failNext: number;
  /** Status of those answers (default 503). */
  failStatus: number;
  /** Body of those answers (default: the API's own error shape for the status). */
  failBody?: string;
  /** `Retry-After` header of those answers (seconds), if set. */
  retryAfter?: string;
  /** Wait this long before answering each send request, ms. */
  delayMs: number;
  /** Never answer send requests that arrive while set, until {@link SandboxHttpApi.close}. */
  hang: boolean;
}

/** Counters of a {@link SandboxHttpApi}. */
export interface HttpApiStats {
  /** Send requests received (any outcome). */
  requests: number;
  /** Answers by status, e.g. `202`, `401`. */
  byStatus: Map<number, number>;
  /** Bearer tokens seen (to assert how often a token was tried); never logged. */
  tokensSeen: number;
  /** Client connections the send requests came over (distinct remote ports: keep-alive). */
  connections: Set<number>;
}

/** Options of {@link SandboxHttpApi.start}. */
export interface SandboxHttpApiOptions {
  /** The token endpoint whose tokens are accepted. */
  readonly tokens: TokenEndpoint;
  /** Port on 127.0.0.1; 0 (default) = ephemeral. */
  readonly port?: number;
  /** Graph's request size limit, bytes of the base64 body (default 4 MiB). */
  readonly graphMaxRequestBytes?: number;
  /** Gmail's message size limit, bytes of the message (default 35 MB). */
  readonly gmailMaxMessageBytes?: number;
}

/** Graph's documented request size limit (4 MB) as the sandbox enforces it by default. */
export const GRAPH_MAX_REQUEST_BYTES = 4 * 1024 * 1024;
/** Gmail's documented `messages.send` upload limit (35 MB). */
export const GMAIL_MAX_MESSAGE_BYTES = 35 * 1024 * 1024;

const GRAPH_PATH = /^\/v1\.0\/(?:users\/([^/]+)|(me))\/sendMail$/;
const GMAIL_PATH = /^\/(upload\/)?gmail\/v1\/users\/([^/]+)\/messages\/send$/;

/** The sandbox HTTPS APIs. Create with {@link SandboxHttpApi.start}. */
export class SandboxHttpApi {
  /** Base URL, `https://localhost:PORT` (the certificate's name). */
  readonly url: string;
  /** Port on 127.0.0.1. */
  readonly port: number;
  /** Accepted messages, oldest first. Tests may clear it. */
  readonly received: ApiMessage[] = [];
  /** Fault injection; see {@link HttpApiFaults}. */
  readonly faults: HttpApiFaults = noFaults();
  /** Counters. */
  readonly stats: HttpApiStats = {
    requests: 0,
    byStatus: new Map(),
    tokensSeen: 0,
    connections: new Set(),
  };
  /** Graph's request size limit, bytes of base64 body. */
  graphMaxRequestBytes: number;
  /** Gmail's message size limit, bytes. */
  gmailMaxMessageBytes: number;
  /** Requests being handled now, per lower-cased mailbox (for concurrency assertions). */
  readonly inflight = new Map<string, number>();
  /** Most requests seen at once per lower-cased mailbox. */
  readonly peakInflight = new Map<string, number>();
  /** Every bearer token presented (for tests that look for tokens in output); never logged. */
  readonly bearerTokens = new Set<string>();
  readonly #tokens: TokenEndpoint;
  /** Extra addresses each mailbox may send as (lower-cased). */
  readonly #sendAs = new Map<string, Set<string>>();
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #closing = new AbortController();
  #closed?: Promise<void>;
  #ids = 0;

  private constructor(options: SandboxHttpApiOptions) {
    this.#tokens = options.tokens;
    this.graphMaxRequestBytes = options.graphMaxRequestBytes ?? GRAPH_MAX_REQUEST_BYTES;
    this.gmailMaxMessageBytes = options.gmailMaxMessageBytes ?? GMAIL_MAX_MESSAGE_BYTES;
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: options.port ?? 0,
      cert: SANDBOX_CERT_PEM,
      key: SANDBOX_KEY_PEM,
      onListen: () => {},
      onError: () => new Response("internal error", { status: 500 }),
    }, (req, info) => {
      this.stats.connections.add(info.remoteAddr.port);
      return this.#handle(req);
    });
    this.port = this.#server.addr.port;
    this.url = `https://localhost:${this.port}`;
  }

  /** Starts listening on 127.0.0.1 (needs `--allow-net=127.0.0.1`). */
  static start(options: SandboxHttpApiOptions): Promise<SandboxHttpApi> {
    return Promise.resolve(new SandboxHttpApi(options));
  }

  /** Lets `mailbox` send as `address` (Graph "Send As", Gmail "send mail as"). */
  allowSendAs(mailbox: string, address: string): void {
    const key = mailbox.toLowerCase();
    const set = this.#sendAs.get(key) ?? new Set();
    set.add(address.toLowerCase());
    this.#sendAs.set(key, set);
  }

  /** Clears the faults. */
  resetFaults(): void {
    Object.assign(this.faults, noFaults());
    delete this.faults.api;
    delete this.faults.failBody;
    delete this.faults.retryAfter;
  }

  /** Stops listening; requests still hanging are answered 503. */
  close(): Promise<void> {
    this.#closing.abort();
    this.#closed ??= this.#server.shutdown();
    return this.#closed;
  }

  async #handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const graph = GRAPH_PATH.exec(url.pathname);
    const gmail = graph ? null : GMAIL_PATH.exec(url.pathname);
    if (!graph && !gmail) return graphError(404, "ResourceNotFound", "Unknown path");
    if (req.method !== "POST") return graphError(405, "MethodNotAllowed", "POST only");
    const api: ApiName = graph ? "graph" : "gmail";
    const userInPath = decodeURIComponent((graph ? graph[1] ?? graph[2] : gmail![2]) ?? "");
    const key = userInPath.toLowerCase();
    this.stats.requests++;
    this.inflight.set(key, (this.inflight.get(key) ?? 0) + 1);
    this.peakInflight.set(key, Math.max(this.peakInflight.get(key) ?? 0, this.inflight.get(key)!));
    let response: Response;
    try {
      response = await this.#answer(req, url, api, userInPath, gmail?.[1] !== undefined);
    } finally {
      this.inflight.set(key, this.inflight.get(key)! - 1);
    }
    this.stats.byStatus.set(response.status, (this.stats.byStatus.get(response.status) ?? 0) + 1);
    return response;
  }

  async #answer(
    req: Request,
    url: URL,
    api: ApiName,
    userInPath: string,
    upload: boolean,
  ): Promise<Response> {
    const faults = this.faults;
    const affected = faults.api === undefined || faults.api === api;
    if (affected && faults.hang) {
      await this.#sleep(Infinity);
      return apiError(api, 503, "ServiceUnavailable", "Server closing");
    }
    if (affected && faults.delayMs > 0) await this.#sleep(faults.delayMs);
    if (affected && faults.failNext > 0) {
      faults.failNext--;
      await req.body?.cancel();
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (faults.retryAfter !== undefined) headers["retry-after"] = faults.retryAfter;
      const body = faults.failBody ??
        JSON.stringify(errorBody(api, faults.failStatus, defaultCode(api, faults.failStatus)));
      return new Response(body, { status: faults.failStatus, headers });
    }
    // The token: issued by the sandbox, not expired, for this mailbox, with the scope.
    const auth = req.headers.get("authorization") ?? "";
    const token = /^Bearer (\S+)$/i.exec(auth)?.[1];
    if (token) {
      this.stats.tokensSeen++;
      this.bearerTokens.add(token);
    }
    const info = token ? this.#tokens.accessTokenInfo(token) : undefined;
    if (!info) {
      await req.body?.cancel();
      return api === "graph"
        ? graphError(
          401,
          "InvalidAuthenticationToken",
          "Access token is empty, invalid or expired.",
        )
        : gmailError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.");
    }
    const mailbox = userInPath === "me" ? info.email : userInPath.toLowerCase();
    const scopes = info.scope.split(/\s+/);
    const scoped = api === "graph"
      ? scopes.some((s) =>
        s === "https://graph.microsoft.com/Mail.Send" ||
        s === "https://graph.microsoft.com/.default"
      )
      : scopes.some((s) =>
        s === "https://www.googleapis.com/auth/gmail.send" || s === "https://mail.google.com/"
      );
    if (!scoped) {
      await req.body?.cancel();
      return api === "graph"
        ? graphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        : gmailError(
          403,
          "PERMISSION_DENIED",
          "Request had insufficient authentication scopes.",
          "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        );
    }
    if (mailbox !== info.email) {
      await req.body?.cancel();
      return api === "graph"
        ? graphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        : gmailError(403, "PERMISSION_DENIED", "Delegation denied for " + info.email);
    }
    return api === "graph"
      ? await this.#graph(req, mailbox)
      : await this.#gmail(req, url, mailbox, upload);
  }

  async #graph(req: Request, mailbox: string): Promise<Response> {
    const type = req.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
    if (type !== "text/plain") {
      await req.body?.cancel();
      return graphError(400, "ErrorInvalidRequest", "MIME content must be sent as text/plain");
    }
    const length = Number(req.headers.get("content-length") ?? NaN);
    if (length > this.graphMaxRequestBytes) {
      await req.body?.cancel();
      return graphError(413, "ErrorRequestEntityTooLarge", "The request is too large.");
    }
    const body = (await req.text()).trim();
    if (body.length > this.graphMaxRequestBytes) {
      return graphError(413, "ErrorRequestEntityTooLarge", "The request is too large.");
    }
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0 || body.length === 0) {
      return graphError(
        400,
        "ErrorMimeContentInvalidBase64String",
        "Invalid base64 string for MIME content.",
      );
    }
    const mime = new Uint8Array(Buffer.from(body, "base64"));
    const recipients = unique(headerRecipients(mime));
    if (recipients.length === 0) {
      return graphError(400, "ErrorInvalidRecipients", "At least one recipient is not valid.");
    }
    const from = fromAddress(mime);
    const sentAs = this.#sentAs(mailbox, from);
    if (from !== undefined && sentAs !== addressKey(from)) {
      return graphError(
        403,
        "ErrorSendAsDenied",
        "The user account which was used to submit this request does not have the right " +
          "to send mail on behalf of the specified sending account.",
      );
    }
    this.received.push({
      api: "graph",
      mailbox,
      mime,
      recipients,
      from: from === undefined ? undefined : addressKey(from),
      sentAs,
      upload: "base64",
      savedToSentItems: true,
      receivedAt: new Date(),
    });
    return new Response(null, { status: 202 });
  }

  async #gmail(req: Request, url: URL, mailbox: string, upload: boolean): Promise<Response> {
    let mime: Uint8Array;
    const type = req.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
    if (upload) {
      if (url.searchParams.get("uploadType") !== "media" || type !== "message/rfc822") {
        await req.body?.cancel();
        return gmailError(
          400,
          "INVALID_ARGUMENT",
          "Media type must be message/rfc822 (uploadType=media)",
        );
      }
      mime = new Uint8Array(await req.arrayBuffer());
    } else {
      if (type !== "application/json") {
        await req.body?.cancel();
        return gmailError(400, "INVALID_ARGUMENT", "Expected application/json");
      }
      let raw: unknown;
      try {
        raw = (await req.json())?.raw;
      } catch {
        return gmailError(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
      }
      if (typeof raw !== "string" || !/^[A-Za-z0-9_-]*={0,2}$/.test(raw)) {
        return gmailError(400, "INVALID_ARGUMENT", "Invalid value for ByteString: raw");
      }
      mime = new Uint8Array(Buffer.from(raw, "base64url"));
    }
    if (mime.length > this.gmailMaxMessageBytes) {
      return gmailError(413, "FAILED_PRECONDITION", "Request payload size exceeds the limit");
    }
    const recipients = unique(headerRecipients(mime));
    if (recipients.length === 0) {
      return gmailError(400, "INVALID_ARGUMENT", "Recipient address required", "invalidArgument");
    }
    const from = fromAddress(mime);
    const id = (++this.#ids).toString(16).padStart(16, "0");
    this.received.push({
      api: "gmail",
      mailbox,
      mime,
      recipients,
      from: from === undefined ? undefined : addressKey(from),
      sentAs: this.#sentAs(mailbox, from),
      upload: upload ? "media" : "raw",
      savedToSentItems: true,
      receivedAt: new Date(),
    });
    return Response.json({ id, threadId: id, labelIds: ["SENT"] });
  }

  /** The From address if `mailbox` may send as it (itself or an allowed alias), else the mailbox. */
  #sentAs(mailbox: string, from: string | undefined): string {
    if (from === undefined) return mailbox;
    const key = addressKey(from);
    return key === mailbox || this.#sendAs.get(mailbox)?.has(key) ? key : mailbox;
  }

  /** Waits `ms` (Infinity: until close). */
  #sleep(ms: number): Promise<void> {
    const signal = this.#closing.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = Number.isFinite(ms) ? setTimeout(done, ms) : undefined;
      signal.addEventListener("abort", done);
    });
  }
}

function noFaults(): HttpApiFaults {
  return { failNext: 0, failStatus: 503, delayMs: 0, hang: false };
}

function unique(addresses: string[]): string[] {
  return [...new Set(addresses.map(addressKey))];
}

/** Graph's error code for an injected status. */
function defaultCode(api: ApiName, status: number): string {
  if (api === "gmail") {
    return status === 429
      ? "RESOURCE_EXHAUSTED"
      : status >= 500
      ? "UNAVAILABLE"
      : "INVALID_ARGUMENT";
  }
  return status === 429
    ? "ApplicationThrottled"
    : status === 503
    ? "ServiceUnavailable"
    : status === 413
    ? "ErrorRequestEntityTooLarge"
    : status >= 500
    ? "InternalServerError"
    : "ErrorInvalidRequest";
}

/** The API's error body for `status` and `code`. */
function errorBody(api: ApiName, status: number, code: string): unknown {
  return api === "graph"
    ? { error: { code, message: `Injected ${status}` } }
    : { error: { code: status, message: `Injected ${status}`, status: code } };
}

function apiError(api: ApiName, status: number, code: string, message: string): Response {
  return api === "graph" ? graphError(status, code, message) : gmailError(status, code, message);
}

/** Graph's error shape: `{"error": {"code", "message"}}`. */
function graphError(status: number, code: string, message: string): Response {
  return Response.json({ error: { code, message } }, { status });
}

/** Google's error shape: `{"error": {"code", "message", "status", "errors": [{reason}]}}`. */
function gmailError(status: number, code: string, message: string, reason?: string): Response {
  return Response.json({
    error: {
      code: status,
      message,
      status: code,
      ...(reason ? { errors: [{ domain: "global", reason, message }] } : {}),
    },
  }, { status });
}
