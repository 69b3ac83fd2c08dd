/**
 * Interactive OAuth2 authorization, through oauth4webapi: obtains a refresh token for one
 * account, by the device-code flow (RFC 8628) or by authorization code + PKCE (RFC 7636)
 * with a loopback redirect listener (RFC 8252) or a pasted redirected URL.
 *
 * Errors are {@link AuthorizeError}s whose `message` holds no secret: oauth4webapi's own
 * errors carry response bodies in `cause` and are never passed on.
 * @module
 */
import * as oauth from "oauth4webapi";
import { clip } from "../text.ts";
import { REAL_TIMING, type Timing } from "./clock.ts";
import type { OAuthClient } from "./oauth.ts";

/** What a successful authorization yields. */
export interface AuthorizeResult {
  /** The new refresh token. Secret: store it, never log it. */
  readonly refreshToken: string;
  /** Scope the provider granted, when it said. */
  readonly scope?: string;
  /** The access token that came with it (secret), to check the login before storing. */
  readonly accessToken: string;
}

/**
 * A failed authorization; `message` is one line without secrets. `code` is the OAuth2
 * error (`access_denied`, `expired_token`, `invalid_client`, …) or one of
 * `state_mismatch`, `timeout`, `aborted`, `unreachable`, `invalid_response`,
 * `no_refresh_token`.
 */
export class AuthorizeError extends Error {
  /** Machine-readable reason. */
  readonly code: string;
  /** Builds the error. */
  constructor(code: string, message: string) {
    super(message);
    this.name = "AuthorizeError";
    this.code = code;
  }
}

/** What to show the user of a device-code flow. */
export interface DevicePrompt {
  /** Code the user types at {@link verificationUri}. */
  readonly userCode: string;
  /** Where the user goes to enter the code. */
  readonly verificationUri: string;
  /** The same with the code filled in, when the provider offers it. */
  readonly verificationUriComplete?: string;
  /** Seconds until the code expires. */
  readonly expiresInSeconds: number;
}

/** Options of {@link authorizeWithDeviceCode}. */
export interface DeviceCodeOptions {
  /** Client and token endpoint. */
  readonly client: OAuthClient;
  /** Device authorization endpoint. */
  readonly deviceCodeUrl: string;
  /** Called once with the code and URL to show the user. */
  readonly onPrompt: (prompt: DevicePrompt) => void;
  /** Cancels the flow (rejects with code `aborted`). */
  readonly signal?: AbortSignal;
  /** Clock and sleep (default {@link REAL_TIMING}). */
  readonly timing?: Timing;
  /** Time allowed to one HTTP request, ms (default 15000). */
  readonly requestTimeoutMs?: number;
}

/** Consecutive network/5xx failures tolerated while polling. */
const MAX_TRANSIENT_POLL_FAILURES = 3;
/** RFC 8628 §3.5: `slow_down` adds 5 seconds to the interval, for good. */
const SLOW_DOWN_MS = 5000;

/**
 * The device-code flow: asks for a code, shows it through `onPrompt`, then polls the
 * token endpoint every `interval` seconds (5 when unsaid), adding 5 s on each
 * `slow_down`, until the user approves, denies, or the code expires.
 */
export async function authorizeWithDeviceCode(o: DeviceCodeOptions): Promise<AuthorizeResult> {
  const timing = o.timing ?? REAL_TIMING;
  const ctx = context(o.client, o.deviceCodeUrl, undefined, o.requestTimeoutMs, o.signal);
  const as = { ...ctx.as, device_authorization_endpoint: o.deviceCodeUrl };
  const started = timing.now();
  const device = await call(ctx, async (options) => {
    const params = { scope: o.client.scope };
    const response = await oauth.deviceAuthorizationRequest(as, ctx.c, ctx.auth, params, options);
    return oauth.processDeviceAuthorizationResponse(as, ctx.c, response);
  });
  o.onPrompt({
    userCode: device.user_code,
    verificationUri: device.verification_uri,
    verificationUriComplete: device.verification_uri_complete,
    expiresInSeconds: device.expires_in,
  });
  const deadline = started + device.expires_in * 1000;
  let intervalMs = (device.interval ?? 5) * 1000;
  let transientFailures = 0;
  while (true) {
    await pause(timing, intervalMs, o.signal);
    if (timing.now() >= deadline) throw expired();
    try {
      const body = await call(ctx, async (options) => {
        const response = await oauth.deviceCodeGrantRequest(
          as,
          ctx.c,
          ctx.auth,
          device.device_code,
          options,
        );
        return oauth.processDeviceCodeResponse(as, ctx.c, response);
      });
      return result(body);
    } catch (err) {
      if (!(err instanceof AuthorizeError)) throw err;
      if (err.code === "authorization_pending") {
        transientFailures = 0;
      } else if (err.code === "slow_down") {
        transientFailures = 0;
        intervalMs += SLOW_DOWN_MS;
      } else if (err.code === "expired_token") {
        throw expired();
      } else if (!isTransient(err) || ++transientFailures > MAX_TRANSIENT_POLL_FAILURES) {
        throw err;
      }
    }
  }
}

