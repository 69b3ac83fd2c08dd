/**
 * Connection permits against the real sandbox (STARTTLS + XOAUTH2): the permits cap an
 * account's connections whatever nodemailer's `maxConnections`, across pools sharing
 * them, and each permit goes back exactly once: when its socket closes, when the connect
 * fails, when the pool closes while waiting.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import {
  type UpstreamObserver,
  UpstreamPool,
  type UpstreamResult,
  type UpstreamTarget,
} from "../../src/upstream/pool.ts";
import { type ConnectionPermits, LocalPermits } from "../../src/upstream/permits.ts";
import { MessageBody } from "../../src/smtp/body.ts";
import { makeAccounts, rawMessage, until } from "../harness.ts";

const USER = "user0@example.com";

const message = {
  from: USER,
  to: ["r@example.net"],
  body: MessageBody.of(rawMessage(USER, "r@example.net", "x\r\n")),
};

function target(port: number, ca: string | undefined, extra: Partial<UpstreamTarget> = {}) {
  return {
    user: USER,
    host: "localhost",
    port,
    tls: "starttls",
    ca,
    ehloName: "relay.test",
    maxConnections: 5,
    messagesPerConnection: 100,
    connectTimeoutMs: 5_000,
    socketTimeoutMs: 5_000,
    idleTimeoutMs: 30_000,
    ...extra,
  } satisfies UpstreamTarget;
}

/** Counts open sockets (all pools it is given to) and remembers the most at once. */
function socketCounter(): UpstreamObserver & { open: number; peak: number } {
  const c = {
    open: 0,
    peak: 0,
    connectionOpened() {
      c.open++;
      c.peak = Math.max(c.peak, c.open);
    },
    connectionClosed() {
      c.open--;
    },
  };
  return c;
}

/** Samples the sandbox's open connections every few ms; `stop()` gives the most seen. */
function sampleServer(sandbox: Sandbox): { stop(): number } {
  let peak = 0;
  const timer = setInterval(() => peak = Math.max(peak, sandbox.smtp.openConnections), 2);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, sandbox.smtp.openConnections);
    },
  };
}

/** A sandbox with USER registered and a token provider for it. */
async function sandboxWithToken() {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount({ ...account, email: USER });
  const grant = await fetch(sandbox.tokenUrl, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: account.refreshToken,
      client_id: account.clientId,
      client_secret: account.clientSecret,
    }),
  }).then((r) => r.json());
  const tokens = () =>
    Promise.resolve({ token: grant.access_token, useUntil: Date.now() + 60_000 });
  return { sandbox, tokens };
}

function kinds(results: UpstreamResult[]): string[] {
  return results.map((r) => r.kind === "unreachable" ? `unreachable: ${r.detail}` : r.kind);
}

Deno.test("permits cap the connections: 12 messages at once with cap 2, maxConnections 5", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  // The provider itself refuses a third session (432 4.3.2): any breach would show.
  sandbox.smtpFaults.maxConnectionsPerUser = 2;
  sandbox.smtpFaults.replyDelayMs = 10;
  const permits = new LocalPermits(2);
  const sockets = socketCounter();
  // Idle connections would close after 30 s (idle and socket timeout alike).
  const pool = new UpstreamPool(
    target(sandbox.smtpPort, sandbox.ca, { socketTimeoutMs: 30_000 }),
    tokens,
    sockets,
    permits,
  );
  const server = sampleServer(sandbox);
  try {
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 12 }, () => pool.send(message)));
    assert.deepEqual(kinds(results), Array(12).fill("sent"));
    assert.equal(sandbox.received.length, 12);
    assert.equal(sandbox.stats.smtp.authFailures, 0);
    assert.ok(sockets.peak <= 2, `${sockets.peak} sockets at once`);
    assert.ok(server.stop() <= 2, "the sandbox saw more than 2 connections at once");
    // Messages taken by connections that waited for a permit moved on once a connection
    // of the pool was idle: not held until an idle connection times out after 30 s.
    assert.ok(Date.now() - started < 8_000, `took ${Date.now() - started} ms`);
    assert.ok(permits.held(USER) <= 2);
    assert.equal(permits.waiting(USER), 0);
    assert.equal(pool.permitWaits, 0);
  } finally {
    server.stop();
    pool.close();
    assert.ok(await until(() => permits.held(USER) === 0), "permits still held after close");
    await sandbox.close();
  }
});

Deno.test("a permit goes back when the provider drops the connection", async (t) => {
  const { sandbox, tokens } = await sandboxWithToken();
  const permits = new LocalPermits(2);
  const pool = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  try {
    for (const silently of [false, true]) {
      await t.step(silently ? "closed without a reply" : "closed with 421 4.4.2", async () => {
        assert.equal((await pool.send(message)).kind, "sent");
        assert.equal(permits.held(USER), 1, "the idle connection holds its permit");
        sandbox.smtp.dropConnections(silently);
        assert.ok(await until(() => permits.held(USER) === 0), "permit still held");
        assert.equal(pool.openConnections, 0);
      });
    }
    // And the next message gets a new one.
    assert.equal((await pool.send(message)).kind, "sent");
    assert.equal(permits.held(USER), 1);
  } finally {
    pool.close();
    assert.ok(await until(() => permits.held(USER) === 0));
    await sandbox.close();
  }
});

