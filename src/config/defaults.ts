/**
 * Every default of the relay, in one place. The README's configuration table is
 * generated from nothing else: change a value here and there only.
 * @module
 */

/** Defaults that apply when `accounts.ts` leaves a field out. */
export const DEFAULTS = {
  /** SMTP listener address. Loopback by default: expose it on purpose. */
  smtpHost: "127.0.0.1",
  /** SMTP listener port (the Python proxy this replaces used 2525). */
  smtpPort: 2525,
  /** Banner and EHLO name of the relay, also sent as EHLO name upstream. */
  serverName: "localhost",
  /** Largest message accepted, in bytes: Gmail's advertised SIZE (35,882,577). */
  maxMessageSize: 35_882_577,
  /** Most recipients per message: Gmail's SMTP limit. The 101st gets 452 4.5.3. */
  maxRecipients: 100,
  /** Idle time allowed to an SMTP client, in ms (RFC 5321 asks for >= 5 minutes). */
  clientIdleTimeoutMs: 300_000,
  /** Metrics and health listener address. */
  httpHost: "127.0.0.1",
  /** Metrics and health listener port. */
  httpPort: 9090,
  /** Directory for rotated refresh tokens (mode 0700, files 0600). */
  stateDir: "./state",
  /** An access token is refreshed this long before it expires, in seconds. */
  refreshMarginSeconds: 300,
  /** Time allowed to one token endpoint call, in ms. */
  tokenTimeoutMs: 15_000,
  /** Attempts per refresh when the token endpoint fails transiently (5xx, 429, network). */
  tokenAttempts: 3,
  /** First retry delay, ms; doubled per attempt with full jitter. */
  tokenRetryBaseMs: 500,
  /** Longest retry delay (and longest Retry-After honoured), ms. */
  tokenRetryMaxMs: 10_000,
  /** An account that needs re-authorization is retried (store, then endpoint) this often, s. */
  reauthRecheckSeconds: 60,
  /** Time allowed to open an upstream TCP connection and get its greeting, in ms. */
  upstreamConnectTimeoutMs: 30_000,
  /** Idle time allowed on an upstream connection while waiting for a reply, in ms. */
  upstreamSocketTimeoutMs: 300_000,
  /** Messages sent over one pooled upstream connection before it is recycled. */
  upstreamMessagesPerConnection: 1_000,
  /** Pooled upstream connections kept idle this long before they are closed, in ms. */
  upstreamIdleTimeoutMs: 60_000,
} as const;