/** Options of {@link authorizeWithPkce}. */
export interface PkceOptions {
  /** Client and token endpoint. */
  readonly client: OAuthClient;
  /** Authorization endpoint the user opens in a browser. */
  readonly authorizeUrl: string;
  /**
   * The provider's issuer identifier, checked against an `iss` in the redirect (RFC 9207),
   * e.g. `https://accounts.google.com`. When unknown, an `iss` is ignored.
   */
  readonly issuer?: string;
  /** `login_hint`: the account to sign in as. */
  readonly loginHint?: string;
  /** More authorization request parameters (Google: `access_type=offline`, `prompt=consent`). */
  readonly extraParameters?: Readonly<Record<string, string>>;
  /** Port of the loopback listener on 127.0.0.1 (default 0: any free port). */
  readonly port?: number;
  /** Called once with the URL to open and the redirect URI the listener serves. */
  readonly onAuthorizationUrl: (url: string, redirectUri: string) => void;
  /**
   * Lines the user may paste instead (e.g. stdin lines): the URL the browser was
   * redirected to. Whichever of listener and paste comes first wins; the source is asked
   * to stop (`return()`) once the flow settles.
   */
  readonly pastedUrls?: AsyncIterable<string>;
  /** Called when a pasted line is not a redirected URL (the flow keeps waiting). */
  readonly onPasteIgnored?: (reason: string) => void;
  /** Cancels the flow (rejects with code `aborted`). */
  readonly signal?: AbortSignal;
  /** Give up after this long without a redirect, ms (default 600000). */
  readonly timeoutMs?: number;
  /** Clock and sleep for the timeout (default {@link REAL_TIMING}). */
  readonly timing?: Timing;
  /** Time allowed to the token request, ms (default 15000). */
  readonly requestTimeoutMs?: number;
}

/** A redirect that reached us, and how to answer the browser if it came that way. */
interface Redirect {
  readonly params: URLSearchParams;
  readonly reply?: (status: number, text: string) => void;
}

/**
 * Authorization code + PKCE: listens on `127.0.0.1:port`, hands out the authorization
 * URL, and exchanges the code from the first redirect (or pasted URL) whose `state`
 * matches. A redirect with another `state` fails the flow with code `state_mismatch`.
 */
export async function authorizeWithPkce(o: PkceOptions): Promise<AuthorizeResult> {
  const timing = o.timing ?? REAL_TIMING;
  const ctx = context(o.client, o.authorizeUrl, o.issuer, o.requestTimeoutMs, o.signal);
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const arrived = Promise.withResolvers<Redirect>();
  let open = true; // until the first redirect, timeout or abort
  const offer = (redirect: Redirect) => {
    if (!open) return false;
    open = false;
    arrived.resolve(redirect);
    return true;
  };
  const fail = (error: AuthorizeError) => {
    if (open) arrived.reject(error);
    open = false;
  };
  const server = listen(o.port ?? 0, offer);
  const redirectUri = `http://127.0.0.1:${server.addr.port}`;
  const stop = new AbortController();
  try {
    const url = new URL(o.authorizeUrl);
    const query: Record<string, string> = {
      response_type: "code",
      client_id: o.client.clientId,
      redirect_uri: redirectUri,
      scope: o.client.scope,
      state,
      code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
      code_challenge_method: "S256",
      ...(o.loginHint ? { login_hint: o.loginHint } : {}),
      ...o.extraParameters,
    };
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    o.onAuthorizationUrl(url.href, redirectUri);
    if (o.pastedUrls) readPasted(o.pastedUrls, stop.signal, offer, o.onPasteIgnored);
    timing.sleep(o.timeoutMs ?? 600_000, stop.signal).then(
      () => fail(new AuthorizeError("timeout", "no redirect arrived in time")),
      () => {},
    );
    o.signal?.addEventListener("abort", () => fail(aborted()), { signal: stop.signal });
    if (o.signal?.aborted) throw aborted();
    const redirect = await arrived.promise;
    try {
      const body = await exchange(ctx, redirect.params, state, redirectUri, verifier);
      redirect.reply?.(200, "Authorized: the relay has its token. You can close this tab.");
      return body;
    } catch (err) {
      redirect.reply?.(400, `Authorization failed: ${(err as Error).message}`);
      throw err;
    }
  } finally {
    stop.abort();
    await server.shutdown();
  }
}

