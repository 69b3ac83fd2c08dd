/**
 * The whole contract between the SMTP ingress and whatever delivers mail, in the manner
 * of go-smtp: a {@link Backend} opens one {@link Session} per client; the session holds
 * the state of the client's login and of its current transaction, and
 * {@link Session.reset} / {@link Session.logout} are where whatever a transaction holds
 * is given back. The ingress speaks SMTP and enforces protocol limits; it knows nothing
 * of accounts, OAuth or providers. The relay implements {@link Backend}; `src/app.ts`
 * wires the two.
 * @module
 */
import type { Reply } from "../smtp/reply.ts";
import type { MessageBody } from "../smtp/body.ts";

/** Where a session comes from. */
export interface Peer {
  /** Client IP address (the PROXY protocol's source address where that is in use). */
  readonly address: string;
  /** On a trusted network: may send without AUTH, the account chosen by MAIL FROM. */
  readonly trusted: boolean;
}

/** What the ingress needs from the rest of the relay. */
export interface Backend {
  /** Opens the session of one admitted client. Its {@link Session.logout} follows, once. */
  newSession(peer: Peer): Session;
}

/**
 * One client's session. Calls come in protocol order and never overlap: the ingress
 * waits for each promise before it reads the client's next command.
 */
export interface Session {
  /**
   * Checks AUTH PLAIN/LOGIN credentials. `false` means `535 5.7.8`, whatever the reason
   * (unknown user or wrong password: the client is not told which).
   */
  auth(username: string, password: string): Promise<boolean>;
  /**
   * MAIL FROM ("" is the null sender). `authenticated` is false when the client has not
   * logged in since the session (re)started, e.g. after STARTTLS, which forgets a login
   * (RFC 3207). Resolves to a refusal, or `undefined` when the sender is accepted.
   */
  mail(from: string, authenticated: boolean): Promise<Reply | undefined>;
  /** RCPT TO, after the ingress checked syntax and count. `undefined`: accepted. */
  rcpt(to: string): Promise<Reply | undefined>;
  /**
   * DATA, for the transaction's sender and recipients. Called when the client sends DATA,
   * before the ingress's 354: `body` fills as the message arrives (after dot-unstuffing,
   * exactly as sent) and ends at the client's final dot; it fails (`body.failure`,
   * `body.signal`) if the client goes away, times out or overruns the size limit, and
   * then nothing may be delivered (the ingress gives the client its own reply, if any).
   * The session calls `body.want()` when it is ready for the bytes (the provider said
   * 354): the ingress sends its 354 then, or once the promise settles, or after a short
   * wait at most. `size` is the client's SIZE= from MAIL FROM, if it gave one. The reply
   * goes to the client after its final dot; a 2xx only once the message is delivered.
   */
  data(body: MessageBody, size?: number): Promise<Reply>;
  /** The transaction ended (RSET, EHLO, STARTTLS, after DATA): release what it holds. */
  reset(): void;
  /** The client is gone. Called exactly once; releases everything the session holds. */
  logout(): void;
}

/** Optional hooks for metrics; the ingress calls them and nothing else. */
export interface IngressObserver {
  /** A client connected. */
  sessionOpened(): void;
  /** A client went away. */
  sessionClosed(): void;
  /**
   * The listener sent a refusal (any 4xx/5xx reply except the backend's answer to a
   * message, which the backend counts itself). `reason`: one of `REFUSAL_REASONS` in
   * `replies.ts` (auth, auth_plaintext, sender, recipient_syntax, size, syntax, …).
   */
  refused(reason: string): void;
}
