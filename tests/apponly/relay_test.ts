/**
 * Domain entries through real sockets: nodemailer client → relay → sandbox provider, with
 * a Google-style service account and a Microsoft-style app (secret and certificate).
 * Exact replies, delivered bytes, grants counted at the sandbox.
 */
import assert from "node:assert/strict";
import { hashPassword } from "../../src/relay/password.ts";
import { parseConfig } from "../../src/config/load.ts";
import { startRelay } from "../../src/app.ts";
import { metricValue, PASSWORD, until } from "../harness.ts";
import { DOMAIN, startDomainHarness } from "./helpers.ts";
import { CapturedLogs } from "../tokens/helpers.ts";

const OK = /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 OK \d+ - sandbox$/;
const BAD_LOGIN = "535 5.7.8 Authentication credentials invalid";

Deno.test("service account: every mailbox of the domain sends as itself, one grant each", async () => {
  const h = await startDomainHarness({ kind: "serviceAccount" });
  try {
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.match(await h.send(`Bob@${DOMAIN.toUpperCase()}`), OK);
    assert.match(await h.send(`alice@${DOMAIN}`), OK); // cached token, no new grant
    const received = h.sandbox.received;
    assert.deepEqual(received.map((m) => m.user), [
      `alice@${DOMAIN}`,
      `bob@${DOMAIN}`,
      `alice@${DOMAIN}`,
    ]);
    assert.deepEqual(received.map((m) => m.from), [
      `alice@${DOMAIN}`,
      `Bob@${DOMAIN}`, // the domain lower-cased on the way (nodemailer), the local part as sent
      `alice@${DOMAIN}`,
    ]);
    assert.match(
      new TextDecoder().decode(received[1].data),
      /\r\n\r\nfrom Bob@FLEET\.EXAMPLE\r\n$/,
    );
    const stats = h.sandbox.tokens.appOnly.stats;
    assert.equal(stats.grants, 2);
    assert.deepEqual([...stats.grantsBySubject], [[`alice@${DOMAIN}`, 1], [`bob@${DOMAIN}`, 1]]);
    assert.equal(h.sandbox.stats.token.refreshes, 0); // no refresh_token grant at all
  } finally {
    await h.close();
  }
});

Deno.test("client secret and certificate: permitted mailboxes send, others get the provider's 535 5.7.3", async () => {
  for (const kind of ["clientSecret", "certificate"] as const) {
    const h = await startDomainHarness({ kind, permitted: [`a@${DOMAIN}`] });
    try {
      assert.match(await h.send(`a@${DOMAIN}`), OK, kind);
      // No mailbox permission: the provider refuses the token for that mailbox; nothing sent.
      assert.equal(
        await h.send(`b@${DOMAIN}`),
        "454 4.7.0 Provider refused the relay's token, try again later: " +
          "535 5.7.3 Authentication unsuccessful",
        kind,
      );
      assert.deepEqual(h.sandbox.received.map((m) => m.user), [`a@${DOMAIN}`], kind);
      // The admin adds the permission; the client's retry goes through.
      h.app!.mailboxes.add(`b@${DOMAIN}`);
      assert.match(await h.send(`b@${DOMAIN}`), OK, kind);
      // SMTP AUTH switched off for the mailbox (seen at the next login upstream).
      h.sandbox.tokens.appOnly.smtpAuthDisabled.add(`a@${DOMAIN}`);
      h.sandbox.smtp.dropConnections();
      assert.equal(
        await h.send(`a@${DOMAIN}`),
        "454 4.7.0 Provider refused the relay's token, try again later: 535 5.7.139 " +
          "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox",
        kind,
      );
      assert.equal(h.sandbox.received.length, 2, kind);
    } finally {
      await h.close();
    }
  }
});

