/**
 * Start-up wiring, the one place where the layers meet: config → ingress → relay →
 * accounts (tokens, upstream) and quotas, plus metrics, the HTTP listener, the state
 * saver, reload and graceful stop. Each of those is a named unit elsewhere; this module
 * only builds them and decides the order in which they start and stop.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { RelayConfig } from "./config/load.ts";
import type { AccountDeps, AccountStatus } from "./accounts.ts";
import { type IngressOptions, type ListenerOptions, startIngress } from "./ingress/server.ts";
import { Relay } from "./relay/relay.ts";
import type { RefreshOutcome, UnsavedToken } from "./tokens/manager.ts";
import { FileTokenStore } from "./tokens/store.ts";
import { FileStateStore } from "./state/store.ts";
import { StateSaver } from "./state/saver.ts";
import { isQuotaSnapshot, type QuotaSnapshot } from "./quota/quota.ts";
import { LocalQuotas, type Quotas } from "./quota/quotas.ts";
import { openSharedState, type SharedState } from "./state/redis/mod.ts";
import type { AuthFailureLedger } from "./ingress/auth_ledger.ts";
import { AccountRegistry } from "./registry.ts";
import { planReload } from "./reload.ts";
import { readiness } from "./readiness.ts";
import { readTls } from "./tls.ts";
import { checkSmtpServer } from "./compat/smtp_server.ts";
import { checkNodemailer } from "./compat/nodemailer.ts";
import { LocalPermits } from "./upstream/permits.ts";
import { Metrics } from "./metrics.ts";
import { type Readiness, startHttp } from "./http.ts";

/** A running relay. */
export interface RunningRelay {
  /** SMTP listener address. */
  readonly smtp: { host: string; port: number };
  /** Implicit-TLS listener address, when configured. */
  readonly smtps?: { host: string; port: number };
  /** HTTP listener address (port 0: none, a worker of `--workers N`). */
  readonly http: { host: string; port: number };
  /** The shared-state instance id (Redis), if any. */
  readonly instance?: string;
  /** What `/readyz` reports for this relay. */
  readiness(): Promise<Readiness>;
  /** The metrics (tests and the demo read them). */
  readonly metrics: Metrics;
  /** Re-reads the certificate files for new sessions; false when no TLS is configured. */
  reloadTls(): Promise<boolean>;
  /**
   * Applies a new config: accounts, sender domains, token settings and the delivery
   * deadline (for messages that arrive from then on), without dropping
   * sessions (in-flight messages finish on the settings they started with). Every other
   * setting needs a restart and keeps its running value; the returned notes name each
   * such change, at this and every later reload until the process restarts.
   */
  reload(config: RelayConfig): Promise<string[]>;
  /** The operator's view of every account. */
  accounts(): Promise<AccountStatus[]>;
  /**
   * Graceful stop: no new sessions; idle sessions and new commands get 421 4.3.2; messages
   * already in DATA finish until `deadlineMs`, then the rest get 421 4.3.2 (and a log line
   * each); then pools QUIT and state is flushed.
   */
  stop(deadlineMs: number): Promise<void>;
  /** Immediate stop (tests). */
  close(): Promise<void>;
}

const log = getLogger(["relay", "app"]);
const tokenLog = getLogger(["relay", "tokens"]);
/** Quota counters are written at most this often (and at stop), ms. */
const QUOTA_FLUSH_MS = 10_000;
/** How long shutdown waits for non-delivery reports still being sent. */
const REPORTS_GRACE_MS = 5_000;

/** Once per process: the library internals the relay relies on are all there. */
let librariesChecked: Promise<unknown> | undefined;

/** How {@link startRelay} runs beside other workers (`--workers N`). */
export interface StartOptions {
  /** Start the HTTP listener (default true; a worker leaves it to the supervisor). */
  readonly http?: boolean;
  /** SO_REUSEPORT on the SMTP listeners (workers share them). */
  readonly reusePort?: boolean;
  /** The shared-state instance id (default: process id and a random part). */
  readonly instance?: string;
}

