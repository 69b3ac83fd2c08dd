/**
 * The refresh_token grant (RFC 6749 §6), through oauth4webapi.
 *
 * Failures become a {@link TokenError} whose message is safe to log and reply with:
 * the library's own errors carry the response body (tokens included) and are dropped.
 * @module
 */
import * as oauth from "oauth4webapi";
import { clip } from "../text.ts";

/**
 * An OAuth2 client registered at one token endpoint: what the refresh grant and the
 * interactive authorization flows (`authorize.ts`) both need.
 */
export interface OAuthClient {
  /** Token endpoint URL. */
  readonly tokenUrl: string;
  /** Client id. */
  readonly clientId: string;
  /** Client secret (a secret: never logged); absent for public clients. */
  readonly clientSecret?: string;
  /**
   * Scope to ask for with every grant; for authorization it must yield a refresh token
   * (`offline_access` at Microsoft).
   */
  readonly scope: string;
}

/** The useful part of a token response. */
export interface TokenGrant {
  /** Bearer access token. */
  readonly accessToken: string;
  /** When it expires, ms since the epoch. */
  readonly expiresAt: number;
  /** A new refresh token if the provider rotated it. */
  readonly refreshToken?: string;
}

/** Whether retrying can help: `transient` (network, timeout, 5xx, 429) or not. */
export type TokenErrorKind = "transient" | "permanent";

