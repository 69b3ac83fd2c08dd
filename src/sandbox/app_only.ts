/**
 * The sandbox token endpoint's app-only grants, modelled on the providers' documented
 * behaviour (exact error texts of the real services are approximations):
 *
 * - Google's JWT bearer grant (RFC 7523 §2.1) for service accounts with domain-wide
 *   delegation: the assertion's RS256 signature is verified with the account's public
 *   key, `aud` must be the token URL, `iat`/`exp` must be within an hour of each other
 *   and of now (±{@link CLOCK_SKEW_S} s), `sub` must be a mailbox of a delegated domain.
 * - Microsoft's client credentials grant: a client secret, or a client assertion whose
 *   `x5t` names a certificate registered with the app, signed by its key, `iss` = `sub`
 *   = the client id, `aud` = the token URL, valid now (±skew); scope `…/.default`.
 *
 * The tokens issued here say whom they are for; {@link AppOnlyGrants.mailboxVerdict}
 * gives the SMTP side the provider's answer for a mailbox (`535 5.7.3` without the app
 * permission or the mailbox permission, `535 5.7.139` with SMTP AUTH off).
 *
 * Key pairs are generated with WebCrypto ({@link generateServiceAccountKey}); never logs
 * keys, secrets or tokens.
 * @module
 */
import { Buffer } from "node:buffer";
import { timingSafeEqual } from "node:crypto";
import {
  certificateInfo,
  type DecodedJwt,
  decodeJwt,
  importVerifyKey,
  verifyJwt,
} from "../tokens/jwt.ts";

/** The JWT bearer grant type (RFC 7523 §2.1). */
export const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/** The client assertion type (RFC 7523 §2.2). */
const CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/** Clock skew tolerated on `iat`, `nbf` and `exp`, seconds. */
export const CLOCK_SKEW_S = 60;
/** Longest assertion lifetime Google accepts, seconds. */
const MAX_ASSERTION_S = 3600;

/** A Google service account the sandbox knows. */
export interface SandboxServiceAccount {
  /** `client_email`, the assertion's `iss`. */
  readonly clientEmail: string;
  /** Public key (PEM, SPKI) of its key pair. */
  readonly publicKeyPem: string;
  /**
   * Domains whose mailboxes it may act for (domain-wide delegation granted in the admin
   * console). Empty: no delegation, every grant gets `unauthorized_client`.
   */
  domains: string[];
  /** Mailboxes that do not exist (`invalid_grant`, as Google answers an unknown user). */
  unknownMailboxes?: Set<string>;
}

/** A Microsoft app registration with an application permission. */
export interface SandboxApp {
  /** Application (client) id. */
  readonly clientId: string;
  /** Client secret, if it has one. */
  clientSecret?: string;
  /** Registered certificates (PEM). */
  certificates?: string[];
  /** Admin consent to `SMTP.SendAsApp` (default true). Without it SMTP says 535 5.7.3. */
  consented?: boolean;
  /** Mailboxes the app has a mailbox permission on (`Add-MailboxPermission`). */
  mailboxes: Set<string>;
}

/** Counters of the app-only grants. */
export interface AppOnlyStats {
  /** Access tokens issued by either grant. */
  grants: number;
  /** Per subject: the mailbox (`sub`) for service accounts, the client id for apps. */
  grantsBySubject: Map<string, number>;
  /** Grant requests refused (any OAuth2 error). */
  refusals: number;
}

/** Who an app-only access token was issued to. */
export type AppTokenOwner =
  | { readonly kind: "mailbox"; readonly email: string }
  | { readonly kind: "app"; readonly clientId: string };

/** A JSON key file like the Cloud console's, for a generated key pair. */
export interface GeneratedServiceAccount {
  /** The key file's content (JSON): give it to the relay as a file or env variable. */
  readonly keyFile: string;
  /** Public key, PEM (register with {@link AppOnlyGrants.addServiceAccount}). */
  readonly publicKeyPem: string;
}

/** Generates an RSA-2048 key pair with WebCrypto and the key file that holds it. */
export async function generateServiceAccountKey(
  clientEmail: string,
  tokenUrl: string,
): Promise<GeneratedServiceAccount> {
  const pair = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const keyId = Buffer.from(crypto.getRandomValues(new Uint8Array(20))).toString("hex");
  return {
    keyFile: JSON.stringify(
      {
        type: "service_account",
        project_id: "sandbox",
        private_key_id: keyId,
        private_key: pem("PRIVATE KEY", pkcs8),
        client_email: clientEmail,
        client_id: String(100000000000000000000n + BigInt(Math.floor(Math.random() * 1e15))),
        token_uri: tokenUrl,
      },
      null,
      2,
    ),
    publicKeyPem: pem("PUBLIC KEY", spki),
  };
}

