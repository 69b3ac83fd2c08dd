/**
 * The relay's backend against fake accounts: sessions opened with `newSession`, accounts
 * whose upstream answers as each test scripts it, quotas in memory with a controlled
 * clock. No sockets: this is the layer between the ingress and the upstream.
 */
import assert from "node:assert/strict";
import { Relay, type RelayAccount } from "../../src/relay/relay.ts";
import type { OutgoingMessage, UpstreamResult } from "../../src/upstream/pool.ts";
import { LocalQuotas } from "../../src/quota/quotas.ts";
import type { QuotaSnapshot } from "../../src/quota/quota.ts";
import type { StateStore } from "../../src/state/store.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { reply } from "../../src/smtp/reply.ts";
import { BodyIncomplete, MessageBody } from "../../src/smtp/body.ts";
import { until } from "../harness.ts";

/** A state store in memory. */
class MemoryStore implements StateStore<QuotaSnapshot> {
  readonly values = new Map<string, QuotaSnapshot>();
  load(key: string) {
    return Promise.resolve(this.values.get(key.toLowerCase()));
  }
  save(key: string, value: QuotaSnapshot) {
    this.values.set(key.toLowerCase(), value);
    return Promise.resolve();
  }
}

const PASSWORD = "pw-for-tests";
const hash = await hashPassword(PASSWORD);
const T0 = Date.UTC(2026, 10, 28, 12, 0, 0);

/** A fake account whose upstream returns `results` in order (then "sent"). */
function fakeAccount(
  email: string,
  results: UpstreamResult[] = [],
  extra: Partial<RelayAccount> = {},
): RelayAccount & { sent: OutgoingMessage[] } {
  const sent: OutgoingMessage[] = [];
  return {
    email,
    passwordHash: hash,
    aliases: [],
    senders: "own",
    quota: { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 2 },
    sent,
    deliver: (m) => {
      sent.push(m);
      return Promise.resolve(
        results.shift() ??
          { kind: "sent", reply: reply(250, "2.0.0", "OK"), refusedRecipients: [] },
      );
    },
    ...extra,
  };
}

function relayWith(accounts: RelayAccount[], now = () => T0) {
  const quotas = new LocalQuotas(new MemoryStore(), { now });
  const relay = new Relay(accounts, {}, undefined, { name: "relay.test", quotas });
  return { relay, quotas };
}

const peer = { address: "192.0.2.1", trusted: false };
const body = new TextEncoder().encode("Subject: x\r\n\r\nbody\r\n");

Deno.test("backend: a logged-in session sends as its account; a refused login leaves it logged out", async () => {
  const a = fakeAccount("a@example.com");
  const { relay } = relayWith([a]);
  const s = relay.newSession(peer);
  assert.equal(await s.auth("a@example.com", "wrong"), false);
  const required = reply(530, "5.7.0", "Authentication required");
  assert.deepEqual(await s.mail("a@example.com", true), required);
  assert.equal(await s.auth(" A@Example.com ", PASSWORD), true);
  assert.equal(await s.mail("a@example.com", true), undefined);
  assert.deepEqual(
    await s.mail("other@example.com", true),
    reply(550, "5.7.1", "Sender <other@example.com> is not allowed for a@example.com"),
  );
  assert.equal(await s.mail("", true), undefined); // the null sender
  // After STARTTLS the login is forgotten (the ingress says so).
  assert.deepEqual(await s.mail("a@example.com", false), required);
  // A trusted-network client is sent for by the account its sender names.
  const t = relay.newSession({ address: "10.0.0.9", trusted: true });
  assert.equal(await t.mail("a@example.com", false), undefined);
  assert.deepEqual(
    await t.mail("x@elsewhere.example", false),
    reply(550, "5.7.1", "Sender <x@elsewhere.example> is not configured for relaying"),
  );
  s.logout();
  t.logout();
});

Deno.test("backend: data without a sender is a sequence error; recipients and bytes go upstream as given", async () => {
  const a = fakeAccount("a@example.com");
  const { relay } = relayWith([a]);
  const s = relay.newSession(peer);
  assert.deepEqual(
    await s.data(MessageBody.of(body)),
    reply(503, "5.5.1", "Bad sequence of commands"),
  );
  await s.auth("a@example.com", PASSWORD);
  await s.mail("a@example.com", true);
  await s.rcpt("x@example.net");
  await s.rcpt("y@example.net");
  const r = await s.data(MessageBody.of(body));
  assert.equal(r.code, 250);
  assert.deepEqual(a.sent.map((m) => [m.from, m.to]), [["a@example.com", [
    "x@example.net",
    "y@example.net",
  ]]]);
  assert.equal(await a.sent[0].body.bytes(), body);
  // The next transaction starts empty.
  s.reset();
  assert.deepEqual(
    await s.data(MessageBody.of(body)),
    reply(503, "5.5.1", "Bad sequence of commands"),
  );
  s.logout();
});

