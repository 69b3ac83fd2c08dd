/**
 * Operating the relay in-process: reload without dropping sessions, quotas (deferral,
 * persistence, provider connection cap), source addresses, /accounts and `status`.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseConfig } from "../../src/config/load.ts";
import { startRelay } from "../../src/app.ts";
import { metricValue, PASSWORD, sandboxConfig, sendMessage, startHarness } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

const MAIN = fileURLToPath(new URL("../../src/main.ts", import.meta.url));

const send = sendMessage;

Deno.test("reload: accounts added, removed and changed; open sessions and in-flight messages finish", async () => {
  const h = await startHarness({ accounts: 3 });
  try {
    // user1 is in a session and mid-message when the reload happens (slow provider).
    const { client: s } = await RawSmtp.connect(h.relay.smtp.port);
    await s.command("EHLO c");
    assert.equal((await s.command(`AUTH PLAIN ${plain("user1@example.com", PASSWORD)}`)).code, 235);
    await s.command("MAIL FROM:<user1@example.com>");
    await s.command("RCPT TO:<r@example.net>");
    await s.command("DATA");
    h.sandbox.smtpFaults.replyDelayMs = 300;
    await s.send("Subject: in flight\r\n\r\nbody\r\n.");

    // New config: user0 gets an alias, user1 is removed, user2 unchanged, user3 added.
    const [extra] = (await import("../harness.ts")).makeAccounts(4).slice(3);
    h.sandbox.addAccount(extra);
    const base = await sandboxConfig(h.sandbox, [h.accounts[0], h.accounts[2], extra], h.stateDir);
    const accounts = base.accounts as Record<string, unknown>[];
    accounts[0].aliases = ["alias0@example.com"];
    const notes = await h.relay.reload(parseConfig(base));
    assert.deepEqual(notes, []);

    assert.match((await s.reply()).last, /^250 2\.0\.0 OK/); // the in-flight message finished
    // The removed account's session may not start another transaction.
    assert.equal(
      (await s.command("MAIL FROM:<user1@example.com>")).last,
      "550 5.7.1 Account user1@example.com is no longer configured",
    );
    await s.close();
    h.sandbox.smtpFaults.replyDelayMs = 0;
    assert.match(await send(h, 1), /^535 5\.7\.8/); // removed: no login
    h.accounts.push(extra);
    assert.match(await send(h, 3), /^250 /); // added
    assert.match(await send(h, 2), /^250 /); // unchanged
    const { client: a } = await RawSmtp.connect(h.relay.smtp.port);
    await a.command("EHLO c");
    await a.command(`AUTH PLAIN ${plain("user0@example.com", PASSWORD)}`);
    assert.equal((await a.command("MAIL FROM:<alias0@example.com>")).code, 250); // changed
    await a.close();
    // The unchanged account kept its token: one refresh only.
    assert.equal(h.sandbox.stats.token.refreshesByEmail.get("user2@example.com"), 1);
    assert.equal(h.sandbox.received.length, 3);
  } finally {
    await h.close();
  }
});

Deno.test("quotas: deferred with a retry time, not sent; failures do not count; counters survive a restart", async () => {
  const h = await startHarness({
    accountExtras: () => ({ quota: { messagesPerMinute: 2, recipientsPerDay: 5 } }),
  });
  try {
    h.sandbox.smtpFaults.rejectData = "550 5.7.1 no";
    h.sandbox.smtpFaults.rejectDataCount = 1;
    assert.match(await send(h), /^550 /); // refused by the provider: no quota used
    assert.match(await send(h), /^250 /);
    assert.match(await send(h, 0, ["a@example.net", "b@example.net"]), /^250 /);
    const deferred = await send(h);
    assert.match(
      deferred,
      /^451 4\.7\.0 Quota of 2 messages per minute for user0@example\.com reached, retry after \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
    );
    const retryAt = Date.parse(deferred.split("retry after ")[1]);
    assert.ok(retryAt > Date.now() && retryAt <= Date.now() + 61_000);
    assert.equal(h.sandbox.received.length, 2);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_quota_deferrals_total{kind="messages_per_minute"}'), 1);
    assert.equal(metricValue(m, 'smtp_relay_messages_total{result="quota"}'), 1);

    // Restart on the same state directory: the counters are still there. (A graceful stop
    // says QUIT on the pooled upstream connection.)
    assert.equal(h.sandbox.stats.smtp.quits, 0);
    await h.relay.stop(1_000);
    assert.equal(h.sandbox.stats.smtp.quits, 1);
    h.relay = await startRelay(h.config);
    assert.match(await send(h), /^451 4\.7\.0 Quota of 2 messages per minute/);
    const status = await (await fetch(`http://127.0.0.1:${h.relay.http.port}/accounts`)).json();
    assert.equal(status[0].quota.messagesToday, 2);
    assert.equal(status[0].quota.recipientsToday, 3);
    assert.deepEqual(status[0].quota.limits, {
      messagesPerDay: 0,
      recipientsPerDay: 5,
      messagesPerMinute: 2,
    });
  } finally {
    await h.close();
  }
});

Deno.test("recipients per day: a message that would overrun the quota is deferred", async () => {
  const h = await startHarness({ accountExtras: () => ({ quota: { recipientsPerDay: 3 } }) });
  try {
    assert.match(await send(h, 0, ["a@example.net", "b@example.net"]), /^250 /);
    assert.match(
      await send(h, 0, ["c@example.net", "d@example.net"]),
      /^451 4\.7\.0 Quota of 3 recipients per 24 hours for user0@example\.com reached, retry after /,
    );
    assert.match(await send(h, 0, ["c@example.net"]), /^250 /);
  } finally {
    await h.close();
  }
});

Deno.test("a 3-connection cap holds under a burst: no 4th connection reaches the provider", async () => {
  const h = await startHarness({ accountExtras: () => ({ maxConnections: 3 }) });
  try {
    h.sandbox.smtpFaults.maxConnectionsPerUser = 3;
    h.sandbox.smtpFaults.replyDelayMs = 20;
    const replies = await Promise.all(Array.from({ length: 30 }, () => send(h)));
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(h.sandbox.stats.smtp.authFailures, 0); // a 4th would get 432 4.3.2
    assert.ok(h.sandbox.stats.smtp.authSuccesses <= 3);
  } finally {
    await h.close();
  }
});

Deno.test("source address: used for the upstream connection; an unusable one fails loudly", async () => {
  const h = await startHarness({ accountExtras: () => ({ sourceAddress: "127.0.0.2" }) });
  try {
    assert.match(await send(h), /^250 /);
    assert.equal(h.sandbox.received[0].remoteAddress, "127.0.0.2");
    const config = parseConfig(
      await sandboxConfig(h.sandbox, h.accounts, h.stateDir, {}, () => ({
        sourceAddress: "192.0.2.1",
      })),
    );
    await assert.rejects(
      () => startRelay(config),
      /user0@example\.com: sourceAddress 192\.0\.2\.1 needs --allow-net=192\.0\.2\.1:0/,
    );
  } finally {
    await h.close();
  }
});

Deno.test("/accounts: loopback or bearer token; status prints it", async () => {
  Deno.env.set("RELAY_ADMIN_TOKEN", "test-admin-token");
  const h = await startHarness({ accounts: 2 });
  try {
    await send(h);
    const url = `http://127.0.0.1:${h.relay.http.port}/accounts`;
    const denied = await fetch(url);
    assert.equal(denied.status, 401);
    await denied.body?.cancel();
    const ok = await fetch(url, { headers: { authorization: "Bearer test-admin-token" } });
    const body = await ok.json();
    assert.deepEqual(body.map((a: { account: string; token: string }) => [a.account, a.token]), [
      ["user0@example.com", "ok"],
      ["user1@example.com", "unknown"],
    ]);
    const text = JSON.stringify(body);
    for (const a of h.accounts) {
      assert.ok(!text.includes(a.refreshToken) && !text.includes(a.clientSecret));
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        "--allow-env=RELAY_*",
        MAIN,
        "status",
        "--url",
        `http://127.0.0.1:${h.relay.http.port}`,
      ],
      env: { RELAY_ADMIN_TOKEN: "test-admin-token" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const lines = new TextDecoder().decode(out.stdout).trimEnd().split("\n");
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(
      lines[0],
      /^ACCOUNT\s+PROVIDER\s+TOKEN\s+CONNS\s+MSGS\/24H\s+RCPTS\/24H\s+MSGS\/MIN$/,
    );
    assert.match(lines[1], /^user0@example\.com\s+sandbox\s+ok\s+1\/5\s+1\s+1\s+1$/);
    assert.match(lines[2], /^user1@example\.com\s+sandbox\s+unknown\s+0\/5\s+0\s+0\s+0$/);
  } finally {
    Deno.env.delete("RELAY_ADMIN_TOKEN");
    await h.close();
  }
});
