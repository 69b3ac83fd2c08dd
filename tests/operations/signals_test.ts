/**
 * Signals to the real process under the start task's flags: SIGHUP reloads the config
 * (a bad one keeps the old), SIGTERM drains: every message is either acknowledged 250
 * and delivered once, or refused with 4xx and not delivered.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import nodemailer, { type Transporter } from "nodemailer";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import { hashPassword } from "../../src/relay/password.ts";
import {
  freePort,
  makeAccounts,
  PASSWORD,
  rawMessage,
  startTaskArgs,
  type TaskPorts,
  type TestAccount,
  until,
} from "../harness.ts";
import { RawSmtp } from "../smtp_client.ts";

const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

function configText(sandbox: Sandbox, accounts: TestAccount[], hash: string, extra = ""): string {
  const provider = JSON.stringify({
    type: "sandbox",
    tokenUrl: sandbox.tokenUrl,
    smtpPort: sandbox.smtpPort,
  });
  return `import { defineConfig } from "${CONFIG_MOD}";
export default defineConfig({
  shutdownTimeoutSeconds: 20,
  limits: { maxClients: 2000, maxConnectionsPerIp: 2000 },
  accounts: ${JSON.stringify(accounts)}.map((a) => ({
    email: a.email, provider: ${provider}, clientId: a.clientId, clientSecret: a.clientSecret,
    refreshToken: a.refreshToken, passwordHash: "${hash}", maxConnections: 10,
  })),${extra}
});
`;
}

Deno.test("SIGHUP reloads (a bad config keeps the old); SIGTERM drains without losing or duplicating", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-signals-" });
  const sandbox = await startSandbox();
  const ports: TaskPorts = {
    smtp: freePort(),
    metrics: freePort(),
    sandboxToken: Number(new URL(sandbox.tokenUrl).port),
    sandboxSmtp: sandbox.smtpPort,
  };
  const accounts = makeAccounts(2);
  for (const a of accounts) sandbox.addAccount(a);
  const hash = await hashPassword(PASSWORD);
  await Deno.writeTextFile(`${dir}/accounts.ts`, configText(sandbox, [accounts[0]], hash));
  const child = new Deno.Command(Deno.execPath(), {
    args: [...await startTaskArgs(ports), "--log-format", "json"],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  const drain = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      log += chunk;
      for (const w of waiters) if (log.includes(w.text)) w.resolve();
    }
  })();
  const waitFor = (text: string) =>
    new Promise<void>((resolve, reject) => {
      if (log.includes(text)) return resolve();
      const timer = setTimeout(() => reject(new Error(`no "${text}" in:\n${log}`)), 10_000);
      waiters.push({ text, resolve: () => (clearTimeout(timer), resolve()) });
    });
  const clients: Transporter[] = [];
  const send = async (a: TestAccount, id: string) => {
    const t = nodemailer.createTransport({
      host: "127.0.0.1",
      port: ports.smtp,
      ignoreTLS: true,
      auth: { user: a.email, pass: PASSWORD },
      connectionTimeout: 20_000,
      greetingTimeout: 20_000,
      socketTimeout: 30_000,
    });
    clients.push(t);
    try {
      const info = await t.sendMail({
        envelope: { from: a.email, to: ["r@example.net"] },
        raw: Buffer.from(rawMessage(a.email, "r@example.net", `id:${id}\r\n`)),
      });
      return info.response;
    } catch (err) {
      const e = err as { response?: string; code?: string };
      return e.response ?? `(${e.code ?? "error"})`;
    } finally {
      t.close();
    }
  };
  let status: Deno.CommandStatus | undefined;
  try {
    await waitFor("SMTP on");
    assert.match(await send(accounts[0], "first"), /^250 /);

    // A config with a mistake: logged, the old one stays.
    await Deno.writeTextFile(
      `${dir}/accounts.ts`,
      configText(sandbox, accounts, hash, "\n  colour: 1,"),
    );
    child.kill("SIGHUP");
    await waitFor("reload failed");
    assert.match(log, /colour: unknown field/);
    assert.match(await send(accounts[1], "refused"), /^535 /);

    // Fixed: the second account arrives without a restart.
    await Deno.writeTextFile(`${dir}/accounts.ts`, configText(sandbox, accounts, hash));
    child.kill("SIGHUP");
    await waitFor("configuration reloaded");
    assert.match(await send(accounts[1], "second"), /^250 /);

    // 200 messages in flight, then SIGTERM.
    sandbox.smtpFaults.replyDelayMs = 30;
    const idle = await RawSmtp.connect(ports.smtp);
    const results = Array.from({ length: 200 }, (_, i) => send(accounts[i % 2], `m${i}`));
    assert.ok(await until(() => sandbox.received.length >= 20, 20_000), "20 delivered in flight");
    child.kill("SIGTERM");
    const idleReply = await idle.client.reply();
    assert.equal(idleReply.last, "421 4.3.2 Service shutting down, try again later");
    await idle.client.close();
    const replies = await Promise.all(results);
    status = await child.status;

    const delivered = new Map<string, number>();
    for (const m of sandbox.received) {
      const id = new TextDecoder().decode(m.data).match(/id:(\S+)/)![1];
      delivered.set(id, (delivered.get(id) ?? 0) + 1);
    }
    let acknowledged = 0;
    replies.forEach((reply, i) => {
      const count = delivered.get(`m${i}`) ?? 0;
      if (reply.startsWith("250 ")) {
        acknowledged++;
        assert.equal(count, 1, `m${i} acknowledged but delivered ${count} times`);
      } else {
        assert.equal(count, 0, `m${i} got "${reply}" but was delivered`);
        assert.ok(/^4\d\d /.test(reply) || /^\(E/.test(reply), `m${i}: ${reply}`);
      }
    });
    assert.ok(acknowledged >= 20, `${acknowledged} acknowledged`);
    console.log(
      `SIGTERM with 200 in flight: ${acknowledged} acknowledged and delivered once, ${
        200 - acknowledged
      } refused or not connected, none lost`,
    );
  } finally {
    for (const c of clients) c.close();
    if (!status) {
      child.kill("SIGKILL");
      status = await child.status;
    }
    await drain;
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(status.code, 0, log.slice(-2000));
  assert.match(log, /draining/);
});
