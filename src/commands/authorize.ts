/**
 * `authorize`: obtains a refresh token for one account (device code or authorization
 * code + PKCE), stores it in the state directory and says what to put in `accounts.ts`.
 * Prompts go to stderr, the outcome to stdout; the token is shown only with
 * `--show-token`.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { AccountConfig, RelayConfig } from "../config/load.ts";
import type { ProviderEndpoints } from "../config/providers.ts";
import {
  AuthorizeError,
  type AuthorizeResult,
  authorizeWithDeviceCode,
  authorizeWithPkce,
} from "../tokens/authorize.ts";
import { fingerprint } from "../tokens/manager.ts";
import type { OAuthClient } from "../tokens/oauth.ts";
import { replaceToken } from "../tokens/store.ts";
import { openTokenStore } from "../state/redis/mod.ts";
import { upstreamTarget } from "../accounts.ts";
import { describeResult } from "../upstream/pool.ts";
import { createTransport } from "../upstream/transport.ts";
import { LocalPermits } from "../upstream/permits.ts";
import { EXIT_USAGE, loadConfigOrReport, parsePort, UsageError } from "./common.ts";
import { smtpHint, tokenHint } from "./hints.ts";

/** Usage line of this command. */
export const AUTHORIZE_USAGE = "authorize --account EMAIL [--config PATH] [--flow device|pkce] " +
  "[--port N] [--show-token]";

/** The two interactive flows. */
export type AuthorizeFlow = "device" | "pkce";

/** Runs `authorize`; resolves to the exit status (0 stored, 1 failed, 2 usage/config). */
export async function authorizeCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", default: "./accounts.ts" },
      account: { type: "string" },
      flow: { type: "string" },
      port: { type: "string" },
      "show-token": { type: "boolean", default: false },
    },
  });
  if (!values.account) throw new UsageError("authorize needs --account EMAIL");
  const requested = values.flow;
  if (requested !== undefined && requested !== "device" && requested !== "pkce") {
    throw new UsageError(`--flow: expected device or pkce, got "${requested}"`);
  }
  const port = parsePort("port", values.port);
  const config = await loadConfigOrReport(values.config);
  if (!config) return EXIT_USAGE;
  const wanted = values.account.toLowerCase();
  const account = config.accounts.find((a) => a.email.toLowerCase() === wanted);
  if (!account) {
    throw new UsageError(`--account: ${values.account} is not an account in ${values.config}`);
  }
  const flow = chooseFlow(account.provider, requested);
  const opened = await openTokenStore(config).catch((err: Error) => err);
  if (opened instanceof Error) {
    console.error(`error: authorize ${account.email}: ${opened.message}`);
    return 1;
  }
  const store = opened.store;
  const file = store.pathOf?.(account.email) ?? account.email;
  let result: AuthorizeResult;
  try {
    // Fail before the user signs in if the token could not be stored afterwards.
    if (!config.state.redis) {
      await Deno.mkdir(join(config.stateDir, "tokens"), { recursive: true, mode: 0o700 });
    }
    await store.load(account.email);
    result = flow === "device" ? await viaDeviceCode(account) : await viaPkce(account, port);
    // A token for another mailbox (the browser was signed in as someone else) must not
    // replace one that works: log in to the provider's SMTP with it first.
    const login = await checkLogin(config, account, result.accessToken);
    if (login.refused) {
      console.error(
        `error: authorize ${account.email}: the provider refused the new token at SMTP login ` +
          `(${login.reply}): was the browser signed in as ${account.email}? Nothing was stored.` +
          (login.hint ? ` (${login.hint})` : ""),
      );
      return 1;
    }
    if (login.unchecked) {
      console.error(
        `warning: could not check the SMTP login for ${account.email} (${login.unchecked}); ` +
          "storing the token anyway. Check it with: deno task start check --smtp",
      );
    }
    // The operator's new grant wins over whatever is stored (a running relay that
    // rotated the old grant meanwhile loses its compare-and-set and adopts this one).
    await replaceToken(store, account.email, {
      refreshToken: result.refreshToken,
      configFingerprint: fingerprint(account.refreshToken),
      updatedAt: new Date().toISOString(),
    });
  } catch (err) {
    console.error(`error: authorize ${account.email}: ${describeFailure(account, err)}`);
    return 1;
  }
  report(account, flow, file, values["show-token"] ? result.refreshToken : undefined);
  return 0;
}

/**
 * Logs in to the account's SMTP server with a fresh access token (XOAUTH2) and says
 * whether the provider refused it (wrong mailbox, missing scope), or why it could not
 * tell (unreachable, a limit, SMTP AUTH disabled for the tenant).
 */
async function checkLogin(
  config: RelayConfig,
  account: AccountConfig,
  accessToken: string,
): Promise<{ refused: boolean; reply?: string; hint?: string; unchecked?: string }> {
  let used = false;
  // The account's own transport: an SMTP login, or an empty Graph / Gmail API send.
  const pool = createTransport(
    account.transport,
    { ...upstreamTarget(config, account), maxConnections: 1 },
    () => {
      used = true;
      return Promise.resolve({ token: accessToken, useUntil: Date.now() + 60_000 });
    },
    { permits: new LocalPermits(1) },
  );
  try {
    const r = await pool.verify();
    // nodemailer's verify() succeeds without AUTH when the server offers none.
    if (r.kind === "sent") {
      return used
        ? { refused: false }
        : { refused: false, unchecked: "the server offered no AUTH" };
    }
    if (r.kind === "auth") {
      const reply = describeResult(r);
      const hint = smtpHint(account.provider.kind, reply);
      // SMTP AUTH switched off for the tenant says nothing about whose token this is.
      if (/5\.7\.139/.test(reply)) return { refused: false, unchecked: `${reply}; ${hint}` };
      return { refused: true, reply, hint };
    }
    return { refused: false, unchecked: describeResult(r) };
  } finally {
    pool.close();
  }
}

