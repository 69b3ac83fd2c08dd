/**
 * The shape of `accounts.ts`, checked twice: by `deno check` through the types
 * exported here, and at load time by the schema, which names the field that is wrong.
 * @module
 */
import { isIPv4 } from "node:net";
import { z } from "zod";
import { DEFAULTS } from "./defaults.ts";
import { isCidr, isIpAddress } from "../ingress/network.ts";
import { certificateThumbprint, keyMatchesCertificate, rsaPrivateKeyDer } from "../tokens/jwt.ts";
import { parseServiceAccountKey } from "../tokens/service_account.ts";

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

const passwordHash = z.string({ error: "expected a hash from `deno task hash-password`" }).regex(
  /^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/,
  "expected a hash from `deno task hash-password` (scrypt$N$r$p$salt$hash)",
);

const quotaShape = z.object({
  messagesPerDay: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)").optional(),
  recipientsPerDay: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)")
    .optional(),
  messagesPerMinute: z.int("expected an integer").min(0, "expected >= 0 (0: no limit)")
    .optional(),
}).strict();

const apiUrl = z.url({ protocol: /^https$/, error: "expected an https:// URL" });

/**
 * How the account's mail leaves: `smtp` (default), `graph` (Microsoft Graph sendMail) or
 * `gmail-api` (Gmail users.messages.send); see docs/https-transports.md.
 */
const transport = z.preprocess(
  (value) => typeof value === "string" ? { type: value } : value,
  z.discriminatedUnion("type", [
    z.object({ type: z.literal("smtp") }).strict(),
    z.object({
      type: z.literal("graph"),
      /** Graph's base URL (national clouds; the sandbox's). Default https://graph.microsoft.com. */
      apiUrl: apiUrl.optional(),
      /** Graph's MIME sendMail always saves a copy in Sent Items: only `true` is possible. */
      saveToSentItems: z.literal(true, {
        error: "expected true: Graph's MIME sendMail always saves a copy in Sent Items",
      }).optional(),
    }).strict(),
    z.object({
      type: z.literal("gmail-api"),
      /** The Gmail API's base URL (the sandbox's). Default https://gmail.googleapis.com. */
      apiUrl: apiUrl.optional(),
      /** Messages above this many bytes go through the media upload endpoint (default 1 MiB). */
      mediaUploadAbove: positiveInt.optional(),
    }).strict(),
  ], {
    error: "expected 'smtp', 'graph', 'gmail-api' or { type: 'graph' | 'gmail-api', ... }",
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
  passwordHash,
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
  quota: quotaShape.optional(),
  /**
   * Local IP address this account's upstream connections come from (one IP per sender
   * keeps reputations apart). Needs `--allow-net=<address>:0`. Never silently replaced.
   */
  sourceAddress: z.string().refine(isIpAddress, "expected a local IP address").optional(),
  /** `smtp` (default), `graph` or `gmail-api`: see docs/https-transports.md. */
  transport: transport.optional(),
}).strict();

/**
 * Files named in the config that the process was not allowed to read, since the last
 * {@link takeDeniedConfigFiles}: the permissions probe runs with read access to the config
 * alone, then again with these added (see `src/launch.ts`).
 */
const deniedConfigFiles = new Set<string>();

/** The files the config named but the process may not read; empties the list. */
export function takeDeniedConfigFiles(): string[] {
  const files = [...deniedConfigFiles];
  deniedConfigFiles.clear();
  return files;
}

/** Reads a file named in the config; an issue names the path and why, never content. */
function readConfigFile(
  path: string,
  field: string,
  ctx: z.core.$RefinementCtx<unknown>,
): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable) deniedConfigFiles.add(path);
    const why = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied
      ? `not readable under the relay's permissions (start it with --allow-read=${path})`
      : err instanceof Deno.errors.IsADirectory
      ? "a directory, expected a file"
      : (err as Error).name;
    ctx.addIssue({
      code: "custom",
      input: path,
      path: [field],
      message: `cannot read ${path}: ${why}`,
    });
    return undefined;
  }
}

/**
 * The app-only credential of a domain entry:
 * - `{ type: "serviceAccount", keyFile }` or `{ type: "serviceAccount", key: env(...) }`:
 *   a Google service account's JSON key file (its path, or its content in a variable);
 * - `{ type: "clientSecret", clientId, clientSecret }`: a Microsoft app's secret;
 * - `{ type: "certificate", clientId, certificateFile, privateKeyFile | privateKey }`: a
 *   Microsoft app's certificate (PEM) and its private key (PEM file or variable).
 */
