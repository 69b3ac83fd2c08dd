/**
 * Start-up wiring, the one place where the layers meet:
 * config → ingress → relay → tokens → upstream, plus metrics, the HTTP listener,
 * quota persistence, reload and graceful stop.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { RelayConfig } from "./config/load.ts";
import { type AccountDeps, accountKey, AccountRuntime, type AccountStatus } from "./accounts.ts";
import {
  type IngressOptions,
  type ListenerOptions,
  startIngress,
  type TlsMaterial,
} from "./ingress/server.ts";
import { Relay } from "./relay/relay.ts";
import type { RefreshOutcome } from "./tokens/manager.ts";
import { FileTokenStore } from "./tokens/store.ts";
import { FileStateStore } from "./state/store.ts";
import { isQuotaSnapshot, type QuotaSnapshot } from "./quota/quota.ts";
import { Metrics } from "./metrics.ts";
import { startHttp } from "./http.ts";

/** A running relay. */
export interface RunningRelay {
  /** SMTP listener address. */
  readonly smtp: { host: string; port: number };
  /** Implicit-TLS listener address, when configured. */
  readonly smtps?: { host: string; port: number };
  /** HTTP listener address. */
  readonly http: { host: string; port: number };
  /** The metrics (tests and the demo read them). */
  readonly metrics: Metrics;
  /** Re-reads the certificate files for new sessions; false when no TLS is configured. */
  reloadTls(): Promise<boolean>;
  /**
   * Applies a new config: accounts added, removed or changed without dropping sessions
   * (in-flight messages finish on the settings they started with). Listener settings
   * need a restart; the returned notes say which changes were not applied.
   */
  reload(config: RelayConfig): Promise<string[]>;
  /** The operator's view of every account. */
  accounts(): AccountStatus[];
  /**
   * Graceful stop: no new sessions; idle sessions and new commands get 421 4.3.2; messages
   * already in DATA finish until `deadlineMs`; then pools QUIT and state is flushed.
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

/** Starts everything the config describes. */
export async function startRelay(initial: RelayConfig): Promise<RunningRelay> {
  let config = initial;
  await Deno.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  checkSourceAddresses(config);
  const quotaStore = new FileStateStore<QuotaSnapshot>(config.stateDir, "quota", isQuotaSnapshot);
  let runtimes = new Map<string, AccountRuntime>();
  const metrics = new Metrics(() => [...runtimes.values()].map((r) => r.tokens.state), {
    perAccount: config.metrics.perAccount,
  });
  const deps: AccountDeps = {
    tokenStore: new FileTokenStore(config.stateDir),
    onRefresh: (account, outcome) => {
      metrics.tokenRefreshed(outcome);
      logRefresh(account, outcome);
    },
    upstream: metrics,
  };

  /** Builds runtimes for `next`, reusing unchanged ones and carrying quota counters over. */
  const build = async (next: RelayConfig) => {
    const built = new Map<string, AccountRuntime>();
    for (const a of next.accounts) {
      const id = a.email.toLowerCase();
      const old = runtimes.get(id);
      if (old && old.key === accountKey(next, a)) {
        built.set(id, old);
        continue;
      }
      // A changed account takes its counters along; a new one finds them on disk.
      const counters = old ? old.quota.snapshot() : await quotaStore.load(a.email).catch((err) => {
        log.warn("ignoring unreadable quota counters of {account}: {error}", {
          account: a.email,
          error: err instanceof Error ? err.message : String(err),
        });
        return undefined;
      });
      built.set(id, new AccountRuntime(next, a, deps, counters));
    }
    return built;
  };

  runtimes = await build(config);
  const accountStatus = () => [...runtimes.values()].map((r) => r.status());
  const relay = new Relay(
    [...runtimes.values()].map((r) => r.relayAccount),
    config.senderDomains,
    metrics,
    { name: config.smtp.name },
  );
  const ingress = await startIngress(await ingressOptions(config, relay, metrics));

  // One account after the other: written all at once, 100 accounts' files cost the event
  // loop a ~30 ms stretch every flush, which every message in flight then waits out.
  let flushing: Promise<void> | undefined;
  const flushQuotas = async (all = false): Promise<void> => {
    while (flushing) await flushing;
    flushing = (async () => {
      for (const r of [...runtimes.values()]) {
        if (!all && !r.quota.dirty) continue;
        await quotaStore.save(r.config.email, r.quota.snapshot()).catch((err) =>
          log.error("cannot save quota counters of {account}: {error}", {
            account: r.config.email,
            error: err instanceof Error ? err.message : String(err),
          })
        );
      }
    })().finally(() => flushing = undefined);
    await flushing;
  };
  // A flush still writing when the next is due: skipped, the counters stay dirty.
  const flushTimer = setInterval(() => {
    if (!flushing) void flushQuotas();
  }, QUOTA_FLUSH_MS);

  let listening = true;
  const http = await startHttp({
    host: config.http.host,
    port: config.http.port,
    registry: metrics.registry,
    accounts: accountStatus,
    adminToken: adminToken(),
    readiness: () => {
      const states = [...runtimes.values()].map((r) => r.tokens.state);
      return {
        listening,
        accounts: {
          total: states.length,
          ok: states.filter((s) => s === "ok").length,
          failing: states.filter((s) => s === "failing").length,
          needsReauth: states.filter((s) => s === "needs_reauth").length,
        },
      };
    },
  });
  log.info("SMTP on {smtp}, metrics on {http}, {accounts} accounts", {
    smtp: ingress.addresses.map((a) => `${a.host}:${a.port}`).join(", "),
    http: `${http.address.host}:${http.address.port}`,
    accounts: runtimes.size,
  });

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
    clearInterval(flushTimer);
    if (deadlineMs > 0) await ingress.drain(deadlineMs);
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
    }
    if (deadlineMs > 0) await Promise.all([...runtimes.values()].map((r) => r.stop()));
    else for (const r of runtimes.values()) r.retire(0);
    await flushQuotas(true);
    await http.close();
    metrics.stop();
  };

  return {
    smtp: ingress.addresses[0],
    smtps: ingress.addresses[1],
    http: http.address,
    metrics,
    reloadTls,
    async reload(next) {
      checkSourceAddresses(next);
      const notes = listenerChanges(config, next);
      const previous = runtimes;
      const built = await build(next);
      runtimes = built;
      relay.update([...built.values()].map((r) => r.relayAccount), next.senderDomains);
      for (const [id, r] of previous) if (built.get(id) !== r) r.retire();
      const added = [...built.keys()].filter((k) => !previous.has(k)).length;
      const removed = [...previous.keys()].filter((k) => !built.has(k)).length;
      const changed = [...built].filter(([k, r]) => previous.has(k) && previous.get(k) !== r)
        .length;
      const tlsChanged = JSON.stringify(config.tls) !== JSON.stringify(next.tls);
      config = { ...next, smtp: config.smtp, smtps: config.smtps, http: config.http };
      if (next.tls && !tlsChanged) await reloadTls();
      log.info("configuration reloaded: {added} added, {removed} removed, {changed} changed", {
        added,
        removed,
        changed,
      });
      for (const note of notes) log.warn("not applied until restart: {note}", { note });
      return notes;
    },
    accounts: accountStatus,
    stop: (deadlineMs) => shutdown(deadlineMs),
    close: () => shutdown(0),
  };
}