Deno.test("logins: outside the domain, wrong password, allowlist and per-mailbox passwords get the unknown-user 535", async () => {
  const own = "own password of carol";
  const h = await startDomainHarness({
    domain: {
      passwords: { carol: await hashPassword(own) },
      mailboxes: [`alice@${DOMAIN}`, `carol@${DOMAIN}`],
    },
  });
  try {
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.equal(await h.send(`alice@other.example`), BAD_LOGIN);
    assert.equal(await h.send(`alice@sub.${DOMAIN}`), BAD_LOGIN);
    assert.equal(await h.send(`alice@${DOMAIN}`, { password: "wrong" }), BAD_LOGIN);
    assert.equal(await h.send(`dave@${DOMAIN}`), BAD_LOGIN); // not in mailboxes
    assert.equal(await h.send(`carol@${DOMAIN}`), BAD_LOGIN); // the domain's password
    assert.match(await h.send(`carol@${DOMAIN}`, { password: own }), OK);
    assert.deepEqual(h.sandbox.received.map((m) => m.user), [`alice@${DOMAIN}`, `carol@${DOMAIN}`]);
    // No state was made for the failed logins.
    assert.deepEqual((await h.relay.accounts()).map((a) => a.account).sort(), [
      `alice@${DOMAIN}`,
      `carol@${DOMAIN}`,
    ]);
  } finally {
    await h.close();
  }
});

Deno.test("a mailbox sends as itself only; per-mailbox quota and metrics", async () => {
  const h = await startDomainHarness({
    domain: { quota: { messagesPerDay: 1 } },
    config: { metrics: { perAccount: true } },
  });
  try {
    // Logged in as alice, MAIL FROM bob of the same domain.
    const { default: nodemailer } = await import("nodemailer");
    const t = nodemailer.createTransport({
      host: "127.0.0.1",
      port: h.relay.smtp.port,
      ignoreTLS: true,
      auth: { user: `alice@${DOMAIN}`, pass: PASSWORD },
      logger: false,
    });
    const err = await t.sendMail({
      envelope: { from: `bob@${DOMAIN}`, to: ["r@example.net"] },
      raw: "Subject: x\r\n\r\nx\r\n",
    }).catch((e: { response?: string }) => e);
    t.close();
    assert.equal(
      (err as { response?: string }).response,
      `550 5.7.1 Sender <bob@${DOMAIN}> is not allowed for alice@${DOMAIN}`,
    );
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.match(
      await h.send(`alice@${DOMAIN}`),
      /^451 4\.7\.0 Quota of 1 messages per 24 hours for alice@fleet\.example reached/,
    );
    assert.match(await h.send(`bob@${DOMAIN}`), OK); // bob's quota is his own
    const m = await h.metrics();
    const series = (a: string, r: string) =>
      `smtp_relay_account_messages_total{account="${a}@${DOMAIN}",result="${r}"}`;
    assert.equal(metricValue(m, series("alice", "delivered")), 1);
    assert.equal(metricValue(m, series("alice", "quota")), 1);
    assert.equal(metricValue(m, series("bob", "delivered")), 1);
    assert.equal(h.sandbox.received.length, 2);
  } finally {
    await h.close();
  }
});

