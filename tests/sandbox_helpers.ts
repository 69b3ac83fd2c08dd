/**
 * The sandbox provider alone, for tests of the sandbox and of the authorization flows:
 * one confidential-client account and a fresh sandbox per test.
 * @module
 */
import { type Sandbox, type SandboxOptions, startSandbox } from "../src/sandbox/mod.ts";

/** The account's address. */
export const USER = "alice@example.test";
/** Its OAuth2 client id. */
export const CLIENT_ID = "sandbox-client";
/** Its OAuth2 client secret. */
export const CLIENT_SECRET = "sandbox-secret";
/** The refresh token the sandbox starts with. */
export const FIRST_REFRESH = "refresh-0";

/** Options of {@link withSandbox}. */
export interface WithSandboxOptions extends Omit<SandboxOptions, "accounts"> {
  /** Device-code polling interval the sandbox asks for, s (its default otherwise). */
  deviceIntervalSeconds?: number;
}

/** A test body that runs `fn` against a fresh sandbox with the one account, then closes it. */
export function withSandbox(
  fn: (sandbox: Sandbox) => Promise<void>,
  options: WithSandboxOptions = {},
): () => Promise<void> {
  return async () => {
    const { deviceIntervalSeconds, ...sandboxOptions } = options;
    const sandbox = await startSandbox({
      ...sandboxOptions,
      accounts: [{
        email: USER,
        clientId: CLIENT_ID,
        clientSecret: CLIENT_SECRET,
        refreshToken: FIRST_REFRESH,
      }],
    });
    if (deviceIntervalSeconds !== undefined) {
      sandbox.tokens.deviceIntervalSeconds = deviceIntervalSeconds;
    }
    try {
      await fn(sandbox);
    } finally {
      await sandbox.close();
    }
  };
}
