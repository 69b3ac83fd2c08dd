/**
 * SIGTERM under load, per message: a real relay process, persistent pipelining clients
 * sending tagged messages back to back, SIGTERM mid-load; then every message a client
 * sent the body of is matched against what the sandbox provider stored. A 2xx means
 * delivered exactly once, anything else (or no reply) means not delivered at all.
 */
import assert from "node:assert/strict";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import { makeAccounts, PASSWORD, type TestAccount, until } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { configText, RelayProcess } from "./relay_process.ts";

/** What one client saw for one message whose body it sent. */
interface Sent {
  tag: string;
  /** The reply to the end of the body, or `closed`/`timeout`. */
  reply: string;
}

const decoder = new TextDecoder();

/**
 * One persistent session sending messages back to back until the relay refuses or closes,
 * pipelining as RFC 2920 allows: the end of one message, then MAIL, RCPT and DATA of the
 * next, in one write. Records every message whose body went out; resolves to the reply
 * that ended the session (or `closed`/`timeout`).
 */
async function loadClient(
  port: number,
  account: TestAccount,
  prefix: string,
  sent: Sent[],
): Promise<string> {
  const client = await RawSmtp.open(port);
  const envelope = `MAIL FROM:<${account.email}>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n`;
  let ending = "";
  const reply = async (code: number) => {
    const r = await client.next(30_000);
    if (typeof r !== "string" && r.code === code) return true;
    ending = typeof r === "string" ? r : r.last;
    return false;
  };
  try {
    if (!await reply(220)) return ending;
    if (!await client.write("EHLO load.test\r\n") || !await reply(250)) return ending;
    const auth = `AUTH PLAIN ${plain(account.email, PASSWORD)}\r\n`;
    if (!await client.write(auth) || !await reply(235)) return ending;
    if (!await client.write(envelope)) return "cannot write";
    for (let i = 0;; i++) {
      if (!await reply(250) || !await reply(250) || !await reply(354)) return ending;
      const tag = `${prefix}-${i}`;
      const message: Sent = { tag, reply: "closed" };
      sent.push(message);
      const body = `From: <${account.email}>\r\nTo: <r@example.net>\r\nSubject: ${tag}\r\n\r\n` +
        `tag:${tag}\r\n.\r\n`;
      if (!await client.write(body + envelope)) return "cannot write";
      const r = await client.next(30_000);
      message.reply = typeof r === "string" ? r : r.last;
      if (typeof r === "string" || r.code !== 250) return message.reply;
    }
  } finally {
    await client.close();
  }
}

/** Tag → how many times the sandbox stored it. */
function deliveries(sandbox: Sandbox): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of sandbox.received) {
    const tag = decoder.decode(m.data).match(/tag:(\S+)/)?.[1] ?? "?";
    counts.set(tag, (counts.get(tag) ?? 0) + 1);
  }
  return counts;
}

Deno.test("SIGTERM under load: a 2xx means delivered once, any other reply means not delivered", async () => {
  // Each round is a new process with a new state directory: the refresh token must stay.
  const sandbox = await startSandbox({ rotateRefreshTokens: false });
  const accounts = makeAccounts(2);
  for (const a of accounts) sandbox.addAccount(a);
  const ROUNDS = 3;
  const CLIENTS = 24;
  const problems: string[] = [];
  const summary: string[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      sandbox.received.length = 0;
      // A provider that takes a few ms keeps messages in flight when SIGTERM arrives.
      sandbox.smtpFaults.replyDelayMs = 5;
      const relay = await RelayProcess.start(
        sandbox,
        await configText(sandbox, accounts, {
          top: "shutdownTimeoutSeconds: 20,",
          accountExtra: "maxConnections: 30,",
        }),
      );
      try {
        const sent: Sent[] = [];
        const clients = Array.from(
          { length: CLIENTS },
          (_, i) => loadClient(relay.ports.smtp, accounts[i % 2], `r${round}c${i}`, sent),
        );
        assert.ok(
          await until(() => sandbox.received.length >= 150, 20_000),
          `round ${round}: load under way (${sandbox.received.length} delivered)`,
        );
        relay.kill("SIGTERM");
        const endings = await Promise.all(clients);
        const status = await relay.exited();
        assert.equal(status.code, 0, relay.log.slice(-2000));

        const counts = deliveries(sandbox);
        let acknowledged = 0;
        let refused = 0;
        for (const m of sent) {
          const n = counts.get(m.tag) ?? 0;
          counts.delete(m.tag);
          if (m.reply.startsWith("2")) {
            acknowledged++;
            if (n !== 1) problems.push(`${m.tag}: "${m.reply}" but delivered ${n} times`);
          } else {
            refused++;
            if (n !== 0) problems.push(`${m.tag}: "${m.reply}" but delivered ${n} times`);
          }
        }
        for (const [tag, n] of counts) problems.push(`${tag}: delivered ${n} times, never sent`);
        // Every session was ended by the drain, with a reply that says so.
        for (const e of endings) {
          if (e !== "421 4.3.2 Service shutting down, try again later") {
            problems.push(`a session ended with "${e}"`);
          }
        }
        summary.push(`round ${round}: ${acknowledged} acknowledged, ${refused} refused`);
      } finally {
        await relay.close();
      }
    }
  } finally {
    await sandbox.close();
  }
  console.log(summary.join("; "));
  assert.deepEqual(problems, [], summary.join("; "));
});