/** Checks the redirect (state first, then oauth4webapi's checks) and redeems the code. */
async function exchange(
  ctx: Context,
  received: URLSearchParams,
  state: string,
  redirectUri: string,
  verifier: string,
): Promise<AuthorizeResult> {
  if (received.get("state") !== state) {
    throw new AuthorizeError(
      "state_mismatch",
      "the redirect's state does not match this authorization request (stale or forged " +
        "redirect); nothing was stored",
    );
  }
  const params = new URLSearchParams(received);
  if (ctx.issuerUnknown) params.delete("iss");
  return await call(ctx, async (options) => {
    const checked = oauth.validateAuthResponse(ctx.as, ctx.c, params, state);
    const response = await oauth.authorizationCodeGrantRequest(
      ctx.as,
      ctx.c,
      ctx.auth,
      checked,
      redirectUri,
      verifier,
      options,
    );
    return result(await oauth.processAuthorizationCodeResponse(ctx.as, ctx.c, response));
  });
}

/**
 * The loopback listener: offers each redirect to `offer`; the one taken is answered once
 * the code is redeemed, any other at once.
 */
function listen(
  port: number,
  offer: (redirect: Redirect) => boolean,
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    const params = url.searchParams;
    const isRedirect = params.has("code") || params.has("error") || params.has("state");
    if (req.method !== "GET" || url.pathname !== "/" || !isRedirect) {
      return text(404, "Not an authorization redirect.");
    }
    const answer = Promise.withResolvers<Response>();
    const taken = offer({ params, reply: (status, body) => answer.resolve(text(status, body)) });
    return taken ? answer.promise : text(409, "This authorization is already finished.");
  });
}

/** Feeds pasted lines that look like a redirect to `deliver` until `signal` aborts. */
async function readPasted(
  lines: AsyncIterable<string>,
  signal: AbortSignal,
  offer: (redirect: Redirect) => boolean,
  onIgnored?: (reason: string) => void,
): Promise<void> {
  const iterator = lines[Symbol.asyncIterator]();
  signal.addEventListener("abort", () => iterator.return?.()?.catch(() => {}), { once: true });
  try {
    while (!signal.aborted) {
      const next = await iterator.next();
      if (next.done || signal.aborted) return;
      const params = redirectParams(next.value);
      if (params) return void offer({ params });
      if (next.value.trim()) {
        onIgnored?.("not a redirected URL: expected one with ?code=…&state=… (or ?error=…)");
      }
    }
  } catch {
    // The paste source failed (e.g. stdin closed): the listener may still get the redirect.
  }
}

/** Query parameters of a pasted redirected URL (or bare query), if it is one. */
function redirectParams(line: string): URLSearchParams | undefined {
  const trimmed = line.trim();
  let params: URLSearchParams;
  try {
    params = new URL(trimmed).searchParams;
  } catch {
    params = new URLSearchParams(trimmed.replace(/^\?/, ""));
  }
  return params.has("code") || params.has("error") ? params : undefined;
}

/** What every request of one flow shares. */
interface Context {
  readonly as: oauth.AuthorizationServer;
  readonly c: oauth.Client;
  readonly auth: oauth.ClientAuth;
  readonly issuerUnknown: boolean;
  readonly insecure: boolean;
  readonly requestTimeoutMs: number;
  readonly signal?: AbortSignal;
}

function context(
  client: OAuthClient,
  otherUrl: string,
  issuer: string | undefined,
  requestTimeoutMs = 15_000,
  signal?: AbortSignal,
): Context {
  const token = new URL(client.tokenUrl);
  return {
    as: { issuer: issuer ?? new URL(otherUrl).origin, token_endpoint: token.href },
    c: { client_id: client.clientId },
    auth: client.clientSecret ? oauth.ClientSecretPost(client.clientSecret) : oauth.None(),
    issuerUnknown: issuer === undefined,
    // oauth4webapi refuses http:// unless told; only the sandbox is http.
    insecure: token.protocol === "http:" || new URL(otherUrl).protocol === "http:",
    requestTimeoutMs,
    signal,
  };
}

