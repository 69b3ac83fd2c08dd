/**
 * The versioned refresh-token store: compare-and-set within one process, across two
 * processes on one state directory, files from before versioning, the lock's timeout,
 * and no file content in errors.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { StateContentError } from "../../src/state/store.ts";
import { FileTokenStore, replaceToken, type StoredToken } from "../../src/tokens/store.ts";
import { CAS_ACCOUNT, type WorkerReport } from "./cas_worker.ts";

const WORKER = fileURLToPath(new URL("cas_worker.ts", import.meta.url));
const ACCOUNT = "a@example.com";

function token(refreshToken: string): StoredToken {
  return { refreshToken, configFingerprint: "f", updatedAt: new Date().toISOString() };
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "relay-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("compare-and-set: of writers expecting the same version, exactly one wins", async () => {
  await withDir(async (dir) => {
    // Separate instances, as separate processes would have: only the lock orders them.
    const stores = Array.from({ length: 10 }, () => new FileTokenStore(dir));
    const first = await Promise.all(
      stores.map((s, i) => s.compareAndSet(ACCOUNT, "absent", token(`first-${i}`))),
    );
    const winners = first.flatMap((r, i) => r.ok ? [i] : []);
    assert.equal(winners.length, 1);
    assert.deepEqual(first[winners[0]], { ok: true, version: 0 });
    const stored = await stores[0].load(ACCOUNT);
    assert.equal(stored?.value.refreshToken, `first-${winners[0]}`);
    assert.equal(stored?.version, 0);

    const second = await Promise.all(
      stores.map((s, i) => s.compareAndSet(ACCOUNT.toUpperCase(), 0, token(`second-${i}`))),
    );
    const winner = second.findIndex((r) => r.ok);
    assert.equal(second.filter((r) => r.ok).length, 1);
    assert.deepEqual(second[winner], { ok: true, version: 1 });
    const file = JSON.parse(await Deno.readTextFile(stores[0].pathOf(ACCOUNT)));
    assert.equal(file.refreshToken, `second-${winner}`);
    assert.equal(file.version, 1);
    assert.deepEqual([...Deno.readDirSync(join(dir, "tokens"))].map((e) => e.name), [
      "a%40example.com.json",
    ]);
  });
});

Deno.test("compare-and-set: a stale writer stores nothing and gets the current value", async () => {
  await withDir(async (dir) => {
    const store = new FileTokenStore(dir);
    assert.deepEqual(await store.compareAndSet(ACCOUNT, "absent", token("v0")), {
      ok: true,
      version: 0,
    });
    assert.deepEqual(await store.compareAndSet(ACCOUNT, 0, token("v1")), { ok: true, version: 1 });
    const before = await Deno.readTextFile(store.pathOf(ACCOUNT));
    for (const stale of ["absent", 0, 7] as const) {
      const r = await store.compareAndSet(ACCOUNT, stale, token(`stale-${stale}`));
      assert.equal(r.ok, false);
      assert.ok(!r.ok);
      assert.equal(r.current?.version, 1);
      assert.equal(r.current?.value.refreshToken, "v1");
    }
    assert.equal(await Deno.readTextFile(store.pathOf(ACCOUNT)), before);
    // Expecting a version when nothing is stored: lost, nothing current.
    assert.deepEqual(await store.compareAndSet("b@example.com", 0, token("x")), {
      ok: false,
      current: undefined,
    });
    assert.equal(await store.load("b@example.com"), undefined);
  });
});

Deno.test("a token file from before versioning loads as version 0 and is replaced by CAS", async () => {
  await withDir(async (dir) => {
    const store = new FileTokenStore(dir);
    await Deno.mkdir(join(dir, "tokens"), { recursive: true });
    const legacy = {
      refreshToken: "old",
      configFingerprint: "f",
      updatedAt: "2026-01-01T00:00:00Z",
    };
    await Deno.writeTextFile(store.pathOf(ACCOUNT), JSON.stringify(legacy), { mode: 0o600 });
    assert.deepEqual(await store.load(ACCOUNT), { value: legacy, version: 0 });
    assert.equal((await store.compareAndSet(ACCOUNT, "absent", token("new"))).ok, false);
    assert.deepEqual(await store.compareAndSet(ACCOUNT, 0, token("new")), { ok: true, version: 1 });
    assert.equal((await store.load(ACCOUNT))?.value.refreshToken, "new");
    // A first value is written as before versioning: no version field.
    await store.compareAndSet("b@example.com", "absent", token("b"));
    const fresh = JSON.parse(await Deno.readTextFile(store.pathOf("b@example.com")));
    assert.deepEqual(Object.keys(fresh).sort(), ["configFingerprint", "refreshToken", "updatedAt"]);
    assert.equal((await Deno.stat(store.pathOf("b@example.com"))).mode! & 0o777, 0o600);
  });
});

Deno.test("two processes racing compare-and-set never both get one version", async () => {
  await withDir(async (dir) => {
    const rounds = 150;
    const run = (name: string, peer: string) =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          `--allow-read=${dir}`,
          `--allow-write=${dir}`,
          WORKER,
          dir,
          name,
          peer,
          String(rounds),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const outputs = await Promise.all([run("p", "q"), run("q", "p")]);
    const reports = outputs.map((o) => {
      assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
      return JSON.parse(new TextDecoder().decode(o.stdout)) as WorkerReport;
    });
    const acked = reports.flatMap((r) => r.acked).sort((x, y) => x[0] - y[0]);
    // Every version was acknowledged to exactly one writer: no write was lost.
    assert.deepEqual(acked.map(([v]) => v), Array.from({ length: 2 * rounds }, (_, i) => i));
    const losses = reports[0].losses + reports[1].losses;
    assert.ok(losses > 0, "the two processes did not race");
    // The file holds the newest acknowledged version and the token acknowledged with it.
    const stored = await new FileTokenStore(dir).load(CAS_ACCOUNT);
    assert.deepEqual([stored?.version, stored?.value.refreshToken], acked.at(-1));
  });
});

Deno.test("replaceToken stores over whatever is there, through compare-and-set", async () => {
  await withDir(async (dir) => {
    const store = new FileTokenStore(dir);
    assert.equal(await replaceToken(store, ACCOUNT, token("one")), 0);
    assert.equal(await replaceToken(store, ACCOUNT, token("two")), 1);
    const stored = await store.load(ACCOUNT);
    assert.deepEqual([stored?.version, stored?.value.refreshToken], [1, "two"]);
  });
});

Deno.test("a writer that cannot get the lock in time fails, and stores nothing", async () => {
  await withDir(async (dir) => {
    const store = new FileTokenStore(dir, { lockTimeoutMs: 150 });
    await store.compareAndSet(ACCOUNT, "absent", token("kept"));
    // Another process holding the lock (a hung writer).
    const holder = await Deno.open(join(dir, "tokens"), { read: true });
    await holder.lock(true);
    try {
      await assert.rejects(
        () => store.compareAndSet(ACCOUNT, 0, token("secret-new")),
        (err: Error) => {
          assert.match(err.message, /held the lock for over 150 ms/);
          assert.ok(!err.message.includes("secret-new"));
          return true;
        },
      );
    } finally {
      holder.close();
    }
    assert.equal((await store.load(ACCOUNT))?.value.refreshToken, "kept");
    assert.deepEqual(await store.compareAndSet(ACCOUNT, 0, token("next")), {
      ok: true,
      version: 1,
    });
  });
});

Deno.test("a corrupt token file is an error that does not quote its content", async () => {
  await withDir(async (dir) => {
    const store = new FileTokenStore(dir);
    await Deno.mkdir(join(dir, "tokens"), { recursive: true });
    for (const content of ['{"refreshToken":"secret-rt"', '{"refreshToken":"secret-rt"}']) {
      await Deno.writeTextFile(store.pathOf(ACCOUNT), content);
      await assert.rejects(() => store.load(ACCOUNT), (err: Error) => {
        assert.ok(err instanceof StateContentError);
        assert.ok(!err.message.includes("secret-rt"), err.message);
        return true;
      });
      await assert.rejects(() => store.compareAndSet(ACCOUNT, 0, token("x")), StateContentError);
    }
    // A version that is not a count is corrupt too.
    await Deno.writeTextFile(
      store.pathOf(ACCOUNT),
      JSON.stringify({ ...token("t"), version: "2" }),
    );
    await assert.rejects(() => store.load(ACCOUNT), StateContentError);
  });
});
