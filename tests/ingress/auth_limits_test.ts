/**
 * AUTH-failure limits over real sockets from many loopback addresses: loopback is cut off
 * like any address unless `limits.authFailureExempt` lists it, and failures for one account
 * from many addresses lock that account (no password checked during the lock) without
 * touching logged-in sessions, trusted networks or exempt clients.
 */
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { plain, RawSmtp } from "../smtp_client.ts";
import { metricValue, PASSWORD, startHarness, until } from "../harness.ts";
import { SourceClient, withIngress } from "./fake_backend.ts";

const RIGHT = "right-password";
const BAD = "535 5.7.8 Authentication credentials invalid";
const CUT_OFF = "421 4.7.0 Too many failed authentications, try again later";
const LOCKED = "454 4.7.0 Too many failed authentications for this account, try again later";

/** Connects from `from`, says EHLO and sends AUTH PLAIN; the client and the AUTH reply. */
async function login(port: number, from: string, user: string, password: string) {
  const { client } = await SourceClient.connect(port, from);
  assert.equal((await client.command("EHLO c")).code, 250);
  return { client, reply: (await client.command(`AUTH PLAIN ${plain(user, password)}`)).last };
}

/** {@link login}, then the connection is closed; the AUTH reply. */
async function once(port: number, from: string, user: string, password: string) {
  const { client, reply } = await login(port, from, user, password);
  client.close();
  return reply;
}

Deno.test("auth limits: a loopback client is cut off after failed AUTHs unless limits.authFailureExempt lists it", async () => {
  const limits = { authFailuresBeforeDisconnect: 3, authFailuresBeforeAccountLock: 100 };
  await withIngress(async (ingress, backend, observer) => {
    backend.password = RIGHT;
    const port = ingress.addresses[0].port;
    const { client: c } = await RawSmtp.connect(port); // 127.0.0.1, no PROXY
    await c.command("EHLO c");
    for (let i = 0; i < 3; i++) {
      assert.equal((await c.command(`AUTH PLAIN ${plain("a@example.com", "wrong")}`)).last, BAD);
    }
    // The right password no longer helps 127.0.0.1: 421, the session ends, nothing checked.
    assert.equal((await c.command(`AUTH PLAIN ${plain("a@example.com", RIGHT)}`)).last, CUT_OFF);
    assert.ok(await c.closedByServer());
    await c.close();
    assert.equal(backend.authChecks, 3);
    assert.equal(observer.count("auth_throttled"), 1);
  }, { limits });

  await withIngress(async (ingress, backend) => {
    backend.password = RIGHT;
    const port = ingress.addresses[0].port;
    const { client: c } = await RawSmtp.connect(port);
    await c.command("EHLO c");
    for (let i = 0; i < 5; i++) {
      assert.equal((await c.command(`AUTH PLAIN ${plain("a@example.com", "wrong")}`)).last, BAD);
    }
    assert.equal((await c.command(`AUTH PLAIN ${plain("a@example.com", RIGHT)}`)).code, 235);
    await c.close();
    // Only the listed address: 127.0.0.2 is loopback too, and is cut off.
    const { client: other } = await SourceClient.connect(port, "127.0.0.2");
    await other.command("EHLO c");
    for (let i = 0; i < 3; i++) {
      assert.equal((await other.command(`AUTH PLAIN ${plain("b@example.com", "x")}`)).last, BAD);
    }
    assert.equal(
      (await other.command(`AUTH PLAIN ${plain("b@example.com", RIGHT)}`)).last,
      CUT_OFF,
    );
    assert.ok(await other.closedByServer());
  }, { limits: { ...limits, authFailureExempt: ["127.0.0.1/32"] } });
});

Deno.test("auth limits: one guess each from many addresses locks the account; the right password is refused unchecked, logged-in sessions, trusted and exempt clients unaffected", async () => {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (r: LogRecord) => records.push(r) },
    loggers: [
      { category: ["relay"], lowestLevel: "debug", sinks: ["capture"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["capture"] },
    ],
  });
  try {
    await withIngress(async (ingress, backend, observer) => {
      backend.password = RIGHT;
      const port = ingress.addresses[0].port;
      const user = "a@example.com";
      // Logged in before the attack.
      const { client: early, reply: earlyLogin } = await login(port, "127.0.0.2", user, RIGHT);
      assert.match(earlyLogin, /^235 /);
      // Three addresses, one wrong guess each: each is checked.
      for (const from of ["127.0.0.3", "127.0.0.4", "127.0.0.5"]) {
        assert.equal(await once(port, from, user, `guess-${from}`), BAD);
      }
      const checks = backend.authChecks;
      assert.equal(checks, 4);
      // Locked: further guesses, and the right password, get 454 without a check.
      assert.equal(await once(port, "127.0.0.6", user, "guess-6"), LOCKED);
      const { client: late, reply: lateLogin } = await login(port, "127.0.0.7", user, RIGHT);
      assert.equal(lateLogin, LOCKED);
      assert.equal(backend.authChecks, checks);
      // 454 is no disconnect: the client may try again later, or another account now.
      assert.equal((await late.command(`AUTH PLAIN ${plain("b@example.com", RIGHT)}`)).code, 235);
      late.close();
      assert.equal(observer.count("auth_account_locked"), 2);

      // The session that logged in before the lock keeps working.
      assert.equal((await early.command("MAIL FROM:<a@example.com>")).last, "250 Accepted");
      assert.equal((await early.command("RCPT TO:<r@example.net>")).last, "250 Accepted");
      early.close();
      // A trusted network and an exempt address still log in; their passwords are checked.
      assert.match(await once(port, "127.0.0.20", user, RIGHT), /^235 /);
      assert.equal(await once(port, "127.0.0.21", user, "wrong"), BAD);
      assert.match(await once(port, "127.0.0.21", user, RIGHT), /^235 /);
      assert.equal(backend.authChecks, checks + 1 + 3);

      // A lock on a name that is no account (a password typed as the username) logs no name.
      const typo = "hunter2-typed-as-username";
      for (const from of ["127.0.0.8", "127.0.0.9", "127.0.0.10"]) {
        assert.equal(await once(port, from, typo, "x"), BAD);
      }
      assert.equal(await once(port, "127.0.0.11", typo, "x"), LOCKED);
    }, {
      trustedNetworks: ["127.0.0.20/32"],
      limits: { authFailuresBeforeAccountLock: 3, authFailureExempt: ["127.0.0.21/32"] },
      accountName: (u) => u === "a@example.com" ? "a@example.com" : undefined,
    });
  } finally {
    await reset();
  }
  const warnings = records.filter((r) => r.level === "warning").map((r) =>
    r.message.map(String).join("")
  );
  assert.deepEqual(warnings, [
    "AUTH as a@example.com locked for 60 s: 3 failed logins within 60 s, the last from 127.0.0.5",
    "AUTH as a name that is no configured account locked for 60 s: 3 failed logins within 60 s, " +
    "the last from 127.0.0.10",
  ]);
  const everything = JSON.stringify(records.map((r) => [r.message, r.properties]));
  assert.ok(!everything.includes("hunter2"), "the unconfigured username was logged");
  assert.ok(!everything.includes(RIGHT) && !everything.includes("guess-"), "a password was logged");
});

