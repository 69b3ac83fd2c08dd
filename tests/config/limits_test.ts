/**
 * The `limits` settings of AUTH-failure exemption, account locks and shedding: their
 * defaults (no exemption: loopback is not exempt) and errors that name the field.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { HASH, problems } from "./helpers.ts";

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

Deno.test("limits: no AUTH-failure exemption by default; account lock and shedding defaults", () => {
  const { limits } = parseConfig(config());
  assert.deepEqual(limits.authFailureExempt, []);
  assert.equal(limits.authFailuresBeforeAccountLock, 10);
  assert.equal(limits.trustedReserve, 0);
  assert.equal(limits.idleShedPercent, 80);
  assert.equal(limits.idleShedSeconds, 10);
  const set = parseConfig(config({
    authFailureExempt: ["127.0.0.1/32", "::1"],
    authFailuresBeforeAccountLock: 5,
    trustedReserve: 20,
    idleShedPercent: 100,
    idleShedSeconds: 0,
  })).limits;
  assert.deepEqual(set.authFailureExempt, ["127.0.0.1/32", "::1"]);
  assert.equal(set.authFailuresBeforeAccountLock, 5);
  assert.equal(set.trustedReserve, 20);
  assert.equal(set.idleShedPercent, 100);
  assert.equal(set.idleShedSeconds, 0);
});

Deno.test("limits: a wrong exemption, lock, reserve or shedding setting is named", () => {
  assert.deepEqual(
    problems(config({
      authFailureExempt: ["127.0.0.1/32", "loopback"],
      authFailuresBeforeAccountLock: 0,
      idleShedPercent: 0,
      idleShedSeconds: -1,
    })),
    [
      "limits.authFailuresBeforeAccountLock: expected a positive integer",
      "limits.authFailureExempt[1]: expected an IP address or CIDR such as 10.0.0.0/8",
      "limits.idleShedPercent: expected a percentage 1-100",
      "limits.idleShedSeconds: expected seconds >= 0",
    ],
  );
  assert.deepEqual(problems(config({ authFailureExempt: true })), [
    "limits.authFailureExempt: expected a list of networks",
  ]);
  assert.deepEqual(problems(config({ maxClients: 50, trustedReserve: 50 })), [
    "limits.trustedReserve: expected fewer than limits.maxClients (50)",
  ]);
});
