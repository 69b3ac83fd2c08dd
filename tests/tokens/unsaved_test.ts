/**
 * Issue 16, item 3: a rotated refresh token that cannot be written is kept in memory,
 * its write retried with backoff until it succeeds (also across a reload), and the
 * condition is visible (`/accounts` `tokenUnsaved`, `/readyz` `accounts.unsaved`, the
 * `smtp_relay_token_unsaved_accounts` gauge, `status`); stop tries once more and says
 * clearly when the token is lost. A failed write leaves no temporary file.
 *
 * The state directory really refuses writes: as root (chmod stops nothing) a full 4 KiB
 * tmpfs is mounted on `tokens/` (ENOSPC); as another user, `tokens/` is chmod 0500
 * (EACCES). Where neither works, the first test fails and says why (nothing is skipped).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startRelay } from "../../src/app.ts";
import { statusTable } from "../../src/commands/status.ts";
import { parseConfig } from "../../src/config/load.ts";
import { startSandbox } from "../../src/sandbox/mod.ts";
import type { ExpectedVersion } from "../../src/state/store.ts";
import { writeFileAtomic } from "../../src/state/store.ts";
import { AccountTokens, type RefreshOutcome, type SaveOutcome } from "../../src/tokens/manager.ts";
import {
  FileTokenStore,
  type RefreshTokenStore,
  type StoredToken,
} from "../../src/tokens/store.ts";
import {
  type Harness,
  makeAccounts,
  metricValue,
  sandboxConfig,
  startHarness,
  until,
} from "../harness.ts";
import {
  accounts,
  canRefuseWrites,
  CapturedLogs,
  readyz,
  refuseWrites,
  type RefusingDirectory,
  send,
  VirtualClock,
} from "./helpers.ts";

const TOKENS = { attempts: 1, retryBaseMs: 10, timeoutMs: 2_000 };
const refusable = await canRefuseWrites();

// Never skipped: on a machine where no directory can be made to refuse writes (root without
// the right to mount a tmpfs), this fails and says why, instead of the tests below passing
// by not running.
Deno.test("a directory can be made to refuse writes here (non-root: chmod; root: a full tmpfs)", () => {
  assert.ok(refusable, "cannot make a directory refuse writes: run as non-root or allow mount");
});

/** A harness on a state directory whose `tokens/` refuses writes from the start. */
async function brokenHarness(): Promise<
  { h: Harness; dir: RefusingDirectory; tokensDir: string; file: string; done(): Promise<void> }
> {
  const stateDir = await Deno.makeTempDir({ prefix: "relay-unsaved-" });
  const tokensDir = join(stateDir, "tokens");
  await Deno.mkdir(tokensDir, { mode: 0o700 });
  const dir = (await refuseWrites(tokensDir))!;
  const h = await startHarness({ stateDir, config: { tokens: TOKENS } });
  const file = join(tokensDir, `${encodeURIComponent(h.accounts[0].email)}.json`);
  return {
    h,
    dir,
    tokensDir,
    file,
    async done() {
      await h.close();
      await dir.cleanup();
      await Deno.remove(stateDir, { recursive: true });
    },
  };
}

async function storedToken(file: string): Promise<string | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(file)).refreshToken;
  } catch {
    return undefined;
  }
}

function tempFiles(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".tmp"));
}

