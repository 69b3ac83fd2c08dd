/**
 * The built-in sandbox provider: a local OAuth2 token endpoint plus an SMTP
 * submission server that only accepts AUTH XOAUTH2 with tokens that endpoint
 * issued. Used by the demo and the integration tests; everything listens on
 * 127.0.0.1 and the TLS material is public (see `./tls.ts`).
 *
 * Run it by hand:
 *
 * ```sh
 * deno run --allow-net=127.0.0.1 src/sandbox/mod.ts \
 *   --account user@example.test,sandbox-client,refresh-1
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type ReceivedMessage,
  SandboxSmtpServer,
  type SmtpFaults,
  type SmtpStats,
} from "./smtp_server.ts";
import { SANDBOX_CA_PEM } from "./tls.ts";
import {
  type DeviceAuthorizationInfo,
  type SandboxAccount,
  TokenEndpoint,
  type TokenEndpointFaults,
  type TokenEndpointStats,
} from "./token_endpoint.ts";
import { SandboxHttpApi } from "./http_api.ts";

export type { ApiMessage, ApiName, HttpApiFaults, HttpApiStats } from "./http_api.ts";
export { SandboxHttpApi } from "./http_api.ts";
export type { ReceivedMessage, SmtpFaults, SmtpStats } from "./smtp_server.ts";
export { SandboxSmtpServer } from "./smtp_server.ts";
export type {
  DeviceAuthorizationInfo,
  SandboxAccount,
  TokenEndpointFaults,
  TokenEndpointStats,
} from "./token_endpoint.ts";
export { TokenEndpoint } from "./token_endpoint.ts";
export { SANDBOX_CA_PEM } from "./tls.ts";

/** Options of {@link startSandbox}. */
export interface SandboxOptions {
  /** Port of the token endpoint on 127.0.0.1; 0 (default) = ephemeral. */
  tokenPort?: number;
  /** Port of the SMTP server on 127.0.0.1; 0 (default) = ephemeral. */
  smtpPort?: number;
  /** Message size limit the SMTP server advertises and enforces, bytes (default 50 MiB). */
  smtpSize?: number;
  /** Lifetime of access tokens in seconds (default 3600). */
  accessTokenTtlSeconds?: number;
  /** Rotate refresh tokens on every refresh, like Microsoft (default true). */
  rotateRefreshTokens?: boolean;
  /** Accounts to register right away. */
  accounts?: SandboxAccount[];
  /** Called for every message the SMTP server accepts. */
  onMessage?: (message: ReceivedMessage) => void;
  /** Port of the HTTPS APIs (Graph, Gmail) on 127.0.0.1; 0 (default) = ephemeral. */
  apiPort?: number;
}

/** A running sandbox provider. Create with {@link startSandbox}; always {@link Sandbox.close} it. */
export class Sandbox {
  /** Token endpoint URL, `http://127.0.0.1:PORT/token`. */
  readonly tokenUrl: string;
  /** Host name to connect to; the certificate is valid for it (and 127.0.0.1). */
  readonly smtpHost = "localhost";
  /** SMTP port (STARTTLS). */
  readonly smtpPort: number;
  /** CA certificate that signs the SMTP server's certificate. Public, sandbox only. */
  readonly ca: string = SANDBOX_CA_PEM;
  /** The OAuth2 token endpoint. */
  readonly tokens: TokenEndpoint;
  /** The SMTP server. */
  readonly smtp: SandboxSmtpServer;
  /** The HTTPS mail APIs (Graph sendMail, Gmail messages.send), when started. */
  readonly api?: SandboxHttpApi;

  /** Wraps the running servers; use {@link startSandbox}. */
  constructor(tokens: TokenEndpoint, smtp: SandboxSmtpServer, api?: SandboxHttpApi) {
    this.tokens = tokens;
    this.smtp = smtp;
    this.api = api;
    this.tokenUrl = tokens.url;
    this.smtpPort = smtp.port;
  }

  /** Messages the SMTP server accepted, oldest first. */
  get received(): ReceivedMessage[] {
    return this.smtp.received;
  }

  /** Fault injection of the token endpoint. */
  get tokenFaults(): TokenEndpointFaults {
    return this.tokens.faults;
  }

  /** Fault injection of the SMTP server. */
  get smtpFaults(): SmtpFaults {
    return this.smtp.faults;
  }

  /** Counters of both servers. */
  get stats(): { token: TokenEndpointStats; smtp: SmtpStats } {
    return { token: this.tokens.stats, smtp: this.smtp.stats };
  }

  /** Registers an account (replacing one with the same email). */
  addAccount(account: SandboxAccount): void {
    this.tokens.addAccount(account);
  }

  /** Authorization endpoint (code + PKCE), `http://127.0.0.1:PORT/authorize`. */
  get authorizeUrl(): string {
    return this.tokens.authorizeUrl;
  }

  /** Device authorization endpoint, `http://127.0.0.1:PORT/devicecode`. */
  get deviceCodeUrl(): string {
    return this.tokens.deviceCodeUrl;
  }

