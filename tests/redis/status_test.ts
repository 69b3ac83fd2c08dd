/** `status` with shared state: every instance's connections, and unknown quota use while Redis is down. */
import assert from "node:assert/strict";
import { statusTable } from "../../src/commands/status.ts";
import type { AccountStatus } from "../../src/accounts.ts";

const base: AccountStatus = {
  account: "a@example.com",
  provider: "sandbox",
  transport: "smtp",
  token: "ok",
  connections: { open: 1, max: 3, fleet: { "101-aaaaaaaa": 1, "202-bbbbbbbb": 2 } },
  quota: {
    messagesToday: 5,
    recipientsToday: 7,
    lastMinute: 2,
    limits: { messagesPerDay: 100, recipientsPerDay: 0, messagesPerMinute: 10 },
  },
};

Deno.test("status table: the fleet's connections per instance; '?' for quota use while Redis is down", () => {
  const lines = statusTable([base]).split("\n");
  const row = lines.find((l) => l.startsWith("a@example.com"))!;
  assert.match(row, /\b1\/3 \(all 3\)\s+5\/100\s+7\s+2\/10\s*$/);
  assert.ok(
    lines.some((l) => l.includes("connections by instance: 101-aaaaaaaa 1, 202-bbbbbbbb 2")),
  );
  const down = statusTable([{
    ...base,
    connections: { open: 0, max: 3 },
    quota: {
      ...base.quota,
      messagesToday: 0,
      recipientsToday: 0,
      lastMinute: 0,
      unavailable: true,
    },
  }]).split("\n");
  assert.match(down.find((l) => l.startsWith("a@example.com"))!, /\b0\/3\s+\?\s+\?\s+\?\s*$/);
  assert.ok(
    down.some((l) => l.includes("quota use unknown: the shared state (Redis) is unavailable")),
  );
});
