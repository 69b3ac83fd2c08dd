/**
 * The refresh_token grant (RFC 6749 §6), through oauth4webapi.
 *
 * Failures become a {@link TokenError} whose message is safe to log and reply with:
 * the library's own errors carry the response body (tokens included) and are dropped.
 * @module
 */
import * as oauth from "oauth4webapi";

/** An OAuth2 client registered at one token endpoint. */
export interface OAuthClient {
  /** Token endpoint URL. */
  readonly tokenUrl: string;
  /** Client id. */
  readonly clientId: string;
  /** Client secret; absent for public clients. */
  readonly clientSecret?: string;
  /** Scope to request with every refresh. */
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
  /** Builds the error. */
  constructor(message: string, kind: TokenErrorKind, oauthError?: string) {
    super(message);
    this.name = "TokenError";
    this.kind = kind;
    this.oauthError = oauthError;
  }
}

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

/** Runs one refresh_token grant, aborted after `timeoutMs`. */
export async function refreshAccessToken(
  client: OAuthClient,
  refreshToken: string,
  timeoutMs: number,
): Promise<TokenGrant> {
  const url = new URL(client.tokenUrl);
  const as: oauth.AuthorizationServer = { issuer: url.origin, token_endpoint: url.href };
  const c: oauth.Client = { client_id: client.clientId };
  const auth = client.clientSecret ? oauth.ClientSecretPost(client.clientSecret) : oauth.None();
  const signal = AbortSignal.timeout(timeoutMs);
  const started = Date.now();
  try {
    const response = await oauth.refreshTokenGrantRequest(as, c, auth, refreshToken, {
      signal,
      additionalParameters: { scope: client.scope },
      [oauth.allowInsecureRequests]: url.protocol === "http:",
    });
    const body = await oauth.processRefreshTokenResponse(as, c, response);
    const lifetime = typeof body.expires_in === "number" && body.expires_in > 0
      ? body.expires_in
      : DEFAULT_LIFETIME_SECONDS;
    return {
      accessToken: body.access_token,
      expiresAt: started + lifetime * 1000,
      refreshToken: body.refresh_token,
    };
  } catch (err) {
    throw toTokenError(err, signal, timeoutMs);
  }
}

function toTokenError(err: unknown, signal: AbortSignal, timeoutMs: number): TokenError {
  if (err instanceof oauth.ResponseBodyError) {
    const kind = PERMANENT.has(err.error) ? "permanent" : "transient";
    const description = err.error_description ? `: ${clip(err.error_description)}` : "";
    return new TokenError(`${err.error}${description}`, kind, err.error);
  }
  if (signal.aborted) return new TokenError(`no answer within ${timeoutMs} ms`, "transient");
  if (err instanceof oauth.OperationProcessingError) {
    const status = err.cause instanceof Response ? ` (HTTP ${err.cause.status})` : "";
    return new TokenError(`unusable token response${status}: ${clip(err.message)}`, "transient");
  }
  if (err instanceof TypeError) {
    return new TokenError(`unreachable: ${clip(err.message)}`, "transient");
  }
  return new TokenError(
    `failed: ${clip(err instanceof Error ? err.message : String(err))}`,
    "transient",
  );
}

/** One line, at most 200 characters. */
function clip(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 200 ? `${line.slice(0, 197)}...` : line;
}
