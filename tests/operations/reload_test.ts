/**
 * Reload: what is not applied stays not applied (and reported) across SIGHUPs, `smtp.name`
 * is restart-only everywhere, and quota use by sessions that began before a reload counts
 * on the same counters as the new config's.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "../../src/sandbox/tls.ts";
import {
  type Harness,
  PASSWORD,
  sandboxConfig,
  sendMessage,
  startHarness,
  until,
} from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

const FIXTURES = new URL("../fixtures/", import.meta.url);

const send = sendMessage;

/** The config object of `h` with `extra` merged at the top level. */
async function configWith(h: Harness, extra: Record<string, unknown>) {
  return await sandboxConfig(h.sandbox, h.accounts, h.stateDir, extra);
}

/** True when a STARTTLS handshake that trusts only `ca` succeeds. */
async function handshakeTrusting(port: number, ca: string): Promise<boolean> {
  const { client } = await RawSmtp.connect(port);
  try {
    await client.command("EHLO c");
    assert.equal((await client.command("STARTTLS")).code, 220);
    await client.startTls([ca]);
    return (await client.command("EHLO c")).code === 250;
  } catch {
    return false;
  } finally {
    await client.close();
  }
}

Deno.test("reload: a change that needs a restart stays reported and unapplied at every later reload", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-reload-tls-" });
  // Certificate A (in force): signed by the fixtures' CA; B: the sandbox certificate.
  const a = { certFile: `${dir}/a.pem`, keyFile: `${dir}/a.key` };
  const b = { certFile: `${dir}/b.pem`, keyFile: `${dir}/b.key` };
  await Deno.copyFile(new URL("reload_cert.pem", FIXTURES), a.certFile);
  await Deno.copyFile(new URL("reload_key.pem", FIXTURES), a.keyFile);
  await Deno.writeTextFile(b.certFile, SANDBOX_CERT_PEM);
  await Deno.writeTextFile(b.keyFile, SANDBOX_KEY_PEM);
  const caA = await Deno.readTextFile(new URL("reload_ca.pem", FIXTURES));
  const h = await startHarness({ config: { tls: a, limits: { maxClients: 50 } } });
  try {
    const next = parseConfig(await configWith(h, { tls: b, limits: { maxClients: 60 } }));
    const expected = ["limits", "tls file names (the files themselves are re-read)"];
    assert.deepEqual(await h.relay.reload(next), expected);
    assert.deepEqual(await h.relay.reload(next), expected); // still not applied
    assert.deepEqual(await h.relay.reload(next), expected);
    // The certificate in force is still A's, from A's file names.
    assert.equal(await handshakeTrusting(h.relay.smtp.port, caA), true);
    // Back to the running values: nothing left to report.
    const same = parseConfig(await configWith(h, { tls: a, limits: { maxClients: 50 } }));
    assert.deepEqual(await h.relay.reload(same), []);
  } finally {
    await h.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reload: smtp.name needs a restart and keeps its value everywhere (upstream EHLO too)", async () => {
  const h = await startHarness({ config: { smtp: { port: 0, name: "relay-a.test" } } });
  try {
    const next = parseConfig(
      await configWith(h, { smtp: { port: 0, name: "relay-b.test" } }),
    );
    const notes = await h.relay.reload(next);
    assert.deepEqual(notes, [
      "smtp.name (banner, EHLO name upstream and in non-delivery reports)",
    ]);
    const { client, greeting } = await RawSmtp.connect(h.relay.smtp.port);
    assert.match(greeting!.last, /^220 relay-a\.test /);
    await client.close();
    assert.match(await send(h), /^250 /);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(h.sandbox.received[0].ehlo, "relay-a.test");
  } finally {
    await h.close();
  }
});

Deno.test("reload: quota use by a session that began before the reload is counted and saved", async () => {
  const quota = { messagesPerDay: 0, recipientsPerDay: 0, messagesPerMinute: 2 };
  const h = await startHarness({ accountExtras: () => ({ quota }) });
  try {
    const a = h.accounts[0];
    const { client: s } = await RawSmtp.connect(h.relay.smtp.port);
    await s.command("EHLO c");
    assert.equal((await s.command(`AUTH PLAIN ${plain(a.email, PASSWORD)}`)).code, 235);
    assert.equal((await s.command(`MAIL FROM:<${a.email}>`)).code, 250);
    assert.equal((await s.command("RCPT TO:<r@example.net>")).code, 250);

    // The account changes (an alias): it gets a new runtime while the session is open.
    const changed = await sandboxConfig(h.sandbox, h.accounts, h.stateDir, {}, () => ({
      quota,
      aliases: ["alias0@example.com"],
    }));
    assert.deepEqual(await h.relay.reload(parseConfig(changed)), []);

    assert.equal((await s.command("DATA")).code, 354);
    await s.send("Subject: begun before the reload\r\n\r\nbody\r\n.");
    assert.match((await s.reply()).last, /^250 2\.0\.0 OK/);
    await s.close();

    // One message of the two per minute is spent: one more fits, the next does not.
    assert.match(await send(h), /^250 /);
    assert.match(
      await send(h),
      /^451 4\.7\.0 Quota of 2 messages per minute for user0@example\.com reached/,
    );
    assert.equal(h.sandbox.received.length, 2);
    const usage = (await h.relay.accounts())[0].quota;
    assert.equal(usage.lastMinute, 2);
  } finally {
    await h.close({ keepState: true });
  }
  // Saved at stop: both messages are in the state directory.
  const saved = JSON.parse(
    await Deno.readTextFile(`${h.stateDir}/quota/${encodeURIComponent("user0@example.com")}.json`),
  );
  assert.equal(saved.recent.length, 2);
  await Deno.remove(h.stateDir, { recursive: true });
});

Deno.test("reload: a changed account's old and new connections share its cap (no 432 from the provider)", async () => {
  const h = await startHarness({ accountExtras: () => ({ maxConnections: 1 }) });
  try {
    h.sandbox.smtpFaults.maxConnectionsPerUser = 1; // the provider's cap, as Microsoft's 3
    const a = h.accounts[0];
    const { client: s } = await RawSmtp.connect(h.relay.smtp.port);
    await s.command("EHLO c");
    await s.command(`AUTH PLAIN ${plain(a.email, PASSWORD)}`);
    await s.command(`MAIL FROM:<${a.email}>`);
    await s.command("RCPT TO:<r@example.net>");
    assert.equal((await s.command("DATA")).code, 354);
    h.sandbox.smtpFaults.replyDelayMs = 400; // the provider is slow to take it
    await s.send("Subject: in flight\r\n\r\nbody\r\n.");
    assert.ok(await until(() => h.sandbox.smtp.openConnections === 1));

    const changed = await sandboxConfig(h.sandbox, h.accounts, h.stateDir, {}, () => ({
      maxConnections: 1,
      aliases: ["alias0@example.com"],
    }));
    assert.deepEqual(await h.relay.reload(parseConfig(changed)), []);
    // The new runtime waits for the old one's connection instead of opening a second.
    const second = send(h);
    assert.match((await s.reply()).last, /^250 2\.0\.0 OK/);
    h.sandbox.smtpFaults.replyDelayMs = 0;
    assert.match(await second, /^250 /);
    await s.close();
    assert.equal(h.sandbox.received.length, 2);
    assert.equal(h.sandbox.stats.smtp.authFailures, 0);
  } finally {
    await h.close();
  }
});
