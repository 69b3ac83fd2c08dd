/**
 * Names and secrets of the benchmark's sandbox accounts, shared by the runner and the
 * sandbox process so both sides agree without sending a thousand accounts over a pipe.
 * Sandbox values only: nothing here is a real credential.
 * @module
 */

/** The password every benchmark account logs in to the relay with. */
export const BENCH_PASSWORD = "bench-password-not-secret";

/** OAuth2 client of every benchmark account. */
export const BENCH_CLIENT = { clientId: "bench-client", clientSecret: "bench-client-secret" };

/** RCPT TO of every benchmark message. */
export const BENCH_RECIPIENT = "sink@bench.test";

/** One benchmark account, as the sandbox provider registers it. */
export interface BenchAccount {
  /** Mailbox address, `user<i>@bench.test`. */
  readonly email: string;
  /** OAuth2 client id. */
  readonly clientId: string;
  /** OAuth2 client secret. */
  readonly clientSecret: string;
  /** Refresh token (the bench sandbox does not rotate them). */
  readonly refreshToken: string;
}

/** The `i`-th benchmark account. */
export function benchAccount(i: number): BenchAccount {
  return {
    email: `user${i}@bench.test`,
    ...BENCH_CLIENT,
    refreshToken: `bench-refresh-${i}`,
  };
}
