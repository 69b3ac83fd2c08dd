/**
 * Sandbox OAuth2 token endpoint (RFC 6749), for the demo and integration tests.
 *
 * Listens on 127.0.0.1 with `Deno.serve` and answers `POST /token`. Only the
 * `refresh_token` grant exists; the grant dispatch in {@link TokenEndpoint}
 * is where device-code and authorization-code (+PKCE) grants will go.
 * Refresh tokens rotate on every use like Microsoft's, unless
 * {@link TokenEndpoint.rotateRefreshTokens} is false.
 *
 * Never logs tokens or secrets.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { randomBytes, timingSafeEqual } from "node:crypto";

/** An account the sandbox provider knows, with its current refresh token. */
export interface SandboxAccount {
  /** Mailbox address; also the XOAUTH2 `user`. Compared case-insensitively. */
  email: string;
  /** OAuth2 client the refresh token was issued to. */
  clientId: string;
  /** Client secret; when absent the client is public and sends none. */
  clientSecret?: string;
  /** Refresh token that is currently valid for this account. */
  refreshToken: string;
}

/** Options of {@link TokenEndpoint.start}. */
export interface TokenEndpointOptions {
  /** TCP port on 127.0.0.1; 0 (default) picks an ephemeral port. */
  port?: number;
  /** Lifetime of issued access tokens in seconds (default 3600). */
  accessTokenTtlSeconds?: number;
  /** Issue a new refresh token on every refresh and invalidate the old one (default true). */
  rotateRefreshTokens?: boolean;
  /** `scope` reported in token responses (default `https://mail.google.com/`). */
  scope?: string;
}

/**
 * Fault injection for tests. A plain mutable object: set fields between requests.
 * Checked in this order: `hang`, `delayMs`, `failNext`.
 */
export interface TokenEndpointFaults {
  /** Answer the next N requests with `failStatus`/`failBody` instead of handling them. */
  failNext: number;
  /** HTTP status of the injected failures (default 500). */
  failStatus: number;
  /** Body of the injected failures, sent as is, e.g. `"{not json"` with status 200. */
  failBody: string;
  /** Content-Type of the injected failures (default `application/json`). */
  failContentType: string;
  /** Wait this long before handling each request. */
  delayMs: number;
  /** Never answer requests that arrive while set, until {@link TokenEndpoint.close} (then 503). */
  hang: boolean;
}

/** Request counters of a {@link TokenEndpoint}. */
export interface TokenEndpointStats {
  /** HTTP requests received, on any path, including failed and faulted ones. */
  requests: number;
  /** Successful refresh_token grants. */
  refreshes: number;
  /** Successful refresh_token grants per lower-cased email. */
  refreshesByEmail: Map<string, number>;
}

/** Fault settings with nothing injected. */
function noFaults(): TokenEndpointFaults {
  return {
    failNext: 0,
    failStatus: 500,
    failBody: '{"error":"server_error"}',
    failContentType: "application/json",
    delayMs: 0,
    hang: false,
  };
}

interface IssuedToken {
  email: string;
  expiresAt: number;
}

interface ClientCredentials {
  clientId: string;
  clientSecret: string | undefined;
}

type GrantHandler = (
  params: URLSearchParams,
  client: ClientCredentials,
) => Response;

const JSON_HEADERS = {
  "content-type": "application/json;charset=UTF-8",
  "cache-control": "no-store",
  "pragma": "no-cache",
};

/** A JSON response with the RFC 6749 §5.1 caching headers. */
function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...JSON_HEADERS, ...headers },
  });
}

/** An RFC 6749 §5.2 error response. */
function oauthError(
  status: number,
  error: string,
  description: string,
  headers?: Record<string, string>,
): Response {
  return json(status, { error, error_description: description }, headers);
}

/** A random, URL-safe token from the CSPRNG. */
function randomToken(): string {
  return randomBytes(32).toString("base64url");
}

/** Compares two secrets in constant time (for equal lengths). */
function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Decodes one half of HTTP Basic client credentials (RFC 6749 §2.3.1). */
function formDecode(value: string): string {
  return decodeURIComponent(value.replaceAll("+", " "));
}