const appCredential = z.discriminatedUnion("type", [
  z.object({
    type: z.literal("serviceAccount"),
    keyFile: text("expected the path of the service account's JSON key file").optional(),
    key: secret.optional(),
  }).strict().transform((c, ctx) => {
    if ((c.keyFile === undefined) === (c.key === undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["keyFile"],
        message: "expected keyFile (a path) or key (the file's content, from env), one of them",
      });
      return z.NEVER;
    }
    const content = c.keyFile !== undefined ? readConfigFile(c.keyFile, "keyFile", ctx) : c.key;
    if (content === undefined) return z.NEVER;
    try {
      return {
        type: "serviceAccount" as const,
        key: parseServiceAccountKey(content),
        files: c.keyFile !== undefined ? [c.keyFile] : [],
      };
    } catch (err) {
      ctx.addIssue({
        code: "custom",
        path: [c.keyFile !== undefined ? "keyFile" : "key"],
        message: `not a usable service account key: ${(err as Error).message}`,
      });
      return z.NEVER;
    }
  }),
  z.object({
    type: z.literal("clientSecret"),
    clientId: text("expected the application (client) id"),
    clientSecret: secret,
  }).strict(),
  z.object({
    type: z.literal("certificate"),
    clientId: text("expected the application (client) id"),
    certificateFile: text("expected the path of the app's certificate (PEM)"),
    privateKeyFile: text("expected the path of the certificate's private key (PEM)").optional(),
    privateKey: secret.optional(),
  }).strict().transform((c, ctx) => {
    if ((c.privateKeyFile === undefined) === (c.privateKey === undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["privateKeyFile"],
        message: "expected privateKeyFile (a path) or privateKey (PEM, from env), one of them",
      });
      return z.NEVER;
    }
    const cert = readConfigFile(c.certificateFile, "certificateFile", ctx);
    const key = c.privateKeyFile !== undefined
      ? readConfigFile(c.privateKeyFile, "privateKeyFile", ctx)
      : c.privateKey;
    if (cert === undefined || key === undefined) return z.NEVER;
    const keyField = c.privateKeyFile !== undefined ? "privateKeyFile" : "privateKey";
    let thumb;
    try {
      thumb = certificateThumbprint(cert);
    } catch (err) {
      ctx.addIssue({ code: "custom", path: ["certificateFile"], message: (err as Error).message });
      return z.NEVER;
    }
    try {
      rsaPrivateKeyDer(key);
    } catch (err) {
      ctx.addIssue({ code: "custom", path: [keyField], message: (err as Error).message });
      return z.NEVER;
    }
    if (!keyMatchesCertificate(key, cert)) {
      ctx.addIssue({
        code: "custom",
        path: [keyField],
        message: "the private key does not belong to certificateFile",
      });
      return z.NEVER;
    }
    if (thumb.notAfter <= Date.now()) {
      ctx.addIssue({
        code: "custom",
        path: ["certificateFile"],
        message: `the certificate expired on ${new Date(thumb.notAfter).toISOString()}`,
      });
      return z.NEVER;
    }
    return {
      type: "certificate" as const,
      clientId: c.clientId,
      certificateFile: c.certificateFile,
      files: [c.certificateFile, ...(c.privateKeyFile !== undefined ? [c.privateKeyFile] : [])],
      privateKey: key,
      x5t: thumb.x5t,
      notAfter: thumb.notAfter,
    };
  }),
], { error: "expected { type: 'serviceAccount' | 'clientSecret' | 'certificate', ... }" });

/**
 * Every mailbox of a domain through one app-only credential (see `domain.ts`): a Google
 * service account with domain-wide delegation, or a Microsoft app with client
 * credentials (secret or certificate). Key and certificate files are read at load.
 */
