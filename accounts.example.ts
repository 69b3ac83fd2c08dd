/**
 * Example relay configuration. Copy to `accounts.ts`, edit, then check it with
 * `deno check accounts.ts` (types) and `deno task start` (validation at load).
 *
 * Secrets never need to sit in this file: `env("RELAY_…")` reads a variable when the
 * relay starts (the start task may read `RELAY_*` variables only).
 * Client passwords are stored as hashes: `deno task hash-password`.
 */
import { defineConfig, env } from "./src/config/mod.ts";

/** One hash shared by the computed accounts below (each may have its own). */
const TEAM_PASSWORD_HASH =
  "scrypt$16384$8$1$ce6WAgAiOjgmLYvUtONCjg==$sjkbAqoW7qVNBRO3kvIUbRJH3SzzCJ3VR1klK5htRKQ=";

/** Mailboxes of one Microsoft 365 tenant, each with its refresh token in the environment. */
const support = ["alice", "bob", "carol"].map((name) => ({
  email: `${name}@example.com`,
  provider: { type: "microsoft", tenant: "example.com" } as const,
  clientId: "00000000-0000-0000-0000-000000000000",
  // Public client (no secret): Microsoft allows it for device-code apps.
  refreshToken: env(`RELAY_${name.toUpperCase()}_REFRESH_TOKEN`),
  passwordHash: TEAM_PASSWORD_HASH,
}));

export default defineConfig({
  // Defaults shown; every field of these three blocks may be left out.
  smtp: { host: "127.0.0.1", port: 2525, maxRecipients: 100 },
  http: { host: "127.0.0.1", port: 9090 },
  stateDir: "./state",
  accounts: [
    {
      email: "sales@example.org",
      provider: "google",
      clientId: "1234567890-abc.apps.googleusercontent.com",
      clientSecret: env("RELAY_GOOGLE_CLIENT_SECRET"),
      refreshToken: env("RELAY_SALES_REFRESH_TOKEN"),
      passwordHash:
        "scrypt$16384$8$1$ZmFrZS1zYWx0LWZvci1kb2M=$5nZ9bVq8Q0u3Yp0m2c1qH0wq3k2Jm1f5o5b8d3m9x1I=",
      maxConnections: 3,
    },
    ...support,
    {
      // A tenant with SMTP AUTH turned off: send through Microsoft Graph over HTTPS
      // (docs/https-transports.md; `deno task authorize --account …` for Mail.Send).
      // Gmail accounts can do the same with `transport: "gmail-api"`.
      email: "noreply@example.com",
      provider: { type: "microsoft", tenant: "example.com" },
      clientId: "00000000-0000-0000-0000-000000000000",
      refreshToken: env("RELAY_NOREPLY_REFRESH_TOKEN"),
      passwordHash: TEAM_PASSWORD_HASH,
      transport: "graph",
    },
  ],
  // Every mailbox of a domain through one app-only credential (docs/app-only.md): no
  // refresh token per mailbox. A client logs in as the mailbox with the domain's password
  // (or its own, from `passwords`) and sends as that mailbox only. Key files are read at
  // start: they need --allow-read (put them under ./tls, which the start task allows).
  domains: [
    {
      domain: "example.org",
      provider: "google",
      // Service account with domain-wide delegation for https://mail.google.com/.
      credential: { type: "serviceAccount", keyFile: "./tls/relay-service-account.json" },
      passwordHash: TEAM_PASSWORD_HASH,
      // One mailbox with a password of its own (local part or address → hash).
      passwords: { printer: TEAM_PASSWORD_HASH },
    },
    {
      domain: "example.net",
      provider: { type: "microsoft", tenant: "example.net" },
      // App with SMTP.SendAsApp (admin consent), a service principal in Exchange and a
      // mailbox permission per mailbox. Or: { type: "certificate", clientId,
      // certificateFile: "./tls/app.crt", privateKeyFile: "./tls/app.key" }.
      credential: {
        type: "clientSecret",
        clientId: "11111111-1111-1111-1111-111111111111",
        clientSecret: env("RELAY_EXAMPLE_NET_CLIENT_SECRET"),
      },
      passwordHash: TEAM_PASSWORD_HASH,
      // Only these may log in; `check` tries them.
      mailboxes: ["billing@example.net", "alerts@example.net"],
    },
  ],
});
