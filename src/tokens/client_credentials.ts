/**
 * Microsoft 365 client credentials (application permission `SMTP.SendAsApp`): the
 * `client_credentials` grant with scope `https://outlook.office365.com/.default`,
 * authenticated by a client secret or by a certificate (a client assertion JWT, RFC
 * 7523 §2.2, whose header names the certificate by thumbprint, `x5t`), both through
 * oauth4webapi's client authentication. The token is the app's; XOAUTH2's `user=` names
 * the mailbox it sends as.
 * @module
 */
import * as oauth from "oauth4webapi";
import { type AppCredential, type AppGrant, appGrantCall } from "./app_grant.ts";
import { importSigningKey } from "./jwt.ts";
import { tokenEndpointGrant } from "./oauth.ts";

/** How the app proves itself. */
export type ClientProof =
  | { readonly secret: string }
  | {
    /** The certificate's private key, PEM (a secret). */
    readonly privateKey: string;
    /** base64url SHA-1 thumbprint of the certificate registered with the app. */
    readonly x5t: string;
  };

/** A Microsoft app registration as an {@link AppCredential}. */
export class ClientCredentialsCredential implements AppCredential {
  /** See {@link AppCredential.kind}. */
  readonly kind = "client_credentials" as const;
  /** Application (client) id. */
  readonly clientId: string;
  readonly #proof: ClientProof;
  readonly #tokenUrl: string;
  readonly #scope: string;
  #auth?: Promise<oauth.ClientAuth>;

  /** Nothing is imported until the first grant. */
  constructor(clientId: string, proof: ClientProof, tokenUrl: string, scope: string) {
    this.clientId = clientId;
    this.#proof = proof;
    this.#tokenUrl = tokenUrl;
    this.#scope = scope;
  }

  /** The client authentication: `client_secret_post`, or `private_key_jwt` with `x5t`. */
  #clientAuth(): Promise<oauth.ClientAuth> {
    const proof = this.#proof;
    if ("secret" in proof) return Promise.resolve(oauth.ClientSecretPost(proof.secret));
    const tokenUrl = this.#tokenUrl;
    return importSigningKey(proof.privateKey).then((key) =>
      oauth.PrivateKeyJwt(key, {
        [oauth.modifyAssertion]: (header, payload) => {
          header.x5t = proof.x5t;
          header.typ = "JWT";
          // Microsoft wants the token endpoint as the audience, not the issuer.
          payload.aud = tokenUrl;
          payload.exp = (payload.iat as number) + 600;
        },
      })
    );
  }

  /**
   * See {@link AppCredential.grantFor}. The token is the app's, not the mailbox's: each
   * mailbox still gets (and caches) its own, so a revoked mailbox permission or a
   * refused token touches that mailbox only.
   */
  grantFor(_mailbox: string): AppGrant {
    return async (timeoutMs, now) => {
      this.#auth ??= this.#clientAuth();
      const auth = await this.#auth;
      return await appGrantCall(() =>
        tokenEndpointGrant(
          this.#tokenUrl,
          this.clientId,
          (as, c, options) =>
            oauth.clientCredentialsGrantRequest(as, c, auth, { scope: this.#scope }, options),
          timeoutMs,
          now,
        )
      );
    };
  }
}
