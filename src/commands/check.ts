/**
 * `check`: refreshes every account's token (bounded concurrency) and, with `--smtp`,
 * logs in to the provider (EHLO, STARTTLS, AUTH XOAUTH2, QUIT; no mail). Prints a
 * table with a hint per failure, or JSON; exits 1 if any account fails.
 * @module
 */
import { parseArgs } from "node:util";
import { accountTokens, upstreamTarget } from "../accounts.ts";
import type { AccountConfig, RelayConfig } from "../config/load.ts";
import { TokenError } from "../tokens/oauth.ts";
import type { RefreshTokenStore } from "../tokens/store.ts";
import { openTokenStore } from "../state/redis/mod.ts";
import { describeResult, UpstreamPool } from "../upstream/pool.ts";
import { EXIT_USAGE, loadConfigOrReport, renderTable, UsageError } from "./common.ts";
import { smtpHint, tokenHint } from "./hints.ts";

/** Usage line of this command. */
export const CHECK_USAGE = "check [--config PATH] [--smtp] [--json] [--concurrency N]";

/** The verdict on one account. */
export interface AccountCheck {
  /** Mailbox address. */
  readonly account: string;
  /** Provider preset. */
  readonly provider: string;
  /** Token refresh: "ok" or "failed". */
  readonly token: "ok" | "failed";
  /** SMTP login: "ok", "failed", or "skipped" (no --smtp, or no token). */
  readonly smtp: "ok" | "failed" | "skipped";
  /** What went wrong (secret-free). */
  readonly error?: string;
  /** What to do about it. */
  readonly hint?: string;
}

/** Checks one account. */
export async function checkAccount(
  config: RelayConfig,
  a: AccountConfig,
  store: RefreshTokenStore,
  smtp: boolean,
): Promise<AccountCheck> {
  const base = { account: a.email, provider: a.provider.kind };
  // One attempt per account: check reports, it does not wait out outages.
  const tokens = accountTokens({ ...config, tokens: { ...config.tokens, attempts: 1 } }, a, store);
  try {
    await tokens.get();
  } catch (err) {
    const e = err instanceof TokenError ? err : new TokenError(String(err), "transient");
    const hint = tokenHint(a.provider.kind, e.oauthError, e.message);
    const withCommand = hint?.includes("run authorize")
      ? hint.replace("run authorize", `run \`deno task authorize --account ${a.email}\``)
      : hint;
    return { ...base, token: "failed", smtp: "skipped", error: e.message, hint: withCommand };
  }
  if (!smtp) return { ...base, token: "ok", smtp: "skipped" };
  const pool = new UpstreamPool(
    { ...upstreamTarget(config, a), maxConnections: 1 },
    (renew) => renew ? tokens.renew() : tokens.get(),
  );
  try {
    const r = await pool.verify();
    if (r.kind === "sent") return { ...base, token: "ok", smtp: "ok" };
    const error = describeResult(r);
    return { ...base, token: "ok", smtp: "failed", error, hint: smtpHint(a.provider.kind, error) };
  } finally {
    pool.close();
  }
}

/** Runs the check; resolves to the exit status (0 all good, 1 some failed). */
export async function checkCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string", default: "./accounts.ts" },
      smtp: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      concurrency: { type: "string", default: "8" },
    },
  });
  const concurrency = Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) {
    throw new UsageError(
      `--concurrency: expected an integer 1-256, got "${values.concurrency}"`,
    );
  }
  const config = await loadConfigOrReport(values.config);
  if (!config) return EXIT_USAGE;
  const opened = await openTokenStore(config).catch((err: Error) => err);
  if (opened instanceof Error) {
    console.error(`error: check: ${opened.message}`);
    return 1;
  }
  const store = opened.store;
  const results: AccountCheck[] = new Array(config.accounts.length);
  const progress = progressLine(config.accounts.length);
  let next = 0, done = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, config.accounts.length) }, async () => {
      while (next < config.accounts.length) {
        const i = next++;
        results[i] = await checkAccount(config, config.accounts[i], store, values.smtp);
        progress(++done);
      }
    }),
  );
  if (values.json) console.log(JSON.stringify(results, null, 2));
  else console.log(table(results));
  return results.some((r) => r.token === "failed" || r.smtp === "failed") ? 1 : 0;
}

/** Progress on stderr for long lists: in place on a terminal, every 10% otherwise. */
function progressLine(total: number): (done: number) => void {
  if (total < 20) return () => {};
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const step = Math.ceil(total / 10);
  return (done) => {
    if (tty) {
      Deno.stderr.writeSync(enc.encode(`\rchecked ${done}/${total}${done === total ? "\n" : ""}`));
    } else if (done % step === 0 || done === total) {
      Deno.stderr.writeSync(enc.encode(`checked ${done}/${total}\n`));
    }
  };
}

/** A plain-text table; failures get their error and hint on the lines below. */
export function table(results: readonly AccountCheck[]): string {
  const rows = results.map((r) => ({
    cells: [r.account, r.provider, r.token, r.smtp],
    notes: [
      ...(r.error ? [`error: ${r.error}`] : []),
      ...(r.hint ? [`hint:  ${r.hint}`] : []),
    ],
  }));
  const failed = results.filter((r) => r.token === "failed" || r.smtp === "failed").length;
  const summary = `${results.length - failed} ok, ${failed} failed`;
  return `${renderTable(["ACCOUNT", "PROVIDER", "TOKEN", "SMTP"], rows)}\n\n${summary}`;
}
