/**
 * Sandbox OAuth2 token endpoint (RFC 6749), for the demo and integration tests.
 *
 * Listens on 127.0.0.1 with `Deno.serve`:
 *
 * - `POST /token`: grants `refresh_token`, `authorization_code` (PKCE S256 required) and
 *   `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628: `authorization_pending`,
 *   `slow_down`, `expired_token`, `access_denied`);
 * - `POST /devicecode`: device authorization (RFC 8628 §3.1); tests approve or deny the
 *   user code with {@link TokenEndpoint.approveDevice} / {@link TokenEndpoint.denyDevice},
 *   a person by opening `verification_uri_complete` (`GET /device?user_code=…`);
 * - `GET /authorize`: authorization endpoint that approves at once for the registered
 *   account named by `login_hint` (or {@link TokenEndpoint.authorizeAs}) and redirects
 *   (302) to a loopback `redirect_uri` with `code`, `state` and `iss` (RFC 9207).
 *
 * - `POST /token` also answers the app-only grants ({@link TokenEndpoint.appOnly}, see
 *   `app_only.ts`): Google's JWT bearer grant for service accounts and Microsoft's
 *   client credentials grant (secret or certificate).
 *
 * Refresh tokens rotate on every use like Microsoft's, unless
 * {@link TokenEndpoint.rotateRefreshTokens} is false. A refresh token issued by the
 * device-code or authorization-code grant replaces the account's current one (the old
 * one stops working), so a relay can use it at once.
 *
 * Never logs tokens or secrets.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import { AppOnlyGrants, type AppTokenOwner } from "./app_only.ts";

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
  /** Polling `interval` the device authorization endpoint asks for, in seconds (default 5). */
  deviceIntervalSeconds?: number;
  /** Lifetime of device and user codes in seconds (default 900). */
  deviceCodeTtlSeconds?: number;
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
  /** Answer the next N device-code polls with `slow_down`, however politely they came. */
  slowDownNext: number;
}

/** Request counters of a {@link TokenEndpoint}. */
export interface TokenEndpointStats {
  /** HTTP requests received, on any path, including failed and faulted ones. */
  requests: number;
  /** Successful refresh_token grants. */
  refreshes: number;
  /** Successful refresh_token grants per lower-cased email. */
  refreshesByEmail: Map<string, number>;
  /** Device authorizations started (`POST /devicecode`). */
  deviceAuthorizations: number;
  /** Device-code grant requests (polls), whatever their answer. */
  devicePolls: number;
  /** `slow_down` answers, forced or earned. */
  slowDowns: number;
  /** Authorization codes issued by `GET /authorize`. */
  authorizationCodes: number;
  /** Refresh tokens issued by the device-code and authorization-code grants. */
  authorizations: number;
}

/** What the sandbox knows about one device authorization (for test assertions). */
export interface DeviceAuthorizationInfo {
  /** Client that started it. */
  readonly clientId: string;
  /** `Date.now()` of each poll, oldest first. */
  readonly polls: readonly number[];
  /** `pending`, `approved`, `denied`, `done` (tokens issued) or `expired`. */
  readonly status: "pending" | "approved" | "denied" | "done" | "expired";
  /** The scope the client asked for, if any. */
  readonly scope?: string;
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
    slowDownNext: 0,
  };
}

interface IssuedToken {
  email: string;
  expiresAt: number;
  /** For tokens of the app-only grants: whom it was issued to. */
  owner?: AppTokenOwner;
  /** The scope the client asked for (the endpoint's {@link TokenEndpoint.scope} if none). */
  scope: string;
}

/** What the endpoint knows of an access token it issued (for the sandbox's HTTP APIs). */
export interface AccessTokenInfo {
  /** Lower-cased mailbox it was issued for. */
  readonly email: string;
  /** Space-separated scopes granted. */
  readonly scope: string;
  /** When it expires (`Date.now()` scale). */
  readonly expiresAt: number;
}