Deno.test({
  name: "a rotated token that cannot be written: shown, retried until saved, used after a restart",
  async fn() {
    const { h, dir, tokensDir, file, done } = await brokenHarness();
    try {
      const a = h.accounts[0];
      assert.match(await send(h), /^250 /); // the access token is good; only the write failed
      const rotated = h.sandbox.tokens.currentRefreshToken(a.email)!;
      assert.notEqual(rotated, a.refreshToken);
      assert.equal(await storedToken(file), undefined);
      assert.deepEqual(tempFiles(tokensDir), [], "a failed write left a temporary file");

      const { text, body: [entry] } = await accounts(h);
      assert.equal(entry.token, "ok");
      assert.equal(entry.tokenUnsaved?.path, file);
      assert.equal(entry.tokenUnsaved?.error, dir.code);
      assert.equal(entry.tokenUnsaved?.attempts, 1);
      assert.ok(entry.tokenUnsaved?.nextAttempt, "no next attempt");
      const ready = await readyz(h);
      assert.equal(ready.status, 200, "unsaved tokens do not take the relay out");
      assert.equal(ready.body.accounts.unsaved, 1);
      const m = await h.metrics();
      assert.equal(metricValue(m, "smtp_relay_token_unsaved_accounts"), 1);
      const table = statusTable([entry]);
      assert.match(table, /^user0@example\.com\s+sandbox\s+ok, unsaved\s/m);
      assert.ok(table.includes(`refresh token NOT SAVED to ${file} (${dir.code}:`), table);
      for (const surface of [text, ready.text, m, table]) assert.ok(!surface.includes(rotated));

      // The directory takes writes again: the retry (2 s after the failure) saves it.
      await dir.fix();
      assert.ok(await until(async () => await storedToken(file) === rotated, 10_000), "not saved");
      assert.equal((await accounts(h)).body[0].tokenUnsaved, undefined);
      assert.equal((await readyz(h)).body.accounts.unsaved, 0);
      assert.equal(metricValue(await h.metrics(), "smtp_relay_token_unsaved_accounts"), 0);

      // A restart finds it (the config's token is dead: the sandbox rotates).
      await h.relay.close();
      h.relay = await startRelay(h.config);
      assert.match(await send(h), /^250 /);
      assert.equal(h.sandbox.received.length, 2);
    } finally {
      await done();
    }
  },
});

Deno.test({
  name: "an unsaved token survives a reload that rebuilds its account, and is saved after",
  async fn() {
    const { h, dir, file, done } = await brokenHarness();
    try {
      assert.match(await send(h), /^250 /);
      const rotated = h.sandbox.tokens.currentRefreshToken(h.accounts[0].email)!;
      // A changed setting rebuilds the account's runtime (new token source).
      const next = await sandboxConfig(
        h.sandbox,
        h.accounts,
        h.stateDir,
        { tokens: TOKENS },
        () => ({ maxConnections: 2 }),
      );
      await h.relay.reload(parseConfig(next));
      assert.equal((await accounts(h)).body[0].tokenUnsaved?.error, dir.code);
      await dir.fix();
      assert.ok(await until(async () => await storedToken(file) === rotated, 10_000), "not saved");
      await h.relay.close();
      h.relay = await startRelay(h.config);
      assert.match(await send(h), /^250 /);
    } finally {
      await done();
    }
  },
});

Deno.test({
  name: "stop writes an unsaved token once more; if that fails too, an ERROR line says what to do",
  async fn(t) {
    await t.step("the directory is writable again at stop: saved", async () => {
      const { h, dir, file, done } = await brokenHarness();
      try {
        assert.match(await send(h), /^250 /);
        const rotated = h.sandbox.tokens.currentRefreshToken(h.accounts[0].email)!;
        await dir.fix();
        await h.relay.stop(1_000);
        assert.equal(await storedToken(file), rotated);
      } finally {
        await done();
      }
    });
    await t.step(
      "still refused at stop: the loss is logged with the file and the remedy",
      async () => {
        const logs = await CapturedLogs.start();
        const { h, dir, file, done } = await brokenHarness();
        try {
          const email = h.accounts[0].email;
          assert.match(await send(h), /^250 /);
          const rotated = h.sandbox.tokens.currentRefreshToken(email)!;
          await h.relay.stop(1_000);
          const lost = logs.records.filter((r) =>
            r.level === "error" && String(r.rawMessage).includes("is NOT saved and is lost")
          );
          assert.equal(lost.length, 1, logs.text);
          assert.deepEqual(
            [lost[0].properties.account, lost[0].properties.path, lost[0].properties.error],
            [email, file, dir.code],
          );
          const line = logs.lines.find((l) => l.includes("is NOT saved and is lost"))!;
          assert.ok(line.includes("Make its directory writable"), line);
          assert.ok(line.includes("`deno task authorize --account"), line);
          assert.ok(!logs.text.includes(rotated), "the token is in the logs");
          assert.equal(await storedToken(file), undefined);
        } finally {
          await done();
          await logs.stop();
        }
      },
    );
  },
});

