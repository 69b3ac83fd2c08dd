/**
 * Google Workspace service account with domain-wide delegation: the JWT bearer grant
 * (RFC 7523 §2.1), `iss` = the service account, `sub` = the mailbox, `scope` = the mail
 * scope, `aud` = the token URL, one hour at most; signed RS256 with the key of the
 * service account's JSON key file through WebCrypto.
 * @module
 */
import * as oauth from "oauth4webapi";
import { type AppCredential, type AppGrant, appGrantCall } from "./app_grant.ts";
import { importSigningKey, rsaPrivateKeyDer, signJwt } from "./jwt.ts";
import { tokenEndpointGrant } from "./oauth.ts";

/** The JWT bearer grant type (RFC 7523 §2.1). */
export const JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/** Lifetime of each assertion, seconds (Google accepts one hour at most). */
const ASSERTION_LIFETIME_S = 3600;

/** The fields of a Google service account JSON key file the relay uses. */
export interface ServiceAccountKey {
  /** `client_email`: the service account (`iss`). */
  readonly clientEmail: string;
  /** `private_key`: PEM, PKCS#8 (a secret). */
  readonly privateKey: string;
  /** `private_key_id`: sent as `kid`. */
  readonly privateKeyId?: string;
  /** `client_id`: the number the admin console's domain-wide delegation lists. */
  readonly clientId?: string;
}

/**
 * Reads a service account JSON key file's content. Throws an Error whose message names
 * the field at fault and never the key.
 */
export function parseServiceAccountKey(json: string): ServiceAccountKey {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(json);
  } catch {
    throw new Error("not JSON (expected a service account key file from the Cloud console)");
  }
  if (typeof v !== "object" || v === null) throw new Error("expected a JSON object");
  if (v.type !== undefined && v.type !== "service_account") {
    throw new Error(`type: expected "service_account", got ${JSON.stringify(String(v.type))}`);
  }
  if (typeof v.client_email !== "string" || !v.client_email.includes("@")) {
    throw new Error("client_email: expected the service account's address");
  }
  if (typeof v.private_key !== "string") throw new Error("private_key: missing");
  try {
    rsaPrivateKeyDer(v.private_key);
  } catch (err) {
    throw new Error(`private_key: ${(err as Error).message}`);
  }
  return {
    clientEmail: v.client_email,
    privateKey: v.private_key,
    privateKeyId: typeof v.private_key_id === "string" ? v.private_key_id : undefined,
    clientId: typeof v.client_id === "string" ? v.client_id : undefined,
  };
}

/** A service account as an {@link AppCredential} for `tokenUrl` and `scope`. */
export class ServiceAccountCredential implements AppCredential {
  /** See {@link AppCredential.kind}. */
  readonly kind = "service_account" as const;
  /** The service account's address (its numeric client id when the key file has it). */
  readonly clientId: string;
  readonly #key: ServiceAccountKey;
  readonly #tokenUrl: string;
  readonly #scope: string;
  #signingKey?: Promise<CryptoKey>;

  /** Nothing is imported until the first grant. */
  constructor(key: ServiceAccountKey, tokenUrl: string, scope: string) {
    this.#key = key;
    this.clientId = key.clientId ?? key.clientEmail;
    this.#tokenUrl = tokenUrl;
    this.#scope = scope;
  }

  /** The assertion for `mailbox`, issued at `nowMs`. */
  async assertion(mailbox: string, nowMs: number): Promise<string> {
    this.#signingKey ??= importSigningKey(this.#key.privateKey);
    const iat = Math.floor(nowMs / 1000);
    return await signJwt(
      {
        iss: this.#key.clientEmail,
        sub: mailbox,
        scope: this.#scope,
        aud: this.#tokenUrl,
        iat,
        exp: iat + ASSERTION_LIFETIME_S,
      },
      await this.#signingKey,
      this.#key.privateKeyId ? { kid: this.#key.privateKeyId } : {},
    );
  }

  /** See {@link AppCredential.grantFor}. */
  grantFor(mailbox: string): AppGrant {
    return async (timeoutMs, now) => {
      // Wall-clock time: the provider checks iat/exp against its own clock.
      const assertion = await this.assertion(mailbox, Date.now());
      return await appGrantCall(() =>
        tokenEndpointGrant(
          this.#tokenUrl,
          this.#key.clientEmail,
          (as, c, options) =>
            // No client authentication: the signed assertion is the credential.
            oauth.genericTokenEndpointRequest(as, c, noClientAuth, JWT_BEARER_GRANT, {
              assertion,
            }, options),
          timeoutMs,
          now,
        )
      );
    };
  }
}

/** Sends no client_id or secret (the JWT bearer grant authenticates by its assertion). */
const noClientAuth: oauth.ClientAuth = () => {};