interface DeviceGrant {
  clientId: string;
  userCode: string;
  expiresAt: number;
  polls: number[];
  /** Lower-cased email once approved; `null` when denied. */
  decision?: string | null;
  done: boolean;
  /** The scope asked for; granted as asked. */
  scope?: string;
}

interface AuthorizationCode {
  email: string;
  clientId: string;
  redirectUri: string;
  codeChallenge: string;
  expiresAt: number;
  /** The scope asked for; granted as asked. */
  scope?: string;
}

/** Lifetime of authorization codes, in ms (RFC 6749 §4.1.2 recommends at most 10 min). */
const AUTHORIZATION_CODE_TTL_MS = 60_000;
/** Polls this much early still count as honouring the interval (timer granularity). */
const POLL_TOLERANCE_MS = 50;
/** User-code alphabet without look-alikes (RFC 8628 §6.1). */
const USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ";
const DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

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

/** A user code such as `BCDF-GHJK`. */
function randomUserCode(): string {
  const pick = () => USER_CODE_ALPHABET[randomInt(USER_CODE_ALPHABET.length)];
  const half = () => Array.from({ length: 4 }, pick).join("");
  return `${half()}-${half()}`;
}

/** `BASE64URL(SHA256(verifier))`, the PKCE S256 transformation (RFC 7636 §4.2). */
function s256(verifier: string): string {
  return createHash("sha256").update(verifier).digest("base64url");
}

/** True for `http://127.0.0.1…`, `http://[::1]…` and `http://localhost…` (RFC 8252 §7.3). */
function isLoopbackRedirect(uri: string): boolean {
  try {
    const url = new URL(uri);
    return url.protocol === "http:" && !url.hash &&
      ["127.0.0.1", "[::1]", "localhost"].includes(url.hostname);
  } catch {
    return false;
  }
}

/** A small plain-text page for the browser (authorization and device endpoints). */
function page(status: number, text: string): Response {
  return new Response(text + "\n", {
    status,
    headers: { "content-type": "text/plain;charset=UTF-8", "cache-control": "no-store" },
  });
}

/** Decodes one half of HTTP Basic client credentials (RFC 6749 §2.3.1). */
function formDecode(value: string): string {
  return decodeURIComponent(value.replaceAll("+", " "));
}

/** The sandbox OAuth2 token endpoint. Create with {@link TokenEndpoint.start}. */
export class TokenEndpoint {
  /** Full URL of the token endpoint, `http://127.0.0.1:PORT/token`. */
  readonly url: string;
  /** Authorization endpoint, `http://127.0.0.1:PORT/authorize`. */
  readonly authorizeUrl: string;
  /** Device authorization endpoint, `http://127.0.0.1:PORT/devicecode`. */
  readonly deviceCodeUrl: string;
  /** Issuer identifier (`iss` in authorization responses): `http://127.0.0.1:PORT`. */
  readonly issuer: string;
  /** Port the endpoint listens on. */
  readonly port: number;
  /** Fault injection; see {@link TokenEndpointFaults}. */
  readonly faults: TokenEndpointFaults = noFaults();
  /** Request counters. */
  readonly stats: TokenEndpointStats = {
    requests: 0,
    refreshes: 0,
    refreshesByEmail: new Map(),
    deviceAuthorizations: 0,
    devicePolls: 0,
    slowDowns: 0,
    authorizationCodes: 0,
    authorizations: 0,
  };
  /** Lifetime of newly issued access tokens in seconds; 0 issues tokens that are already expired. */
  accessTokenTtlSeconds: number;
  /** Rotate refresh tokens on every refresh (Microsoft-style). */
  rotateRefreshTokens: boolean;
  /** `scope` reported in token responses. */
  scope: string;
  /** Polling interval advertised for device codes, seconds; polls closer together get `slow_down`. */
  deviceIntervalSeconds: number;
  /** Lifetime of new device and user codes, seconds. */
  deviceCodeTtlSeconds: number;
  /** Account `GET /authorize` approves for when the request has no `login_hint`. */
  authorizeAs?: string;
  /** Make `GET /authorize` redirect with `error=access_denied` (the user said no). */
  denyAuthorizations = false;
  /** Service accounts and app registrations (the app-only grants); see `app_only.ts`. */
  readonly appOnly: AppOnlyGrants;

