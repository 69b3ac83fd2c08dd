/**
 * `--workers 2` through the start task (the real launcher and its derived permission set),
 * a real redis-server and the sandbox provider: both workers accept on the one port,
 * messages arrive byte-identical, `/metrics` sums the workers exactly, SIGHUP reaches
 * both, SIGTERM mid-DATA drains both, a connection cap holds across them, and the CLI
 * refuses bad `--workers` values and `--workers 2` without Redis with one precise line.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import {
  makeAccounts,
  metricValue,
  PASSWORD,
  rawMessage,
  sandboxConfig,
  startTaskArgs,
  type TestAccount,
  until,
} from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { configText, RelayProcess } from "../operations/relay_process.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { RedisServer } from "./redis_server.ts";
import { parseConfig } from "../../src/config/load.ts";
import { type RunningWorkers, startWorkers } from "../../src/workers.ts";

interface Setup {
  sandbox: Sandbox;
  redis: RedisServer;
  accounts: TestAccount[];
  relay: RelayProcess;
}

/** The config of the tests: Redis by URL (the launcher derives its address), `top` spliced in. */
function workersConfig(
  sandbox: Sandbox,
  redis: RedisServer,
  accounts: TestAccount[],
  options: { top?: string; accountExtra?: string } = {},
): Promise<string> {
  return configText(sandbox, accounts, {
    top: `state: { redis: { url: "${redis.url}", keyPrefix: "relay:", permitLeaseSeconds: 6 } },
      tokens: { failureHoldSeconds: 0 },
      ${options.top ?? ""}`,
    accountExtra: options.accountExtra,
  });
}

async function withWorkers(
  fn: (s: Setup) => Promise<void>,
  options: { top?: string; accountExtra?: string; accounts?: number } = {},
): Promise<void> {
  const sandbox = await startSandbox();
  const accounts = makeAccounts(options.accounts ?? 1);
  for (const a of accounts) sandbox.addAccount(a);
  const redis = await RedisServer.start();
  let relay: RelayProcess | undefined;
  try {
    const config = await workersConfig(sandbox, redis, accounts, options);
    relay = await RelayProcess.start(sandbox, config, ["--workers", "2"]);
    await relay.waitFor("2 workers", 30_000);
    await fn({ sandbox, redis, accounts, relay });
  } finally {
    await relay?.close();
    await redis.close();
    await sandbox.close();
  }
}

/** Sends `raw` as `account` over a new connection; the reply line (or the error's). */
async function sendRaw(
  port: number,
  account: TestAccount,
  raw: Uint8Array,
  password = PASSWORD,
): Promise<string> {
  const t = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    secure: false,
    ignoreTLS: true,
    name: "client.test",
    auth: { user: account.email, pass: password, method: "PLAIN" },
    logger: false,
    connectionTimeout: 60_000,
    socketTimeout: 120_000,
  });
  try {
    const info = await t.sendMail({
      envelope: { from: account.email, to: ["r@example.net"] },
      raw: Buffer.from(raw),
    });
    return info.response;
  } catch (err) {
    return (err as { response?: string }).response ?? String(err);
  } finally {
    t.close();
  }
}

/** Opens a session and authenticates it; the open client. */
async function authenticated(port: number, account: TestAccount, password = PASSWORD) {
  const { client } = await RawSmtp.connect(port);
  assert.equal((await client.command("EHLO client.test")).code, 250);
  const auth = await client.command(`AUTH PLAIN ${plain(account.email, password)}`);
  return { client, auth };
}