Deno.test("auth limits: concurrent guesses from many addresses are checked no more often than the lock allows", async () => {
  await withIngress(async (ingress, backend) => {
    backend.password = RIGHT;
    let open!: () => void;
    backend.authGate = new Promise<void>((go) => open = go);
    const port = ingress.addresses[0].port;
    const user = "a@example.com";
    const clients: SourceClient[] = [];
    for (let i = 0; i < 8; i++) {
      const { client } = await SourceClient.connect(port, `127.0.0.${30 + i}`);
      assert.equal((await client.command("EHLO c")).code, 250);
      clients.push(client);
    }
    // Eight wrong guesses at once: three are checked (held at the gate), the others wait.
    for (const [i, c] of clients.entries()) c.send(`AUTH PLAIN ${plain(user, `guess-${i}`)}`);
    assert.ok(await until(() => backend.authChecks === 3), `${backend.authChecks} checks`);
    const { client: right } = await SourceClient.connect(port, "127.0.0.40");
    assert.equal((await right.command("EHLO c")).code, 250);
    right.send(`AUTH PLAIN ${plain(user, RIGHT)}`);
    open();
    const replies = await Promise.all(clients.map(async (c) => (await c.reply()).last));
    assert.deepEqual(replies.filter((r) => r === BAD).length, 3, replies.join("\n"));
    assert.deepEqual(replies.filter((r) => r === LOCKED).length, 5, replies.join("\n"));
    assert.equal((await right.reply()).last, LOCKED);
    assert.equal(backend.authChecks, 3);
    for (const c of [...clients, right]) c.close();
  }, { limits: { authFailuresBeforeAccountLock: 3 } });
});

Deno.test("auth limits: an account lock ends by itself one window after it began", async () => {
  await withIngress(async (ingress, backend) => {
    backend.password = RIGHT;
    const port = ingress.addresses[0].port;
    const user = "a@example.com";
    assert.equal(await once(port, "127.0.0.2", user, "x"), BAD);
    assert.equal(await once(port, "127.0.0.3", user, "y"), BAD);
    const lockedAt = performance.now();
    assert.equal(await once(port, "127.0.0.4", user, RIGHT), LOCKED);
    let last = "";
    assert.ok(
      await until(async () => (last = await once(port, "127.0.0.4", user, RIGHT)) !== LOCKED),
    );
    assert.match(last, /^235 /);
    const waited = performance.now() - lockedAt;
    assert.ok(waited >= 400, `lock ended after ${waited} ms`);
  }, { limits: { authFailuresBeforeAccountLock: 2, authFailureWindowMs: 500 } });
});

Deno.test("auth limits: through the relay's config, loopback is not exempt by default and locks are counted", async () => {
  const h = await startHarness({
    config: { limits: { authFailuresBeforeAccountLock: 2, tarpitStepMs: 0 } },
  });
  try {
    const port = h.relay.smtp.port;
    assert.deepEqual(h.config.limits.authFailureExempt, []);
    const user = h.accounts[0].email;
    assert.equal(await once(port, "127.0.0.2", user, "x"), BAD);
    assert.equal(await once(port, "127.0.0.3", user, "y"), BAD);
    assert.equal(await once(port, "127.0.0.4", user, PASSWORD), LOCKED);
    // 127.0.0.1 after authFailuresBeforeDisconnect (10) failures, as other names: cut off.
    const { client: c } = await RawSmtp.connect(port);
    await c.command("EHLO c");
    for (let i = 0; i < 10; i++) {
      assert.equal((await c.command(`AUTH PLAIN ${plain(`n${i}@example.com`, "x")}`)).last, BAD);
    }
    assert.equal((await c.command(`AUTH PLAIN ${plain("n@example.com", "x")}`)).last, CUT_OFF);
    await c.close();
    const m = await h.metrics();
    const refusals = (reason: string) =>
      metricValue(m, `smtp_relay_ingress_refusals_total{reason="${reason}"}`);
    assert.equal(refusals("auth_account_locked"), 1);
    assert.equal(refusals("auth_throttled"), 1);
  } finally {
    await h.close();
  }
});