  readonly #accounts = new Map<string, SandboxAccount>();
  readonly #byRefreshToken = new Map<string, string>();
  readonly #accessTokens = new Map<string, IssuedToken>();
  readonly #deviceGrants = new Map<string, DeviceGrant>();
  readonly #byUserCode = new Map<string, string>();
  readonly #codes = new Map<string, AuthorizationCode>();
  readonly #closing = new AbortController();
  #closed: Promise<void> | undefined;
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #grants: Record<string, GrantHandler> = {
    refresh_token: (params, client) => this.#refreshTokenGrant(params, client),
    authorization_code: (params, client) => this.#authorizationCodeGrant(params, client),
    [DEVICE_CODE_GRANT]: (params, client) => this.#deviceCodeGrant(params, client),
  };

  private constructor(options: TokenEndpointOptions) {
    this.accessTokenTtlSeconds = options.accessTokenTtlSeconds ?? 3600;
    this.rotateRefreshTokens = options.rotateRefreshTokens ?? true;
    this.scope = options.scope ?? "https://mail.google.com/";
    this.deviceIntervalSeconds = options.deviceIntervalSeconds ?? 5;
    this.deviceCodeTtlSeconds = options.deviceCodeTtlSeconds ?? 900;
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
      (req) => this.#handle(req),
    );
    this.port = this.#server.addr.port;
    this.issuer = `http://127.0.0.1:${this.port}`;
    this.url = `${this.issuer}/token`;
    this.authorizeUrl = `${this.issuer}/authorize`;
    this.deviceCodeUrl = `${this.issuer}/devicecode`;
    this.appOnly = new AppOnlyGrants(this.url);
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
      (issued.owner?.kind === "app" || issued.email === email.toLowerCase()) &&
      Date.now() < issued.expiresAt;
  }

  /**
   * The provider's SMTP answer when a live `token` is used for `email` and the mailbox
   * may not send with it (`535 5.7.3`: an app token without the mailbox permission or
   * admin consent; `535 5.7.139`: SMTP AUTH off for the mailbox); undefined otherwise.
   */
  mailboxVerdict(email: string, token: string): string | undefined {
    const issued = this.#accessTokens.get(token);
    if (!issued || Date.now() >= issued.expiresAt) return undefined;
    return this.appOnly.mailboxVerdict(email, issued.owner);
  }

  /**
   * The token's account and granted scope, if this endpoint issued it and it has not
   * expired (the sandbox's HTTP APIs check the scope with it).
   */
  accessTokenInfo(token: string): AccessTokenInfo | undefined {
    const issued = this.#accessTokens.get(token);
    if (issued === undefined || Date.now() >= issued.expiresAt) return undefined;
    return { email: issued.email, scope: issued.scope, expiresAt: issued.expiresAt };
  }

  /**
   * Approves a pending device authorization (the user entered `userCode` and signed in
   * as `email`). Throws if the code is unknown or expired, or the account is not
   * registered for the client that asked.
   */
  approveDevice(userCode: string, email: string): void {
    const grant = this.#pendingDevice(userCode);
    const key = email.toLowerCase();
    const account = this.#accounts.get(key);
    if (!account || account.clientId !== grant.clientId) {
      throw new Error(`no account ${email} registered for client ${grant.clientId}`);
    }
    grant.decision = key;
  }

  /** Denies a pending device authorization: the next poll gets `access_denied`. */
  denyDevice(userCode: string): void {
    this.#pendingDevice(userCode).decision = null;
  }

  /** Polls and status of the device authorization with `userCode`, if known. */
  deviceAuthorization(userCode: string): DeviceAuthorizationInfo | undefined {
    const deviceCode = this.#byUserCode.get(userCode.toUpperCase());
    const grant = deviceCode === undefined ? undefined : this.#deviceGrants.get(deviceCode);
    if (!grant) return undefined;
    const status = grant.done
      ? "done"
      : Date.now() >= grant.expiresAt
      ? "expired"
      : grant.decision === undefined
      ? "pending"
      : grant.decision === null
      ? "denied"
      : "approved";
    return {
      clientId: grant.clientId,
      polls: [...grant.polls],
      status,
      ...(grant.scope === undefined ? {} : { scope: grant.scope }),
    };
  }

  #pendingDevice(userCode: string): DeviceGrant {
    const deviceCode = this.#byUserCode.get(userCode.toUpperCase());
    const grant = deviceCode === undefined ? undefined : this.#deviceGrants.get(deviceCode);
    if (!grant || grant.done || Date.now() >= grant.expiresAt) {
      throw new Error(`no pending device authorization with user code ${userCode}`);
    }
    return grant;
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
    const url = new URL(req.url);
    if (url.pathname === "/authorize" || url.pathname === "/device") {
      if (req.method !== "GET") return page(405, "Method not allowed");
      return url.pathname === "/authorize"
        ? this.#authorize(url.searchParams)
        : this.#deviceVerification(url.searchParams);
    }
    if (url.pathname !== "/token" && url.pathname !== "/devicecode") {
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
    const authorization = req.headers.get("authorization");
    if (url.pathname === "/token" && this.appOnly.handles(params.get("grant_type"))) {
      return await this.#appOnlyGrant(params, authorization);
    }
    return url.pathname === "/token"
      ? this.#dispatch(params, authorization)
      : this.#authenticated(params, authorization, (client) =>
        this.#deviceAuthorize(client, params.get("scope") ?? undefined));
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
    return this.#authenticated(params, authorization, (client) => grant(params, client));
  }

  /** Runs `handler` for a known client, else answers `invalid_client` (RFC 6749 §5.2). */
  #authenticated(
    params: URLSearchParams,
    authorization: string | null,
    handler: (client: ClientCredentials) => Response,
  ): Response {
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
    return handler(client);
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
    // The scope asked for is the scope granted (a refresh may narrow it, RFC 6749 §6).
    const accessToken = this.#issueAccessToken(email, params.get("scope") ?? undefined);
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

  /** `POST /devicecode` (RFC 8628 §3.1–3.2). */
  #deviceAuthorize(client: ClientCredentials, scope?: string): Response {
    this.#dropExpiredDeviceGrants();
    const deviceCode = randomToken();
    let userCode = randomUserCode();
    while (this.#byUserCode.has(userCode)) userCode = randomUserCode();
    this.#deviceGrants.set(deviceCode, {
      clientId: client.clientId,
      userCode,
      expiresAt: Date.now() + this.deviceCodeTtlSeconds * 1000,
      polls: [],
      done: false,
      scope,
    });
    this.#byUserCode.set(userCode, deviceCode);
    this.stats.deviceAuthorizations++;
    const verificationUri = `${this.issuer}/device`;
    return json(200, {
      device_code: deviceCode,
      user_code: userCode,
      verification_uri: verificationUri,
      verification_uri_complete: `${verificationUri}?user_code=${userCode}`,
      expires_in: this.deviceCodeTtlSeconds,
      interval: this.deviceIntervalSeconds,
    });
  }

  /** The `device_code` grant (RFC 8628 §3.4–3.5). */
  #deviceCodeGrant(params: URLSearchParams, client: ClientCredentials): Response {
    this.stats.devicePolls++;
    const deviceCode = params.get("device_code");
    if (!deviceCode) return oauthError(400, "invalid_request", "Missing device_code");
    const grant = this.#deviceGrants.get(deviceCode);
    if (!grant || grant.done || grant.clientId !== client.clientId) {
      return oauthError(400, "invalid_grant", "Unknown or used device_code");
    }
    const now = Date.now();
    const previous = grant.polls.at(-1);
    grant.polls.push(now);
    if (now >= grant.expiresAt) {
      return oauthError(400, "expired_token", "The device code has expired");
    }
    const tooSoon = previous !== undefined &&
      now - previous < this.deviceIntervalSeconds * 1000 - POLL_TOLERANCE_MS;
    if (this.faults.slowDownNext > 0 || tooSoon) {
      if (!tooSoon) this.faults.slowDownNext--;
      this.stats.slowDowns++;
      return oauthError(400, "slow_down", "Polling too often; add 5 seconds to the interval");
    }
    if (grant.decision === undefined) {
      return oauthError(400, "authorization_pending", "The user has not answered yet");
    }
    grant.done = true;
    if (grant.decision === null) {
      return oauthError(400, "access_denied", "The user denied the authorization request");
    }
    return this.#authorizationTokens(grant.decision, client, grant.scope);
  }

  /** `GET /device?user_code=…[&email=…]`: a person approving in the browser. */
  #deviceVerification(query: URLSearchParams): Response {
    const userCode = query.get("user_code") ?? "";
    const deviceCode = this.#byUserCode.get(userCode.toUpperCase());
    const grant = deviceCode === undefined ? undefined : this.#deviceGrants.get(deviceCode);
    if (!grant) return page(400, "Sandbox: unknown user code; open verification_uri_complete.");
    const email = query.get("email") ?? this.authorizeAs ??
      this.#soleAccountOf(grant.clientId);
    if (!email) {
      return page(400, "Sandbox: several accounts use this client; add &email=ADDRESS.");
    }
    try {
      this.approveDevice(userCode, email);
    } catch (err) {
      return page(400, `Sandbox: ${(err as Error).message}.`);
    }
    return page(200, `Sandbox: approved for ${email}. Return to the command line.`);
  }

  #soleAccountOf(clientId: string): string | undefined {
    const matches = [...this.#accounts.values()].filter((a) => a.clientId === clientId);
    return matches.length === 1 ? matches[0].email : undefined;
  }

  #dropExpiredDeviceGrants(): void {
    const now = Date.now();
    for (const [deviceCode, grant] of this.#deviceGrants) {
      // Kept a while after expiry so late polls still get `expired_token`.
      if (grant.expiresAt + 600_000 <= now) {
        this.#deviceGrants.delete(deviceCode);
        this.#byUserCode.delete(grant.userCode);
      }
    }
  }

  /**
   * `GET /authorize` (RFC 6749 §4.1.1, RFC 7636): approves at once for the account named
   * by `login_hint` (or {@link authorizeAs}). Client and redirect URI errors are shown,
   * never redirected (§4.1.2.1).
   */
  #authorize(query: URLSearchParams): Response {
    const clientId = query.get("client_id") ?? "";
    const redirectUri = query.get("redirect_uri") ?? "";
    if (![...this.#accounts.values()].some((a) => a.clientId === clientId)) {
      return page(400, "Sandbox: unknown client_id.");
    }
    if (!isLoopbackRedirect(redirectUri)) {
      return page(400, "Sandbox: redirect_uri must be a loopback http:// URL (RFC 8252).");
    }
    const back = (result: Record<string, string>) => {
      const target = new URL(redirectUri);
      const state = query.get("state");
      for (const [name, value] of Object.entries(result)) target.searchParams.set(name, value);
      if (state !== null) target.searchParams.set("state", state);
      target.searchParams.set("iss", this.issuer);
      return new Response(null, {
        status: 302,
        headers: { location: target.href, "cache-control": "no-store" },
      });
    };
    const error = (code: string, description: string) =>
      back({ error: code, error_description: description });
    if (query.get("response_type") !== "code") {
      return error("unsupported_response_type", "Only response_type=code is supported");
    }
    const codeChallenge = query.get("code_challenge");
    if (!codeChallenge || query.get("code_challenge_method") !== "S256") {
      return error("invalid_request", "PKCE with code_challenge_method=S256 is required");
    }
    if (this.denyAuthorizations) {
      return error("access_denied", "The user denied the authorization request");
    }
    const email = (query.get("login_hint") ?? this.authorizeAs ?? "").toLowerCase();
    if (this.#accounts.get(email)?.clientId !== clientId) {
      return error("access_denied", "No such account for this client");
    }
    const code = randomToken();
    const now = Date.now();
    for (const [old, issued] of this.#codes) if (issued.expiresAt <= now) this.#codes.delete(old);
    this.#codes.set(code, {
      email,
      clientId,
      redirectUri,
      codeChallenge,
      expiresAt: now + AUTHORIZATION_CODE_TTL_MS,
      scope: query.get("scope") ?? undefined,
    });
    this.stats.authorizationCodes++;
    return back({ code });
  }

  /** The `authorization_code` grant with PKCE (RFC 6749 §4.1.3, RFC 7636 §4.6). */
  #authorizationCodeGrant(params: URLSearchParams, client: ClientCredentials): Response {
    const code = params.get("code");
    if (!code) return oauthError(400, "invalid_request", "Missing code");
    const issued = this.#codes.get(code);
    this.#codes.delete(code); // single use, whatever happens next
    const verifier = params.get("code_verifier");
    const account = issued && this.#accounts.get(issued.email);
    const problem = !issued || !account || Date.now() >= issued.expiresAt
      ? "The authorization code is invalid, expired or used"
      : issued.clientId !== client.clientId || !this.#clientMatches(account, client)
      ? "The authorization code was issued to another client"
      : params.get("redirect_uri") !== issued.redirectUri
      ? "redirect_uri does not match the authorization request"
      : !verifier || !sameSecret(s256(verifier), issued.codeChallenge)
      ? "PKCE verification failed (code_verifier)"
      : undefined;
    if (problem) return oauthError(400, "invalid_grant", problem);
    return this.#authorizationTokens(issued!.email, client, issued!.scope);
  }

  /**
   * Tokens for a completed authorization: a fresh access token and a new refresh token
   * that replaces the account's current one.
   */
  #authorizationTokens(email: string, client: ClientCredentials, scope = this.scope): Response {
    const account = this.#accounts.get(email);
    if (!account || !this.#clientMatches(account, client)) {
      return oauthError(400, "invalid_grant", "The grant was issued to another client");
    }
    this.#byRefreshToken.delete(account.refreshToken);
    account.refreshToken = randomToken();
    this.#byRefreshToken.set(account.refreshToken, email);
    this.stats.authorizations++;
    return json(200, {
      access_token: this.#issueAccessToken(email, scope),
      token_type: "Bearer",
      expires_in: Math.max(0, Math.round(this.accessTokenTtlSeconds)),
      refresh_token: account.refreshToken,
      scope,
    });
  }

  /** The JWT bearer and client credentials grants: decided by {@link appOnly}. */
  async #appOnlyGrant(params: URLSearchParams, authorization: string | null): Promise<Response> {
    const verdict = await this.appOnly.decide(params, authorization);
    if (!("owner" in verdict)) {
      return oauthError(verdict.status, verdict.error, verdict.description);
    }
    const owner = verdict.owner;
    const token = this.#issueAccessToken(
      owner.kind === "mailbox" ? owner.email : "",
      params.get("scope") ?? this.scope,
      owner,
    );
    return json(200, {
      access_token: token,
      token_type: "Bearer",
      expires_in: Math.max(0, Math.round(this.accessTokenTtlSeconds)),
    });
  }

  #issueAccessToken(email: string, scope = this.scope, owner?: AppTokenOwner): string {
    const now = Date.now();
    for (const [token, issued] of this.#accessTokens) {
      if (issued.expiresAt <= now) this.#accessTokens.delete(token);
    }
    const token = randomToken();
    this.#accessTokens.set(token, {
      email,
      expiresAt: now + this.accessTokenTtlSeconds * 1000,
      ...(owner ? { owner } : {}),
      scope,
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
