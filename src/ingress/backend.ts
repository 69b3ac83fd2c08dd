/**
 * The whole contract between the SMTP ingress and whatever delivers mail. The ingress
 * speaks SMTP and enforces protocol limits; it knows nothing of accounts, OAuth or
 * providers. The relay implements {@link Backend}; `src/app.ts` wires the two.
 * @module
 */
import type { Reply } from "../smtp/reply.ts";

/** Who logged in, as the backend sees it. Opaque to the ingress. */
export interface Principal {
  /** A name for logs (the account address). */
  readonly name: string;
}

/** Where a session comes from. */
export interface Peer {
  /** Client IP address. */
  readonly address: string;
}

/** One mail transaction, as the client gave it. */
export interface Transaction {
  /** MAIL FROM address; "" for the null sender. */
  readonly from: string;
  /** RCPT TO addresses, in order. */
  readonly to: readonly string[];
  /** The message bytes after dot-unstuffing, exactly as sent. */
  readonly message: Uint8Array;
}

/** What the ingress needs from the rest of the relay. */
export interface Backend {
  /** Checks SMTP AUTH credentials; `undefined` means "535 5.7.8", whatever the reason. */
  authenticate(username: string, password: string, peer: Peer): Promise<Principal | undefined>;
  /**
   * Decides who sends mail from `from` ("" is the null sender): for a logged-in client
   * whether its account may use that sender, for a trusted-network client (`principal`
   * undefined) which account sends it. Returns the principal to deliver as, or a refusal.
   */
  sender(principal: Principal | undefined, from: string): Principal | Reply;
  /** Delivers a message and says what to answer; 2xx only once delivery succeeded. */
  deliver(principal: Principal, transaction: Transaction): Promise<Reply>;
}

/** Optional hooks for metrics; the ingress calls them and nothing else. */
export interface IngressObserver {
  /** A client connected. */
  sessionOpened(): void;
  /** A client went away. */
  sessionClosed(): void;
  /**
   * The ingress itself refused something. `reason`: auth, auth_plaintext, auth_throttled,
   * unauthenticated, sender, recipient_syntax, recipients, size, clients, per_ip,
   * session_timeout.
   */
  refused(reason: string): void;
}
