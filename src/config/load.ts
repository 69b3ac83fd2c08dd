/**
 * Loads `accounts.ts`: imports the module, validates its default export and resolves
 * provider presets. Any problem becomes a {@link ConfigError} listing every field at fault.
 * @module
 */
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import { z } from "zod";
import { configSchema, type ParsedAccount, type ParsedConfig } from "./schema.ts";
import {
  GOOGLE,
  microsoft,
  NO_QUOTA,
  OUTLOOK,
  type ProviderEndpoints,
  SANDBOX_DEFAULTS,
} from "./providers.ts";
import type { QuotaLimits } from "../quota/quota.ts";
import { SANDBOX_CA_PEM } from "../sandbox/ca.ts";
import { type DomainConfig, resolveDomain } from "./domains.ts";

export type { DomainConfig } from "./domains.ts";
import type { TransportSettings } from "../upstream/transport.ts";
import { GRAPH_MAX_REQUEST_BYTES, GRAPH_SCOPE, GRAPH_URL } from "../upstream/graph.ts";
import {
  GMAIL_API_URL,
  GMAIL_MAX_MESSAGE_BYTES,
  GMAIL_MEDIA_ABOVE,
  GMAIL_SCOPE,
} from "../upstream/gmail_api.ts";

/** One validated account with its provider resolved. */
export interface AccountConfig {
  /** Mailbox address as configured. */
  readonly email: string;
  /** Where tokens and mail go. */
  readonly provider: ProviderEndpoints;
  /** OAuth2 client id. */
  readonly clientId: string;
  /** OAuth2 client secret, absent for public clients. */
  readonly clientSecret?: string;
  /**
   * Refresh token from the config, if any. A rotated one persisted in the state directory
   * wins while this value stays the same (see tokens/store).
   */
  readonly refreshToken?: string;
  /** scrypt hash of the client password. */
  readonly passwordHash: string;
  /** Cap on concurrent upstream connections. */
  readonly maxConnections: number;
  /** Other MAIL FROM addresses it may use. */
  readonly aliases: readonly string[];
  /** Sender policy: `own` (account and aliases) or `any`. */
  readonly senders: "own" | "any";
  /** Sending quotas (provider defaults, overridden per account; 0: none). */
  readonly quota: QuotaLimits;
  /** Local address upstream connections are made from, if set. */
  readonly sourceAddress?: string;
  /** How its mail leaves: SMTP (default), Microsoft Graph or the Gmail API. */
  readonly transport: TransportSettings;
}

/** A validated config: defaults applied, secrets resolved, presets expanded. */
export interface RelayConfig extends Omit<ParsedConfig, "accounts" | "domains"> {
  /** The accounts, in config order. */
  readonly accounts: readonly AccountConfig[];
  /** Domain entries (app-only credentials), in config order. */
  readonly domains: readonly DomainConfig[];
}

