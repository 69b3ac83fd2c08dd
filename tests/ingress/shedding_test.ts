/**
 * Shedding under pressure over real sockets: idle clients that never log in cannot keep
 * others out. A new client closes the idlest such session (421 4.4.2) at the cap, and from
 * `idleShedPercent` one idle `idleShedSeconds`; logged-in sessions, transactions and
 * trusted networks are never shed; `trustedReserve` keeps room for trusted networks.
 */
import assert from "node:assert/strict";
import { plain } from "../smtp_client.ts";
import { metricValue, PASSWORD, startHarness } from "../harness.ts";
import { SourceClient, withIngress } from "./fake_backend.ts";

const GREETING = "220 fake.test ESMTP OAuth2 relay";
const SHED = "421 4.4.2 Idle too long, closing";
const FULL = "421 4.7.0 Too many connections";

/** Connects from `from`, checks the greeting; EHLO and AUTH as `user` when given. */
async function session(port: number, from: string, user?: string): Promise<SourceClient> {
  const { client, greeting } = await SourceClient.connect(port, from);
  assert.equal(greeting.last, GREETING);
  if (user) {
    assert.equal((await client.command("EHLO c")).code, 250);
    assert.equal((await client.command(`AUTH PLAIN ${plain(user, "pw")}`)).code, 235);
  }
  return client;
}

Deno.test("shedding: at the cap a new client closes the idlest session that has not logged in; logged-in, in-transaction and trusted sessions stay", async () => {
  await withIngress(async (ingress, backend, observer) => {
    const port = ingress.addresses[0].port;
    const all: SourceClient[] = [];
    try {
      const loggedIn = await session(port, "127.0.0.2", "a@example.com");
      const inTransaction = await session(port, "127.0.0.2", "a@example.com");
      assert.equal((await inTransaction.command("MAIL FROM:<a@example.com>")).code, 250);
      assert.equal((await inTransaction.command("RCPT TO:<r@example.net>")).code, 250);
      const trusted = await session(port, "127.0.0.9");
      assert.equal((await trusted.command("EHLO printer")).code, 250);
      all.push(loggedIn, inTransaction, trusted);
      const idle: SourceClient[] = [];
      for (let i = 0; i < 7; i++) idle.push(await session(port, "127.0.0.3"));
      all.push(...idle);
      // One idler says EHLO now: progress, so it is no longer the idlest.
      assert.equal((await idle[0].command("EHLO c")).code, 250);
      assert.equal(ingress.sessions, 10);

      // Full: each newcomer gets in, and the idlest idler makes room, in order.
      for (const victim of [idle[1], idle[2]]) {
        const newcomer = await session(port, "127.0.0.4");
        all.push(newcomer);
        assert.equal((await victim.reply()).last, SHED);
        assert.ok(await victim.closedByServer());
        assert.equal(ingress.sessions, 10);
      }
      assert.equal(idle[0].unread, 0);
      assert.equal(observer.count("idle_shed"), 2);
      assert.equal(observer.count("clients"), 0);

      // The sessions that were never candidates carry on.
      assert.equal((await loggedIn.command("MAIL FROM:<a@example.com>")).last, "250 Accepted");
      assert.equal((await inTransaction.command("DATA")).code, 354);
      inTransaction.send("Subject: s\r\n\r\nbody\r\n.");
      assert.equal((await inTransaction.reply()).last, "250 2.0.0 OK queued");
      assert.equal((await trusted.command("MAIL FROM:<p@printers.example>")).last, "250 Accepted");
      assert.equal(backend.messages.length, 1);
    } finally {
      for (const c of all) c.close();
    }
  }, {
    trustedNetworks: ["127.0.0.9/32"],
    limits: { maxClients: 10, idleShedPercent: 80, idleShedSeconds: 60 },
  });
});