Deno.test("workers: --workers 2 -> both workers accept on one port, 30 messages byte-identical, /metrics sums both", async () => {
  await withWorkers(async ({ sandbox, accounts, relay }) => {
    const port = relay.ports.smtp;
    // Both workers started, each a fleet instance of its own (instance id ends in -w1, -w2).
    await relay.waitFor(/instance \S*-w1\b|"instance":"[^"]*-w1"/, 30_000);
    await relay.waitFor(/instance \S*-w2\b|"instance":"[^"]*-w2"/, 30_000);

    // 20 sessions open at once: the kernel spreads them over both workers.
    const sessions = await Promise.all(
      Array.from({ length: 20 }, () => RawSmtp.connect(port).then((c) => c.client)),
    );
    let metrics = "";
    await until(async () => {
      metrics = await relay.metrics();
      return metricValue(metrics, "smtp_relay_sessions_active") === 20;
    }, 20_000);
    const w1 = metricValue(metrics, 'smtp_relay_worker_sessions_active{worker="1"}');
    const w2 = metricValue(metrics, 'smtp_relay_worker_sessions_active{worker="2"}');
    assert.equal(w1 + w2, 20);
    assert.ok(w1 > 0 && w2 > 0, `sessions by worker: ${w1} and ${w2}`);
    assert.equal(metricValue(metrics, "smtp_relay_workers"), 2);
    await Promise.all(sessions.map((c) => c.close()));

    // 30 messages, each a new connection: every one delivered exactly as sent.
    const account = accounts[0];
    const sent = Array.from(
      { length: 30 },
      (_, i) => rawMessage(account.email, "r@example.net", `body ${i}\r\n`, `w-${i}`),
    );
    const replies = await Promise.all(sent.map((raw) => sendRaw(port, account, raw)));
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(sandbox.received.length, 30);
    const got = new Set(sandbox.received.map((m) => new TextDecoder().decode(m.data)));
    for (const raw of sent) {
      assert.ok(got.has(new TextDecoder().decode(raw)), "a message changed on its way");
    }
    await until(async () => {
      metrics = await relay.metrics();
      return metricValue(metrics, 'smtp_relay_messages_total{result="delivered"}') === 30;
    }, 10_000);
    const d1 = metricValue(
      metrics,
      'smtp_relay_worker_messages_total{worker="1",result="delivered"}',
    );
    const d2 = metricValue(
      metrics,
      'smtp_relay_worker_messages_total{worker="2",result="delivered"}',
    );
    assert.equal(d1 + d2, 30);
    // One process, one set of accounts: not counted twice.
    assert.equal(metricValue(metrics, 'smtp_relay_accounts{state="ok"}'), 1);
    assert.equal(metricValue(metrics, "smtp_relay_redis_up"), 1);

    const ready = await fetch(`http://127.0.0.1:${relay.ports.metrics}/readyz`);
    const body = await ready.json();
    assert.equal(ready.status, 200);
    assert.deepEqual(body.workers, [{ worker: 1, ready: true }, { worker: 2, ready: true }]);
    const health = await fetch(`http://127.0.0.1:${relay.ports.metrics}/healthz`);
    assert.equal(await health.text(), "ok\n");
    const list = await fetch(`http://127.0.0.1:${relay.ports.metrics}/accounts`);
    assert.equal(list.status, 200);
    const status = await list.json();
    assert.equal(status[0].account, account.email);
    // Each worker's lines say which worker wrote them.
    const lines = relay.log.split("\n").filter((l) => l.startsWith("{"));
    const byWorker = new Set(lines.map((l) => JSON.parse(l).properties?.worker));
    assert.ok(byWorker.has(1) && byWorker.has(2), `workers seen in the log: ${[...byWorker]}`);
    // No secret in the log.
    for (const secret of [PASSWORD, account.refreshToken, account.clientSecret]) {
      assert.ok(!relay.log.includes(secret), "a secret is in the log");
    }
  });
});

Deno.test("workers: SIGHUP -> both workers apply the new password; the old one is refused on every connection", async () => {
  await withWorkers(async ({ sandbox, redis, accounts, relay }) => {
    const port = relay.ports.smtp;
    const account = accounts[0];
    const changed = "a-new-password-for-the-test";
    const config = (await workersConfig(sandbox, redis, accounts)).replace(
      /passwordHash: "[^"]*"/,
      `passwordHash: "${await hashPassword(changed)}"`,
    );
    await relay.writeConfig(config);
    const from = relay.log.length;
    relay.kill("SIGHUP");
    await relay.waitFor("configuration reloaded", 30_000, from);
    await until(() => relay.log.split("configuration reloaded").length - 1 >= 2, 30_000);
    // Many connections: each lands on either worker; the new password works on all of them.
    // 8 stale tries: under the per-IP cut-off and the account lock (10 each), which are exact
    // across workers, so every stale try gets the password check's 535.
    const tries = await Promise.all(Array.from({ length: 8 }, async () => {
      const fresh = await authenticated(port, account, changed);
      const stale = await authenticated(port, account, PASSWORD);
      await fresh.client.close();
      await stale.client.close();
      return [fresh.auth.code, stale.auth.code];
    }));
    assert.deepEqual(tries.map((t) => t[0]), Array(8).fill(235));
    assert.deepEqual(tries.map((t) => t[1]), Array(8).fill(535));
    const metrics = await relay.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_config_reloads_total{result="success"}'), 1);
    assert.ok(!relay.log.includes(changed), "the new password is in the log");
  });
});

Deno.test("workers: SIGTERM mid-DATA -> the message gets its real 250, the process exits 0", async () => {
  await withWorkers(async ({ sandbox, accounts, relay }) => {
    const account = accounts[0];
    // Sessions on both workers, each with a message in DATA that the provider answers late.
    const clients = await Promise.all(
      Array.from({ length: 6 }, () => authenticated(relay.ports.smtp, account)),
    );
    for (const { client, auth } of clients) {
      assert.equal(auth.code, 235);
      assert.equal((await client.command(`MAIL FROM:<${account.email}>`)).code, 250);
      assert.equal((await client.command("RCPT TO:<r@example.net>")).code, 250);
      assert.equal((await client.command("DATA")).code, 354);
    }
    sandbox.smtpFaults.replyDelayMs = 1_500;
    const bodies = clients.map((_, i) => `Subject: late-${i}\r\n\r\nlate ${i}\r\n`);
    for (const [i, { client }] of clients.entries()) await client.write(`${bodies[i]}.\r\n`);
    await until(() => sandbox.smtp.stats.dataStarted >= 1, 20_000);
    relay.kill("SIGTERM");
    const replies = await Promise.all(clients.map(({ client }) => client.reply(60_000)));
    assert.deepEqual(replies.map((r) => r.code), Array(6).fill(250));
    const status = await relay.exited();
    assert.equal(status.code, 0);
    assert.equal(sandbox.received.length, 6);
  });
});

