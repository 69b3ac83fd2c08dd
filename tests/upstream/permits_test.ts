/** LocalPermits: the per-account cap, first come first served, released exactly once. */
import assert from "node:assert/strict";
import { LocalPermits, type Permit } from "../../src/upstream/permits.ts";

/** True once `p` settled (after the microtasks queued so far ran). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => done = true, () => done = true);
  await new Promise((ok) => setTimeout(ok, 0));
  return done;
}

Deno.test("up to the cap at once, then waiters; counts per account", async () => {
  const permits = new LocalPermits(2);
  const a = await permits.acquire("a@example.com");
  await permits.acquire("a@example.com");
  assert.equal(permits.held("a@example.com"), 2);
  const third = permits.acquire("a@example.com");
  assert.equal(await settled(third), false);
  assert.equal(permits.waiting("a@example.com"), 1);
  // Another account has its own cap.
  const other = await permits.acquire("b@example.com");
  assert.equal(permits.held("b@example.com"), 1);
  a.release();
  const c = await third;
  assert.equal(permits.held("a@example.com"), 2);
  assert.equal(permits.waiting("a@example.com"), 0);
  c.release();
  other.release();
  assert.equal(permits.held("a@example.com"), 1);
  assert.equal(permits.held("b@example.com"), 0);
});

Deno.test("waiters are served in the order they came", async () => {
  const permits = new LocalPermits(1);
  const first = await permits.acquire("a");
  const order: number[] = [];
  const waiters = [1, 2, 3, 4].map((i) =>
    permits.acquire("a").then((p) => {
      order.push(i);
      return p;
    })
  );
  assert.equal(permits.waiting("a"), 4);
  first.release();
  for (const w of waiters) (await w).release();
  assert.deepEqual(order, [1, 2, 3, 4]);
  assert.equal(permits.held("a"), 0);
  assert.equal(permits.waiting("a"), 0);
});

Deno.test("a newcomer does not overtake a waiter when a permit frees", async () => {
  const permits = new LocalPermits(1);
  const first = await permits.acquire("a");
  const waiter = permits.acquire("a");
  first.release();
  // The freed permit went to the waiter, not to whoever asks next.
  const late = permits.acquire("a");
  assert.equal(await settled(late), false);
  (await waiter).release();
  (await late).release();
  assert.equal(permits.held("a"), 0);
});

Deno.test("release counts once: a second call frees nothing", async () => {
  const permits = new LocalPermits(1);
  const p = await permits.acquire("a");
  const waiter = permits.acquire("a");
  p.release();
  const q = await waiter;
  p.release(); // again: must not free q's slot
  assert.equal(permits.held("a"), 1);
  const next = permits.acquire("a");
  assert.equal(await settled(next), false);
  q.release();
  q.release();
  (await next).release();
  assert.equal(permits.held("a"), 0);
  assert.equal(permits.waiting("a"), 0);
});

Deno.test("an aborted wait rejects with the reason and is forgotten", async () => {
  const permits = new LocalPermits(1);
  const held = await permits.acquire("a");
  const abort = new AbortController();
  const aborted = permits.acquire("a", abort.signal);
  const after = permits.acquire("a");
  assert.equal(permits.waiting("a"), 2);
  const reason = new Error("gave up");
  abort.abort(reason);
  await assert.rejects(aborted, (e) => e === reason);
  assert.equal(permits.waiting("a"), 1);
  // The freed permit goes past the aborted wait to the next one.
  held.release();
  (await after).release();
  assert.equal(permits.held("a"), 0);
  assert.equal(permits.waiting("a"), 0);
});

Deno.test("an already aborted signal rejects at once; an abort after the grant does nothing", async () => {
  const permits = new LocalPermits(1);
  const abort = new AbortController();
  abort.abort(new Error("before"));
  await assert.rejects(permits.acquire("a", abort.signal), /before/);
  assert.equal(permits.held("a"), 0);

  const later = new AbortController();
  const p: Permit = await permits.acquire("a", later.signal);
  later.abort();
  assert.equal(permits.held("a"), 1);
  assert.equal(p.revoked.aborted, false);
  p.release();
  assert.equal(permits.held("a"), 0);
});

Deno.test("cap per account, read on every grant; below 1 counts as 1", async () => {
  const caps = new Map([["a", 3], ["b", 0]]);
  const permits = new LocalPermits((account) => caps.get(account) ?? 1);
  const a = await Promise.all([permits.acquire("a"), permits.acquire("a"), permits.acquire("a")]);
  assert.equal(permits.held("a"), 3);
  const b = await permits.acquire("b");
  const b2 = permits.acquire("b");
  assert.equal(await settled(b2), false);
  // Lowered while held: nobody new gets in until the holders are under the new cap.
  caps.set("a", 1);
  const a4 = permits.acquire("a");
  a[0].release();
  a[1].release();
  assert.equal(await settled(a4), false);
  a[2].release();
  (await a4).release();
  b.release();
  (await b2).release();
  assert.equal(permits.held("a") + permits.held("b"), 0);
});