/** A config that cannot be used; `problems` has one line per field at fault. */
export class ConfigError extends Error {
  /** Lines such as `accounts[2].provider.tenant: expected a tenant id`. */
  readonly problems: readonly string[];
  /** Builds the error from its problem lines. */
  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n${problems.join("\n")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/**
 * Imports the config module at `path` and validates its default export. Pass a new
 * `generation` to import the file again (reload).
 */
export async function loadConfig(
  path: string,
  generation = 0,
  options: LoadOptions = {},
): Promise<RelayConfig> {
  // A new query string makes a new module: how a reload re-imports the file. (Modules
  // the config imports itself are not re-imported.)
  const absolute = resolve(path);
  await checkReadable(path, absolute);
  const base = pathToFileURL(absolute).href;
  const url = generation > 0 ? `${base}?reload=${generation}` : base;
  let mod: { default?: unknown };
  try {
    mod = await import(url);
  } catch (err) {
    throw new ConfigError([`${path}: cannot load module: ${firstLine(err)}`]);
  }
  if (mod.default === undefined) {
    throw new ConfigError([
      `${path}: expected a default export (export default defineConfig({ ... }))`,
    ]);
  }
  const exported = await mod.default;
  return parseConfig(options.placeholderSecrets ? fillUnsetSecrets(exported) : exported);
}

/** How {@link loadConfig} treats the module. */
export interface LoadOptions {
  /**
   * An `env("NAME")` secret whose variable is unset counts as set (to a placeholder), so
   * that a config can be checked where its secrets are not (`permissions` on a build
   * machine). Never for a config that runs.
   */
  readonly placeholderSecrets?: boolean;
}

/** A copy of `value` with each `{ env: NAME }` whose variable is unset replaced by a placeholder. */
function fillUnsetSecrets(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fillUnsetSecrets);
  if (value === null || typeof value !== "object") return value;
  const entries = Object.entries(value);
  if (entries.length === 1 && entries[0][0] === "env" && typeof entries[0][1] === "string") {
    let set = false;
    try {
      set = (Deno.env.get(entries[0][1]) ?? "") !== "";
    } catch {
      return value; // not readable: validation says so
    }
    return set ? value : `(unset ${entries[0][1]})`;
  }
  return Object.fromEntries(entries.map(([k, v]) => [k, fillUnsetSecrets(v)]));
}

/** Validates a config object (the default export of a config module). */
export function parseConfig(input: unknown): RelayConfig {
  const result = configSchema.safeParse(input);
  if (!result.success) throw new ConfigError(result.error.issues.flatMap(describeIssue));
  return resolveConfig(result.data);
}

function resolveConfig(parsed: ParsedConfig): RelayConfig {
  return {
    ...parsed,
    accounts: parsed.accounts.map(resolveAccount),
    domains: parsed.domains.map((d) => resolveDomain(d, resolveProvider(d.provider))),
  };
}

function resolveAccount(a: ParsedAccount): AccountConfig {
  const transport = resolveTransport(a);
  const provider = transportProvider(resolveProvider(a.provider), transport.kind);
  return {
    email: a.email,
    provider,
    clientId: a.clientId,
    clientSecret: a.clientSecret,
    refreshToken: a.refreshToken,
    passwordHash: a.passwordHash,
    maxConnections: a.maxConnections ??
      // Graph throttles at 4 concurrent requests per mailbox.
      (transport.kind === "graph" ? 4 : provider.maxConnections),
    aliases: a.aliases,
    senders: a.senders,
    quota: { ...provider.quota, ...a.quota },
    sourceAddress: a.sourceAddress,
    transport,
  };
}

/** The account's transport with its defaults. */
function resolveTransport(a: ParsedAccount): TransportSettings {
  const t = a.transport ?? { type: "smtp" as const };
  switch (t.type) {
    case "smtp":
      return { kind: "smtp" };
    case "graph":
      return {
        kind: "graph",
        apiUrl: (t.apiUrl ?? (a.provider.type === "sandbox" ? SANDBOX_DEFAULTS.apiUrl : GRAPH_URL))
          .replace(/\/+$/, ""),
        maxRequestBytes: GRAPH_MAX_REQUEST_BYTES,
        saveToSentItems: true,
      };
    case "gmail-api":
      return {
        kind: "gmail-api",
        apiUrl: (t.apiUrl ??
          (a.provider.type === "sandbox" ? SANDBOX_DEFAULTS.apiUrl : GMAIL_API_URL))
          .replace(/\/+$/, ""),
        maxMessageBytes: GMAIL_MAX_MESSAGE_BYTES,
        mediaAbove: t.mediaUploadAbove ?? GMAIL_MEDIA_ABOVE,
      };
  }
}

/**
 * The provider as a transport needs it: Graph wants a Graph token (`Mail.Send`), the
 * sandbox's Gmail API `gmail.send`; Google keeps `https://mail.google.com/`, which the
 * Gmail API also takes, so an account switches transport without a new authorization.
 */
function transportProvider(
  p: ProviderEndpoints,
  kind: TransportSettings["kind"],
): ProviderEndpoints {
  if (kind === "graph" && p.kind !== "custom") return { ...p, scope: GRAPH_SCOPE };
  if (kind === "gmail-api" && p.kind === "sandbox") return { ...p, scope: GMAIL_SCOPE };
  return p;
}

function resolveProvider(p: ParsedAccount["provider"]): ProviderEndpoints {
  switch (p.type) {
    case "google":
      return GOOGLE;
    case "microsoft":
      return microsoft(p.tenant);
    case "outlook":
      return OUTLOOK;
    case "custom":
      return {
        kind: "custom",
        tokenUrl: p.tokenUrl,
        authorizeUrl: p.authorizeUrl,
        deviceCodeUrl: p.deviceCodeUrl,
        scope: p.scope,
        smtpHost: p.smtpHost,
        smtpPort: p.smtpPort,
        tls: p.tls,
        maxConnections: p.maxConnections ?? 5,
        quota: NO_QUOTA,
      };
    case "sandbox": {
      const tokenUrl = p.tokenUrl ?? SANDBOX_DEFAULTS.tokenUrl;
      return {
        kind: "sandbox",
        tokenUrl,
        authorizeUrl: new URL(SANDBOX_DEFAULTS.authorizePath, tokenUrl).href,
        issuer: new URL(tokenUrl).origin,
        deviceCodeUrl: new URL(SANDBOX_DEFAULTS.deviceCodePath, tokenUrl).href,
        scope: SANDBOX_DEFAULTS.scope,
        smtpHost: p.smtpHost ?? SANDBOX_DEFAULTS.smtpHost,
        smtpPort: p.smtpPort ?? SANDBOX_DEFAULTS.smtpPort,
        tls: "starttls",
        // The only `ca` any provider gets. It replaces the system's roots for this
        // account's SMTP connection, and the schema admits the sandbox on loopback only
        // (smtpHost and tokenUrl), so this public CA is never trusted for a real host.
        ca: SANDBOX_CA_PEM,
        maxConnections: SANDBOX_DEFAULTS.maxConnections,
        quota: NO_QUOTA,
      };
    }
  }
}

/** `accounts[0].provider.tenant: expected …` */
function describeIssue(issue: z.core.$ZodIssue): string[] {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((k) => `${formatPath([...issue.path, k])}: unknown field`);
  }
  return [`${formatPath(issue.path) || "(config)"}: ${issue.message}`];
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const part of path) {
    if (typeof part === "number") out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

/** A missing or unreadable config file is one line saying what to do. */
async function checkReadable(path: string, absolute: string): Promise<void> {
  try {
    const info = await Deno.stat(absolute);
    if (!info.isFile) throw new ConfigError([`${path}: not a file (${absolute})`]);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new ConfigError([
        `${path}: no such file (${absolute}); create it: cp accounts.example.ts ${path} ` +
        `and edit it, or name another one with --config PATH`,
      ]);
    }
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
      const how = err instanceof Deno.errors.NotCapable
        ? `run with --allow-read=${absolute} (deno task start grants it)`
        : "the file system refuses it: check its owner and mode";
      throw new ConfigError([`${path}: may not be read (${absolute}): ${how}`]);
    }
    throw err;
  }
}

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split("\n")[0];
}
