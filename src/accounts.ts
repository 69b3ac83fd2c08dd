/**
 * Builds one account's token source and upstream settings from the config, for the
 * relay (`app.ts`) and the `check` command alike.
 * @module
 */
import type { AccountConfig, RelayConfig } from "./config/load.ts";
import { DEFAULTS } from "./config/defaults.ts";
import { AccountTokens, type RefreshOutcome } from "./tokens/manager.ts";
import type { TokenStore } from "./tokens/store.ts";
import type { UpstreamTarget } from "./upstream/pool.ts";

/** The token source of an account, with the config's token settings. */
export function accountTokens(
  config: RelayConfig,
  a: AccountConfig,
  store: TokenStore,
  onRefresh?: (outcome: RefreshOutcome) => void,
): AccountTokens {
  return new AccountTokens({
    account: a.email,
    client: {
      tokenUrl: a.provider.tokenUrl,
      clientId: a.clientId,
      clientSecret: a.clientSecret,
      scope: a.provider.scope,
    },
    configRefreshToken: a.refreshToken,
    store,
    marginMs: config.tokens.refreshMarginSeconds * 1000,
    timeoutMs: config.tokens.timeoutMs,
    retry: {
      attempts: config.tokens.attempts,
      baseMs: config.tokens.retryBaseMs,
      maxMs: config.tokens.retryMaxMs,
    },
    reauthRecheckMs: config.tokens.reauthRecheckSeconds * 1000,
    onRefresh,
  });
}

/** Where and how an account's mail goes upstream. */
export function upstreamTarget(config: RelayConfig, a: AccountConfig): UpstreamTarget {
  return {
    user: a.email,
    host: a.provider.smtpHost,
    port: a.provider.smtpPort,
    tls: a.provider.tls,
    ca: a.provider.ca,
    ehloName: config.smtp.name,
    maxConnections: a.maxConnections,
    messagesPerConnection: DEFAULTS.upstreamMessagesPerConnection,
    connectTimeoutMs: DEFAULTS.upstreamConnectTimeoutMs,
    socketTimeoutMs: DEFAULTS.upstreamSocketTimeoutMs,
    idleTimeoutMs: DEFAULTS.upstreamIdleTimeoutMs,
  };
}
