/**
 * Prometheus metrics (prom-client, own registry). No per-account labels: a thousand
 * accounts must not mean a thousand series per metric.
 * @module
 */
import client from "prom-client";
import type { IngressObserver } from "./ingress/backend.ts";
import type { MessageResult, RelayObserver } from "./relay/relay.ts";
import type { UpstreamObserver } from "./upstream/pool.ts";
import type { RefreshOutcome, TokenState } from "./tokens/manager.ts";

/** Message duration buckets, seconds: from a loopback hop to a slow provider. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** All relay metrics; implements the observer hooks of each layer. */
export class Metrics implements IngressObserver, RelayObserver, UpstreamObserver {
  /** The registry `/metrics` serves. */
  readonly registry = new client.Registry();
  readonly #messages: client.Counter<"result">;
  readonly #duration: client.Histogram<"result">;
  readonly #refusedRecipients: client.Counter;
  readonly #refreshes: client.Counter<"result">;
  readonly #upstream: client.Gauge;
  readonly #sessions: client.Gauge;
  readonly #ingressRefusals: client.Counter<"reason">;

  /** `accountStates` is read at scrape time for the accounts-by-state gauge. */
  constructor(accountStates: () => Iterable<TokenState>) {
    const registers = [this.registry];
    this.#messages = new client.Counter({
      name: "smtp_relay_messages_total",
      help: "Messages handed to the relay, by outcome.",
      labelNames: ["result"],
      registers,
    });
    this.#duration = new client.Histogram({
      name: "smtp_relay_message_duration_seconds",
      help: "From end of DATA to the reply, by outcome.",
      labelNames: ["result"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#refusedRecipients = new client.Counter({
      name: "smtp_relay_recipients_refused_total",
      help: "Recipients the provider refused in messages it accepted for others.",
      registers,
    });
    this.#refreshes = new client.Counter({
      name: "smtp_relay_token_refreshes_total",
      help: "Access token refreshes, by result.",
      labelNames: ["result"],
      registers,
    });
    this.#upstream = new client.Gauge({
      name: "smtp_relay_upstream_connections",
      help: "Open connections to providers.",
      registers,
    });
    this.#sessions = new client.Gauge({
      name: "smtp_relay_sessions_active",
      help: "Open client SMTP sessions.",
      registers,
    });
    this.#ingressRefusals = new client.Counter({
      name: "smtp_relay_ingress_refusals_total",
      help: "Commands refused by the SMTP listener itself, by reason.",
      labelNames: ["reason"],
      registers,
    });
    new client.Gauge({
      name: "smtp_relay_accounts",
      help: "Configured accounts by token state.",
      labelNames: ["state"],
      registers,
      collect() {
        const counts: Record<TokenState, number> = {
          unknown: 0,
          ok: 0,
          failing: 0,
          needs_reauth: 0,
        };
        for (const s of accountStates()) counts[s]++;
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    new client.Gauge({
      name: "smtp_relay_resident_memory_bytes",
      help: "Resident set size of the relay process.",
      registers,
      collect() {
        this.set(Deno.memoryUsage().rss);
      },
    });
    // Pre-create label values so rates work from the first scrape.
    for (const r of ["delivered", "rejected", "deferred"]) this.#messages.inc({ result: r }, 0);
    for (const r of ["success", "failure"]) this.#refreshes.inc({ result: r }, 0);
  }

  /** @inheritdoc */
  messageDone(result: MessageResult, seconds: number, refusedRecipients: number): void {
    this.#messages.inc({ result });
    this.#duration.observe({ result }, seconds);
    if (refusedRecipients) this.#refusedRecipients.inc(refusedRecipients);
  }

  /** Counts a refresh attempt (hook for tokens/manager). */
  tokenRefreshed(outcome: RefreshOutcome): void {
    this.#refreshes.inc({ result: outcome.ok ? "success" : "failure" });
  }

  /** @inheritdoc */
  connectionOpened(): void {
    this.#upstream.inc();
  }

  /** @inheritdoc */
  connectionClosed(): void {
    this.#upstream.dec();
  }

  /** @inheritdoc */
  sessionOpened(): void {
    this.#sessions.inc();
  }

  /** @inheritdoc */
  sessionClosed(): void {
    this.#sessions.dec();
  }

  /** @inheritdoc */
  refused(reason: string): void {
    this.#ingressRefusals.inc({ reason });
  }
}