/** The sandbox OAuth2 token endpoint. Create with {@link TokenEndpoint.start}. */
export class TokenEndpoint {
  /** Full URL of the token endpoint, `http://127.0.0.1:PORT/token`. */
  readonly url: string;
  /** Port the endpoint listens on. */
  readonly port: number;
  /** Fault injection; see {@link TokenEndpointFaults}. */
  readonly faults: TokenEndpointFaults = noFaults();
  /** Request counters. */
  readonly stats: TokenEndpointStats = {
    requests: 0,
    refreshes: 0,
    refreshesByEmail: new Map(),
  };
  /** Lifetime of newly issued access tokens in seconds; 0 issues tokens that are already expired. */
  accessTokenTtlSeconds: number;
  /** Rotate refresh tokens on every refresh (Microsoft-style). */
  rotateRefreshTokens: boolean;
  /** `scope` reported in token responses. */
  scope: string;

  readonly #accounts = new Map<string, SandboxAccount>();
  readonly #byRefreshToken = new Map<string, string>();
  readonly #accessTokens = new Map<string, IssuedToken>();
  readonly #closing = new AbortController();
  #closed: Promise<void> | undefined;
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #grants: Record<string, GrantHandler> = {
    refresh_token: (params, client) => this.#refreshTokenGrant(params, client),
    // Later: "authorization_code" (+PKCE) and
    // "urn:ietf:params:oauth:grant-type:device_code".
  };

  private constructor(options: TokenEndpointOptions) {
    this.accessTokenTtlSeconds = options.accessTokenTtlSeconds ?? 3600;
    this.rotateRefreshTokens = options.rotateRefreshTokens ?? true;
    this.scope = options.scope ?? "https://mail.google.com/";
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
      (req) => this.#handle(req),
    );
    this.port = this.#server.addr.port;
    this.url = `http://127.0.0.1:${this.port}/token`;
  }

  /** Starts listening on 127.0.0.1 (needs `--allow-net=127.0.0.1`). */
  static start(options: TokenEndpointOptions = {}): Promise<TokenEndpoint> {
    return Promise.resolve(new TokenEndpoint(options));
  }

  /** Registers an account, replacing any account with the same email. */
  addAccount(account: SandboxAccount): void {
    const key = account.email.toLowerCase();
    this.revoke(key);
    this.#accounts.set(key, { ...account });
    this.#byRefreshToken.set(account.refreshToken, key);
  }

  /** The account's currently valid refresh token, or undefined if unknown or revoked. */
  currentRefreshToken(email: string): string | undefined {
    return this.#accounts.get(email.toLowerCase())?.refreshToken || undefined;
  }

  /**
   * Invalidates the account's refresh token, so the next refresh gets
   * `invalid_grant`. Access tokens already issued stay valid until they expire.
   */
  revoke(email: string): void {
    const account = this.#accounts.get(email.toLowerCase());
    if (!account) return;
    this.#byRefreshToken.delete(account.refreshToken);
    account.refreshToken = "";
  }

  /** True if `token` was issued by this endpoint for `email` and has not expired. */
  validateAccessToken(email: string, token: string): boolean {
    const issued = this.#accessTokens.get(token);
    return issued !== undefined &&
      issued.email === email.toLowerCase() &&
      Date.now() < issued.expiresAt;
  }

  /** Puts every fault setting back to "no fault". */
  resetFaults(): void {
    Object.assign(this.faults, noFaults());
  }

  /** Releases hanging and delayed requests and shuts the HTTP server down. Idempotent. */
  close(): Promise<void> {
    this.#closing.abort();
    this.#closed ??= this.#server.shutdown();
    return this.#closed;
  }

  async #handle(req: Request): Promise<Response> {
    this.stats.requests++;
    const faults = this.faults;
    if (faults.hang) {
      await this.#sleep(Infinity);
      return oauthError(503, "temporarily_unavailable", "Server closing");
    }
    if (faults.delayMs > 0) await this.#sleep(faults.delayMs);
    if (faults.failNext > 0) {
      faults.failNext--;
      return new Response(faults.failBody, {
        status: faults.failStatus,
        headers: { "content-type": faults.failContentType },
      });
    }
    if (new URL(req.url).pathname !== "/token") {
      return json(404, { error: "not_found" });
    }
    if (req.method !== "POST") {
      return json(405, { error: "method_not_allowed" }, { allow: "POST" });
    }
    const type = req.headers.get("content-type")?.split(";")[0].trim();
    if (type?.toLowerCase() !== "application/x-www-form-urlencoded") {
      return oauthError(
        400,
        "invalid_request",
        "Content-Type must be application/x-www-form-urlencoded",
      );
    }
    let params: URLSearchParams;
    try {
      params = new URLSearchParams(await req.text());
    } catch {
      return oauthError(400, "invalid_request", "Unreadable request body");
    }
    return this.#dispatch(params, req.headers.get("authorization"));
  }

  #dispatch(params: URLSearchParams, authorization: string | null): Response {
    const grantType = params.get("grant_type");
    if (!grantType) {
      return oauthError(400, "invalid_request", "Missing grant_type");
    }
    const grant = Object.hasOwn(this.#grants, grantType) ? this.#grants[grantType] : undefined;
    if (!grant) {
      return oauthError(
        400,
        "unsupported_grant_type",
        `Grant type ${JSON.stringify(grantType)} is not supported`,
      );
    }
    const client = this.#clientCredentials(params, authorization);
    // RFC 6749 §5.2: 401 with WWW-Authenticate when the client used the header.
    const challenge: Record<string, string> = authorization
      ? { "www-authenticate": 'Basic realm="sandbox"' }
      : {};
    if (!client || !this.#isKnownClient(client)) {
      return oauthError(
        401,
        "invalid_client",
        "Client authentication failed",
        challenge,
      );
    }
    return grant(params, client);
  }

  /** Client credentials from HTTP Basic if present, else from the body. */
  #clientCredentials(
    params: URLSearchParams,
    authorization: string | null,
  ): ClientCredentials | undefined {
    const basic = authorization?.match(/^Basic\s+(\S+)$/i);
    if (authorization && !basic) return undefined;
    if (basic) {
      const decoded = Buffer.from(basic[1], "base64").toString("utf8");
      const colon = decoded.indexOf(":");
      if (colon < 0) return undefined;
      try {
        return {
          clientId: formDecode(decoded.slice(0, colon)),
          clientSecret: formDecode(decoded.slice(colon + 1)),
        };
      } catch {
        return undefined;
      }
    }
    const clientId = params.get("client_id");
    if (!clientId) return undefined;
    return { clientId, clientSecret: params.get("client_secret") ?? undefined };
  }

  #isKnownClient(client: ClientCredentials): boolean {
    for (const account of this.#accounts.values()) {
      if (this.#clientMatches(account, client)) return true;
    }
    return false;
  }

  #clientMatches(account: SandboxAccount, client: ClientCredentials): boolean {
    if (account.clientId !== client.clientId) return false;
    if (account.clientSecret === undefined) return true;
    return client.clientSecret !== undefined &&
      sameSecret(account.clientSecret, client.clientSecret);
  }

  #refreshTokenGrant(
    params: URLSearchParams,
    client: ClientCredentials,
  ): Response {
    const refreshToken = params.get("refresh_token");
    if (!refreshToken) {
      return oauthError(400, "invalid_request", "Missing refresh_token");
    }
    const email = this.#byRefreshToken.get(refreshToken);
    const account = email === undefined ? undefined : this.#accounts.get(email);
    if (!email || !account || !this.#clientMatches(account, client)) {
      return oauthError(
        400,
        "invalid_grant",
        "The refresh token is invalid, expired, revoked or was issued to another client",
      );
    }
    const accessToken = this.#issueAccessToken(email);
    this.stats.refreshes++;
    this.stats.refreshesByEmail.set(
      email,
      (this.stats.refreshesByEmail.get(email) ?? 0) + 1,
    );
    const body: Record<string, string | number> = {
      access_token: accessToken,
      token_type: "Bearer",
      expires_in: Math.max(0, Math.round(this.accessTokenTtlSeconds)),
      scope: this.scope,
    };
    if (this.rotateRefreshTokens) {
      this.#byRefreshToken.delete(refreshToken);
      account.refreshToken = randomToken();
      this.#byRefreshToken.set(account.refreshToken, email);
      body.refresh_token = account.refreshToken;
    }
    return json(200, body);
  }

  #issueAccessToken(email: string): string {
    const now = Date.now();
    for (const [token, issued] of this.#accessTokens) {
      if (issued.expiresAt <= now) this.#accessTokens.delete(token);
    }
    const token = randomToken();
    this.#accessTokens.set(token, {
      email,
      expiresAt: now + this.accessTokenTtlSeconds * 1000,
    });
    return token;
  }

  /**
   * Waits `ms` (Infinity: forever) or until the endpoint closes. A client that
   * gives up does not end the wait: watching `request.signal` makes Deno warn
   * about its legacy abort-on-success behaviour.
   */
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
