/**
 * Prometheus metrics (prom-client, own registry). No per-account labels: a thousand
 * accounts must not mean a thousand series per metric.
 * @module
 */
import client from "prom-client";
import type { IngressObserver } from "./ingress/backend.ts";
import type { MessageResult, RelayObserver, ReportResult } from "./relay/relay.ts";
import type { QuotaKind } from "./quota/quota.ts";
import type { UpstreamObserver, UpstreamResult } from "./upstream/pool.ts";
import type { TransportKind, TransportObserver } from "./upstream/transport.ts";
import type { RefreshOutcome, TokenHealth, TokenState } from "./tokens/manager.ts";
import { REFUSAL_REASONS } from "./ingress/replies.ts";

/** Message duration buckets, seconds: from a loopback hop to a slow provider. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Options of {@link Metrics}. */
export interface MetricsOptions {
  /** Adds `smtp_relay_account_messages_total{account,result}` (one series per account). */
  readonly perAccount: boolean;
}

/** Event-loop lag is sampled this often, ms. */
const LAG_SAMPLE_MS = 500;

/** All relay metrics; implements the observer hooks of each layer. */
export class Metrics
  implements IngressObserver, RelayObserver, UpstreamObserver, TransportObserver {
  /** The registry `/metrics` serves. */
  readonly registry = new client.Registry();
  readonly #messages: client.Counter<"result">;
  readonly #duration: client.Histogram<"result">;
  readonly #refusedRecipients: client.Counter;
  readonly #refreshes: client.Counter<"result">;
  readonly #upstream: client.Gauge;
  readonly #sessions: client.Gauge;
  readonly #ingressRefusals: client.Counter<"reason">;
  readonly #quota: client.Counter<"kind">;
  readonly #reports: client.Counter<"result">;
  readonly #reloads: client.Counter<"result">;
  readonly #lastReload: client.Gauge;
  readonly #perAccount?: client.Counter<"account" | "result">;
  readonly #lagTimer: ReturnType<typeof setInterval>;
  readonly #lag = { max: 0 };
  readonly #deliveries: client.Counter<"transport" | "result">;
  readonly #httpRequests: client.Counter<"transport" | "status">;
  readonly #httpDuration: client.Histogram<"transport">;

  /**
   * `accountStates` is read at scrape time for the accounts-by-state gauge and the
   * unsaved-token gauge.
   */
  constructor(
    accountStates: () => Iterable<TokenHealth>,
    options: MetricsOptions = { perAccount: false },
  ) {
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
      help: "Refusals (4xx/5xx replies) the SMTP listener sent, by reason (docs/replies.md); " +
        "replies to messages handed to the provider count in smtp_relay_messages_total.",
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
          state_corrupt: 0,
        };
        for (const a of accountStates()) counts[a.state]++;
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    new client.Gauge({
      name: "smtp_relay_token_unsaved_accounts",
      help: "Accounts whose rotated refresh token could not be written to the state directory " +
        "(kept in memory, write retried; lost if the relay stops first).",
      registers,
      collect() {
        let n = 0;
        for (const a of accountStates()) if (a.unsaved) n++;
        this.set(n);
      },
    });
    this.#quota = new client.Counter({
      name: "smtp_relay_quota_deferrals_total",
      help: "Messages deferred because an account quota was spent, by quota.",
      labelNames: ["kind"],
      registers,
    });
    this.#reports = new client.Counter({
      name: "smtp_relay_nondelivery_reports_total",
      help:
        "Non-delivery reports for recipients the provider refused (sent, failed, skipped: quota).",
      labelNames: ["result"],
      registers,
    });
    this.#reloads = new client.Counter({
      name: "smtp_relay_config_reloads_total",
      help: "Configuration reloads (SIGHUP), by result (success, failure, timeout).",
      labelNames: ["result"],
      registers,
    });
    this.#lastReload = new client.Gauge({
      name: "smtp_relay_config_last_reload_success",
      help:
        "1 if the latest configuration reload succeeded (or none happened), 0 if it failed or timed out.",
      registers,
    });
    this.#lastReload.set(1);
    if (options.perAccount) {
      this.#perAccount = new client.Counter({
        name: "smtp_relay_account_messages_total",
        help: "Messages by account and outcome (opt-in: metrics.perAccount).",
        labelNames: ["account", "result"],
        registers,
      });
    }
    this.#deliveries = new client.Counter({
      name: "smtp_relay_transport_deliveries_total",
      help: "Messages and reports handed to a transport (smtp, graph, gmail-api), by outcome.",
      labelNames: ["transport", "result"],
      registers,
    });
    this.#httpRequests = new client.Counter({
      name: "smtp_relay_http_requests_total",
      help: "HTTPS requests to Graph and the Gmail API, by status (or error, timeout, abandoned).",
      labelNames: ["transport", "status"],
      registers,
    });
    this.#httpDuration = new client.Histogram({
      name: "smtp_relay_http_request_duration_seconds",
      help: "HTTPS requests to Graph and the Gmail API, from sending to the answer read.",
      labelNames: ["transport"],
      buckets: DURATION_BUCKETS,
      registers,
    });
    // prom-client's process metrics read /proc, which the permission flags do not allow.
    new client.Gauge({
      name: "process_resident_memory_bytes",
      help: "Resident memory size in bytes.",
      registers,
      collect() {
        this.set(Deno.memoryUsage().rss);
      },
    });
    new client.Gauge({
      name: "smtp_relay_heap_used_bytes",
      help: "V8 heap in use, bytes.",
      registers,
      collect() {
        this.set(Deno.memoryUsage().heapUsed);
      },
    });
    const lag = this.#lag;
    new client.Gauge({
      name: "smtp_relay_event_loop_lag_seconds",
      help: "Largest event-loop delay seen since the previous scrape, seconds.",
      registers,
      collect() {
        this.set(lag.max / 1000);
        lag.max = 0;
      },
    });
    let expected = performance.now() + LAG_SAMPLE_MS;
    this.#lagTimer = setInterval(() => {
      const now = performance.now();
      lag.max = Math.max(lag.max, now - expected);
      expected = now + LAG_SAMPLE_MS;
    }, LAG_SAMPLE_MS);
    Deno.unrefTimer(this.#lagTimer);
    // Pre-create label values so rates work from the first scrape.
    const results: MessageResult[] = [
      "delivered",
      "partial",
      "rejected",
      "deferred",
      "upstream_auth",
      "token_error",
      "unreachable",
      "quota",
      "expired",
      "shutdown",
      "state_unavailable",
    ];
    for (const r of results) this.#messages.inc({ result: r }, 0);
    for (const k of ["messages_per_day", "recipients_per_day", "messages_per_minute"]) {
      this.#quota.inc({ kind: k }, 0);
    }
    // The ingress's refusal reasons (see IngressObserver.refused).
    const refusals = REFUSAL_REASONS;
    for (const reason of refusals) this.#ingressRefusals.inc({ reason }, 0);
    for (const r of ["success", "failure"]) this.#refreshes.inc({ result: r }, 0);
    for (const r of ["success", "failure", "timeout"]) this.#reloads.inc({ result: r }, 0);
  }

  /** Stops the event-loop sampler. */
  stop(): void {
    clearInterval(this.#lagTimer);
  }

  /** @inheritdoc */
  messageDone(
    result: MessageResult,
    seconds: number,
    refusedRecipients: number,
    account: string,
  ): void {
    this.#messages.inc({ result });
    this.#duration.observe({ result }, seconds);
    if (refusedRecipients) this.#refusedRecipients.inc(refusedRecipients);
    this.#perAccount?.inc({ account, result });
  }

  /** @inheritdoc */
  quotaDeferred(kind: QuotaKind): void {
    this.#quota.inc({ kind });
  }

  /** Counts a non-delivery report. */
  reportDone(result: ReportResult): void {
    this.#reports.inc({ result });
  }

  /**
   * Counts a configuration reload: applied, refused (a bad config), or given up on because
   * loading the config did not finish within the reload deadline.
   */
  configReloaded(result: "success" | "failure" | "timeout"): void {
    this.#reloads.inc({ result });
    this.#lastReload.set(result === "success" ? 1 : 0);
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

  /** @inheritdoc */
  deliveryDone(transport: TransportKind, result: UpstreamResult["kind"]): void {
    this.#deliveries.inc({ transport, result });
  }

  /** @inheritdoc */
  httpRequestDone(transport: TransportKind, status: string, seconds: number): void {
    this.#httpRequests.inc({ transport, status });
    this.#httpDuration.observe({ transport }, seconds);
  }
}
