/**
 * The Deno permission set a command needs, derived from the validated config: one small
 * function per source (listeners, providers, source addresses, files, environment). A new
 * feature that needs a permission adds one source and names it in the lists of the
 * commands that use it ({@link SERVE_SOURCES}, {@link CHECK_SOURCES},
 * {@link AUTHORIZE_SOURCES}; {@link RELOAD_SOURCES} for hosts a reload may add):
 *
 * @example
 * ```ts ignore
 * export const redis: PermissionSource = ({ config }) => ({
 *   net: config.redis ? [urlEntry(config.redis.url)] : [],
 * });
 * export const keyFiles: PermissionSource = ({ config, cwd }) => ({
 *   read: config.accounts.flatMap((a) => a.keyFile ? [resolve(cwd, a.keyFile)] : []),
 * });
 * export const graphApi: PermissionSource = ({ config }) => ({
 *   net: config.accounts.some((a) => a.transport === "graph") ? ["graph.microsoft.com:443"] : [],
 * });
 * ```
 * @module
 */
import { isIPv6 } from "node:net";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { RelayConfig } from "./config/load.ts";

/** Deno permissions as lists: `--allow-net`, `--allow-read`, `--allow-write`, `--allow-env`. */
export interface PermissionSet {
  /** `host:port` entries (`host` alone: any port). */
  readonly net: readonly string[];
  /** Absolute paths readable. */
  readonly read: readonly string[];
  /** Absolute paths writable. */
  readonly write: readonly string[];
  /** Environment variable names. */
  readonly env: readonly string[];
}

/** What the sources look at. */
export interface PermissionInput {
  /** The validated config, with the command line's overrides (`--host`, `--port`, …) applied. */
  readonly config: RelayConfig;
  /** The config module's path, absolute. */
  readonly configPath: string;
  /** Environment variables the config module read while it was loaded. */
  readonly envRead: readonly string[];
  /** Current directory that relative paths in the config are resolved against. */
  readonly cwd: string;
}

/** One source of permissions: what one part of the config needs. */
export type PermissionSource = (input: PermissionInput) => Partial<PermissionSet>;

/** `host:port` in `--allow-net` syntax (IPv6 in brackets; port 0: the host alone). */
export function netEntry(host: string, port: number): string {
  const h = isIPv6(host) ? `[${host}]` : host;
  return port === 0 ? h : `${h}:${port}`;
}

/** `host:port` of a URL, with the scheme's default port. */
export function urlEntry(url: string): string {
  const u = new URL(url);
  const port = u.port ? Number(u.port) : u.protocol === "https:" ? 443 : 80;
  return netEntry(u.hostname.replace(/^\[(.*)\]$/, "$1"), port);
}

/** The SMTP, smtps and HTTP listeners. */
export const listeners: PermissionSource = ({ config }) => ({
  net: [
    netEntry(config.smtp.host, config.smtp.port),
    ...(config.smtps ? [netEntry(config.smtps.host ?? config.smtp.host, config.smtps.port)] : []),
    netEntry(config.http.host, config.http.port),
  ],
});

/** Each account's token endpoint (refresh grant). */
export const tokenEndpoints: PermissionSource = ({ config }) => ({
  net: config.accounts.map((a) => urlEntry(a.provider.tokenUrl)),
});

/** Each SMTP account's SMTP server (connected to by name). */
export const smtpServers: PermissionSource = ({ config }) => ({
  net: config.accounts.flatMap((a) =>
    a.transport.kind === "smtp" ? [netEntry(a.provider.smtpHost, a.provider.smtpPort)] : []
  ),
});

/** The HTTPS API of each account that delivers over Graph or the Gmail API. */
export const apiHosts: PermissionSource = ({ config }) => ({
  net: config.accounts.flatMap((a) =>
    a.transport.kind === "smtp" ? [] : [urlEntry(a.transport.apiUrl)]
  ),
});

/** Each account's device authorization endpoint (`authorize`, device code flow). */
export const deviceEndpoints: PermissionSource = ({ config }) => ({
  net: config.accounts.flatMap((a) =>
    a.provider.deviceCodeUrl ? [urlEntry(a.provider.deviceCodeUrl)] : []
  ),
});

