/** Refresh-token rotation: persisted at once, atomically, 0600, and used after a restart. */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { startRelay } from "../../src/app.ts";
import { parseConfig } from "../../src/config/load.ts";
import { fingerprint } from "../../src/tokens/manager.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import { rawMessage, sandboxConfig, startHarness } from "../harness.ts";

Deno.test("a rotated refresh token is persisted and used after a restart", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const send = async () => {
      await h.client().sendMail({
        envelope: { from: a.email, to: ["r@example.net"] },
        raw: Buffer.from(rawMessage(a.email, "r@example.net", "x\r\n")),
      });
    };
    await send();
    const rotated = h.sandbox.tokens.currentRefreshToken(a.email);
    assert.notEqual(rotated, a.refreshToken, "the sandbox rotates refresh tokens");

    const file = join(h.stateDir, "tokens", `${encodeURIComponent(a.email)}.json`);
    const stat = await Deno.stat(file);
    assert.equal(stat.mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(join(h.stateDir, "tokens"))).mode! & 0o777, 0o700);
    const stored = JSON.parse(await Deno.readTextFile(file));
    assert.equal(stored.refreshToken, rotated);

    // Restart the relay with the same config: the config's token is dead by now.
    await h.relay.close();
    h.relay = await startRelay(h.config);
    await send();
    assert.equal(h.sandbox.received.length, 2);
    assert.equal(h.sandbox.stats.token.refreshes, 2);
    const newest = h.sandbox.tokens.currentRefreshToken(a.email);
    assert.equal(JSON.parse(await Deno.readTextFile(file)).refreshToken, newest);
    const leftovers = [...Deno.readDirSync(join(h.stateDir, "tokens"))].map((e) => e.name);
    assert.deepEqual(leftovers, [`${encodeURIComponent(a.email)}.json`]);
  } finally {
    await h.close();
  }
});

Deno.test("a new refresh token in the config wins over an older persisted one", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    await h.relay.close();
    // The persisted token belongs to the previous config token; the operator re-authorised.
    const store = new FileTokenStore(h.stateDir);
    await store.save(a.email, {
      refreshToken: "stale-token",
      configFingerprint: fingerprint("an-older-config-token"),
      updatedAt: new Date().toISOString(),
    });
    h.relay = await startRelay(h.config);
    await h.client().sendMail({
      envelope: { from: a.email, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(a.email, "r@example.net", "x\r\n")),
    });
    assert.equal(h.sandbox.received.length, 1);
  } finally {
    await h.close();
  }
});

Deno.test("store: concurrent saves leave the newest token, nothing half-written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const store = new FileTokenStore(dir);
    const saves = Array.from({ length: 100 }, (_, i) =>
      store.save("a@example.com", {
        refreshToken: `token-${i}`,
        configFingerprint: "f",
        updatedAt: new Date().toISOString(),
      }));
    await Promise.all(saves);
    assert.equal((await store.load("A@example.com"))?.value.refreshToken, "token-99");
    assert.deepEqual([...Deno.readDirSync(join(dir, "tokens"))].map((e) => e.name), [
      "a%40example.com.json",
    ]);
    assert.equal(await store.load("other@example.com"), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("state directory that cannot be created stops start-up with the path named", async () => {
  const h = await startHarness();
  try {
    const blocker = join(h.stateDir, "file");
    await Deno.writeTextFile(blocker, "");
    const config = parseConfig(
      await sandboxConfig(h.sandbox, h.accounts, join(blocker, "state")),
    );
    await assert.rejects(() => startRelay(config), /file\/state/);
  } finally {
    await h.close();
  }
});