/** A logged-in session on `port` with DATA accepted (354), ready for the body. */
async function atData(port: number, account: TestAccount): Promise<RawSmtp> {
  const { client } = await RawSmtp.connect(port);
  assert.equal((await client.command("EHLO c")).code, 250);
  assert.equal((await client.command(`AUTH PLAIN ${plain(account.email, PASSWORD)}`)).code, 235);
  assert.equal((await client.command(`MAIL FROM:<${account.email}>`)).code, 250);
  assert.equal((await client.command("RCPT TO:<r@example.net>")).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  return client;
}

Deno.test("SIGTERM: at the drain deadline each message still in flight gets 421 4.3.2 and a log line saying what is known", async () => {
  // Once the provider has stored a message, every reply of it takes 30 s.
  const onMessage = () => void (sandbox.smtpFaults.replyDelayMs = 30_000);
  const sandbox = await startSandbox({ onMessage });
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const relay = await RelayProcess.start(
    sandbox,
    await configText(sandbox, [account], {
      top: "shutdownTimeoutSeconds: 1,",
      accountExtra: "maxConnections: 3,",
    }),
  );
  const clients: RawSmtp[] = [];
  try {
    const port = relay.ports.smtp;
    // 1: the provider has the whole message and has not answered.
    const unknown = await atData(port, account);
    clients.push(unknown);
    await unknown.write("Subject: unknown\r\n\r\ntag:unknown\r\n.\r\n");
    assert.ok(await until(() => sandbox.received.length === 1, 5_000));
    // 2: on a second connection, the provider stalls before the message (at MAIL FROM).
    const stalled = await atData(port, account);
    clients.push(stalled);
    await stalled.write("Subject: stalled\r\n\r\ntag:stalled\r\n.\r\n");
    assert.ok(await until(() => sandbox.stats.smtp.authSuccesses === 2, 5_000));
    // 3: still arriving: DATA accepted, half the body sent.
    const arriving = await atData(port, account);
    clients.push(arriving);
    await arriving.write("Subject: arriving\r\n\r\ntag:arriving\r\n");

    relay.kill("SIGTERM");
    for (const client of clients) {
      const r = await client.next(5_000);
      assert.equal(
        typeof r === "string" ? r : r.last,
        "421 4.3.2 Service shutting down, try again later",
      );
    }
    assert.equal((await relay.exited()).code, 0);
    assert.equal(sandbox.received.length, 1);

    // JSON lines render each value quoted: without the quotes.
    const messages = relay.lines().map((l) => String(l.message).replaceAll('"', ""));
    const cut = messages.filter((m) => /^shutdown |^shutdown deadline: /.test(m));
    assert.equal(cut.length, 3, messages.join("\n"));
    const one = (pattern: RegExp) =>
      assert.equal(cut.filter((m) => pattern.test(m)).length, 1, `${pattern}\n${cut.join("\n")}`);
    one(/^shutdown user0@example\.com \d+ bytes .*: 421 4\.3\.2 .*; outcome unknown: /);
    one(/^shutdown user0@example\.com \d+ bytes .*: 421 4\.3\.2 .*; not delivered: /);
    one(
      /^shutdown deadline: message from .*user0@example\.com.* cut while arriving .*not delivered/,
    );
  } finally {
    for (const client of clients) await client.close();
    await relay.close();
    await sandbox.close();
  }
});