type RequestOptions = { signal: AbortSignal; [oauth.allowInsecureRequests]: boolean };

/** Runs one request + processing step, turning every failure into an {@link AuthorizeError}. */
async function call<T>(ctx: Context, step: (options: RequestOptions) => Promise<T>): Promise<T> {
  const timeout = AbortSignal.timeout(ctx.requestTimeoutMs);
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, timeout]) : timeout;
  try {
    return await step({ signal, [oauth.allowInsecureRequests]: ctx.insecure });
  } catch (err) {
    if (ctx.signal?.aborted) throw aborted();
    if (timeout.aborted) {
      throw new AuthorizeError("timeout", `no answer within ${ctx.requestTimeoutMs} ms`);
    }
    throw toAuthorizeError(err);
  }
}

/** Maps oauth4webapi's errors to safe ones; never reads `cause` beyond a status code. */
function toAuthorizeError(err: unknown): AuthorizeError {
  if (err instanceof AuthorizeError) return err;
  if (err instanceof oauth.ResponseBodyError || err instanceof oauth.AuthorizationResponseError) {
    const description = err.error_description ? `: ${clip(err.error_description)}` : "";
    const status = err instanceof oauth.ResponseBodyError ? err.status : 0;
    return new AuthorizeError(err.error, `${describe(err.error, status)}${description}`);
  }
  if (err instanceof oauth.WWWAuthenticateChallengeError) {
    return new AuthorizeError(
      err.status === 401 ? "invalid_client" : "invalid_response",
      `${describe("invalid_client", err.status)} (HTTP ${err.status})`,
    );
  }
  if (err instanceof oauth.OperationProcessingError) {
    const status = err.cause instanceof Response ? ` (HTTP ${err.cause.status})` : "";
    return new AuthorizeError("invalid_response", `unusable answer${status}: ${clip(err.message)}`);
  }
  if (err instanceof TypeError) {
    return new AuthorizeError("unreachable", `provider unreachable: ${clip(err.message)}`);
  }
  const message = err instanceof Error ? err.message : String(err);
  return new AuthorizeError("failed", clip(message));
}

/** A short explanation of well-known OAuth2 errors, with the code. */
function describe(error: string, status: number): string {
  switch (error) {
    case "access_denied":
      return "the authorization was denied (access_denied)";
    case "invalid_client":
      return "the provider rejected the client id or secret (invalid_client)";
    case "unauthorized_client":
      return "this client may not use this flow (unauthorized_client)";
    case "invalid_scope":
      return "the provider refused the scope (invalid_scope)";
    case "invalid_grant":
      return "the provider refused the code (invalid_grant)";
    default:
      return status >= 500 ? `${error} (HTTP ${status})` : error;
  }
}

function isTransient(err: AuthorizeError): boolean {
  return ["unreachable", "timeout", "invalid_response", "server_error", "temporarily_unavailable"]
    .includes(err.code);
}

function expired(): AuthorizeError {
  return new AuthorizeError(
    "expired_token",
    "the code expired before the sign-in was completed (expired_token)",
  );
}

function aborted(): AuthorizeError {
  return new AuthorizeError("aborted", "authorization cancelled");
}

/** Sleeps, turning an abort into an {@link AuthorizeError}. */
async function pause(timing: Timing, ms: number, signal?: AbortSignal): Promise<void> {
  try {
    await timing.sleep(ms, signal);
  } catch {
    throw aborted();
  }
}

function result(body: oauth.TokenEndpointResponse): AuthorizeResult {
  if (!body.refresh_token) {
    throw new AuthorizeError(
      "no_refresh_token",
      "the provider issued no refresh token (Microsoft: the scope needs offline_access; " +
        "Google: access_type=offline and prompt=consent)",
    );
  }
  return { refreshToken: body.refresh_token, scope: body.scope, accessToken: body.access_token };
}

function text(status: number, body: string): Response {
  return new Response(body + "\n", {
    status,
    headers: { "content-type": "text/plain;charset=UTF-8", "cache-control": "no-store" },
  });
}
