/**
 * App-only credentials: one credential that gets access tokens for many mailboxes
 * without a refresh token per mailbox. An {@link AppGrant} is what the token manager
 * calls instead of the refresh grant (see `AccountTokensOptions.grant`).
 * @module
 */
import { TokenError, type TokenGrant } from "./oauth.ts";

/** Fetches a new access token for one mailbox; rejects with a `TokenError`. */
export type AppGrant = (timeoutMs: number, now: () => number) => Promise<TokenGrant>;

/** A credential that covers many mailboxes: one {@link AppGrant} per mailbox. */
export interface AppCredential {
  /** `service_account` (Google) or `client_credentials` (Microsoft, secret or certificate). */
  readonly kind: "service_account" | "client_credentials";
  /** Who the provider knows the credential as (service account or client id), for hints. */
  readonly clientId: string;
  /** The grant for `mailbox`. */
  grantFor(mailbox: string): AppGrant;
}

/**
 * The provider refused an app-only credential for good (invalid secret or certificate,
 * delegation or consent missing, no such mailbox): only the operator (or the tenant's
 * administrator) can fix it; no `authorize` helps.
 */
export class AppCredentialError extends TokenError {
  /** Wraps a permanent token failure of an app-only grant. */
  constructor(cause: TokenError) {
    super(cause.message, "permanent", cause.oauthError, cause.retryAfterMs);
    this.name = "AppCredentialError";
  }
}

/** Runs `grant`; a permanent failure becomes an {@link AppCredentialError}. */
export async function appGrantCall(grant: () => Promise<TokenGrant>): Promise<TokenGrant> {
  try {
    return await grant();
  } catch (err) {
    if (err instanceof TokenError && err.kind === "permanent") throw new AppCredentialError(err);
    throw err;
  }
}
