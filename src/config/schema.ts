/**
 * The shape of `accounts.ts`, checked twice: by `deno check` through the types
 * exported here, and at load time by the schema, which names the field that is wrong.
 * @module
 */
import { isIPv4 } from "node:net";
import { z } from "zod";
import { DEFAULTS } from "./defaults.ts";
import { isCidr, isIpAddress } from "../ingress/network.ts";

/** A reference to an environment variable holding a secret; see {@link env}. */
export interface EnvRef {
  /** Name of the environment variable. */
  readonly env: string;
}

/** A secret given inline or, better, as an {@link EnvRef}. */
export type Secret = string | EnvRef;

/**
 * Reads a secret from an environment variable when the config is loaded, so no secret
 * has to sit in `accounts.ts`. The relay's start task may read only `RELAY_*` variables.
 *
 * @example
 * ```ts
 * refreshToken: env("RELAY_SALES_REFRESH_TOKEN"),
 * ```
 */
export function env(name: string): EnvRef {
  return { env: name };
}

const secret = z.union([
  text("expected a non-empty string"),
  z.object({ env: text("expected a variable name") }).strict(),
], { error: 'expected a string or env("NAME")' }).transform((value, ctx) => {
  if (typeof value === "string") return value;
  let found: string | undefined;
  try {
    found = Deno.env.get(value.env);
  } catch {
    ctx.issues.push({
      code: "custom",
      input: value,
      message:
        `environment variable ${value.env} may not be read (start flags allow --allow-env=RELAY_* only)`,
    });
    return z.NEVER;
  }
  if (found === undefined || found === "") {
    ctx.issues.push({
      code: "custom",
      input: value,
      message: `environment variable ${value.env} is not set`,
    });
    return z.NEVER;
  }
  return found;
});

/** A non-empty string; `expected` is the whole message for both wrong type and empty. */
/** A redis:// or rediss:// URL with a host (never quoted in errors: it may hold a password). */
function isRedisUrl(value: string): boolean {
  try {
    const u = new URL(value);
    return (u.protocol === "redis:" || u.protocol === "rediss:") && u.hostname !== "";
  } catch {
    return false;
  }
}

function text(expected: string) {
  return z.string({ error: expected }).min(1, expected);
}

const port = z.int("expected an integer port").min(0, "expected a port 0-65535")
  .max(65535, "expected a port 0-65535");
const host = text("expected a host name or IP address");
const positiveInt = z.int("expected an integer").positive("expected a positive integer");

const hostname = z.string({ error: "expected a host name" }).regex(
  /^[A-Za-z0-9.-]+$/,
  "expected a host name (letters, digits, dots, hyphens)",
);

const cidrList = z.array(
  z.string().refine(isCidr, "expected an IP address or CIDR such as 10.0.0.0/8"),
  "expected a list of networks",
);

const addressList = z.array(z.email("expected an email address"), "expected a list of addresses");

/**
 * True for `localhost`, an IPv4 address in 127.0.0.0/8 and `::1`. Exact forms only: a
 * name that merely starts with `127.` or ends in `localhost` is not loopback.
 */
function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  return h === "localhost" || h === "::1" || (isIPv4(h) && h.startsWith("127."));
}

function sandboxOffLoopback(host: string): string {
  return `the sandbox provider only runs on loopback (localhost, 127.0.0.0/8, ::1), got ${
    JSON.stringify(host)
  }`;
}