Deno.test("idle mailboxes lose their state, and get it back on the next message", async () => {
  const h = await startDomainHarness({ domain: { idleSeconds: 1 } });
  try {
    // Before any mailbox is used the domain counts once, as unknown: ready.
    const ready = await fetch(`http://127.0.0.1:${h.relay.http.port}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual((await ready.json()).accounts, {
      total: 1,
      ok: 0,
      failing: 0,
      needsReauth: 0,
      stateCorrupt: 0,
      unsaved: 0,
    });
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.deepEqual((await h.relay.accounts()).map((a) => a.account), [`alice@${DOMAIN}`]);
    assert.ok(await until(async () => (await h.relay.accounts()).length === 0, 15_000));
    // Its upstream connection went with it.
    assert.ok(await until(() => h.sandbox.smtp.openConnections === 0, 10_000));
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.equal(h.sandbox.tokens.appOnly.stats.grants, 2); // a new token for the new state
  } finally {
    await h.close();
  }
});

Deno.test("no delegation: 454 with the provider's unauthorized_client, and /accounts says what to do", async () => {
  const h = await startDomainHarness();
  try {
    h.serviceAccount!.domains = [];
    const reply = await h.send(`alice@${DOMAIN}`);
    assert.match(
      reply,
      /^454 4\.7\.0 The provider refused the relay.s credential for this mailbox \(unauthorized_client: Client is unauthorized/,
    );
    assert.equal(h.sandbox.received.length, 0);
    const [status] = await h.relay.accounts();
    assert.equal(status.account, `alice@${DOMAIN}`);
    assert.equal(status.token, "needs_reauth");
    assert.match(status.action ?? "", /fix the credential of domain fleet\.example/);
    const ready = await fetch(`http://127.0.0.1:${h.relay.http.port}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal((await ready.json()).accounts.needsReauth, 1);
  } finally {
    await h.close();
  }
});

Deno.test("reload: an unchanged domain keeps its mailboxes' tokens, a changed one is rebuilt, a removed one logs nobody in", async () => {
  const h = await startDomainHarness();
  try {
    const [entry] = h.input.domains as Record<string, unknown>[];
    const grants = () => h.sandbox.tokens.appOnly.stats.grants;
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.equal(grants(), 1);
    await h.relay.reload(parseConfig(h.input));
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.equal(grants(), 1); // same entry: same state, cached token
    await h.relay.reload(
      parseConfig({ ...h.input, domains: [{ ...entry, quota: { messagesPerDay: 50 } }] }),
    );
    assert.match(await h.send(`alice@${DOMAIN}`), OK);
    assert.equal(grants(), 2); // changed entry: new state, new token
    await h.relay.reload(
      parseConfig({ ...h.input, domains: [{ ...entry, domain: "other.example" }] }),
    );
    assert.equal(await h.send(`alice@${DOMAIN}`), BAD_LOGIN);
    // other.example logs in, but the service account has no delegation for it.
    assert.equal(
      await h.send("alice@other.example"),
      "454 4.7.0 The provider refused the relay's credential for this mailbox " +
        "(invalid_grant: Invalid email or User ID)",
    );
    assert.equal(h.sandbox.received.length, 3);
  } finally {
    await h.close();
  }
});

Deno.test("failed logins lock a domain mailbox like an account, and the lock log names it", async () => {
  const logs = await CapturedLogs.start();
  const h = await startDomainHarness({
    config: {
      limits: {
        authFailuresBeforeAccountLock: 2,
        authFailuresBeforeTarpit: 100,
        authFailuresBeforeDisconnect: 100,
        tarpitStepMs: 0,
      },
    },
  });
  try {
    assert.equal(await h.send(`alice@${DOMAIN}`, { password: "wrong-1" }), BAD_LOGIN);
    assert.equal(await h.send(`alice@${DOMAIN}`, { password: "wrong-2" }), BAD_LOGIN);
    assert.equal(
      await h.send(`alice@${DOMAIN}`),
      "454 4.7.0 Too many failed authentications for this account, try again later",
    );
    assert.match(await h.send(`bob@${DOMAIN}`), OK);
    assert.match(logs.text, /AUTH as \\"alice@fleet\.example\\" locked for 600 s/);
  } finally {
    await h.close();
    await logs.stop();
  }
});

Deno.test("a domain's sourceAddress the permissions do not grant stops the start, naming the domain", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "relay-apponly-source-" });
  try {
    const config = parseConfig({
      smtp: { port: 0 },
      http: { port: 0 },
      stateDir,
      domains: [{
        domain: DOMAIN,
        provider: { type: "sandbox", tokenUrl: "http://127.0.0.1:9/token", smtpPort: 9 },
        credential: { type: "clientSecret", clientId: "app", clientSecret: "s3cret-123" },
        passwordHash: await hashPassword(PASSWORD),
        sourceAddress: "10.9.9.9",
      }],
    });
    await assert.rejects(startRelay(config), {
      message: `*@${DOMAIN}: sourceAddress 10.9.9.9 needs --allow-net=10.9.9.9:0 (not granted)`,
    });
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});