Deno.test({
  name: "a refused write (ENOSPC as root) removes its temporary file: write and compare-and-set",
  async fn() {
    const base = await Deno.makeTempDir({ prefix: "relay-enospc-" });
    const tokensDir = join(base, "tokens");
    await Deno.mkdir(tokensDir, { mode: 0o700 });
    const refusing = (await refuseWrites(tokensDir))!;
    try {
      await assert.rejects(() => writeFileAtomic(join(tokensDir, "a.json"), "x".repeat(8192)));
      assert.deepEqual(tempFiles(tokensDir), []);
      const store = new FileTokenStore(base);
      await assert.rejects(() =>
        store.compareAndSet("a@example.com", "absent", {
          refreshToken: "r".repeat(8192),
          configFingerprint: "f",
          updatedAt: new Date().toISOString(),
        })
      );
      assert.deepEqual(tempFiles(tokensDir), []);
    } finally {
      await refusing.cleanup();
      await Deno.remove(base, { recursive: true });
    }
  },
});

/** A token store whose compare-and-set fails (like a read-only file system) while `failing`. */
class FailingStore implements RefreshTokenStore {
  failing = 0;
  readonly #inner: FileTokenStore;
  constructor(dir: string) {
    this.#inner = new FileTokenStore(dir);
  }
  load(account: string) {
    return this.#inner.load(account);
  }
  pathOf(account: string) {
    return this.#inner.pathOf(account);
  }
  compareAndSet(account: string, expected: ExpectedVersion, value: StoredToken) {
    if (this.failing > 0) {
      this.failing--;
      const path = this.#inner.pathOf(account);
      return Promise.reject(
        Object.assign(new Error(`Read-only file system (os error 30): open '${path}.x.tmp'`), {
          code: "EROFS",
        }),
      );
    }
    return this.#inner.compareAndSet(account, expected, value);
  }
}

Deno.test("retried writes back off from 2 s to 60 s; flush writes at once; close stops them", async () => {
  const sandbox = await startSandbox();
  const [a] = makeAccounts(1);
  sandbox.addAccount(a);
  const dir = await Deno.makeTempDir();
  const clock = new VirtualClock();
  const store = new FailingStore(dir);
  const refreshes: RefreshOutcome[] = [];
  const saves: SaveOutcome[] = [];
  const tokens = new AccountTokens({
    account: a.email,
    client: {
      tokenUrl: sandbox.tokenUrl,
      clientId: a.clientId,
      clientSecret: a.clientSecret,
      scope: "s",
    },
    configRefreshToken: a.refreshToken,
    store,
    timing: clock,
    marginMs: 300_000,
    timeoutMs: 2_000,
    retry: { attempts: 1, baseMs: 10, maxMs: 10 },
    reauthRecheckMs: 60_000,
    onRefresh: (o) => refreshes.push(o),
    onSave: (o) => saves.push(o),
  });
  const stored = async () => (await new FileTokenStore(dir).load(a.email))?.value.refreshToken;
  try {
    store.failing = 7;
    await tokens.get();
    const rotated = sandbox.tokens.currentRefreshToken(a.email);
    assert.equal(refreshes[0].ok, true);
    assert.equal(refreshes[0].unsaved?.error, "EROFS");
    assert.equal(refreshes[0].unsaved?.path, store.pathOf(a.email));
    assert.ok(!JSON.stringify(refreshes[0]).includes(rotated!), "the token is in the outcome");
    assert.equal(tokens.health.unsaved, true);
    const waits: number[] = [];
    const unsaved = () => tokens.unsaved; // (read anew: TypeScript would narrow the getter)
    while (unsaved()) {
      waits.push(clock.nextTimerIn!);
      const attempts = saves.length;
      clock.advance(clock.nextTimerIn!);
      assert.ok(await until(() => saves.length === attempts + 1), "no retried write");
    }
    assert.deepEqual(waits, [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]);
    assert.deepEqual(saves.map((s) => s.ok), [false, false, false, false, false, false, true]);
    assert.equal(saves.at(-1)!.attempts, 8);
    assert.equal(await stored(), rotated);
    assert.equal(clock.pending, 0);

    // flush() at stop writes without waiting for the backoff.
    store.failing = 1;
    await tokens.renew();
    assert.equal(unsaved()?.attempts, 1);
    assert.equal(await tokens.flush(), undefined);
    assert.equal(await stored(), sandbox.tokens.currentRefreshToken(a.email));
    assert.equal(clock.pending, 0);

    // After close(), no more timers; flush() still tries, once.
    store.failing = 100;
    await tokens.renew();
    tokens.close();
    assert.equal(clock.pending, 0);
    const left = await tokens.flush();
    assert.equal(left?.attempts, 2);
    assert.equal(left?.nextAttemptAt, undefined);
    assert.equal(clock.pending, 0);
  } finally {
    tokens.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