const provider = z.preprocess(
  (value) => typeof value === "string" ? { type: value } : value,
  z.discriminatedUnion("type", [
    z.object({ type: z.literal("google") }).strict(),
    z.object({
      type: z.literal("microsoft"),
      /** Tenant id or domain, or `organizations` / `common`. */
      tenant: text("expected a tenant id, domain, 'organizations' or 'common'"),
    }).strict(),
    z.object({ type: z.literal("outlook") }).strict(),
    z.object({
      type: z.literal("custom"),
      tokenUrl: z.url({ protocol: /^https$/, error: "expected an https:// URL" }),
      authorizeUrl: z.url({ protocol: /^https$/, error: "expected an https:// URL" }).optional(),
      deviceCodeUrl: z.url({ protocol: /^https$/, error: "expected an https:// URL" }).optional(),
      scope: text("expected the OAuth2 scope to request"),
      smtpHost: hostname,
      smtpPort: port,
      tls: z.enum(["starttls", "implicit"], { error: "expected 'starttls' or 'implicit'" }),
      maxConnections: positiveInt.optional(),
    }).strict(),
    // The sandbox's CA is public (its key is in this repository) and its token endpoint
    // may be plain http, so the sandbox is admitted on loopback only: no config can make
    // the relay trust that CA, or send a client secret over http, for a real host.
    z.object({
      type: z.literal("sandbox"),
      tokenUrl: z.url({ protocol: /^https?$/, error: "expected an http(s):// URL" })
        .superRefine((url, ctx) => {
          if (!URL.canParse(url)) return; // reported by z.url
          const host = new URL(url).hostname;
          if (!isLoopbackHost(host.replace(/^\[(.*)\]$/, "$1"))) {
            ctx.addIssue({ code: "custom", message: sandboxOffLoopback(host) });
          }
        }).optional(),
      smtpHost: z.string({ error: "expected a host name" }).superRefine((host, ctx) => {
        if (!isLoopbackHost(host)) {
          ctx.addIssue({ code: "custom", message: sandboxOffLoopback(host) });
        }
      }).optional(),
      smtpPort: port.optional(),
    }).strict(),
  ], {
    error: "expected 'google', 'outlook', { type: 'microsoft', tenant }, " +
      "{ type: 'custom', ... } or { type: 'sandbox' }",
  }),
);

const account = z.object({
  /** The mailbox: XOAUTH2 user upstream and the username clients log in with. */
  email: z.email("expected an email address"),
  /** Provider preset. */
  provider,
  /** OAuth2 client (application) id. */
  clientId: text("expected the OAuth2 client id"),
  /** OAuth2 client secret; leave out for public clients (Microsoft). */
  clientSecret: secret.optional(),
  /**
   * Refresh token. May be left out once `authorize` stored one in the state directory;
   * a rotated one persisted there takes precedence while this value stays the same.
   */
  refreshToken: secret.optional(),
  /** Hash of the password SMTP clients use, from `deno task hash-password`. */
  passwordHash: z.string({ error: "expected a hash from `deno task hash-password`" }).regex(
    /^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/,
    "expected a hash from `deno task hash-password` (scrypt$N$r$p$salt$hash)",
  ),
  /** Cap on concurrent upstream connections for this account (provider default otherwise). */
  maxConnections: positiveInt.optional(),
  /** Other MAIL FROM addresses this account may use (Gmail "send as" aliases). */
  aliases: addressList.default([]),
  /**
   * `own` (default): MAIL FROM must be the account or an alias. `any`: any sender
   * (the provider decides; Gmail rewrites unknown senders to the account).
   */
  senders: z.enum(["own", "any"], { error: "expected 'own' or 'any'" }).default("own"),
  /** Overrides of the provider's quotas (0: no limit). */
  quota: z.object({
    messagesPerDay: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)").optional(),
    recipientsPerDay: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)")
      .optional(),
    messagesPerMinute: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)")
      .optional(),
  }).strict().optional(),
  /**
   * Local IP address this account's upstream connections come from (one IP per sender
   * keeps reputations apart). Needs `--allow-net=<address>:0`. Never silently replaced.
   */
  sourceAddress: z.string().refine(isIpAddress, "expected a local IP address").optional(),
}).strict();

const listenerExtras = {
  /** Clients from these networks may send without AUTH; the account is chosen by MAIL FROM. */
  trustedNetworks: cidrList.default([]),
  /** PROXY protocol v1 headers are accepted from these addresses only (load balancers). */
  proxyFrom: z.array(
    z.string().refine(
      isIpAddress,
      "expected an IP address (no CIDR: proxies are listed one by one)",
    ),
    "expected a list of IP addresses",
  ).default([]),
};