/** `--allow-net` entry that lets a socket bind local address `ip` (any port): `<ip>:0`. */
export function bindEntry(ip: string): string {
  return `${isIPv6(ip) ? `[${ip}]` : ip}:0`;
}

/** Local addresses accounts send from (`sourceAddress`): binding needs `<ip>:0`. */
export const sourceAddresses: PermissionSource = ({ config }) => ({
  net: config.accounts.flatMap((a) => a.sourceAddress ? [bindEntry(a.sourceAddress)] : []),
});

/** Each domain entry's token endpoint (app-only grant) and SMTP server. */
export const domainHosts: PermissionSource = ({ config }) => ({
  net: config.domains.flatMap((d) => [
    urlEntry(d.provider.tokenUrl),
    netEntry(d.provider.smtpHost, d.provider.smtpPort),
    ...(d.sourceAddress ? [bindEntry(d.sourceAddress)] : []),
  ]),
});

/** Key and certificate files of domain entries' app-only credentials (read at load). */
export const credentialFiles: PermissionSource = ({ config, cwd }) => ({
  read: config.domains.flatMap((d) =>
    "files" in d.credential ? d.credential.files.map((f) => resolve(cwd, f)) : []
  ),
});

/** The shared-state Redis (`state.redis`): its host:port, and its CA file for `rediss://`. */
export const redisServer: PermissionSource = ({ config, cwd }) => {
  const redis = config.state.redis;
  if (!redis) return {};
  const u = new URL(redis.url);
  const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
  return {
    net: [netEntry(host, u.port ? Number(u.port) : 6379)],
    read: redis.caFile ? [resolve(cwd, redis.caFile)] : [],
  };
};

/** The config module itself (re-imported on SIGHUP). */
export const configFile: PermissionSource = ({ configPath }) => ({ read: [configPath] });

/** The state directory: rotated refresh tokens, quota counters. */
export const stateDir: PermissionSource = ({ config, cwd }) => {
  const dir = resolve(cwd, config.stateDir);
  return { read: [dir], write: [dir] };
};

/** The client-facing certificate and key (re-read on SIGHUP). */
export const tlsFiles: PermissionSource = ({ config, cwd }) => ({
  read: config.tls ? [resolve(cwd, config.tls.certFile), resolve(cwd, config.tls.keyFile)] : [],
});

/** The environment variables the config module read (its `env("RELAY_…")` secrets). */
export const configEnv: PermissionSource = ({ envRead }) => ({ env: envRead });

/** The `/accounts` bearer token (`RELAY_ADMIN_TOKEN`). */
export const adminTokenEnv: PermissionSource = () => ({ env: ["RELAY_ADMIN_TOKEN"] });

/** The relay's own modules (`src/`), which a Web Worker loads itself. */
export const RELAY_SOURCE_DIR = resolve(fileURLToPath(new URL("./", import.meta.url)));

/**
 * `serve --workers N` (N ≥ 2): each worker loads the relay's modules from `src/`, and Deno
 * checks a worker's module loads as reads (read-only, the relay's own code).
 */
export const workerModules: PermissionSource = () => ({ read: [RELAY_SOURCE_DIR] });

/** What `serve` (the relay) needs. */
export const SERVE_SOURCES: readonly PermissionSource[] = [
  listeners,
  tokenEndpoints,
  smtpServers,
  sourceAddresses,
  configFile,
  stateDir,
  tlsFiles,
  configEnv,
  adminTokenEnv,
  domainHosts,
  credentialFiles,
  apiHosts,
  redisServer,
];

/** What `check` needs (token refreshes, SMTP logins with `--smtp`, the state directory). */
export const CHECK_SOURCES: readonly PermissionSource[] = [
  tokenEndpoints,
  smtpServers,
  sourceAddresses,
  configFile,
  stateDir,
  configEnv,
  domainHosts,
  credentialFiles,
  apiHosts,
  redisServer,
];

/**
 * What a reload (SIGHUP) may need beyond the start: the accounts' hosts. Listeners, the
 * state directory and the TLS file names wait for a restart anyway.
 */
