/**
 * The relay: the {@link Backend} behind the ingress. It finds the account a client
 * logged in as, gets the account a fresh access token, hands the message to the
 * account's upstream pool and turns the outcome into an honest SMTP reply.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { Backend, Peer, Session } from "../ingress/backend.ts";
import { formatReply, type Reply, reply } from "../smtp/reply.ts";
import {
  describeResult,
  type OutgoingMessage,
  type RefusedRecipient,
  type SendProgress,
  type UpstreamResult,
} from "../upstream/pool.ts";
import { nonDeliveryReport } from "./dsn.ts";
import { clip } from "../text.ts";
import { TokenError } from "../tokens/oauth.ts";
import { RedisUnavailableError } from "../state/redis/client.ts";
import { PasswordVerifier, verifyNobody } from "./password.ts";
import type { QuotaKind, QuotaLimits } from "../quota/quota.ts";
import { isReservation, type Quotas } from "../quota/quotas.ts";
import { DEFAULTS } from "../config/defaults.ts";
import { MessageBody } from "../smtp/body.ts";

/** How one message ended, as counted in metrics. */
export type MessageResult =
  | "quota"
  | "delivered"
  | "partial"
  | "rejected"
  | "deferred"
  | "upstream_auth"
  | "token_error"
  | "unreachable"
  | "expired"
  | "shutdown"
  | "state_unavailable";

/** The parts of an account the relay uses. */
export interface RelayAccount {
  /** Mailbox address; clients log in with it (case-insensitive). */
  readonly email: string;
  /** scrypt hash of the client password. */
  readonly passwordHash: string;
  /** Other MAIL FROM addresses the account may use. */
  readonly aliases: readonly string[];
  /** `own`: MAIL FROM must be the account or an alias; `any`: no check. */
  readonly senders: "own" | "any";
  /** Sending quotas; a message that would overrun one is deferred. */
  readonly quota: QuotaLimits;
  /** Gets a token and sends one message upstream; never throws. */
  readonly deliver: (message: OutgoingMessage) => Promise<UpstreamResult>;
}

/** Receives every message outcome (metrics). */
export interface RelayObserver {
  /** One message is done. */
  messageDone(
    result: MessageResult,
    seconds: number,
    refusedRecipients: number,
    account: string,
  ): void;
  /** A message was deferred by a quota. */
  quotaDeferred(kind: QuotaKind): void;
  /** A non-delivery report was sent, could not be sent, or was not attempted (quota). */
  reportDone(result: ReportResult): void;
}

/** How sending a non-delivery report ended. */
export type ReportResult = "sent" | "failed" | "skipped";

/** Options of {@link Relay}. */
export interface RelayOptions {
  /** The relay's name (its EHLO name), for the non-delivery reports it writes. */
  readonly name: string;
  /** The accounts' quota counters. */
  readonly quotas: Quotas;
  /**
   * Longest a message may take from the end of DATA to its reply, ms (default
   * {@link DEFAULT_DELIVERY_TIMEOUT_MS}); see {@link Relay.deliver}.
   */
  readonly deliveryTimeoutMs?: number;
  /**
   * Accounts beyond the configured ones: the mailboxes of domain entries (app-only
   * credentials), looked up by lower-cased address when no configured account matches.
   */
  readonly resolve?: (address: string) => RelayAccount | undefined;
}

/** Default of {@link RelayOptions.deliveryTimeoutMs}: the config's default. */
export const DEFAULT_DELIVERY_TIMEOUT_MS = DEFAULTS.deliveryTimeoutSeconds * 1000;

/** Why the relay gave up on a message it was delivering (an abort reason). */
class GaveUp extends Error {
  readonly why: "deadline" | "shutdown";
  readonly afterMs: number;
  constructor(why: "deadline" | "shutdown", afterMs: number) {
    super(why === "deadline" ? "delivery time limit reached" : "shutting down");
    this.why = why;
    this.afterMs = afterMs;
  }
}