/** Starts everything the config describes. */
export async function startRelay(
  initial: RelayConfig,
  options: StartOptions = {},
): Promise<RunningRelay> {
  // A library version that lacks an internal the relay relies on fails the start here,
  // naming the library and the missing piece, instead of failing messages later.
  librariesChecked ??= Promise.resolve().then(() => checkSmtpServer()).then(() =>
    checkNodemailer()
  );
  await librariesChecked;
  /** The config in force (restart-only settings as started). */
  let config = initial;
  checkSourceAddresses(config);
  let registry: AccountRegistry | undefined;
  const metrics = new Metrics(() => registry?.tokenStates() ?? [], {
    perAccount: config.metrics.perAccount,
  });
  // One cap per address, as configured now, for every runtime of it (see AccountDeps).
  // Accounts and mailboxes of domain entries alike (the registry knows both).
  const capOf = (account: string) => registry?.maxConnections(account) ?? 1;
  // Another instance waits for one of an account's connections: one idle connection here
  // goes per lease renewal (every 5 s), not all: two busy instances on one account would
  // otherwise keep closing each other's connections between messages and reopening them.
  const onWanted = (account: string) =>
    registry?.runtimes.find((r) => r.config.email.toLowerCase() === account)?.pool.quitIdle(1);
  const backend = await stateBackend(config, capOf, metrics, onWanted, options.instance);
  const quotas = backend.quotas;
  const deps: AccountDeps = {
    ...backend.deps,
    onRefresh: (account, outcome) => {
      metrics.tokenRefreshed(outcome);
      logRefresh(account, outcome);
    },
    upstream: metrics,
  };
  const accounts = registry = new AccountRegistry(deps, quotas);
  accounts.apply(config);
  const relay = new Relay(accounts.relayAccounts(), config.senderDomains, metrics, {
    name: config.smtp.name,
    quotas,
    deliveryTimeoutMs: config.deliveryTimeoutSeconds * 1000,
    // Mailboxes of domain entries (app-only credentials), as configured now.
    resolve: (address) => accounts.resolve(address),
  });
  const ingress = await startIngress({
    ...await ingressOptions(config, relay, metrics, backend.shared?.authFailures),
    reusePort: options.reusePort,
    // Lock log lines name configured accounts only (clients put passwords in the username).
    accountName: (u) =>
      config.accounts.find((a) => a.email.toLowerCase() === u)?.email ??
        accounts.resolve(u)?.email,
  });
  const saver = backend.saver;

  let listening = true;
  const ready = () =>
    Promise.resolve(readiness(listening, accounts.tokenStates(), backend.shared?.redis));
  const http = options.http === false
    ? { address: { host: config.http.host, port: 0 }, close: () => Promise.resolve() }
    : await startHttp({
      host: config.http.host,
      port: config.http.port,
      registry: metrics.registry,
      accounts: () => accounts.status(),
      adminToken: adminToken(),
      readiness: ready,
    });
  const smtpAt = ingress.addresses.map((a) => `${a.host}:${a.port}`).join(", ");
  if (options.http === false) {
    log.info("worker SMTP on {smtp}, instance {instance}, {accounts} accounts", {
      smtp: smtpAt,
      instance: backend.shared?.instance,
      accounts: accounts.size,
    });
  } else {
    log.info("SMTP on {smtp}, metrics on {http}, {accounts} accounts", {
      smtp: smtpAt,
      http: `${http.address.host}:${http.address.port}`,
      accounts: accounts.size,
    });
  }

  const reloadTls = async () => {
    if (!config.tls) return false;
    ingress.updateTls(await readTls(config.tls));
    log.info("TLS certificate reloaded from {cert}", { cert: config.tls.certFile });
    return true;
  };
  let stopped = false;
  const shutdown = async (deadlineMs: number) => {
    if (stopped) return;
    stopped = true;
    listening = false;
    // At the drain deadline the relay gives up on the messages it is still delivering: each
    // client gets 421 4.3.2 and each message is logged (not delivered, or outcome unknown).
    if (deadlineMs > 0) await ingress.drain(deadlineMs, () => relay.abandonAll());
    else await ingress.close();
    // Reports about messages that finished during the drain go out before the pools QUIT
    // (for at most REPORTS_GRACE_MS: a provider that hangs does not hold up the exit).
    if (deadlineMs > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        relay.reportsSettled(),
        new Promise((ok) => timer = setTimeout(ok, REPORTS_GRACE_MS)),
      ]);
      clearTimeout(timer);
      await accounts.stop();
    } else {
      accounts.close();
    }
    // Rotated refresh tokens that could not be written get one more try; one that still
    // fails is lost with the process: say so, and what to do.
    logUnsavedAtStop(await accounts.saveTokens());
    await saver?.stop();
    await backend.shared?.close();
    await http.close();
    metrics.stop();
  };

  return {
    smtp: ingress.addresses[0],
    smtps: ingress.addresses[1],
    http: http.address,
    instance: backend.shared?.instance,
    readiness: ready,
    metrics,
    reloadTls,
    async reload(next) {
      const plan = planReload(config, next);
      checkSourceAddresses(plan.config);
      const changes = accounts.apply(plan.config);
      relay.update(accounts.relayAccounts(), plan.config.senderDomains);
      relay.setDeliveryTimeout(plan.config.deliveryTimeoutSeconds * 1000);
      config = plan.config;
      // The certificate files (same names) are re-read; new names need a restart.
      if (config.tls) await reloadTls();
      log.info("configuration reloaded: {added} added, {removed} removed, {changed} changed", {
        ...changes,
      });
      for (const note of plan.notApplied) log.warn("not applied until restart: {note}", { note });
      return [...plan.notApplied];
    },
    accounts: () => accounts.status(),
    stop: (deadlineMs) => shutdown(deadlineMs),
    close: () => shutdown(0),
  };
}