/** One secret-free line: the error, and a hint when one is known (AADSTS codes, …). */
function describeFailure(account: AccountConfig, err: unknown): string {
  if (!(err instanceof AuthorizeError)) {
    const text = err instanceof Deno.errors.NotCapable || !(err instanceof Error)
      ? String(err instanceof Error ? err.message : err)
      : `${err.name}: ${err.message}`;
    return text.split("\n")[0];
  }
  const hint = tokenHint(account.provider.kind, err.code, err.message);
  // The refresh-token hints say "run authorize": not helpful while running it.
  return hint && !hint.includes("run authorize") ? `${err.message} (${hint})` : err.message;
}

/** The flow to use: as asked if the provider supports it, else the provider's default. */
export function chooseFlow(provider: ProviderEndpoints, requested?: AuthorizeFlow): AuthorizeFlow {
  const has = { device: !!provider.deviceCodeUrl, pkce: !!provider.authorizeUrl };
  if (requested) {
    if (has[requested]) return requested;
    const why = provider.kind === "google"
      ? "Google has no device-code flow for Gmail scopes"
      : `this provider has no ${requested === "device" ? "deviceCodeUrl" : "authorizeUrl"}`;
    throw new UsageError(`--flow ${requested}: ${why}; use --flow ${other(requested)}`);
  }
  if (provider.kind === "google" && has.pkce) return "pkce";
  if (has.device) return "device";
  if (has.pkce) return "pkce";
  throw new UsageError(
    "the account's provider has neither deviceCodeUrl nor authorizeUrl: cannot authorize it",
  );
}

function other(flow: AuthorizeFlow): AuthorizeFlow {
  return flow === "device" ? "pkce" : "device";
}

function clientOf(account: AccountConfig): OAuthClient {
  return {
    tokenUrl: account.provider.tokenUrl,
    clientId: account.clientId,
    clientSecret: account.clientSecret,
    scope: account.provider.scope,
  };
}

function viaDeviceCode(account: AccountConfig): Promise<AuthorizeResult> {
  return authorizeWithDeviceCode({
    client: clientOf(account),
    deviceCodeUrl: account.provider.deviceCodeUrl!,
    onPrompt: (p) => {
      const minutes = Math.round(p.expiresInSeconds / 60);
      console.error(
        `To authorize ${account.email}, open ${p.verificationUri} and enter the code ` +
          `${p.userCode} (valid ${minutes} min); sign in as ${account.email}.`,
      );
      console.error("Waiting for the sign-in to finish...");
    },
  });
}

async function viaPkce(account: AccountConfig, port: number | undefined): Promise<AuthorizeResult> {
  const provider = account.provider;
  const paste = stdinLines();
  try {
    return await authorizeWithPkce({
      client: clientOf(account),
      authorizeUrl: provider.authorizeUrl!,
      issuer: provider.issuer,
      loginHint: account.email,
      // Google issues a refresh token only with access_type=offline, and again on a
      // repeated authorization only with prompt=consent.
      extraParameters: provider.kind === "google"
        ? { access_type: "offline", prompt: "consent" }
        : undefined,
      port,
      pastedUrls: paste.lines,
      onAuthorizationUrl: (url, redirectUri) => {
        console.error(`Open this URL in a browser and sign in as ${account.email}:\n\n  ${url}\n`);
        console.error(`Waiting for the browser to come back to ${redirectUri} ...`);
        console.error(
          "No browser on this host? Open the URL elsewhere, then paste here the address the " +
            `browser was sent to (it starts with ${redirectUri}/?) and press Enter.`,
        );
      },
      onPasteIgnored: (reason) => console.error(`ignored: ${reason}`),
    });
  } finally {
    await paste.close();
  }
}

/** Lines typed or piped on stdin, and a way to stop reading (releases stdin). */
function stdinLines(): { lines: AsyncIterable<string>; close: () => Promise<void> } {
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  async function* lines(): AsyncGenerator<string> {
    let buffer = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        yield buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
      }
    }
    if (buffer) yield buffer;
  }
  return { lines: lines(), close: () => reader.cancel().catch(() => {}) };
}

/** Prints the outcome and what (not) to change in accounts.ts. */
function report(
  account: AccountConfig,
  flow: AuthorizeFlow,
  file: string,
  token: string | undefined,
): void {
  const how = flow === "device" ? "device code" : "authorization code + PKCE";
  console.log(`Authorized ${account.email} (${account.provider.kind}, ${how}).`);
  console.log(`Refresh token stored in ${file}${file.startsWith("redis ") ? "" : " (mode 0600)"}.`);
  if (account.refreshToken === undefined) {
    console.log(
      `accounts.ts: leave refreshToken out for ${account.email}; the relay uses the stored token.`,
    );
  } else {
    console.log(
      `accounts.ts: keep refreshToken for ${account.email} exactly as it is (or its env ` +
        "variable set as now): the stored token is used while it stays unchanged. If you " +
        "remove or change it, run authorize again.",
    );
  }
  console.log(
    "A running relay uses it from the account's next token refresh (an account in " +
      "needs_reauth is retried within tokens.reauthRecheckSeconds).",
  );
  if (token !== undefined) console.log(`refresh token (secret): ${token}`);
}
