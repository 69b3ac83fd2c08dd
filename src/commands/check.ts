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
import { describeResult } from "../upstream/pool.ts";
import { createTransport } from "../upstream/transport.ts";
import { LocalPermits } from "../upstream/permits.ts";
import { EXIT_USAGE, loadConfigOrReport, renderTable, UsageError } from "./common.ts";
import { appOnlySmtpHint, appOnlyTokenHint, smtpHint, tokenHint } from "./hints.ts";
import type { DomainConfig } from "../config/load.ts";
import { appCredential, mailboxAccount } from "../domain_runtime.ts";
import type { AppGrant } from "../tokens/app_grant.ts";

/** Usage line of this command. */
export const CHECK_USAGE =
  "check [--config PATH] [--smtp] [--json] [--concurrency N] [--mailbox ADDRESS ...]";

/** The verdict on one account. */
export interface AccountCheck {
  /** Mailbox address. */
  readonly account: string;
  /** Provider preset. */
  readonly provider: string;
  /** Token refresh: "ok" or "failed"; "skipped" for a domain with no mailbox to try. */
  readonly token: "ok" | "failed" | "skipped";
  /** SMTP login: "ok", "failed", or "skipped" (no --smtp, or no token). */
  readonly smtp: "ok" | "failed" | "skipped";
  /** What went wrong (secret-free). */
  readonly error?: string;
  /** What to do about it. */
  readonly hint?: string;
}

/** The app-only side of a check: a domain mailbox's grant and credential type. */
interface AppOnlyCheck {
  readonly grant: AppGrant;
  readonly credential: DomainConfig["credential"]["type"];
}

/** Checks one account (with `app`: a mailbox of a domain entry). */
export async function checkAccount(
  config: RelayConfig,
  a: AccountConfig,
  store: RefreshTokenStore,
  smtp: boolean,
  app?: AppOnlyCheck,
): Promise<AccountCheck> {
  const base = { account: a.email, provider: a.provider.kind };
  // One attempt per account: check reports, it does not wait out outages.
  const tokens = accountTokens(
    { ...config, tokens: { ...config.tokens, attempts: 1 } },
    a,
    store,
    undefined,
    undefined,
    app?.grant,
  );
  try {
    await tokens.get();
  } catch (err) {
    const e = err instanceof TokenError ? err : new TokenError(String(err), "transient");
    const hint = app
      ? appOnlyTokenHint(app.credential, e.oauthError, e.message)
      : tokenHint(a.provider.kind, e.oauthError, e.message);
    const withCommand = hint?.includes("run authorize")
      ? hint.replace("run authorize", `run \`deno task authorize --account ${a.email}\``)
      : hint;
    return { ...base, token: "failed", smtp: "skipped", error: e.message, hint: withCommand };
  }
  if (!smtp) return { ...base, token: "ok", smtp: "skipped" };
  // The account's own transport: an SMTP login, or an empty Graph / Gmail API send.
  const pool = createTransport(
    a.transport,
    { ...upstreamTarget(config, a), maxConnections: 1 },
    (renew) => renew ? tokens.renew() : tokens.get(),
    { permits: new LocalPermits(1) },
  );
  try {
    const r = await pool.verify();
    if (r.kind === "sent") return { ...base, token: "ok", smtp: "ok" };
    const error = describeResult(r);
    const hint = app ? appOnlySmtpHint(app.credential, error) : smtpHint(a.provider.kind, error);
    return { ...base, token: "ok", smtp: "failed", error, hint };
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
      mailbox: { type: "string", multiple: true, default: [] },
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
  const jobs = checkJobs(config, values.mailbox, store, values.smtp);
  const results: AccountCheck[] = new Array(jobs.length);
  const progress = progressLine(jobs.length);
  let next = 0, done = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, jobs.length) }, async () => {
      while (next < jobs.length) {
        const i = next++;
        results[i] = await jobs[i]();
        progress(++done);
      }
    }),
  );
  if (values.json) console.log(JSON.stringify(results, null, 2));
  else console.log(table(results));
  return results.some((r) => r.token === "failed" || r.smtp === "failed") ? 1 : 0;
}

/**
 * What to check: every account and each domain entry's configured mailboxes, or, with
 * `--mailbox`, the named ones only (an account's address, or a mailbox of a domain
 * entry). A domain with no mailbox to try gets a row that says how to name one.
 */
function checkJobs(
  config: RelayConfig,
  named: readonly string[],
  store: RefreshTokenStore,
  smtp: boolean,
): (() => Promise<AccountCheck>)[] {
  const wanted = named.map((m) => m.trim().toLowerCase());
  const domainOf = (m: string) => config.domains.find((d) => m.endsWith(`@${d.domain}`));
  for (const m of wanted) {
    const isAccount = config.accounts.some((a) => a.email.toLowerCase() === m);
    if (!isAccount && !domainOf(m)) {
      throw new UsageError(
        `--mailbox ${m}: neither an account nor a mailbox of a configured domain`,
      );
    }
  }
  const accounts = wanted.length === 0
    ? config.accounts
    : config.accounts.filter((a) => wanted.includes(a.email.toLowerCase()));
  const jobs = accounts.map((a) => () => checkAccount(config, a, store, smtp));
  for (const d of config.domains) {
    const mailboxes = wanted.length > 0
      ? wanted.filter((m) =>
        domainOf(m) === d && !accounts.some((a) => a.email.toLowerCase() === m)
      )
      : d.mailboxes ?? [];
    if (mailboxes.length === 0 && wanted.length === 0) {
      jobs.push(() =>
        Promise.resolve({
          account: `*@${d.domain}`,
          provider: d.provider.kind,
          token: "skipped" as const,
          smtp: "skipped" as const,
          hint: `name mailboxes to try: check --mailbox someone@${d.domain}`,
        })
      );
      continue;
    }
    const credential = appCredential(d);
    for (const m of mailboxes) {
      const account = mailboxAccount(d, m, d.passwords[m] ?? d.passwordHash ?? "");
      jobs.push(() =>
        checkAccount(config, account, store, smtp, {
          grant: credential.grantFor(m),
          credential: d.credential.type,
        })
      );
    }
  }
  return jobs;
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