Deno.test("a permit goes back when the connect fails: refused, and TLS not trusted", async (t) => {
  const { sandbox, tokens } = await sandboxWithToken();
  try {
    await t.step("connection refused", async () => {
      const closed = net.createServer();
      await new Promise<void>((ok) => closed.listen(0, "127.0.0.1", ok));
      const port = (closed.address() as net.AddressInfo).port;
      await new Promise<void>((ok) => closed.close(() => ok()));
      const permits = new LocalPermits(1);
      const pool = new UpstreamPool(target(port, sandbox.ca), tokens, undefined, permits);
      try {
        const results = await Promise.all([pool.send(message), pool.send(message)]);
        for (const r of results) assert.equal(r.kind, "unreachable");
        assert.ok(await until(() => permits.held(USER) === 0), "permit still held");
        assert.equal(permits.waiting(USER), 0);
      } finally {
        pool.close();
      }
    });
    await t.step("certificate from an untrusted CA", async () => {
      const permits = new LocalPermits(1);
      const pool = new UpstreamPool(
        target(sandbox.smtpPort, undefined),
        tokens,
        undefined,
        permits,
      );
      try {
        const result = await pool.send(message);
        assert.equal(result.kind, "unreachable");
        assert.ok(await until(() => permits.held(USER) === 0), "permit still held");
        assert.equal(pool.openConnections, 0);
      } finally {
        pool.close();
      }
    });
  } finally {
    await sandbox.close();
  }
});

Deno.test("two pools of one account sharing the permits never exceed the cap together", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  sandbox.smtpFaults.maxConnectionsPerUser = 2;
  sandbox.smtpFaults.replyDelayMs = 10;
  const permits = new LocalPermits(2);
  const sockets = socketCounter();
  // Idle connections keep their permit until they close: a short idle timeout here.
  const t = target(sandbox.smtpPort, sandbox.ca, { maxConnections: 2, idleTimeoutMs: 200 });
  const a = new UpstreamPool(t, tokens, sockets, permits);
  const b = new UpstreamPool(t, tokens, sockets, permits);
  const server = sampleServer(sandbox);
  try {
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).send(message)),
    );
    assert.deepEqual(kinds(results), Array(8).fill("sent"));
    assert.equal(sandbox.received.length, 8);
    assert.equal(sandbox.stats.smtp.authFailures, 0);
    assert.ok(sockets.peak <= 2, `${sockets.peak} sockets at once`);
    assert.ok(server.stop() <= 2, "the sandbox saw more than 2 connections at once");
  } finally {
    server.stop();
    a.close();
    b.close();
    assert.ok(await until(() => permits.held(USER) === 0), "permits still held after close");
    await sandbox.close();
  }
});

Deno.test("a pool that had to wait for the shared cap keeps to its connections instead of reconnecting per message", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  sandbox.smtpFaults.maxConnectionsPerUser = 3;
  const permits = new LocalPermits(3);
  // Idle connections stay pooled (and keep their permits) for the whole test.
  const t = target(sandbox.smtpPort, sandbox.ca, { maxConnections: 3, idleTimeoutMs: 30_000 });
  const a = new UpstreamPool(t, tokens, undefined, permits);
  const b = new UpstreamPool(t, tokens, undefined, permits);
  const server = sampleServer(sandbox);
  try {
    // Both busy at once, four rounds: together they want 6 connections, the cap is 3.
    for (let round = 0; round < 4; round++) {
      const results = await Promise.all(
        Array.from({ length: 24 }, (_, i) => (i % 2 ? a : b).send(message)),
      );
      assert.deepEqual(kinds(results), Array(24).fill("sent"));
    }
    assert.equal(sandbox.received.length, 96);
    assert.ok(server.stop() <= 3, "the sandbox saw more than 3 connections at once");
    const opened = sandbox.stats.smtp.connections;
    assert.ok(opened <= 8, `${opened} connections opened for 96 messages`);
    // A pool that waited keeps to the connections it had (fewer than its 3).
    assert.ok(
      a.connectionBound < 3 || b.connectionBound < 3,
      `${a.connectionBound} ${b.connectionBound}`,
    );
  } finally {
    server.stop();
    a.close();
    b.close();
    assert.ok(await until(() => permits.held(USER) === 0), "permits still held after close");
    await sandbox.close();
  }
});