Deno.test("shedding: from idleShedPercent on, a new client closes one session idle idleShedSeconds; below it, none", async () => {
  await withIngress(async (ingress) => {
    const port = ingress.addresses[0].port;
    const all: SourceClient[] = [];
    try {
      for (let i = 0; i < 5; i++) all.push(await session(port, "127.0.0.3"));
      // 5 open, the shedding level (50 % of 10); none was shed on the way there.
      assert.equal(ingress.sessions, 5);
      assert.ok(all.every((c) => c.unread === 0));
      all.push(await session(port, "127.0.0.4"));
      assert.equal((await all[0].reply()).last, SHED);
      assert.ok(await all[0].closedByServer());
      assert.equal(ingress.sessions, 5);
      assert.ok(all.slice(1).every((c) => c.unread === 0));
    } finally {
      for (const c of all) c.close();
    }
  }, { limits: { maxClients: 10, idleShedPercent: 50, idleShedSeconds: 0 } });

  // Not yet idle long enough: below the cap nobody is shed.
  await withIngress(async (ingress) => {
    const port = ingress.addresses[0].port;
    const all: SourceClient[] = [];
    try {
      for (let i = 0; i < 9; i++) all.push(await session(port, "127.0.0.3"));
      assert.equal(ingress.sessions, 9);
      assert.ok(all.every((c) => c.unread === 0));
    } finally {
      for (const c of all) c.close();
    }
  }, { limits: { maxClients: 10, idleShedPercent: 50, idleShedSeconds: 60 } });
});

Deno.test("shedding: trustedReserve keeps room for trusted networks; nothing to shed means 421 4.7.0", async () => {
  await withIngress(async (ingress, _backend, observer) => {
    const port = ingress.addresses[0].port;
    const all: SourceClient[] = [];
    try {
      for (let i = 0; i < 3; i++) all.push(await session(port, "127.0.0.2", "a@example.com"));
      // Three logged-in sessions: none to shed, the last place is for trusted networks.
      const { client: stranger, greeting } = await SourceClient.connect(port, "127.0.0.3");
      all.push(stranger);
      assert.equal(greeting.last, FULL);
      assert.ok(await stranger.closedByServer());
      all.push(await session(port, "127.0.0.9"));
      const { client: late, greeting: lateGreeting } = await SourceClient.connect(
        port,
        "127.0.0.9",
      );
      all.push(late);
      assert.equal(lateGreeting.last, FULL);
      assert.equal(ingress.sessions, 4);
      assert.equal(observer.count("clients"), 2);
    } finally {
      for (const c of all) c.close();
    }
  }, {
    trustedNetworks: ["127.0.0.9/32"],
    limits: { maxClients: 4, trustedReserve: 1, idleShedPercent: 50, idleShedSeconds: 0 },
  });
});

Deno.test("shedding: idle connections from 10 addresses filling maxClients do not lock out the relay's clients", async () => {
  const h = await startHarness({ config: { limits: { maxClients: 50, maxConnectionsPerIp: 5 } } });
  const all: SourceClient[] = [];
  try {
    const port = h.relay.smtp.port;
    for (let a = 0; a < 10; a++) {
      for (let i = 0; i < 5; i++) {
        const { client, greeting } = await SourceClient.connect(port, `127.0.1.${a + 1}`);
        assert.equal(greeting.code, 220);
        all.push(client);
      }
    }
    const { client, greeting } = await SourceClient.connect(port, "127.0.2.1");
    all.push(client);
    assert.match(greeting.last, /^220 /);
    assert.equal((await client.command("EHLO c")).code, 250);
    const auth = await client.command(`AUTH PLAIN ${plain(h.accounts[0].email, PASSWORD)}`);
    assert.equal(auth.last, "235 Authentication successful");
    assert.equal((await all[0].reply()).last, SHED);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_ingress_refusals_total{reason="idle_shed"}'), 1);
    assert.equal(metricValue(m, 'smtp_relay_ingress_refusals_total{reason="clients"}'), 0);
  } finally {
    for (const c of all) c.close();
    await h.close();
  }
});
