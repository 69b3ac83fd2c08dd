/** The upstream pool refuses to send without TLS or to a server it cannot verify. */
import assert from "node:assert/strict";
import { SMTPServer } from "smtp-server";
import type { AddressInfo } from "node:net";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { UpstreamPool, type UpstreamTarget } from "../../src/upstream/pool.ts";
import { MessageBody } from "../../src/smtp/body.ts";
import { makeAccounts, rawMessage } from "../harness.ts";

function target(port: number, ca?: string): UpstreamTarget {
  return {
    user: "user0@example.com",
    host: "localhost",
    port,
    tls: "starttls",
    ca,
    ehloName: "relay.test",
    maxConnections: 1,
    messagesPerConnection: 100,
    connectTimeoutMs: 5_000,
    socketTimeoutMs: 5_000,
    idleTimeoutMs: 5_000,
  };
}

const message = {
  from: "user0@example.com",
  to: ["r@example.net"],
  body: MessageBody.of(rawMessage("user0@example.com", "r@example.net", "x\r\n")),
};

Deno.test("a server without STARTTLS is refused: nothing sent in plaintext", async () => {
  const seen: string[] = [];
  const plain = new SMTPServer({
    name: "plain.test",
    disableReverseLookup: true,
    disabledCommands: ["STARTTLS"],
    authOptional: true,
    allowInsecureAuth: true,
    logger: false,
    onAuth(_auth, _session, cb) {
      seen.push("AUTH");
      cb(null, { user: "x" });
    },
    onMailFrom(_a, _s, cb) {
      seen.push("MAIL");
      cb();
    },
  });
  await new Promise<void>((ok) => plain.listen(0, "127.0.0.1", ok));
  const port = (plain.server.address() as AddressInfo).port;
  let tokenCalls = 0;
  const pool = new UpstreamPool(target(port), () => {
    tokenCalls++;
    return Promise.resolve({ token: "never-sent", useUntil: Date.now() + 60_000 });
  });
  try {
    const result = await pool.send(message);
    assert.equal(result.kind, "unreachable");
    assert.deepEqual(seen, []);
    assert.equal(tokenCalls, 0);
  } finally {
    pool.close();
    await new Promise<void>((ok) => plain.close(() => ok()));
  }
});

Deno.test("a certificate from an untrusted CA is refused", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  let tokenCalls = 0;
  // No `ca`: the sandbox CA is not in the system store.
  const pool = new UpstreamPool(target(sandbox.smtpPort), () => {
    tokenCalls++;
    return Promise.resolve({ token: "never-sent", useUntil: Date.now() + 60_000 });
  });
  try {
    const result = await pool.send(message);
    assert.equal(result.kind, "unreachable");
    if (result.kind === "unreachable") assert.match(result.detail, /certificate|TLS|issuer/i);
    assert.equal(tokenCalls, 0);
    assert.equal(sandbox.stats.smtp.authSuccesses + sandbox.stats.smtp.authFailures, 0);
    assert.equal(sandbox.received.length, 0);
  } finally {
    pool.close();
    await sandbox.close();
  }
});

/** A sandbox with user0@example.com and a pool for it that trusts the sandbox CA. */
async function sandboxPool() {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount({ ...account, email: "user0@example.com" });
  const grant = await fetch(sandbox.tokenUrl, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: account.refreshToken,
      client_id: account.clientId,
      client_secret: account.clientSecret,
    }),
  }).then((r) => r.json());
  const pool = new UpstreamPool(
    target(sandbox.smtpPort, sandbox.ca),
    () => Promise.resolve({ token: grant.access_token, useUntil: Date.now() + 60_000 }),
  );
  return { sandbox, pool };
}

Deno.test("with the sandbox CA the same pool delivers over STARTTLS + XOAUTH2", async () => {
  const { sandbox, pool } = await sandboxPool();
  try {
    const result = await pool.send(message);
    assert.equal(result.kind, "sent");
    assert.equal(sandbox.received.length, 1);
    assert.equal(sandbox.received[0].user, "user0@example.com");
  } finally {
    pool.close();
    await sandbox.close();
  }
});

Deno.test("a pooled connection the provider closed is replaced: the next message is delivered", async (t) => {
  const { sandbox, pool } = await sandboxPool();
  try {
    assert.equal((await pool.send(message)).kind, "sent");
    for (const silently of [false, true]) {
      await t.step(silently ? "closed without a reply" : "closed with 421 4.4.2", async () => {
        const before = sandbox.received.length;
        const connections = sandbox.stats.smtp.connections;
        sandbox.smtp.dropConnections(silently);
        const result = await pool.send(message);
        assert.equal(result.kind, "sent");
        assert.equal(sandbox.received.length, before + 1);
        assert.equal(sandbox.stats.smtp.connections, connections + 1);
      });
    }
  } finally {
    pool.close();
    await sandbox.close();
  }
});
