/**
 * Domain entries resolved: the provider with the app-only scope, the credential ready
 * for the token manager, the client password policy as lower-cased addresses.
 * @module
 */
import type { ParsedDomain } from "./schema.ts";
import type { ProviderEndpoints } from "./providers.ts";
import type { QuotaLimits } from "../quota/quota.ts";
import type { ServiceAccountKey } from "../tokens/service_account.ts";

/** Microsoft's app-only scope for SMTP (Exchange Online's `.default`). */
export const MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default";
/** The sandbox's app-only scope for its client credentials grant. */
export const SANDBOX_APP_SCOPE = "https://sandbox.localhost/.default";

/** A resolved app-only credential (secrets included: never logged). */
export type DomainCredential =
  | {
    readonly type: "serviceAccount";
    readonly key: ServiceAccountKey;
    /** The key file, if the key came from one (read at load and on reload). */
    readonly files: readonly string[];
  }
  | { readonly type: "clientSecret"; readonly clientId: string; readonly clientSecret: string }
  | {
    readonly type: "certificate";
    readonly clientId: string;
    readonly certificateFile: string;
    /** The certificate and private key files (read at load and on reload). */
    readonly files: readonly string[];
    readonly privateKey: string;
    readonly x5t: string;
    readonly notAfter: number;
  };

/** A validated domain entry with its provider resolved. */
export interface DomainConfig {
  /** The domain, lower-cased. */
  readonly domain: string;
  /** Where tokens and mail go; `scope` is the app-only scope. */
  readonly provider: ProviderEndpoints;
  /** The credential. */
  readonly credential: DomainCredential;
  /** The domain's client password (hash), if it has one. */
  readonly passwordHash?: string;
  /** Client passwords per mailbox: lower-cased address → hash. */
  readonly passwords: Readonly<Record<string, string>>;
  /** Only these mailboxes (lower-cased) may log in; undefined: any of the domain. */
  readonly mailboxes?: readonly string[];
  /** Sender policy per mailbox. */
  readonly senders: "own" | "any";
  /** Connection cap per mailbox. */
  readonly maxConnections: number;
  /** Quotas per mailbox. */
  readonly quota: QuotaLimits;
  /** Local address of upstream connections. */
  readonly sourceAddress?: string;
  /** A mailbox's state is dropped after this long unused, ms. */
  readonly idleMs: number;
}

/** Resolves one parsed domain entry, given its resolved provider. */
export function resolveDomain(d: ParsedDomain, provider: ProviderEndpoints): DomainConfig {
  const domain = d.domain.toLowerCase();
  const passwords: Record<string, string> = {};
  for (const [key, hash] of Object.entries(d.passwords ?? {})) {
    passwords[key.includes("@") ? key.toLowerCase() : `${key.toLowerCase()}@${domain}`] = hash;
  }
  return {
    domain,
    provider: { ...provider, scope: appScope(provider, d.credential.type) },
    credential: d.credential,
    passwordHash: d.passwordHash,
    passwords,
    mailboxes: d.mailboxes?.map((m) => m.toLowerCase()),
    senders: d.senders,
    maxConnections: d.maxConnections ?? provider.maxConnections,
    quota: { ...provider.quota, ...d.quota },
    sourceAddress: d.sourceAddress,
    idleMs: d.idleSeconds * 1000,
  };
}

/** The scope an app-only grant asks for at this provider. */
function appScope(provider: ProviderEndpoints, type: DomainCredential["type"]): string {
  if (provider.kind === "microsoft") return MICROSOFT_APP_SCOPE;
  if (provider.kind === "sandbox" && type !== "serviceAccount") return SANDBOX_APP_SCOPE;
  return provider.scope; // Google's https://mail.google.com/, a custom provider's own
}