/** The state backend the config chose: files (one instance) or Redis (shared). */
interface StateBackend {
  readonly quotas: Quotas;
  /** The account deps that hold state. */
  readonly deps: Pick<AccountDeps, "tokenStore" | "permits" | "accessTokens" | "refreshLease">;
  /** Files: the quota counters' periodic writer. */
  readonly saver?: StateSaver;
  /** Redis: the connection and its seams. */
  readonly shared?: SharedState;
}

async function stateBackend(
  config: RelayConfig,
  capOf: (account: string) => number,
  metrics: Metrics,
  onWanted: (account: string) => void,
  instance?: string,
): Promise<StateBackend> {
  const redis = config.state.redis;
  if (redis) {
    const shared = await openSharedState(redis, capOf, metrics.registry, onWanted, instance);
    log.info("shared state on Redis at {host} (keys under {prefix}), instance {instance}", {
      host: shared.redis.host,
      prefix: redis.keyPrefix,
      instance: shared.instance,
    });
    return {
      quotas: shared.quotas,
      deps: {
        tokenStore: shared.tokenStore,
        permits: shared.permits,
        accessTokens: shared.accessTokens,
        refreshLease: shared.refreshLease,
      },
      shared,
    };
  }
  await Deno.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const quotas = new LocalQuotas(
    new FileStateStore<QuotaSnapshot>(config.stateDir, "quota", isQuotaSnapshot),
  );
  return {
    quotas,
    deps: { tokenStore: new FileTokenStore(config.stateDir), permits: new LocalPermits(capOf) },
    saver: new StateSaver(quotas, QUOTA_FLUSH_MS),
  };
}

async function ingressOptions(
  config: RelayConfig,
  relay: Relay,
  metrics: Metrics,
  authFailureLedger?: AuthFailureLedger,
): Promise<IngressOptions> {
  const listeners: ListenerOptions[] = [{
    host: config.smtp.host,
    port: config.smtp.port,
    implicitTls: false,
    trustedNetworks: config.smtp.trustedNetworks,
    proxyFrom: config.smtp.proxyFrom,
  }];
  if (config.smtps) {
    listeners.push({
      host: config.smtps.host ?? config.smtp.host,
      port: config.smtps.port,
      implicitTls: true,
      trustedNetworks: config.smtps.trustedNetworks,
      proxyFrom: config.smtps.proxyFrom,
    });
  }
  const limits = config.limits;
  return {
    listeners,
    name: config.smtp.name,
    tls: config.tls ? await readTls(config.tls) : undefined,
    allowPlaintextAuth: config.smtp.allowPlaintextAuth,
    maxMessageSize: config.smtp.maxMessageSize,
    maxRecipients: config.smtp.maxRecipients,
    limits: {
      ...limits,
      authFailureWindowMs: limits.authFailureWindowSeconds * 1000,
      idleTimeoutMs: limits.idleTimeoutSeconds * 1000,
      sessionTimeoutMs: limits.sessionTimeoutSeconds * 1000,
      ...(authFailureLedger ? { authFailureLedger } : {}),
    },
    backend: relay,
    observer: metrics,
    onError: (err: unknown) =>
      log.debug("client connection error: {error}", { error: String(err) }),
  };
}