function pem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64").replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** An OAuth2 error answer. */
export interface GrantRefusal {
  /** HTTP status. */
  readonly status: number;
  /** RFC 6749 error code. */
  readonly error: string;
  /** `error_description`. */
  readonly description: string;
}

/** What a grant yields: an owner to issue a token to, or a refusal. */
export type GrantVerdict = { readonly owner: AppTokenOwner } | GrantRefusal;

/** The app-only side of the sandbox token endpoint. */
export class AppOnlyGrants {
  /** Counters. */
  readonly stats: AppOnlyStats = { grants: 0, grantsBySubject: new Map(), refusals: 0 };
  /** Mailboxes with SMTP AUTH turned off (`535 5.7.139` whatever the token). */
  readonly smtpAuthDisabled = new Set<string>();
  readonly #serviceAccounts = new Map<string, SandboxServiceAccount>();
  readonly #apps = new Map<string, SandboxApp>();
  readonly #keys = new Map<string, Promise<CryptoKey>>();
  readonly #url: string;

  /** For the token endpoint at `url` (the `aud` assertions must carry). */
  constructor(url: string) {
    this.#url = url;
  }

  /** Registers (or replaces) a service account. Returns it, for later changes. */
  addServiceAccount(account: SandboxServiceAccount): SandboxServiceAccount {
    this.#serviceAccounts.set(account.clientEmail.toLowerCase(), account);
    return account;
  }

  /** Registers (or replaces) an app. Returns it, for later changes. */
  addApp(app: SandboxApp): SandboxApp {
    this.#apps.set(app.clientId, app);
    return app;
  }

  /** True when `grantType` is one of the app-only grants. */
  handles(grantType: string | null): boolean {
    return grantType === JWT_BEARER || grantType === "client_credentials";
  }

  /** Decides a grant request; the token endpoint issues the token. */
  async decide(params: URLSearchParams, authorization: string | null): Promise<GrantVerdict> {
    const verdict = params.get("grant_type") === JWT_BEARER
      ? await this.#jwtBearer(params)
      : await this.#clientCredentials(params, authorization);
    if ("owner" in verdict) {
      const subject = verdict.owner.kind === "mailbox"
        ? verdict.owner.email
        : verdict.owner.clientId;
      this.stats.grants++;
      this.stats.grantsBySubject.set(subject, (this.stats.grantsBySubject.get(subject) ?? 0) + 1);
    } else this.stats.refusals++;
    return verdict;
  }

  /**
   * The SMTP answer for an app-only token used for `email`: undefined when it may send
   * as that mailbox, else the reply (`535 5.7.139`, `535 5.7.3`). `owner` is undefined
   * for tokens of other grants (only the SMTP AUTH switch applies to them).
   */
  mailboxVerdict(email: string, owner: AppTokenOwner | undefined): string | undefined {
    const mailbox = email.toLowerCase();
    if (this.smtpAuthDisabled.has(mailbox)) {
      return "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled " +
        "for the Mailbox";
    }
    if (owner?.kind !== "app") return undefined;
    const app = this.#apps.get(owner.clientId);
    if (!app || app.consented === false || !app.mailboxes.has(mailbox)) {
      return "535 5.7.3 Authentication unsuccessful";
    }
    return undefined;
  }