/** The runtime schema of a whole config module's default export. */
export const configSchema = z.object({
  /** SMTP listener for clients. */
  smtp: z.object({
    host: host.default(DEFAULTS.smtpHost),
    port: port.default(DEFAULTS.smtpPort),
    name: hostname.default(DEFAULTS.serverName),
    maxMessageSize: positiveInt.default(DEFAULTS.maxMessageSize),
    maxRecipients: positiveInt.default(DEFAULTS.maxRecipients),
    ...listenerExtras,
    allowPlaintextAuth: z.boolean("expected true or false").default(DEFAULTS.allowPlaintextAuth),
  }).strict().prefault({}),
  /** Optional second listener with TLS from the first byte (465 style); needs `tls`. */
  smtps: z.object({
    host: host.optional(),
    port,
    ...listenerExtras,
  }).strict().optional(),
  /** Certificate for STARTTLS and the implicit-TLS listener; reloaded on SIGHUP. */
  tls: z.object({
    certFile: text("expected the path of a PEM certificate chain"),
    keyFile: text("expected the path of a PEM private key"),
  }).strict().optional(),
  /** Abuse limits; see config/defaults.ts. */
  limits: z.object({
    maxClients: positiveInt.default(DEFAULTS.maxClients),
    maxConnectionsPerIp: positiveInt.default(DEFAULTS.maxConnectionsPerIp),
    authFailuresBeforeTarpit: positiveInt.default(DEFAULTS.authFailuresBeforeTarpit),
    authFailuresBeforeDisconnect: positiveInt.default(DEFAULTS.authFailuresBeforeDisconnect),
    authFailureWindowSeconds: positiveInt.default(DEFAULTS.authFailureWindowSeconds),
    tarpitStepMs: z.int("expected an integer").min(0, "expected ms >= 0").default(
      DEFAULTS.tarpitStepMs,
    ),
    authFailuresBeforeAccountLock: positiveInt.default(DEFAULTS.authFailuresBeforeAccountLock),
    authFailureExempt: cidrList.default([...DEFAULTS.authFailureExempt]),
    trustedReserve: z.int("expected an integer").min(0, "expected >= 0").default(
      DEFAULTS.trustedReserve,
    ),
    idleShedPercent: z.int("expected an integer").min(1, "expected a percentage 1-100")
      .max(100, "expected a percentage 1-100").default(DEFAULTS.idleShedPercent),
    idleShedSeconds: z.int("expected an integer").min(0, "expected seconds >= 0").default(
      DEFAULTS.idleShedSeconds,
    ),
    maxUnauthenticatedCommands: positiveInt.default(DEFAULTS.maxUnauthenticatedCommands),
    maxCommandLength: z.int("expected an integer").min(512, "expected at least 512 bytes")
      .default(DEFAULTS.maxCommandLength),
    idleTimeoutSeconds: positiveInt.default(DEFAULTS.idleTimeoutSeconds),
    sessionTimeoutSeconds: positiveInt.default(DEFAULTS.sessionTimeoutSeconds),
  }).strict().superRefine((limits, ctx) => {
    if (limits.trustedReserve >= limits.maxClients) {
      ctx.addIssue({
        code: "custom",
        path: ["trustedReserve"],
        message: `expected fewer than limits.maxClients (${limits.maxClients})`,
      });
    }
  }).prefault({}),
  /** Observability options. */
  metrics: z.object({
    /** Adds per-account series (one per account and result): opt-in, they multiply. */
    perAccount: z.boolean("expected true or false").default(false),
  }).strict().prefault({}),
  /** For trusted-network clients: a sender domain → the account that sends its mail. */
  senderDomains: z.record(
    z.string().regex(/^[a-z0-9.-]+\.[a-z]{2,}$/i, "expected a domain name"),
    z.email("expected the address of a configured account"),
  ).default({}),
  /** HTTP listener for /metrics, /healthz, /readyz and /accounts. */
  http: z.object({
    host: host.default(DEFAULTS.httpHost),
    port: port.default(DEFAULTS.httpPort),
  }).strict().prefault({}),
  /** On SIGTERM, messages already in DATA get this long to finish (seconds). */
  shutdownTimeoutSeconds: z.int("expected an integer").min(0, "expected seconds >= 0")
    .default(DEFAULTS.shutdownTimeoutSeconds),
  /** Longest a message may take from the end of DATA to its reply (seconds); then 451 4.4.7. */
  deliveryTimeoutSeconds: positiveInt.default(DEFAULTS.deliveryTimeoutSeconds),
  /** Where rotated refresh tokens (`tokens/`) and quota counters (`quota/`) are kept. */
  stateDir: text("expected a directory path").default(DEFAULTS.stateDir),
  /**
   * Where shared state lives: files in `stateDir` (the default, one instance), or Redis
   * (`redis`), shared by every instance on the same accounts. See `docs/redis.md`.
   */
  state: z.object({
    redis: z.object({
      /** `redis://[user:password@]host:port[/db]` or `rediss://…`: use env("RELAY_REDIS_URL"). */
      url: secret.pipe(
        z.string().refine(isRedisUrl, "expected a redis:// or rediss:// URL with a host"),
      ),
      /** Prefix of every key the relay writes. */
      keyPrefix: z.string("expected a string").max(100, "expected at most 100 characters")
        .default("relay:"),
      /** Deadline of every Redis call, ms. */
      timeoutMs: positiveInt.default(1_000),
      /** Length of a connection-permit lease, seconds (renewed every third of it). */
      permitLeaseSeconds: z.int("expected an integer").min(3, "expected seconds >= 3")
        .default(15),
      /** PEM CA bundle for `rediss://` (default: the system's roots). */
      caFile: text("expected a file path").optional(),
    }).strict().optional(),
  }).strict().prefault({}),
  /** Token handling. */
  tokens: z.object({
    refreshMarginSeconds: z.int("expected an integer").min(0, "expected seconds >= 0")
      .default(DEFAULTS.refreshMarginSeconds),
    timeoutMs: positiveInt.default(DEFAULTS.tokenTimeoutMs),
    attempts: positiveInt.default(DEFAULTS.tokenAttempts),
    retryBaseMs: positiveInt.default(DEFAULTS.tokenRetryBaseMs),
    retryMaxMs: positiveInt.default(DEFAULTS.tokenRetryMaxMs),
    reauthRecheckSeconds: positiveInt.default(DEFAULTS.reauthRecheckSeconds),
    failureHoldSeconds: z.int("expected an integer").min(0, "expected seconds >= 0")
      .default(DEFAULTS.tokenFailureHoldSeconds),
  }).strict().prefault({}),
  /** The accounts the relay sends for. */
  accounts: z.array(account, "expected an array of accounts").min(
    1,
    "expected at least one account",
  ),
}).strict().superRefine((config, ctx) => {
  if (config.smtps && !config.tls) {
    ctx.addIssue({
      code: "custom",
      path: ["tls"],
      message: "expected { certFile, keyFile }: the smtps listener needs a certificate",
    });
  }
  const emails = new Set(config.accounts.map((a) => a.email.toLowerCase()));
  for (const [domain, email] of Object.entries(config.senderDomains)) {
    if (!emails.has(email.toLowerCase())) {
      ctx.addIssue({
        code: "custom",
        path: ["senderDomains", domain],
        message: `expected the address of a configured account, ${email} is none`,
      });
    }
  }
  // Every address (account or alias) must name one account: trusted-network clients
  // are mapped to accounts by sender address.
  const seen = new Map<string, string>();
  config.accounts.forEach((a, i) => {
    const addresses: [string, PropertyKey[]][] = [
      [a.email, ["accounts", i, "email"]],
      ...a.aliases.map((
        alias,
        j,
      ): [string, PropertyKey[]] => [alias, ["accounts", i, "aliases", j]]),
    ];
    for (const [address, path] of addresses) {
      const key = address.toLowerCase();
      const first = seen.get(key);
      if (first !== undefined) {
        ctx.addIssue({
          code: "custom",
          path,
          message: `expected a unique address, ${address} is also ${first}`,
        });
      } else seen.set(key, `accounts[${i}]`);
    }
  });
});

/** What `accounts.ts` default-exports (before defaults are applied). */
export type RelayConfigInput = z.input<typeof configSchema>;
/** One account as written in `accounts.ts`. */
export type AccountInput = RelayConfigInput["accounts"][number];
/** A validated config with defaults applied and secrets resolved. */
export type ParsedConfig = z.output<typeof configSchema>;
/** A validated account. */
export type ParsedAccount = ParsedConfig["accounts"][number];

/**
 * Identity function that gives `accounts.ts` its types, so `deno check accounts.ts`
 * catches a misspelt field before the relay ever starts.
 */
export function defineConfig(config: RelayConfigInput): RelayConfigInput {
  return config;
}