const domainEntry = z.object({
  /** The mail domain, e.g. `example.com`. */
  domain: z.string({ error: "expected a domain name" }).regex(
    /^[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$/i,
    "expected a domain name such as example.com",
  ),
  /** `google`, `{ type: "microsoft", tenant }`, `sandbox` or `custom`. */
  provider,
  /** The app-only credential; see {@link appCredential}. */
  credential: appCredential,
  /** One client password for every mailbox of the domain (a hash). */
  passwordHash: passwordHash.optional(),
  /** Client passwords per mailbox (address or local part → hash); they win over passwordHash. */
  passwords: z.record(z.string(), passwordHash, "expected { mailbox: hash, ... }").optional(),
  /** Only these mailboxes may log in (and `check` tries them); default: any of the domain. */
  mailboxes: addressList.optional(),
  /** `own` (default): MAIL FROM must be the mailbox; `any`: any sender. */
  senders: z.enum(["own", "any"], { error: "expected 'own' or 'any'" }).default("own"),
  /** Cap on concurrent upstream connections per mailbox (provider default otherwise). */
  maxConnections: positiveInt.optional(),
  /** Quotas per mailbox, overriding the provider's (0: no limit). */
  quota: quotaShape.optional(),
  /** Local IP address of upstream connections. */
  sourceAddress: z.string().refine(isIpAddress, "expected a local IP address").optional(),
  /** A mailbox's state (token, pool) is dropped after this long unused (default 600). */
  idleSeconds: positiveInt.default(600),
}).strict().superRefine((d, ctx) => {
  const domain = d.domain.toLowerCase();
  const inDomain = (a: string) => a.toLowerCase().endsWith(`@${domain}`);
  if (d.passwordHash === undefined && d.passwords === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["passwordHash"],
      message: "expected passwordHash (one password for the domain) or passwords (per mailbox)",
    });
  }
  for (const key of Object.keys(d.passwords ?? {})) {
    if (key.includes("@") ? !inDomain(key) : !/^[^\s@]+$/.test(key)) {
      ctx.addIssue({
        code: "custom",
        path: ["passwords", key],
        message: `expected a mailbox of ${domain} or its local part`,
      });
    }
  }
  d.mailboxes?.forEach((m, i) => {
    if (!inDomain(m)) {
      ctx.addIssue({
        code: "custom",
        path: ["mailboxes", i],
        message: `expected a mailbox of ${domain}`,
      });
    }
  });
  const type = d.provider.type;
  const kind = d.credential.type;
  if (type === "outlook") {
    ctx.addIssue({
      code: "custom",
      path: ["provider"],
      message: "Outlook.com has no app-only credentials: use { type: 'microsoft', tenant }",
    });
  } else if (type === "google" && kind !== "serviceAccount") {
    ctx.addIssue({
      code: "custom",
      path: ["credential", "type"],
      message: "expected 'serviceAccount' for Google (client credentials are Microsoft's)",
    });
  } else if (type === "microsoft" && kind === "serviceAccount") {
    ctx.addIssue({
      code: "custom",
      path: ["credential", "type"],
      message: "expected 'clientSecret' or 'certificate' for Microsoft",
    });
  }
});

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
  accounts: z.array(account, "expected an array of accounts").default([]),
  /** Domains whose mailboxes send through one app-only credential each. */
  domains: z.array(domainEntry, "expected an array of domain entries").default([]),
}).strict().superRefine((config, ctx) => {
  if (config.accounts.length === 0 && config.domains.length === 0) {
    ctx.addIssue({
      code: "custom",
      path: ["accounts"],
      message: "expected at least one account (or a domain entry in domains)",
    });
  }
  const domains = new Map<string, number>();
  config.domains.forEach((d, i) => {
    const key = d.domain.toLowerCase();
    const first = domains.get(key);
    if (first !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["domains", i, "domain"],
        message: `expected a unique domain, ${d.domain} is also domains[${first}]`,
      });
    } else domains.set(key, i);
  });
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
}).superRefine((config, ctx) => {
  // HTTPS transports: the provider must be the API's, Graph takes 4 requests per mailbox.
  config.accounts.forEach((a, i) => {
    const kind = a.transport?.type ?? "smtp";
    if (kind === "smtp") return;
    const provider = a.provider.type;
    const fits = kind === "graph"
      ? ["microsoft", "outlook", "custom", "sandbox"].includes(provider)
      : ["google", "custom", "sandbox"].includes(provider);
    if (!fits) {
      ctx.addIssue({
        code: "custom",
        path: ["accounts", i, "transport"],
        message: kind === "graph"
          ? `expected a Microsoft provider for 'graph' (microsoft, outlook), got '${provider}'`
          : `expected the google provider for 'gmail-api', got '${provider}'`,
      });
    }
    if (kind === "graph" && (a.maxConnections ?? 0) > 4) {
      ctx.addIssue({
        code: "custom",
        path: ["accounts", i, "maxConnections"],
        message: "expected at most 4: Graph allows 4 concurrent requests per mailbox",
      });
    }
    const url = a.transport && "apiUrl" in a.transport ? a.transport.apiUrl : undefined;
    if (provider === "sandbox" && url !== undefined && URL.canParse(url)) {
      const host = new URL(url).hostname;
      if (!isLoopbackHost(host.replace(/^\[(.*)\]$/, "$1"))) {
        ctx.addIssue({
          code: "custom",
          path: ["accounts", i, "transport", "apiUrl"],
          message: sandboxOffLoopback(host),
        });
      }
    }
  });
});

/** What `accounts.ts` default-exports (before defaults are applied). */
export type RelayConfigInput = z.input<typeof configSchema>;
/** One account as written in `accounts.ts`. */
export type AccountInput = NonNullable<RelayConfigInput["accounts"]>[number];
/** A validated config with defaults applied and secrets resolved. */
export type ParsedConfig = z.output<typeof configSchema>;
/** A validated account. */
export type ParsedAccount = ParsedConfig["accounts"][number];
/** One domain entry as written in `accounts.ts`. */
export type DomainInput = NonNullable<RelayConfigInput["domains"]>[number];
/** A validated domain entry (credential files read). */
export type ParsedDomain = ParsedConfig["domains"][number];

/**
 * Identity function that gives `accounts.ts` its types, so `deno check accounts.ts`
 * catches a misspelt field before the relay ever starts.
 */
export function defineConfig(config: RelayConfigInput): RelayConfigInput {
  return config;
}