Deno.test("workers: a cap of 3 connections across the two workers holds at the sandbox", async () => {
  await withWorkers(async ({ sandbox, accounts, relay }) => {
    const account = accounts[0];
    sandbox.smtpFaults.replyDelayMs = 20;
    const replies = await Promise.all(
      Array.from(
        { length: 40 },
        (_, i) =>
          sendRaw(
            relay.ports.smtp,
            account,
            rawMessage(account.email, "r@example.net", `cap ${i}\r\n`, `cap-${i}`),
          ),
      ),
    );
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(sandbox.received.length, 40);
    assert.ok(sandbox.smtp.stats.peakOpen <= 3, `peak ${sandbox.smtp.stats.peakOpen}`);
    const metrics = await relay.metrics();
    const d1 = metricValue(
      metrics,
      'smtp_relay_worker_messages_total{worker="1",result="delivered"}',
    );
    assert.ok(d1 > 0 && d1 < 40, `worker 1 delivered ${d1} of 40`);
  }, { accountExtra: "maxConnections: 3," });
});

/** Runs the start task with `args` in a directory holding `config`; status and stderr. */
async function startTask(
  sandbox: Sandbox,
  config: string,
  args: string[],
): Promise<{ code: number; stderr: string }> {
  const dir = await Deno.makeTempDir({ prefix: "relay-workers-" });
  try {
    await Deno.writeTextFile(`${dir}/accounts.ts`, config);
    const ports = {
      smtp: 0,
      metrics: 0,
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const out = await new Deno.Command(Deno.execPath(), {
      args: [...await startTaskArgs(ports), ...args],
      cwd: dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("workers: --workers 2 without Redis, --workers 0 and --workers abc -> one precise line each, exit 2", async () => {
  const sandbox = await startSandbox();
  try {
    const accounts = makeAccounts(1);
    const files = await configText(sandbox, accounts);
    const noRedis = await startTask(sandbox, files, ["--workers", "2"]);
    assert.equal(noRedis.code, 2);
    assert.equal(
      noRedis.stderr,
      "error: --workers 2 needs shared state: set state.redis in ./accounts.ts (docs/redis.md)\n",
    );
    for (const bad of ["0", "abc"]) {
      const r = await startTask(sandbox, files, ["--workers", bad]);
      assert.equal(r.code, 2);
      assert.equal(
        r.stderr.split("\n")[0],
        `error: --workers: expected a number >= 1 or auto, got "${bad}"`,
      );
    }
  } finally {
    await sandbox.close();
  }
});

Deno.test("workers: a worker that dies (uncaught error) is logged and replaced; the process keeps relaying", async () => {
  const sandbox = await startSandbox();
  const accounts = makeAccounts(1);
  sandbox.addAccount(accounts[0]);
  const redis = await RedisServer.start();
  const dir = await Deno.makeTempDir({ prefix: "relay-workers-crash-" });
  const flag = `${dir}/crash`;
  Deno.env.set("RELAY_TEST_CRASH_FILE", flag);
  let running: RunningWorkers | undefined;
  try {
    const config = parseConfig(
      await sandboxConfig(sandbox, accounts, dir, {
        state: { redis: { url: redis.url, keyPrefix: "relay:" } },
      }),
    );
    running = await startWorkers(config, {
      count: 2,
      logFormat: "json",
      logLevel: "error",
      entry: new URL("./fixtures/crashing_worker.ts", import.meta.url),
    });
    const metrics = async () =>
      await (await fetch(`http://127.0.0.1:${running!.http.port}/metrics`)).text();
    await Deno.writeTextFile(flag, "");
    await until(async () => metricValue(await metrics(), "smtp_relay_worker_restarts_total") === 1);
    await until(async () => metricValue(await metrics(), "smtp_relay_workers") === 2, 30_000);
    const account = accounts[0];
    const replies = await Promise.all(Array.from(
      { length: 10 },
      (_, i) =>
        sendRaw(
          running!.smtp.port,
          account,
          rawMessage(account.email, "r@example.net", `after ${i}\r\n`),
        ),
    ));
    assert.deepEqual(replies.filter((r) => !r.startsWith("250 ")), []);
    assert.equal(sandbox.received.length, 10);
    const ready = await fetch(`http://127.0.0.1:${running.http.port}/readyz`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
  } finally {
    Deno.env.delete("RELAY_TEST_CRASH_FILE");
    await running?.stop(1_000);
    await redis.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
