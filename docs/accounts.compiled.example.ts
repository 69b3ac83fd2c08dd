/**
 * A config module for the compiled binary (`deno task compile`). The binary carries the
 * relay's code but not its source files, so this module imports nothing at run time:
 * the types come from a type-only import (erased when the binary loads the file) and
 * secrets are written as `{ env: "RELAY_…" }` instead of `env("RELAY_…")`.
 *
 * Type-check it beside a checkout of the project: `deno check accounts.ts`.
 */
import type { RelayConfigInput } from "../src/config/mod.ts";

export default {
  stateDir: "./state",
  accounts: [
    {
      email: "sales@example.org",
      provider: "google",
      clientId: "1234567890-abc.apps.googleusercontent.com",
      clientSecret: { env: "RELAY_GOOGLE_CLIENT_SECRET" },
      refreshToken: { env: "RELAY_SALES_REFRESH_TOKEN" },
      passwordHash:
        "scrypt$16384$8$1$ZmFrZS1zYWx0LWZvci1kb2M=$5nZ9bVq8Q0u3Yp0m2c1qH0wq3k2Jm1f5o5b8d3m9x1I=",
    },
  ],
} satisfies RelayConfigInput;