/** One mail transaction, as the client gave it. */
interface Transaction {
  /** MAIL FROM address; "" for the null sender. */
  readonly from: string;
  /** RCPT TO addresses, in order. */
  readonly to: readonly string[];
  /** The message bytes after dot-unstuffing, exactly as sent, possibly still arriving. */
  readonly body: MessageBody;
  /** The client's SIZE= of MAIL FROM, if it gave one. */
  readonly size?: number;
}

interface Entry {
  /** The account address, for logs. */
  readonly name: string;
  readonly account: RelayAccount;
  readonly verifier: PasswordVerifier;
  /** Lower-cased addresses it may send from. */
  readonly senders: ReadonlySet<string>;
}

const log = getLogger(["relay", "message"]);
const authLog = getLogger(["relay", "auth"]);
const MAX_REPLY_TEXT = 400;
/** What {@link Relay.deliver} answers for a message whose body never completed (unused). */
const INCOMPLETE = reply(451, "4.3.0", "Message incomplete, not delivered");
/** Provider text in a reply to the client: one line, at most {@link MAX_REPLY_TEXT}. */
const clipReply = (text: string) => clip(text, MAX_REPLY_TEXT);

/** Implements {@link Backend} over a set of accounts. */
export class Relay implements Backend {
  #accounts = new Map<string, Entry>();
  /** Sender address (account or alias) or domain → account, for trusted-network clients. */
  #bySender = new Map<string, Entry>();
  readonly #observer?: RelayObserver;
  readonly #name: string;
  readonly #quotas: Quotas;
  /** Non-delivery reports still being sent. */
  readonly #reports = new Set<Promise<void>>();
  #deliveryTimeoutMs: number;
  /** One per message being delivered: aborting it gives up on that message. */
  readonly #inflight = new Set<AbortController>();
  /** Past the shutdown deadline: a message that arrives now is given up at once. */
  #abandoning = false;
  readonly #resolve?: (address: string) => RelayAccount | undefined;
  /** Entries of resolved accounts, kept while the account object lives. */
  readonly #resolved = new WeakMap<RelayAccount, Entry>();

  /**
   * `accounts` must have unique addresses and aliases (the config loader checks);
   * `senderDomains` maps a sender domain to the account address that sends its mail.
   */
  constructor(
    accounts: Iterable<RelayAccount>,
    senderDomains: Readonly<Record<string, string>> = {},
    observer: RelayObserver | undefined,
    options: RelayOptions,
  ) {
    this.#observer = observer;
    this.#name = options.name;
    this.#quotas = options.quotas;
    this.#deliveryTimeoutMs = options.deliveryTimeoutMs ?? DEFAULT_DELIVERY_TIMEOUT_MS;
    this.#resolve = options.resolve;
    this.update(accounts, senderDomains);
  }

  /** Sets the delivery deadline of messages that arrive from now on (config reload). */
  setDeliveryTimeout(ms: number): void {
    this.#deliveryTimeoutMs = ms;
  }