  /** Google's JWT bearer grant for a service account. */
  async #jwtBearer(params: URLSearchParams): Promise<GrantVerdict> {
    const jwt = decodeJwt(params.get("assertion") ?? "");
    if (!jwt) return refuse(400, "invalid_grant", "Invalid JWT: not a signed JWT");
    const iss = typeof jwt.claims.iss === "string" ? jwt.claims.iss.toLowerCase() : "";
    const account = this.#serviceAccounts.get(iss);
    if (!account) return refuse(400, "invalid_grant", "Invalid JWT: unknown issuer (iss)");
    if (!await this.#verify(jwt, account.publicKeyPem)) {
      return refuse(400, "invalid_grant", "Invalid JWT Signature.");
    }
    if (jwt.claims.aud !== this.#url) {
      return refuse(400, "invalid_grant", "Invalid JWT: aud must be the token endpoint URL");
    }
    const times = checkTimes(jwt, MAX_ASSERTION_S);
    if (times) {
      return refuse(
        400,
        "invalid_grant",
        `Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable ` +
          `timeframe. Check your iat and exp values in the JWT claim (${times}).`,
      );
    }
    if (typeof jwt.claims.scope !== "string" || jwt.claims.scope === "") {
      return refuse(400, "invalid_scope", "Invalid JWT: scope missing");
    }
    if (account.domains.length === 0) {
      return refuse(
        401,
        "unauthorized_client",
        "Client is unauthorized to retrieve access tokens using this method, or client not " +
          "authorized for any of the scopes requested.",
      );
    }
    const sub = typeof jwt.claims.sub === "string" ? jwt.claims.sub.toLowerCase() : "";
    const domain = sub.slice(sub.lastIndexOf("@") + 1);
    if (!sub.includes("@") || !account.domains.includes(domain)) {
      return refuse(400, "invalid_grant", "Invalid email or User ID");
    }
    if (account.unknownMailboxes?.has(sub)) {
      return refuse(400, "invalid_grant", "Invalid email or User ID");
    }
    return { owner: { kind: "mailbox", email: sub } };
  }

  /** Microsoft's client credentials grant, with a secret or a certificate. */
  async #clientCredentials(
    params: URLSearchParams,
    authorization: string | null,
  ): Promise<GrantVerdict> {
    if (authorization) {
      return refuse(400, "invalid_request", "AADSTS900144: use client_secret or an assertion");
    }
    const clientId = params.get("client_id") ?? "";
    const app = this.#apps.get(clientId);
    if (!app) {
      return refuse(
        400,
        "unauthorized_client",
        `AADSTS700016: Application with identifier '${clientId.slice(0, 64)}' was not found ` +
          "in the directory",
      );
    }
    const secret = params.get("client_secret");
    const assertion = params.get("client_assertion");
    if (secret !== null) {
      if (!app.clientSecret || !sameSecret(app.clientSecret, secret)) {
        return refuse(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.");
      }
    } else if (assertion !== null) {
      if (params.get("client_assertion_type") !== CLIENT_ASSERTION_TYPE) {
        return refuse(400, "invalid_request", "AADSTS50027: client_assertion_type is wrong");
      }
      const problem = await this.#checkAssertion(app, assertion);
      if (problem) return refuse(401, "invalid_client", problem);
    } else {
      return refuse(
        401,
        "invalid_client",
        "AADSTS7000218: The request body must contain client_assertion or client_secret",
      );
    }
    const scope = params.get("scope") ?? "";
    if (!scope.endsWith("/.default")) {
      return refuse(
        400,
        "invalid_scope",
        "AADSTS1002012: The provided value for scope is not valid. Client credential flows " +
          "must have a scope value with /.default suffixed to the resource identifier.",
      );
    }
    return { owner: { kind: "app", clientId } };
  }

  /** What is wrong with a client assertion, or undefined. */
  async #checkAssertion(app: SandboxApp, assertion: string): Promise<string | undefined> {
    const jwt = decodeJwt(assertion);
    if (!jwt) return "AADSTS50027: JWT token is invalid or malformed";
    let certPem: string | undefined;
    for (const cert of app.certificates ?? []) {
      if ((await certificateInfo(cert)).x5t === jwt.header.x5t) certPem = cert;
    }
    if (!certPem) {
      return "AADSTS700027: The certificate with identifier used to sign the client " +
        "assertion is not registered on application";
    }
    if (!await this.#verify(jwt, certPem)) {
      return "AADSTS700027: Client assertion failed signature validation";
    }
    if (jwt.claims.iss !== app.clientId || jwt.claims.sub !== app.clientId) {
      return "AADSTS700027: iss and sub of the client assertion must be the client id";
    }
    if (jwt.claims.aud !== this.#url) {
      return "AADSTS700027: the client assertion's audience must be the token endpoint";
    }
    const times = checkTimes(jwt, MAX_ASSERTION_S);
    if (times) {
      return `AADSTS700024: Client assertion is not within its valid time range (${times})`;
    }
    return undefined;
  }

  async #verify(jwt: DecodedJwt, publicPem: string): Promise<boolean> {
    let key = this.#keys.get(publicPem);
    if (!key) this.#keys.set(publicPem, key = importVerifyKey(publicPem));
    return verifyJwt(jwt, await key);
  }
}

/** What is wrong with `iat`/`nbf`/`exp` now (±skew), or undefined. */
function checkTimes(jwt: DecodedJwt, maxLifetimeS: number): string | undefined {
  const now = Math.floor(Date.now() / 1000);
  const { iat, exp, nbf } = jwt.claims;
  if (typeof iat !== "number" || typeof exp !== "number") return "iat and exp are required";
  if (exp <= now - CLOCK_SKEW_S) return "expired";
  if (iat > now + CLOCK_SKEW_S) return "issued in the future";
  if (typeof nbf === "number" && nbf > now + CLOCK_SKEW_S) return "not valid yet (nbf)";
  if (exp - iat > maxLifetimeS) return `lifetime over ${maxLifetimeS} s`;
  return undefined;
}

function refuse(status: number, error: string, description: string): GrantRefusal {
  return { status, error, description };
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a), y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