Deno.test("backend: only what the provider took counts against the quota; a refusal is given back", async () => {
  let now = T0;
  const a = fakeAccount("a@example.com", [
    { kind: "rejected", reply: reply(550, "5.7.1", "Sender refused") },
    { kind: "unreachable", detail: "ECONNREFUSED" },
  ]);
  const { relay, quotas } = relayWith([a], () => now);
  const s = relay.newSession(peer);
  await s.auth("a@example.com", PASSWORD);
  const send = async () => {
    await s.mail("a@example.com", true);
    await s.rcpt("x@example.net");
    const r = await s.data(MessageBody.of(body));
    s.reset();
    return r;
  };
  assert.equal((await send()).code, 550); // refused: released
  assert.equal((await send()).code, 451); // unreachable: released
  assert.deepEqual(await quotas.usage("a@example.com"), {
    messagesToday: 0,
    recipientsToday: 0,
    lastMinute: 0,
  });
  assert.equal((await send()).code, 250);
  assert.equal((await send()).code, 250);
  const third = await send();
  assert.equal(third.code, 451);
  assert.equal(
    third.text,
    "Quota of 2 messages per minute for a@example.com reached, retry after 2026-11-28T12:01:00Z",
  );
  assert.equal(a.sent.length, 4); // the quota refusal never went upstream
  now += 60_000;
  assert.equal((await send()).code, 250);
  s.logout();
});

Deno.test("backend: a client gone mid-delivery does not undo the quota use of a delivered message", async () => {
  let release!: () => void;
  const gate = new Promise<void>((ok) => release = ok);
  const a = fakeAccount("a@example.com", [], {
    deliver: async () => {
      await gate;
      return { kind: "sent", reply: reply(250, "2.0.0", "OK"), refusedRecipients: [] };
    },
  });
  const { relay, quotas } = relayWith([a]);
  const s = relay.newSession(peer);
  await s.auth("a@example.com", PASSWORD);
  await s.mail("a@example.com", true);
  await s.rcpt("x@example.net");
  const pending = s.data(MessageBody.of(body));
  s.logout(); // the client vanished while the provider works
  release();
  assert.equal((await pending).code, 250);
  assert.equal((await quotas.usage("a@example.com")).lastMinute, 1);
});

Deno.test("backend: quota counters belong to the address, across account objects (reload)", async () => {
  const before = fakeAccount("a@example.com");
  const { relay, quotas } = relayWith([before]);
  const s = relay.newSession(peer);
  await s.auth("a@example.com", PASSWORD);
  await s.mail("a@example.com", true);
  await s.rcpt("x@example.net");
  // A reload replaces the account object before the message's DATA.
  const after = fakeAccount("a@example.com", [], { aliases: ["b@example.com"] });
  relay.update([after], {});
  assert.equal((await s.data(MessageBody.of(body))).code, 250); // sent through the account it began with
  assert.equal(before.sent.length, 1);
  const t = relay.newSession(peer);
  await t.auth("a@example.com", PASSWORD);
  assert.equal(await t.mail("b@example.com", true), undefined); // the new alias
  await t.rcpt("x@example.net");
  assert.equal((await t.data(MessageBody.of(body))).code, 250);
  await t.mail("a@example.com", true);
  await t.rcpt("x@example.net");
  assert.equal((await t.data(MessageBody.of(body))).code, 451); // 2 per minute, shared
  assert.equal((await quotas.usage("A@example.com")).lastMinute, 2);
});

Deno.test("backend: a body that fails mid-delivery gives the message up: signal aborted, no quota use, no outcome counted", async () => {
  let seen: OutgoingMessage | undefined;
  const a = fakeAccount("a@example.com", [], {
    deliver: (m) => {
      seen = m;
      // An upstream that waits for the whole body, as the pool does before its final dot.
      return new Promise((ok) =>
        m.signal!.addEventListener("abort", () => ok({ kind: "abandoned", endSent: false }))
      );
    },
  });
  const quotas = new LocalQuotas(new MemoryStore(), { now: () => T0 });
  const outcomes: string[] = [];
  const relay = new Relay([a], {}, {
    messageDone: (result) => void outcomes.push(result),
    quotaDeferred: () => {},
    reportDone: () => {},
  }, { name: "relay.test", quotas });
  const s = relay.newSession(peer);
  await s.auth("a@example.com", PASSWORD);
  await s.mail("a@example.com", true);
  await s.rcpt("x@example.net");
  const incoming = new MessageBody();
  const pending = s.data(incoming, 5_000);
  incoming.push(new TextEncoder().encode("Subject: half\r\n"));
  await until(() => seen !== undefined, 2_000);
  assert.equal(seen!.size, 5_000); // the client's SIZE= goes with the envelope
  assert.equal(seen!.body, incoming); // handed on while it arrives
  incoming.fail(new BodyIncomplete("gone", "the client went away"));
  assert.equal((await pending).code, 451);
  assert.equal(seen!.signal!.aborted, true);
  assert.deepEqual(outcomes, []);
  assert.equal((await quotas.usage("a@example.com")).lastMinute, 0);
  s.logout();
});
