/**
 * What a config module (`accounts.ts`) imports: {@link defineConfig} for types and
 * {@link env} to keep secrets out of the file.
 *
 * @example
 * ```ts
 * import { defineConfig, env } from "./src/config/mod.ts";
 * export default defineConfig({
 *   accounts: [{
 *     email: "sales@example.com",
 *     provider: "google",
 *     clientId: "1234.apps.googleusercontent.com",
 *     clientSecret: env("RELAY_GOOGLE_CLIENT_SECRET"),
 *     refreshToken: env("RELAY_SALES_REFRESH_TOKEN"),
 *     passwordHash: "scrypt$16384$8$1$...",
 *   }],
 * });
 * ```
 * @module
 */
export { defineConfig, env } from "./schema.ts";
export type { AccountInput, DomainInput, EnvRef, RelayConfigInput, Secret } from "./schema.ts";
