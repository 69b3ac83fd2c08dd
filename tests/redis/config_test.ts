/** `state.redis` in accounts.ts: defaults, and errors naming the field (never the URL). */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { HASH, problems } from "../config/helpers.ts";

const account = {
  email: "a@example.com",
  provider: "google",
  clientId: "id",
  clientSecret: "secret",
  refreshToken: "rt",
  passwordHash: HASH,
};

Deno.test("config: state.redis gets its defaults; files stay the default backend", () => {
  assert.equal(parseConfig({ accounts: [account] }).state.redis, undefined);
  const c = parseConfig({
    accounts: [account],
    state: { redis: { url: "rediss://relay:pw@redis.example:6380/2" } },
  });
  assert.deepEqual(c.state.redis, {
    url: "rediss://relay:pw@redis.example:6380/2",
    keyPrefix: "relay:",
    timeoutMs: 1000,
    permitLeaseSeconds: 15,
  });
});

Deno.test("config: a bad state.redis names the field and never quotes the URL", () => {
  const bad = "http://relay:topsecret@redis.example:6379";
  const lines = problems({
    accounts: [account],
    state: { redis: { url: bad, timeoutMs: 0, permitLeaseSeconds: 1, extra: 1 } },
  });
  assert.deepEqual([...lines].sort(), [
    "state.redis.extra: unknown field",
    "state.redis.permitLeaseSeconds: expected seconds >= 3",
    "state.redis.timeoutMs: expected a positive integer",
    "state.redis.url: expected a redis:// or rediss:// URL with a host",
  ]);
  assert.ok(!lines.join("\n").includes("topsecret"));
  assert.deepEqual(problems({ accounts: [account], state: { redis: {} } }), [
    'state.redis.url: expected a string or env("NAME")',
  ]);
  assert.deepEqual(
    problems({ accounts: [account], state: { redis: { url: { env: "RELAY_NO_SUCH_URL" } } } }),
    ["state.redis.url: environment variable RELAY_NO_SUCH_URL is not set"],
  );
});
