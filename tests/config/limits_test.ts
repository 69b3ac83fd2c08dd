/**
 * The `limits` settings of AUTH-failure exemption and account locks: their defaults (no
 * exemption: loopback is not exempt) and errors that name the field.
 */
import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../src/config/load.ts";

/** Syntactically valid; no password hashes to it, none is needed here. */
const HASH = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo";

function config(limits?: unknown) {
  return {
    ...(limits === undefined ? {} : { limits }),
    accounts: [{
      email: "a@example.com",
      provider: "sandbox",
      clientId: "client",
      refreshToken: "refresh",
      passwordHash: HASH,
    }],
  };
}

/** The problem lines parseConfig reports for `input` (fails if it accepts it). */
function problems(input: unknown): readonly string[] {
  try {
    parseConfig(input);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  assert.fail("the config was accepted");
}

Deno.test("limits: no AUTH-failure exemption by default; account lock default", () => {
  const { limits } = parseConfig(config());
  assert.deepEqual(limits.authFailureExempt, []);
  assert.equal(limits.authFailuresBeforeAccountLock, 10);
  const set = parseConfig(config({
    authFailureExempt: ["127.0.0.1/32", "::1"],
    authFailuresBeforeAccountLock: 5,
  })).limits;
  assert.deepEqual(set.authFailureExempt, ["127.0.0.1/32", "::1"]);
  assert.equal(set.authFailuresBeforeAccountLock, 5);
});

Deno.test("limits: a wrong exemption or lock setting is named", () => {
  assert.deepEqual(
    problems(config({
      authFailureExempt: ["127.0.0.1/32", "loopback"],
      authFailuresBeforeAccountLock: 0,
    })),
    [
      "limits.authFailuresBeforeAccountLock: expected a positive integer",
      "limits.authFailureExempt[1]: expected an IP address or CIDR such as 10.0.0.0/8",
    ],
  );
  assert.deepEqual(problems(config({ authFailureExempt: true })), [
    "limits.authFailureExempt: expected a list of networks",
  ]);
});
