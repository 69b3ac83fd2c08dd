/**
 * Start-up wiring, the one place where the layers meet:
 * config → ingress → relay → tokens → upstream, plus metrics and the HTTP listener.
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { RelayConfig } from "./config/load.ts";
import { accountTokens, upstreamTarget } from "./accounts.ts";
import { type ListenerOptions, startIngress, type TlsMaterial } from "./ingress/server.ts";
import { Relay, type RelayAccount } from "./relay/relay.ts";
import type { AccountTokens, RefreshOutcome } from "./tokens/manager.ts";
import { FileTokenStore } from "./tokens/store.ts";
import { UpstreamPool } from "./upstream/pool.ts";
import { Metrics } from "./metrics.ts";
import { startHttp } from "./http.ts";

/** A running relay. */
export interface RunningRelay {
  /** SMTP listener address. */
  readonly smtp: { host: string; port: number };
  /** Implicit-TLS listener address, when configured. */
  readonly smtps?: { host: string; port: number };
  /** Re-reads the certificate files for new sessions; false when no TLS is configured. */
  reloadTls(): Promise<boolean>;
  /** HTTP listener address. */
  readonly http: { host: string; port: number };
  /** The metrics (tests and the demo read them). */
  readonly metrics: Metrics;
  /** Stops listeners and closes upstream pools. */
  close(): Promise<void>;
}

const log = getLogger(["relay", "app"]);
const tokenLog = getLogger(["relay", "tokens"]);

/** Starts everything the config describes. */
export async function startRelay(config: RelayConfig): Promise<RunningRelay> {
  await Deno.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const store = new FileTokenStore(config.stateDir);
  const tokenSets: AccountTokens[] = [];
  const pools: UpstreamPool[] = [];
  const metrics = new Metrics(() => tokenSets.map((t) => t.state));

  const accounts: RelayAccount[] = config.accounts.map((a) => {
    const onRefresh = (outcome: RefreshOutcome) => {
      metrics.tokenRefreshed(outcome);
      logRefresh(a.email, outcome);
    };
    const tokens = accountTokens(config, a, store, onRefresh);
    const pool = new UpstreamPool(
      upstreamTarget(config, a),
      (renew) => renew ? tokens.renew() : tokens.get(),
      metrics,
    );
    tokenSets.push(tokens);
    pools.push(pool);
    return {
      email: a.email,
      passwordHash: a.passwordHash,
      aliases: a.aliases,
      senders: a.senders,
      token: () => tokens.get(),
      send: (m) => pool.send(m),
    };
  });

  const relay = new Relay(accounts, config.senderDomains, metrics);
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
  const ingress = await startIngress({
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
    onError: (err) => log.debug("client connection error: {error}", { error: String(err) }),
  });
  let listening = true;
  const http = await startHttp({
    host: config.http.host,
    port: config.http.port,
    registry: metrics.registry,
    readiness: () => ({
      listening,
      accounts: {
        total: tokenSets.length,
        ok: tokenSets.filter((t) => t.state === "ok").length,
        failing: tokenSets.filter((t) => t.state === "failing").length,
        needsReauth: tokenSets.filter((t) => t.state === "needs_reauth").length,
      },
    }),
  });
  log.info("SMTP on {smtp}, metrics on {http}, {accounts} accounts", {
    smtp: ingress.addresses.map((a) => `${a.host}:${a.port}`).join(", "),
    http: `${http.address.host}:${http.address.port}`,
    accounts: accounts.length,
  });

  return {
    smtp: ingress.addresses[0],
    smtps: ingress.addresses[1],
    http: http.address,
    metrics,
    async reloadTls() {
      if (!config.tls) return false;
      ingress.updateTls(await readTls(config.tls));
      log.info("TLS certificate reloaded from {cert}", { cert: config.tls.certFile });
      return true;
    },
    async close() {
      listening = false;
      await ingress.close();
      for (const pool of pools) pool.close();
      await http.close();
    },
  };
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
