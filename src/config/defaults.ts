/**
 * Every default of the relay, in one place: the schema and the runtime read them from
 * here. The README's configuration table restates some of them by hand (nothing
 * generates it): when you change a value here, change the README too.
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
  /** Idle time allowed to an SMTP client, in s (RFC 5321 asks for >= 5 minutes). */
  idleTimeoutSeconds: 300,
  /** Longest client session, in s, however busy; then 421 4.4.2. */
  sessionTimeoutSeconds: 3_600,
  /** Concurrent client sessions, all listeners together; beyond: 421 4.7.0. */
  maxClients: 1_000,
  /** Concurrent client sessions from one IP address; beyond: 421 4.7.0. */
  maxConnectionsPerIp: 100,
  /** Failed AUTHs (per IP or per account) before each further reply is delayed. */
  authFailuresBeforeTarpit: 3,
  /**
   * Failed AUTHs from one IP before its sessions are closed with 421 4.7.0 (loopback
   * included, unless in `authFailureExempt`).
   */
  authFailuresBeforeDisconnect: 10,
  /** Failed AUTHs are counted over this window, in s. */
  authFailureWindowSeconds: 600,
  /** Tarpit delay per failure beyond the threshold, in ms (at most 10 s). */
  tarpitStepMs: 1_000,
  /**
   * Failed AUTHs for one username, from any addresses, within the window, after which AUTH
   * as it is refused with 454 4.7.0 without checking the password. The lock lasts one
   * window (`authFailureWindowSeconds`) and ends by itself (a restart also ends it, SIGHUP
   * does not); logged-in sessions, trusted networks and `authFailureExempt` are not affected.
   */
  authFailuresBeforeAccountLock: 10,
  /**
   * Networks (CIDR) exempt from the AUTH-failure limits: never cut off per IP, not refused
   * by an account lock (the password is still checked) and not counted towards one; still
   * tarpitted per account. Trusted networks are always exempt. None by default: loopback
   * is NOT exempt, since behind a local TLS terminator (without PROXY protocol) every
   * client is loopback. Exempt `127.0.0.1/32` only if loopback clients are local programs.
   */
  authFailureExempt: [] as readonly string[],
  /**
   * Sessions held back for clients from trusted networks: others are refused (or must
   * displace an idle session) once `maxClients - trustedReserve` sessions are open.
   */
  trustedReserve: 0,
  /**
   * Shedding under pressure: from this share of `maxClients` (%) on, each new client closes
   * the longest-idle session that has not logged in (not trusted, no AUTH under way) if it
   * has been idle `idleShedSeconds`, with 421 4.4.2; at the cap, whatever its idle time.
   */
  idleShedPercent: 80,
  /**
   * Under pressure (`idleShedPercent`), a session that has not logged in may be closed once
   * idle this long, in s, instead of after `idleTimeoutSeconds`. Idle: no EHLO, RSET,
   * STARTTLS or AUTH since (NOOP and the like do not count).
   */
  idleShedSeconds: 10,
  /** Commands an untrusted client may send before authenticating; then 421. */
  maxUnauthenticatedCommands: 10,
  /** Longest SMTP command line, in bytes (RFC 5321: 512; AUTH lines are longer). */
  maxCommandLength: 4_096,
  /** AUTH without TLS is accepted from loopback clients only, unless this is set. */
  allowPlaintextAuth: false,
  /** Metrics and health listener address. */
  httpHost: "127.0.0.1",
  /** Metrics and health listener port. */
  httpPort: 9090,
  /** On SIGTERM, messages already in DATA get this long to finish, in s. */
  shutdownTimeoutSeconds: 30,
  /**
   * Longest a message may take from the end of the client's DATA to the relay's reply
   * (quota, token, waiting for a connection, the upstream transaction), in s; then
   * 451 4.4.7 and it is not sent. Well under the 10 minutes a client waits for that reply
   * (RFC 5321 section 4.5.3.2.6).
   */
  deliveryTimeoutSeconds: 120,
  /** Directory for rotated refresh tokens and quota counters (mode 0700, files 0600). */
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
  /**
   * An account that needs re-authorization (or whose token file is corrupt) is retried
   * (store, then endpoint) this often, s: on a timer, so it recovers without traffic.
   */
  reauthRecheckSeconds: 60,
  /**
   * After a refresh failed transiently, messages get that failure at once for this long,
   * s (the endpoint's Retry-After instead, at most 5 min); then one message's refresh
   * (one attempt) decides. 0: no hold, every message asks the endpoint.
   */
  tokenFailureHoldSeconds: 30,
  /** Time allowed to open an upstream TCP connection and get its greeting, in ms. */
  upstreamConnectTimeoutMs: 30_000,
  /** Idle time allowed on an upstream connection while waiting for a reply, in ms. */
  upstreamSocketTimeoutMs: 300_000,
  /** Messages sent over one pooled upstream connection before it is recycled. */
  upstreamMessagesPerConnection: 1_000,
  /** Pooled upstream connections kept idle this long before they are closed, in ms. */
  upstreamIdleTimeoutMs: 60_000,
} as const;