Deno.test("closing a pool with messages waiting for a permit leaves nothing held or waiting", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  const permits = new LocalPermits(1);
  const holder = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  const waiter = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  try {
    // `holder` keeps the only permit with its idle connection.
    assert.equal((await holder.send(message)).kind, "sent");
    const waiting = [waiter.send(message), waiter.send(message)];
    assert.ok(await until(() => permits.waiting(USER) === 2), "the messages did not wait");
    assert.equal(waiter.permitWaits, 2);
    waiter.close();
    const results = await Promise.all(waiting);
    for (const r of results) {
      assert.equal(r.kind, "unreachable");
      if (r.kind === "unreachable") assert.match(r.detail, /pool closed/);
    }
    assert.equal(permits.waiting(USER), 0);
    assert.equal(waiter.permitWaits, 0);
    assert.equal(permits.held(USER), 1, "only the other pool's permit is held");
    assert.equal(sandbox.received.length, 1);
    // A closed pool sends nothing and takes no permit.
    assert.equal((await waiter.send(message)).kind, "unreachable");
    assert.equal(permits.held(USER), 1);
    assert.equal(permits.waiting(USER), 0);
  } finally {
    holder.close();
    waiter.close();
    assert.ok(await until(() => permits.held(USER) === 0), "permits still held after close");
    await sandbox.close();
  }
});

Deno.test("closing a pool whose own connection is busy while others wait", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  sandbox.smtpFaults.replyDelayMs = 100;
  const permits = new LocalPermits(1);
  const pool = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  try {
    const sends = [pool.send(message), pool.send(message), pool.send(message)];
    assert.ok(await until(() => permits.waiting(USER) > 0), "nothing waited");
    pool.close();
    const results = await Promise.all(sends);
    // The message on the open connection finishes (nodemailer lets a delivery end);
    // the ones waiting for a permit fail at once.
    assert.equal(results.filter((r) => r.kind === "sent").length, 1, kinds(results).join(", "));
    assert.equal(results.filter((r) => r.kind === "unreachable").length, 2);
    assert.ok(await until(() => permits.held(USER) === 0), "permit still held after close");
    assert.equal(permits.waiting(USER), 0);
  } finally {
    pool.close();
    await sandbox.close();
  }
});

Deno.test("a message that waits too long for a permit fails, to be retried", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  const permits = new LocalPermits(1);
  const holder = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  const pool = new UpstreamPool(
    target(sandbox.smtpPort, sandbox.ca, { permitWaitMs: 200 }),
    tokens,
    undefined,
    permits,
  );
  try {
    assert.equal((await holder.send(message)).kind, "sent");
    const result = await pool.send(message);
    assert.equal(result.kind, "unreachable");
    if (result.kind === "unreachable") {
      assert.match(result.detail, /no upstream connection free within 0\.2 s/);
    }
    assert.equal(permits.waiting(USER), 0);
    assert.equal(pool.permitWaits, 0);
    assert.equal(sandbox.received.length, 1);
  } finally {
    holder.close();
    pool.close();
    assert.ok(await until(() => permits.held(USER) === 0));
    await sandbox.close();
  }
});

Deno.test("a long permit wait does not eat the new connection's connect timeout", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  const permits = new LocalPermits(1);
  // Holds the permit for about 600 ms (its idle timeout), twice the other's connect timeout.
  const holder = new UpstreamPool(
    target(sandbox.smtpPort, sandbox.ca, { idleTimeoutMs: 600 }),
    tokens,
    undefined,
    permits,
  );
  const pool = new UpstreamPool(
    target(sandbox.smtpPort, sandbox.ca, { connectTimeoutMs: 300 }),
    tokens,
    undefined,
    permits,
  );
  try {
    assert.equal((await holder.send(message)).kind, "sent");
    const started = Date.now();
    const result = await pool.send(message);
    assert.equal(result.kind, "sent", kinds([result])[0]);
    assert.ok(Date.now() - started >= 300, "it did not wait for the permit");
    assert.equal(sandbox.received.length, 2);
  } finally {
    holder.close();
    pool.close();
    assert.ok(await until(() => permits.held(USER) === 0));
    await sandbox.close();
  }
});

Deno.test("a revoked permit closes its connection; it is released once", async () => {
  const { sandbox, tokens } = await sandboxWithToken();
  // A backend that lost a lease: it revokes, and counts the releases it gets.
  const revoke = new AbortController();
  let acquired = 0;
  let released = 0;
  const permits: ConnectionPermits = {
    acquire: () => {
      acquired++;
      return Promise.resolve({ revoked: revoke.signal, release: () => released++ });
    },
  };
  const pool = new UpstreamPool(target(sandbox.smtpPort, sandbox.ca), tokens, undefined, permits);
  try {
    assert.equal((await pool.send(message)).kind, "sent");
    assert.equal(pool.openConnections, 1);
    revoke.abort();
    assert.ok(await until(() => pool.openConnections === 0), "the connection stayed open");
    assert.ok(await until(() => sandbox.smtp.openConnections === 0), "the provider saw it open");
    assert.deepEqual({ acquired, released }, { acquired: 1, released: 1 });
  } finally {
    pool.close();
    await sandbox.close();
  }
});