  /**
   * Shutdown deadline: gives up on every message being delivered now. Each one's client
   * gets `421 4.3.2` at once and each is logged (not delivered, or outcome unknown when
   * the provider had the whole message and had not answered). So is every message that
   * arrives after this call (its body completed just now). Returns how many were in flight.
   */
  abandonAll(): number {
    this.#abandoning = true;
    const count = this.#inflight.size;
    for (const control of [...this.#inflight]) control.abort(new GaveUp("shutdown", 0));
    return count;
  }

  /** Resolves once the non-delivery reports being sent now are done (shutdown). */
  async reportsSettled(): Promise<void> {
    while (this.#reports.size > 0) await Promise.allSettled([...this.#reports]);
  }

  /**
   * Replaces the account set (config reload). New sessions and new transactions see the
   * new set at once; a message already being delivered finishes with what it started
   * with. An unchanged account (the same object) keeps its password cache.
   */
  update(accounts: Iterable<RelayAccount>, senderDomains: Readonly<Record<string, string>>): void {
    const previous = new Map([...this.#accounts.values()].map((e) => [e.account, e]));
    const byName = new Map<string, Entry>();
    const bySender = new Map<string, Entry>();
    for (const account of accounts) {
      const senders = new Set([account.email, ...account.aliases].map((a) => a.toLowerCase()));
      const entry = previous.get(account) ?? {
        name: account.email,
        account,
        senders,
        verifier: new PasswordVerifier(account.passwordHash),
      };
      byName.set(account.email.toLowerCase(), entry);
      for (const address of senders) bySender.set(address, entry);
    }
    for (const [domain, email] of Object.entries(senderDomains)) {
      const entry = byName.get(email.toLowerCase());
      if (entry) bySender.set(`@${domain.toLowerCase()}`, entry);
    }
    this.#accounts = byName;
    this.#bySender = bySender;
  }

  /**
   * Sender policy. Logged in: the account's own address or an alias (unless the account
   * allows any sender); the null sender is accepted (bounces and receipts). Trusted
   * network: the account whose address or alias is the sender, else the account mapped
   * to the sender's domain; the null sender is refused, since it names no account.
   */
  /** Opens the session of one client (see {@link Session}). */
  newSession(peer: Peer): Session {
    return new RelaySession(this, peer);
  }

  /** The account to send `from` as; see {@link RelaySession.mail}. */
  sender(loggedIn: string | undefined, from: string): Entry | Reply {
    const address = from.toLowerCase();
    if (loggedIn !== undefined) {
      // The account as configured now (a reload may have changed or removed it).
      const entry = this.#entry(loggedIn);
      if (!entry) return reply(550, "5.7.1", `Account ${loggedIn} is no longer configured`);
      if (address === "" || entry.account.senders === "any" || entry.senders.has(address)) {
        return entry;
      }
      return reply(550, "5.7.1", `Sender <${from}> is not allowed for ${entry.name}`);
    }
    if (address === "") {
      return reply(550, "5.7.1", "The null sender needs authentication");
    }
    const entry = this.#bySender.get(address) ??
      this.#bySender.get(address.slice(address.lastIndexOf("@")));
    return entry ?? reply(550, "5.7.1", `Sender <${from}> is not configured for relaying`);
  }

  /** A configured account, else a resolved one (a mailbox of a domain entry). */
  #entry(name: string): Entry | undefined {
    const configured = this.#accounts.get(name);
    if (configured || !this.#resolve) return configured;
    const account = this.#resolve(name);
    if (!account) return undefined;
    let entry = this.#resolved.get(account);
    if (!entry) {
      entry = {
        name: account.email,
        account,
        senders: new Set([account.email.toLowerCase()]),
        verifier: new PasswordVerifier(account.passwordHash),
      };
      this.#resolved.set(account, entry);
    }
    return entry;
  }

  /**
   * Same answer, same cost, for an unknown user and a wrong password. Failures are
   * logged with the client address (for fail2ban); the username only when it is a
   * configured account, since clients do send passwords in the username field.
   */
  async authenticate(username: string, password: string, peer: Peer): Promise<Entry | undefined> {
    const entry = this.#entry(username.trim().toLowerCase());
    if (!entry) {
      await verifyNobody(password);
      authLog.info("authentication failed for an unknown user from {ip}", { ip: peer.address });
      return undefined;
    }
    if (await entry.verifier.verify(password)) return entry;
    authLog.info("authentication failed for {account} from {ip}", {
      account: entry.name,
      ip: peer.address,
    });
    return undefined;
  }

  /**
   * Delivers upstream and answers with what the provider said. The quota reservation is
   * taken and settled within this call: committed when the provider took the message (or
   * may have: see below), released otherwise (also when anything throws), whether or not
   * the client is still there.
   *
   * The whole of it has a deadline (`deliveryTimeoutMs`, from the moment the relay has the
   * message): then the client gets `451 4.4.7` at once and the message is given up
   * (see {@link OutgoingMessage.signal}): one still waiting (quota, token, a connection)
   * is never sent, one being sent has its connection closed before the final dot. If the
   * dot was already written and the provider had not answered, the outcome is unknown:
   * logged as such, and counted against the quota, since the provider may deliver it.
   * {@link abandonAll} does the same with `421 4.3.2` at the shutdown deadline.
   */
  async deliver(entry: Entry, tx: Transaction): Promise<Reply> {
    const started = performance.now();
    const control = new AbortController();
    const timeoutMs = this.#deliveryTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let arrivedAt = Date.now();
    let settled = false;
    // The deadline runs from the end of the message; while it arrives, the client's own
    // pace (and the ingress's timeouts) bound it.
    tx.body.settled.then(() => {
      arrivedAt = Date.now();
      if (tx.body.complete && !control.signal.aborted && !settled) {
        timer = setTimeout(() => control.abort(new GaveUp("deadline", timeoutMs)), timeoutMs);
      }
    });
    this.#inflight.add(control);
    if (this.#abandoning) control.abort(new GaveUp("shutdown", 0));
    let outcome: Outcome;
    try {
      outcome = await this.#attempt(
        entry.account,
        tx,
        AbortSignal.any([control.signal, tx.body.signal]),
      );
    } finally {
      settled = true;
      clearTimeout(timer);
      this.#inflight.delete(control);
    }
    // Given up on while the client was still sending: what counts is whether the message
    // then completes (its client keeps the reply) or not (the ingress answers, if anyone).
    if (!tx.body.complete) await tx.body.settled;
    if (tx.body.failure) {
      // The client's message never completed (gone, timed out, too big): nothing was
      // delivered, and the ingress answers (or nobody is left to answer).
      log.info("{account}: message not delivered, the client's message was incomplete: {why}", {
        account: entry.account.email,
        why: tx.body.failure.message,
      });
      return INCOMPLETE;
    }
    const refused = outcome.refusedRecipients;
    if (refused.length > 0 && tx.from !== "") {
      const report = this.#report(entry.account, tx, refused, new Date(arrivedAt));
      this.#reports.add(report);
      const done = () => this.#reports.delete(report);
      report.then(done, done);
    }
    const seconds = (performance.now() - started) / 1000;
    this.#observer?.messageDone(outcome.result, seconds, refused.length, entry.account.email);
    const props = {
      account: entry.account.email,
      result: outcome.result,
      size: tx.body.length,
      recipients: tx.to.length,
      refused: refused.length,
      reply: formatReply(outcome.reply),
      durationMs: Math.round(seconds * 1000),
    };
    const line =
      "{result} {account} {size} bytes {recipients} rcpt ({refused} refused): {reply} in {durationMs} ms";
    if (outcome.result === "delivered") log.info(line, props);
    else if (outcome.gaveUp) {
      log.warn(`${line}; {delivery}`, { ...props, delivery: outcome.gaveUp });
    } else log.warn(line, props);
    return outcome.reply;
  }

  /**
   * Tells the sender which recipients the provider refused, through the same account:
   * with the null sender (RFC 5321 section 4.5.5), and if the provider will not take
   * that, from the account's own address. Counts against the account's quota. Never
   * throws; the client already has its reply.
   */
  async #report(
    account: RelayAccount,
    tx: Transaction,
    refused: readonly RefusedRecipient[],
    arrival: Date,
  ): Promise<void> {
    const props = { account: account.email, recipients: refused.length };
    let result: ReportResult;
    let why: string;
    try {
      [result, why] = await this.#sendReport(account, tx, refused, arrival);
    } catch (err) {
      // Not expected (deliver never throws); a report must not take the process down.
      [result, why] = ["failed", err instanceof Error ? err.message : String(err)];
    }
    this.#observer?.reportDone(result);
    const what = "non-delivery report for {recipients} refused recipients of {account}";
    if (result === "sent") log.info(`${what} sent`, props);
    else if (result === "skipped") log.warn(`no ${what}: {why}`, { ...props, why });
    else log.error(`could not send the ${what}: {why}`, { ...props, why });
  }

  /** Sends one report; says how it went and, unless sent, why. */
  async #sendReport(
    account: RelayAccount,
    tx: Transaction,
    refused: readonly RefusedRecipient[],
    arrival: Date,
  ): Promise<[ReportResult, string]> {
    const reserved = await this.#quotas.reserve(account.email, account.quota, 1);
    if (!isReservation(reserved)) return ["skipped", quotaText(account.email, reserved)];
    const raw = MessageBody.of(nonDeliveryReport({
      reportingMta: this.#name,
      account: account.email,
      sender: tx.from,
      recipients: refused,
      original: await tx.body.bytes(),
      arrival,
    }));
    // A report has the same deadline as a message (it is not waited for by anyone, but
    // must not hold a connection to a stalled provider).
    const signal = AbortSignal.timeout(this.#deliveryTimeoutMs);
    let r = await account.deliver({ from: "", to: [tx.from], body: raw, signal });
    if (r.kind === "rejected") {
      r = await account.deliver({ from: account.email, to: [tx.from], body: raw, signal });
    }
    if (r.kind === "sent" && r.refusedRecipients.length === 0) {
      reserved.commit();
      return ["sent", ""];
    }
    reserved.release();
    return ["failed", describeResult(r)];
  }

  async #attempt(
    account: RelayAccount,
    tx: Transaction,
    signal: AbortSignal,
  ): Promise<Outcome> {
    let reserved;
    try {
      reserved = await this.#quotas.reserve(account.email, account.quota, tx.to.length);
    } catch (err) {
      return stateUnavailable(err);
    }
    if (!isReservation(reserved)) {
      this.#observer?.quotaDeferred(reserved.kind);
      return {
        result: "quota",
        reply: reply(451, "4.7.0", quotaText(account.email, reserved)),
        refusedRecipients: [],
      };
    }
    const progress: SendProgress = { endSent: false };
    if (signal.aborted) {
      reserved.release();
      return abandonedOutcome(signal.reason, progress);
    }
    // Given up on: the client's reply now, whatever the delivery is doing (a token request
    // or a permit wait does not hold it up); the delivery ends promptly on the same signal.
    let onAbort: (() => void) | undefined;
    const abandoned = new Promise<Outcome>((ok) => {
      onAbort = () => ok(abandonedOutcome(signal.reason, progress));
      signal.addEventListener("abort", onAbort, { once: true });
    });
    const delivered = account.deliver({
      from: tx.from,
      to: tx.to,
      body: tx.body,
      ...(tx.size ? { size: tx.size } : {}),
      signal,
      progress,
    }).then((result) => {
      if (result.kind === "abandoned") {
        // The provider may have it: count it, as the provider would.
        if (result.endSent) reserved.commit();
        return abandonedOutcome(signal.reason, progress);
      }
      const outcome = fromUpstream(result, tx.to.length);
      // Only what the provider took counts against the quota.
      if (outcome.result === "delivered" || outcome.result === "partial") reserved.commit();
      return outcome;
    }).finally(() => {
      reserved.release(); // no-op after the commit
    });
    try {
      return await Promise.race([delivered, abandoned]);
    } finally {
      signal.removeEventListener("abort", onAbort!);
      delivered.catch(() => {}); // settled after the race was decided: nobody waits for it
    }
  }
}

/**
 * One client's session with the relay: who logged in, and the current transaction's
 * account, sender and recipients. {@link reset} ends the transaction, {@link logout} the
 * session. A transaction's quota reservation lives only within {@link data} (see
 * {@link Relay.deliver}), so no reservation can outlive a session that ends mid-message.
 */
class RelaySession implements Session {
  readonly #relay: Relay;
  readonly #peer: Peer;
  /** The account logged in as (lower-cased address), if any. */
  #login?: string;
  /** The transaction: the account sending it, and its recipients. */
  #sender?: Entry;
  #from = "";
  #to: string[] = [];

  constructor(relay: Relay, peer: Peer) {
    this.#relay = relay;
    this.#peer = peer;
  }

  async auth(username: string, password: string): Promise<boolean> {
    const entry = await this.#relay.authenticate(username, password, this.#peer);
    this.#login = entry?.account.email.toLowerCase();
    return entry !== undefined;
  }

  mail(from: string, authenticated: boolean): Promise<Reply | undefined> {
    this.reset();
    if (!authenticated) this.#login = undefined;
    // The ingress never lets such a client this far; the session does not rely on that.
    if (this.#login === undefined && !this.#peer.trusted) {
      return Promise.resolve(reply(530, "5.7.0", "Authentication required"));
    }
    const decided = this.#relay.sender(this.#login, from);
    if ("code" in decided) return Promise.resolve(decided);
    this.#sender = decided;
    this.#from = from;
    return Promise.resolve(undefined);
  }

  rcpt(to: string): Promise<Reply | undefined> {
    this.#to.push(to);
    return Promise.resolve(undefined);
  }

  data(body: MessageBody, size?: number): Promise<Reply> {
    const sender = this.#sender;
    if (!sender) return Promise.resolve(reply(503, "5.5.1", "Bad sequence of commands"));
    const tx = { from: this.#from, to: this.#to, body, size };
    return this.#relay.deliver(sender, tx);
  }

  reset(): void {
    this.#sender = undefined;
    this.#from = "";
    this.#to = [];
  }

  logout(): void {
    this.reset();
    this.#login = undefined;
  }
}

interface Outcome {
  readonly result: MessageResult;
  readonly reply: Reply;
  /** Recipients the provider refused while it took the message for others. */
  readonly refusedRecipients: readonly RefusedRecipient[];
  /** Given up on: what is known of its delivery, for the log. */
  readonly gaveUp?: string;
}

/** The outcome of a message the relay gave up on (`reason`: the abort's). */
function abandonedOutcome(reason: unknown, progress: SendProgress): Outcome {
  const shutdown = reason instanceof GaveUp && reason.why === "shutdown";
  const seconds = reason instanceof GaveUp ? Math.round(reason.afterMs / 100) / 10 : 0;
  return {
    result: shutdown ? "shutdown" : "expired",
    reply: shutdown
      ? reply(421, "4.3.2", "Service shutting down, try again later")
      : reply(451, "4.4.7", `Delivery time limit (${seconds} s) reached, try again later`),
    refusedRecipients: [],
    gaveUp: progress.endSent
      ? "outcome unknown: the provider had the whole message and had not answered, it may " +
        "still deliver it (the client was told to retry: a possible duplicate)"
      : "not delivered: the provider never got the end of the message",
  };
}

const QUOTA_NAMES: Record<QuotaKind, string> = {
  messages_per_day: "messages per 24 hours",
  recipients_per_day: "recipients per 24 hours",
  messages_per_minute: "messages per minute",
};

function quotaText(account: string, q: { kind: QuotaKind; limit: number; retryAt: number }) {
  const at = new Date(Math.ceil(q.retryAt / 1000) * 1000).toISOString().replace(".000Z", "Z");
  return `Quota of ${q.limit} ${QUOTA_NAMES[q.kind]} for ${account} reached, retry after ${at}`;
}

/**
 * The shared state (Redis) did not answer in time: nothing was sent, the client retries.
 * Quota failures (thrown by {@link Quotas.reserve}) and token-cache or lease failures.
 */
function stateUnavailable(err: unknown): Outcome {
  log.warn("shared state unavailable: {error}", {
    error: err instanceof Error ? err.message : String(err),
  });
  return {
    result: "state_unavailable",
    reply: reply(451, "4.3.0", "Shared state unavailable, try again later"),
    refusedRecipients: [],
  };
}

function tokenFailure(err: unknown): Outcome {
  if (err instanceof RedisUnavailableError) return stateUnavailable(err);
  const message = err instanceof Error ? err.message : String(err);
  // The account's token file is unreadable (tokens/manager.ts CorruptTokenFileError):
  // the operator's to repair. Nothing of the file, not even its path, goes to the client.
  if (err instanceof TokenError && err.name === "CorruptTokenFileError") {
    return {
      result: "token_error",
      reply: reply(
        454,
        "4.7.0",
        "Account needs repair by the relay operator (its stored token file is unreadable)",
      ),
      refusedRecipients: [],
    };
  }
  // A domain entry's app-only credential refused (tokens/app_grant.ts AppCredentialError).
  if (err instanceof TokenError && err.name === "AppCredentialError") {
    return {
      result: "token_error",
      reply: reply(
        454,
        "4.7.0",
        clipReply(`The provider refused the relay's credential for this mailbox (${message})`),
      ),
      refusedRecipients: [],
    };
  }
  if (err instanceof TokenError && err.kind === "permanent") {
    return {
      result: "token_error",
      reply: reply(
        454,
        "4.7.0",
        clipReply(`Account needs re-authorization by the relay operator (${message})`),
      ),
      refusedRecipients: [],
    };
  }
  return {
    result: "token_error",
    reply: reply(
      451,
      "4.4.3",
      clipReply(`Cannot get an access token, try again later: ${message}`),
    ),
    refusedRecipients: [],
  };
}

function fromUpstream(r: UpstreamResult, recipients: number): Outcome {
  switch (r.kind) {
    case "sent": {
      const upstream = `upstream said: ${formatReply(r.reply)}`;
      if (r.refusedRecipients.length === 0) {
        return {
          result: "delivered",
          reply: reply(250, "2.0.0", `OK, ${upstream}`),
          refusedRecipients: [],
        };
      }
      const refused = r.refusedRecipients.map((x) =>
        `<${x.recipient}> ${x.reply.code} ${x.reply.enhanced}`
      )
        .join(", ");
      const accepted = recipients - r.refusedRecipients.length;
      return {
        result: "partial",
        reply: reply(
          250,
          "2.0.0",
          clipReply(`Delivered to ${accepted} of ${recipients} recipients; refused: ${refused}`),
        ),
        refusedRecipients: r.refusedRecipients,
      };
    }
    case "rejected":
      return {
        result: r.reply.code >= 500 ? "rejected" : "deferred",
        reply: reply(clientCode(r.reply.code), r.reply.enhanced, clipReply(r.reply.text)),
        refusedRecipients: [],
      };
    case "auth":
      return {
        result: "upstream_auth",
        reply: reply(
          454,
          "4.7.0",
          clipReply(`Provider refused the relay's token, try again later: ${formatReply(r.reply)}`),
        ),
        refusedRecipients: [],
      };
    case "token":
      return tokenFailure(r.error);
    case "unreachable":
      return {
        result: "unreachable",
        reply: reply(451, "4.4.1", clipReply(`Provider unreachable, try again later: ${r.detail}`)),
        refusedRecipients: [],
      };
    case "abandoned": // handled by the caller, which knows why
      return abandonedOutcome(undefined, { endSent: r.endSent });
  }
}

/**
 * The code to pass on for a provider's refusal. 5xx and the usual 4xx pass unchanged;
 * other 4xx become 451 (a provider's 421 must not close the client's session, and
 * Microsoft's 432 is no reply a client expects after DATA). The enhanced code and
 * the text stay the provider's.
 */
function clientCode(code: number): number {
  if (code >= 500 || code === 450 || code === 451 || code === 452) return code;
  return 451;
}