export const RELOAD_SOURCES: readonly PermissionSource[] = [
  tokenEndpoints,
  smtpServers,
  sourceAddresses,
  domainHosts,
  credentialFiles,
  apiHosts,
];

/**
 * What `authorize` needs besides its loopback redirect listener (see
 * {@link authorizeListener}): token and device endpoints, the SMTP login that checks the
 * new token, the config and the state directory it stores the token in.
 */
export const AUTHORIZE_SOURCES: readonly PermissionSource[] = [
  tokenEndpoints,
  deviceEndpoints,
  smtpServers,
  sourceAddresses,
  configFile,
  stateDir,
  configEnv,
  apiHosts,
  redisServer,
];

/** The redirect listener of `authorize` on 127.0.0.1 (`--port`; any port by default). */
export function authorizeListener(port = 0): PermissionSource {
  return () => ({ net: [netEntry("127.0.0.1", port)] });
}

/** Runs the sources and merges their lists: sorted, without duplicates. */
export function computePermissions(
  input: PermissionInput,
  sources: readonly PermissionSource[],
): PermissionSet {
  const sets = { net: new Set<string>(), read: new Set<string>(), write: new Set<string>() };
  const env = new Set<string>();
  for (const source of sources) {
    const part = source(input);
    for (const e of part.net ?? []) sets.net.add(e);
    for (const e of part.read ?? []) sets.read.add(e);
    for (const e of part.write ?? []) sets.write.add(e);
    for (const e of part.env ?? []) env.add(e);
  }
  return {
    net: [...sets.net].sort(),
    read: [...sets.read].sort(),
    write: [...sets.write].sort(),
    env: [...env].sort(),
  };
}

/** `status`: the relay's HTTP listener and the bearer token. */
export function statusPermissions(url: string): PermissionSet {
  return { net: [urlEntry(url)], read: [], write: [], env: ["RELAY_ADMIN_TOKEN"] };
}

/** No permission at all (`hash-password`, `--help`). */
export const NO_PERMISSIONS: PermissionSet = { net: [], read: [], write: [], env: [] };

/**
 * The set as `deno run` flags; an empty list gives no flag (an empty `--allow-env=` would
 * not mean "nothing"). `--no-prompt`: a missing permission is an error, never a question.
 */
export function permissionFlags(set: PermissionSet): string[] {
  const flags = ["--no-prompt"];
  for (const kind of ["net", "read", "write", "env"] as const) {
    if (set[kind].length > 0) flags.push(`--allow-${kind}=${set[kind].join(",")}`);
  }
  return flags;
}

/**
 * Runs `load` while recording the names of the environment variables read through
 * `Deno.env.get` (by `env("…")` secrets or by the config module's own code).
 */
export async function recordEnvReads<T>(load: () => Promise<T>): Promise<[T, string[]]> {
  const names = new Set<string>();
  const env = Deno.env as { get(name: string): string | undefined };
  const original = env.get;
  env.get = function (name: string) {
    names.add(name);
    return original.call(Deno.env, name);
  };
  try {
    const value = await load();
    return [value, [...names].sort()];
  } finally {
    env.get = original;
  }
}

/**
 * The entries of `set` this process was not started with (Deno.permissions), as the flags
 * that would add them: a reload that needs them must wait for a restart.
 */
export function missingPermissions(set: PermissionSet): string[] {
  const missing: string[] = [];
  const granted = (desc: Deno.PermissionDescriptor) =>
    Deno.permissions.querySync(desc).state === "granted";
  for (const host of set.net) {
    if (!granted({ name: "net", host })) missing.push(`--allow-net=${host}`);
  }
  for (const path of set.read) {
    if (!granted({ name: "read", path })) missing.push(`--allow-read=${path}`);
  }
  for (const path of set.write) {
    if (!granted({ name: "write", path })) missing.push(`--allow-write=${path}`);
  }
  for (const variable of set.env) {
    if (!granted({ name: "env", variable })) missing.push(`--allow-env=${variable}`);
  }
  return missing;
}