/**
 * A source address must be usable before any message depends on it: Deno needs
 * `--allow-net=<address>:0` to bind it, and without it would fail on the first connection.
 */
export function checkSourceAddresses(config: RelayConfig): void {
  const domains = config.domains.map((d) => ({
    email: `*@${d.domain}`,
    sourceAddress: d.sourceAddress,
  }));
  for (const a of [...config.accounts, ...domains]) {
    if (!a.sourceAddress) continue;
    const host = a.sourceAddress.includes(":") ? `[${a.sourceAddress}]:0` : `${a.sourceAddress}:0`;
    const state = Deno.permissions.querySync({ name: "net", host }).state;
    if (state !== "granted") {
      throw new Error(
        `${a.email}: sourceAddress ${a.sourceAddress} needs --allow-net=${host} (not granted)`,
      );
    }
  }
}

/** Name of the variable holding the `/accounts` bearer token. */
export const ADMIN_TOKEN_ENV = "RELAY_ADMIN_TOKEN";

/** The `/accounts` bearer token from the environment, if set (and readable). */
export function adminToken(): string | undefined {
  try {
    return Deno.env.get(ADMIN_TOKEN_ENV) || undefined;
  } catch {
    return undefined; // no env permission (demo): /accounts stays loopback-only
  }
}

function logRefresh(account: string, o: RefreshOutcome): void {
  if (!o.ok) {
    // A probe or recheck that fails the same way repeats a verdict already logged.
    const level = o.previous === o.state ? "debug" : o.state === "failing" ? "warn" : "error";
    if (o.state === "state_corrupt") {
      tokenLog[level](
        "{account}: {error}; it is not used: move it away and run " +
          "`deno task authorize --account {account}`, or restore it from a backup",
        { account, error: o.error?.message },
      );
    } else if (o.state === "needs_reauth") {
      tokenLog[level](
        "{account} needs re-authorization ({error}): run `deno task authorize --account {account}`",
        { account, error: o.error?.message },
      );
    } else {
      tokenLog[level]("token refresh failed for {account} after {attempts} attempts: {error}", {
        account,
        error: o.error?.message,
        attempts: o.attempts,
        background: o.background,
      });
    }
    return;
  }
  if (o.previous === "failing" || o.previous === "needs_reauth" || o.previous === "state_corrupt") {
    tokenLog.info("token refresh for {account} works again (was {previous})", {
      account,
      previous: o.previous,
    });
  }
  if (o.persistError) {
    tokenLog.error(
      "rotated refresh token for {account} could not be saved to {path} ({error}: {message}); " +
        "it is kept in memory and the write retried until it succeeds (next at {next}); " +
        "a restart before then loses it: make its directory writable (or free space)",
      {
        account,
        path: o.unsaved?.path,
        error: o.unsaved?.error,
        message: o.persistError,
        next: o.unsaved?.nextAttemptAt ? new Date(o.unsaved.nextAttemptAt).toISOString() : "-",
      },
    );
  }
  tokenLog.debug("token refreshed for {account}", { account, rotated: o.rotated });
}

/** Stop: one line per account whose rotated refresh token is lost with the process. */
function logUnsavedAtStop(
  lost: readonly { readonly account: string; readonly unsaved: UnsavedToken }[],
): void {
  for (const { account, unsaved } of lost) {
    tokenLog.error(
      "rotated refresh token for {account} is NOT saved and is lost now that the relay stops: " +
        "writing {path} failed ({error}: {message}) since {since}. Make its directory writable " +
        "(or free space) before starting the relay again; if {account} then answers 454 " +
        "(invalid_grant), run " +
        "`deno task authorize --account {account}`",
      {
        account,
        path: unsaved.path,
        error: unsaved.error,
        message: unsaved.message,
        since: new Date(unsaved.since).toISOString(),
      },
    );
  }
}
