/** Sliding-window quotas with a controlled clock. */
import assert from "node:assert/strict";
import { AccountQuota, type QuotaExceeded, type QuotaSnapshot } from "../../src/quota/quota.ts";
import { isReservation, LocalQuotas } from "../../src/quota/quotas.ts";

const T0 = Date.UTC(2026, 10, 26, 10, 0, 30);
const HOUR = 3_600_000;

Deno.test("messages per day: a rolling 24 hours, with the time the next one fits", () => {
  const q = new AccountQuota({ messagesPerDay: 2, recipientsPerDay: 0, messagesPerMinute: 0 });
  assert.ok("release" in q.reserve(1, T0));
  assert.ok("release" in q.reserve(1, T0 + HOUR));
  const refused = q.reserve(1, T0 + 2 * HOUR) as QuotaExceeded;
  assert.equal(refused.kind, "messages_per_day");
  // The oldest message's minute (10:00) leaves the window at 10:01 the next day.
  assert.equal(refused.retryAt, Date.UTC(2026, 10, 27, 10, 1, 0));
  assert.ok(!("release" in q.reserve(1, refused.retryAt - 1)));
  assert.ok("release" in q.reserve(1, refused.retryAt));
  assert.deepEqual(q.usage(refused.retryAt), {
    messagesToday: 2,
    recipientsToday: 2,
    lastMinute: 1,
  });
});

Deno.test("messages per minute and recipients per day; release gives the quota back", () => {
  const q = new AccountQuota({ messagesPerDay: 0, recipientsPerDay: 5, messagesPerMinute: 2 });
  const first = q.reserve(3, T0);
  assert.ok("release" in first);
  assert.ok("release" in q.reserve(1, T0 + 1_000));
  const minute = q.reserve(1, T0 + 2_000) as QuotaExceeded;
  assert.equal(minute.kind, "messages_per_minute");
  assert.equal(minute.retryAt, T0 + 60_000);
  const recipients = q.reserve(2, T0 + 61_000) as QuotaExceeded;
  assert.equal(recipients.kind, "recipients_per_day");
  if ("release" in first) first.release();
  assert.ok("release" in q.reserve(2, T0 + 61_000));
  assert.deepEqual(q.usage(T0 + 61_000), { messagesToday: 2, recipientsToday: 3, lastMinute: 1 });
});

Deno.test("a snapshot restores the counters", () => {
  const limits = { messagesPerDay: 3, recipientsPerDay: 0, messagesPerMinute: 0 };
  const q = new AccountQuota(limits);
  q.reserve(1, T0);
  q.reserve(4, T0 + HOUR);
  assert.equal(q.dirty, true);
  const snapshot = JSON.parse(JSON.stringify(q.snapshot(T0 + HOUR)));
  assert.equal(q.dirty, false);
  const restored = new AccountQuota(limits, snapshot);
  assert.deepEqual(restored.usage(T0 + 2 * HOUR), q.usage(T0 + 2 * HOUR));
  assert.ok("release" in restored.reserve(1, T0 + 2 * HOUR));
  assert.equal((restored.reserve(1, T0 + 2 * HOUR) as QuotaExceeded).kind, "messages_per_day");
  // A day later the old buckets are gone.
  assert.deepEqual(restored.usage(T0 + 27 * HOUR).messagesToday, 0);
});

Deno.test("LocalQuotas: counters per address (any case), loaded on first use, limits as given per call, flushed when dirty", async () => {
  const saved = new Map<string, QuotaSnapshot>();
  let loads = 0;
  const store = {
    load: (key: string) => {
      loads++;
      return Promise.resolve(saved.get(key));
    },
    save: (key: string, value: QuotaSnapshot) => {
      saved.set(key, JSON.parse(JSON.stringify(value)));
      return Promise.resolve();
    },
  };
  // A message an earlier run counted, an hour ago.
  saved.set("a@example.com", { minutes: [[T0 - HOUR, 1, 1]], recent: [] });
  let now = T0;
  const quotas = new LocalQuotas(store, { now: () => now });
  const daily = { messagesPerDay: 2, recipientsPerDay: 0, messagesPerMinute: 0 };
  const r = await quotas.reserve("A@Example.com", daily, 1);
  assert.ok(isReservation(r));
  r.commit();
  r.release(); // after a commit: no effect
  const refused = await quotas.reserve("a@example.com", daily, 1);
  assert.ok(!isReservation(refused));
  assert.equal(refused.kind, "messages_per_day");
  // New limits (a reload) apply to the same counters.
  const more = { ...daily, messagesPerDay: 3 };
  const again = await quotas.reserve("a@example.com", more, 1);
  assert.ok(isReservation(again));
  again.release();
  assert.equal(loads, 1);
  await quotas.flush();
  assert.equal(saved.get("a@example.com")!.minutes.reduce((n, m) => n + m[1], 0), 2);
  // Nothing changed since: a flush writes nothing; `all` writes every account.
  saved.clear();
  await quotas.flush();
  assert.equal(saved.size, 0);
  await quotas.flush(true);
  assert.equal(saved.size, 1);
  // A day later the counted messages have left the window.
  now = T0 + 25 * HOUR;
  assert.deepEqual(await quotas.usage("a@example.com"), {
    messagesToday: 0,
    recipientsToday: 0,
    lastMinute: 0,
  });
});