  /** Approves a pending device-code authorization for `email` (the user signed in). */
  approveDevice(userCode: string, email: string): void {
    this.tokens.approveDevice(userCode, email);
  }

  /** Denies a pending device-code authorization: the next poll gets `access_denied`. */
  denyDevice(userCode: string): void {
    this.tokens.denyDevice(userCode);
  }

  /** Polls and status of the device authorization with `userCode`, if known. */
  deviceAuthorization(userCode: string): DeviceAuthorizationInfo | undefined {
    return this.tokens.deviceAuthorization(userCode);
  }

  /** Clears the faults of both servers. */
  resetFaults(): void {
    this.tokens.resetFaults();
    this.smtp.resetFaults();
  }

  /** Base URL of the HTTPS APIs, `https://localhost:PORT`. */
  get apiUrl(): string {
    if (!this.api) throw new Error("the sandbox was started without its HTTPS APIs");
    return this.api.url;
  }

  /** Shuts the servers down, dropping open connections and pending requests. */
  async close(): Promise<void> {
    await Promise.all([this.smtp.close(), this.tokens.close(), this.api?.close()]);
  }
}

/** Starts the token endpoint and the SMTP server on 127.0.0.1 (needs `--allow-net=127.0.0.1`). */
export async function startSandbox(
  options: SandboxOptions = {},
): Promise<Sandbox> {
  const tokens = await TokenEndpoint.start({
    port: options.tokenPort,
    accessTokenTtlSeconds: options.accessTokenTtlSeconds,
    rotateRefreshTokens: options.rotateRefreshTokens,
  });
  let smtp: SandboxSmtpServer;
  try {
    smtp = await SandboxSmtpServer.start({
      tokens,
      port: options.smtpPort,
      size: options.smtpSize,
      onMessage: options.onMessage,
    });
  } catch (error) {
    await tokens.close();
    throw error;
  }
  let api: SandboxHttpApi;
  try {
    api = await SandboxHttpApi.start({ tokens, port: options.apiPort });
  } catch (error) {
    await Promise.all([tokens.close(), smtp.close()]);
    throw error;
  }
  const sandbox = new Sandbox(tokens, smtp, api);
  for (const account of options.accounts ?? []) sandbox.addAccount(account);
  return sandbox;
}

const USAGE = `Usage: deno run --allow-net=127.0.0.1 src/sandbox/mod.ts [options]

  --token-port N   token endpoint port (default 2580)
  --smtp-port N    SMTP (STARTTLS) port (default 2587)
  --api-port N     HTTPS APIs (Graph sendMail, Gmail messages.send) port (default 2588)
  --account A      register an account: email,clientId,refreshToken[,clientSecret]
                   (repeatable; sandbox values only, never real credentials)
  --no-rotate      keep refresh tokens valid instead of rotating them
  --help           show this help`;

/** Runs a sandbox until Ctrl-C or SIGTERM, logging accepted messages (never tokens). */
async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      "token-port": { type: "string", default: "2580" },
      "smtp-port": { type: "string", default: "2587" },
      "api-port": { type: "string", default: "2588" },
      account: { type: "string", multiple: true, default: [] },
      "no-rotate": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const accounts = values.account.map((spec) => {
    const [email, clientId, refreshToken, clientSecret] = spec.split(",");
    if (!email || !clientId || !refreshToken) {
      throw new Error(`--account needs email,clientId,refreshToken: ${email}`);
    }
    return { email, clientId, refreshToken, clientSecret };
  });
  const sandbox = await startSandbox({
    tokenPort: Number(values["token-port"]),
    smtpPort: Number(values["smtp-port"]),
    apiPort: Number(values["api-port"]),
    rotateRefreshTokens: !values["no-rotate"],
    accounts,
    onMessage: (m) =>
      console.log(
        `${m.receivedAt.toISOString()} accepted ${m.data.byteLength} bytes ` +
          `user=${m.user} from=<${m.from}> to=${m.to.map((a) => `<${a}>`).join(",")}`,
      ),
  });
  console.log(`token endpoint: ${sandbox.tokenUrl}`);
  console.log(
    `SMTP (STARTTLS, AUTH XOAUTH2): ${sandbox.smtpHost}:${sandbox.smtpPort}`,
  );
  console.log(`HTTPS APIs (Graph sendMail, Gmail messages.send): ${sandbox.apiUrl}`);
  console.log("CA certificate: SANDBOX_CA_PEM in src/sandbox/tls.ts");
  if (accounts.length === 0) {
    console.log("No accounts registered. Restart with e.g.\n" + USAGE);
  } else {
    console.log(`accounts: ${accounts.map((a) => a.email).join(", ")}`);
  }
  const stop = async () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    const { token, smtp } = sandbox.stats;
    console.log(
      `stopping: ${token.refreshes} refreshes, ${smtp.authSuccesses} AUTH ok, ` +
        `${smtp.authFailures} AUTH failed, ${sandbox.received.length} messages`,
    );
    await sandbox.close();
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) {
  await main(Deno.args);
}