/** A failed token call; `message` holds no secret. */
export class TokenError extends Error {
  /** Transient or permanent. */
  readonly kind: TokenErrorKind;
  /** OAuth2 error code (`invalid_grant`, …) when the endpoint sent one. */
  readonly oauthError?: string;
  /** The endpoint's Retry-After, in ms, when it sent one. */
  readonly retryAfterMs?: number;
  /** Builds the error. */
  constructor(message: string, kind: TokenErrorKind, oauthError?: string, retryAfterMs?: number) {
    super(message);
    this.name = "TokenError";
    this.kind = kind;
    this.oauthError = oauthError;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * A token call that got no answer within its time limit. Transient, but not repeated
 * within the same refresh: an endpoint that hangs once is likely to hang again, and each
 * try would hold the waiting messages for the whole limit.
 */
export class TokenTimeoutError extends TokenError {
  /** Builds the error for a call cut off after `timeoutMs`. */
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`, "transient");
    this.name = "TokenTimeoutError";
  }
}

/** Token responses larger than this are refused unread (a token response is < 10 KiB). */
export const MAX_RESPONSE_BYTES = 256 * 1024;

/** Lifetime assumed when a provider omits `expires_in`, in seconds. */
const DEFAULT_LIFETIME_SECONDS = 3600;
/** OAuth2 errors that no retry can fix. */
const PERMANENT = new Set([
  "invalid_grant",
  "invalid_client",
  "unauthorized_client",
  "invalid_scope",
  "unsupported_grant_type",
]);

/**
 * Runs one refresh_token grant, aborted after `timeoutMs`. `now` is the clock the grant's
 * `expiresAt` (and an HTTP-date Retry-After) is measured on.
 */
export function refreshAccessToken(
  client: OAuthClient,
  refreshToken: string,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<TokenGrant> {
  const auth = client.clientSecret ? oauth.ClientSecretPost(client.clientSecret) : oauth.None();
  return tokenEndpointGrant(
    client.tokenUrl,
    client.clientId,
    (as, c, options) =>
      oauth.refreshTokenGrantRequest(as, c, auth, refreshToken, {
        ...options,
        additionalParameters: { scope: client.scope },
      }),
    timeoutMs,
    now,
  );
}

/** Options a grant request gets from {@link tokenEndpointGrant}: timeout, bounded fetch. */
export type GrantRequestOptions = oauth.TokenEndpointRequestOptions;

/**
 * Runs one token request built by `request` (any grant oauth4webapi can send), aborted
 * after `timeoutMs`, and reads the answer as the refresh grant does: the same
 * {@link TokenError}s, Retry-After and size limit. Used by the app-only grants.
 */
export async function tokenEndpointGrant(
  tokenUrl: string,
  clientId: string,
  request: (
    as: oauth.AuthorizationServer,
    client: oauth.Client,
    options: GrantRequestOptions,
  ) => Promise<Response>,
  timeoutMs: number,
  now: () => number = Date.now,
): Promise<TokenGrant> {
  const url = new URL(tokenUrl);
  const as: oauth.AuthorizationServer = { issuer: url.origin, token_endpoint: url.href };
  const c: oauth.Client = { client_id: clientId };
  const signal = AbortSignal.timeout(timeoutMs);
  const started = now();
  let seen: { status: number; retryAfterMs?: number } | undefined;
  try {
    const response = await request(as, c, {
      signal,
      [oauth.allowInsecureRequests]: url.protocol === "http:",
      [oauth.customFetch]: async (input, init) => {
        const r = await boundedFetch(input, init);
        seen = { status: r.status, retryAfterMs: retryAfter(r.headers.get("retry-after"), now) };
        return r;
      },
    });
    const body = await oauth.processGenericTokenEndpointResponse(as, c, response);
    const lifetime = typeof body.expires_in === "number" && body.expires_in > 0
      ? body.expires_in
      : DEFAULT_LIFETIME_SECONDS;
    return {
      accessToken: body.access_token,
      expiresAt: started + lifetime * 1000,
      refreshToken: body.refresh_token,
    };
  } catch (err) {
    throw toTokenError(err, signal, timeoutMs, seen);
  }
}

/** fetch, but a body over {@link MAX_RESPONSE_BYTES} is an error, not a memory spike. */
async function boundedFetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
  const response = await fetch(input, init);
  const declared = Number(response.headers.get("content-length") ?? "0");
  if (declared > MAX_RESPONSE_BYTES) {
    await response.body?.cancel();
    throw new TokenError(
      `response too large (HTTP ${response.status}, ${declared} bytes)`,
      "transient",
    );
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of response.body ?? []) {
    size += chunk.length;
    if (size > MAX_RESPONSE_BYTES) {
      throw new TokenError(
        `response too large (HTTP ${response.status}, over ${MAX_RESPONSE_BYTES} bytes)`,
        "transient",
      );
    }
    chunks.push(chunk);
  }
  return new Response(new Blob(chunks as BlobPart[]), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/** Retry-After as ms: delta-seconds or an HTTP date. */
function retryAfter(value: string | null, now: () => number): number | undefined {
  if (!value) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now());
}

function toTokenError(
  err: unknown,
  signal: AbortSignal,
  timeoutMs: number,
  seen: { status: number; retryAfterMs?: number } | undefined,
): TokenError {
  if (err instanceof TokenError) return err;
  const retry = seen?.retryAfterMs;
  if (err instanceof oauth.ResponseBodyError) {
    const kind = PERMANENT.has(err.error) ? "permanent" : "transient";
    const description = err.error_description ? `: ${clip(err.error_description)}` : "";
    return new TokenError(`${err.error}${description}`, kind, err.error, retry);
  }
  if (signal.aborted) return new TokenTimeoutError(timeoutMs);
  const status = seen ? ` (HTTP ${seen.status})` : "";
  if (seen && seen.status !== 200 && err instanceof oauth.OperationProcessingError) {
    // No OAuth2 error body: a proxy or an outage, not a verdict on the refresh token.
    return new TokenError(
      `HTTP ${seen.status} from the token endpoint`,
      "transient",
      undefined,
      retry,
    );
  }
  if (err instanceof oauth.OperationProcessingError) {
    return new TokenError(
      `unusable token response${status}: ${clip(err.message)}`,
      "transient",
      undefined,
      retry,
    );
  }
  if (err instanceof TypeError) {
    return new TokenError(`unreachable: ${clip(err.message)}`, "transient");
  }
  const message = err instanceof Error ? err.message : String(err);
  return new TokenError(`failed${status}: ${clip(message)}`, "transient", undefined, retry);
}
