/**
 * Provider presets: where each provider's token endpoint and SMTP server are, which
 * scope to ask for, and the per-account connection cap it tolerates.
 * @module
 */

import type { QuotaLimits } from "../quota/quota.ts";

/** How the relay protects its upstream SMTP connection. */
export type UpstreamTls = "starttls" | "implicit";

/** A provider, resolved: everything the token client and the upstream pool need. */
export interface ProviderEndpoints {
  /** Preset name, for logs and metrics. */
  readonly kind: "google" | "microsoft" | "outlook" | "custom" | "sandbox";
  /** OAuth2 token endpoint (refresh_token grant). */
  readonly tokenUrl: string;
  /** Authorization endpoint for the authorization-code + PKCE flow (`authorize`). */
  readonly authorizeUrl?: string;
  /** Issuer sent as `iss` in authorization responses (RFC 9207), where the provider does. */
  readonly issuer?: string;
  /** Device authorization endpoint for the device-code flow (`authorize`). */
  readonly deviceCodeUrl?: string;
  /** Scope sent with each refresh. */
  readonly scope: string;
  /** SMTP host, connected to by name. */
  readonly smtpHost: string;
  /** SMTP port. */
  readonly smtpPort: number;
  /** STARTTLS (required, never downgraded) or TLS from the first byte. */
  readonly tls: UpstreamTls;
  /**
   * CA certificates (PEM) for this provider's SMTP TLS. They REPLACE the system's roots
   * (node:tls `ca`, which nodemailer passes on), they do not add to them. Only the
   * sandbox provider, which runs on loopback only, has one.
   */
  readonly ca?: string;
  /** Default cap on concurrent upstream connections per account. */
  readonly maxConnections: number;
  /** Default sending quotas per account (0: none). */
  readonly quota: QuotaLimits;
}

const NO_QUOTA: QuotaLimits = { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 0 };
/** Google Workspace: 2,000 messages and 10,000 recipients per rolling day. */
const GOOGLE_QUOTA: QuotaLimits = {
  messagesPerDay: 2_000,
  recipientsPerDay: 10_000,
  messagesPerMinute: 0,
};
/** Exchange Online: 30 messages per minute, 10,000 recipients per day. */
const MICROSOFT_QUOTA: QuotaLimits = {
  messagesPerDay: 0,
  recipientsPerDay: 10_000,
  messagesPerMinute: 30,
};

/** Google Workspace / Gmail. Gmail tolerates ~10 concurrent SMTP sessions per user. */
export const GOOGLE: ProviderEndpoints = {
  kind: "google",
  tokenUrl: "https://oauth2.googleapis.com/token",
  // Google has no device-code flow for Gmail scopes: PKCE with a loopback redirect only.
  authorizeUrl: "https://accounts.google.com/o/oauth2/auth",
  issuer: "https://accounts.google.com",
  scope: "https://mail.google.com/",
  smtpHost: "smtp.gmail.com",
  smtpPort: 587,
  tls: "starttls",
  maxConnections: 5,
  quota: GOOGLE_QUOTA,
};

const MICROSOFT_SCOPE = "https://outlook.office.com/SMTP.Send offline_access";

/** Microsoft 365 for a tenant (id, domain, `organizations` or `common`). 3 connections per mailbox. */
export function microsoft(tenant: string): ProviderEndpoints {
  const base = `https://login.microsoftonline.com/${encodeURIComponent(tenant)}/oauth2/v2.0`;
  return {
    kind: "microsoft",
    tokenUrl: `${base}/token`,
    authorizeUrl: `${base}/authorize`,
    deviceCodeUrl: `${base}/devicecode`,
    scope: MICROSOFT_SCOPE,
    smtpHost: "smtp.office365.com",
    smtpPort: 587,
    tls: "starttls",
    maxConnections: 3,
    quota: MICROSOFT_QUOTA,
  };
}

/** Outlook.com / Hotmail consumer accounts. */
export const OUTLOOK: ProviderEndpoints = {
  kind: "outlook",
  tokenUrl: "https://login.microsoftonline.com/consumers/oauth2/v2.0/token",
  authorizeUrl: "https://login.microsoftonline.com/consumers/oauth2/v2.0/authorize",
  deviceCodeUrl: "https://login.microsoftonline.com/consumers/oauth2/v2.0/devicecode",
  scope: MICROSOFT_SCOPE,
  smtpHost: "smtp-mail.outlook.com",
  smtpPort: 587,
  tls: "starttls",
  maxConnections: 3,
  quota: MICROSOFT_QUOTA,
};

/** Where the built-in sandbox provider listens by default (`deno task demo`). */
export const SANDBOX_DEFAULTS = {
  tokenUrl: "http://127.0.0.1:2580/token",
  authorizePath: "/authorize",
  deviceCodePath: "/devicecode",
  smtpHost: "localhost",
  smtpPort: 2587,
  scope: "https://sandbox.localhost/smtp",
  maxConnections: 5,
  /** The sandbox's HTTPS APIs (Graph sendMail, Gmail messages.send). */
  apiUrl: "https://localhost:2588",
} as const;

/** Custom providers and the sandbox have no quota unless the account sets one. */
export { NO_QUOTA };