async function ingressOptions(
  config: RelayConfig,
  relay: Relay,
  metrics: Metrics,
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
    },
    backend: relay,
    observer: metrics,
    onError: (err: unknown) =>
      log.debug("client connection error: {error}", { error: String(err) }),
  };
}

/** Settings a reload cannot change in place (listeners, ports, limits, state directory). */
function listenerChanges(old: RelayConfig, next: RelayConfig): string[] {
  const notes: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(old.smtp, next.smtp)) notes.push("smtp listener settings");
  if (!same(old.smtps, next.smtps)) notes.push("smtps listener settings");
  if (!same(old.http, next.http)) notes.push("http listener settings");
  if (!same(old.limits, next.limits)) notes.push("limits");
  if (old.stateDir !== next.stateDir) notes.push("stateDir");
  if (old.shutdownTimeoutSeconds !== next.shutdownTimeoutSeconds) {
    notes.push("shutdownTimeoutSeconds");
  }
  if (!same(old.metrics, next.metrics)) notes.push("metrics options");
  if (!same(old.tls, next.tls)) notes.push("tls file names (the files themselves are re-read)");
  return notes;
}

/**
 * A source address must be usable before any message depends on it: Deno needs
 * `--allow-net=<address>:0` to bind it, and without it would fail on the first connection.
 */
function checkSourceAddresses(config: RelayConfig): void {
  for (const a of config.accounts) {
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

async function readTls(tls: { certFile: string; keyFile: string }): Promise<TlsMaterial> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(tls.certFile),
    Deno.readTextFile(tls.keyFile),
  ]);
  return { cert, key };
}

function logRefresh(account: string, o: RefreshOutcome): void {
  if (o.state === "needs_reauth") {
    tokenLog.error(
      "{account} needs re-authorization ({error}): run `deno task authorize --account {account}`",
      { account, error: o.error?.message },
    );
    return;
  }
  if (!o.ok) {
    tokenLog.warn("token refresh failed for {account} after {attempts} attempts: {error}", {
      account,
      error: o.error?.message,
      attempts: o.attempts,
      background: o.background,
    });
    return;
  }
  if (o.persistError) {
    tokenLog.error(
      "rotated refresh token for {account} could not be saved ({error}); it is kept in memory only",
      { account, error: o.persistError },
    );
  }
  tokenLog.debug("token refreshed for {account}", { account, rotated: o.rotated });
}
