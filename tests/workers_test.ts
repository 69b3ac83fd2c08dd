/**
 * `--workers`: the values it takes, the start error without shared state, and the one
 * permission it adds to the derived set (the relay's own `src/`, read-only), printed by
 * the permissions command through the launcher.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { needsSharedState, parseWorkers } from "../src/workers.ts";
import { RELAY_SOURCE_DIR } from "../src/permissions.ts";
import { startSandbox } from "../src/sandbox/mod.ts";
import { makeAccounts } from "./harness.ts";
import { configText } from "./operations/relay_process.ts";

const LAUNCH = fileURLToPath(new URL("../src/launch.ts", import.meta.url));

Deno.test("--workers: a count >= 1 or auto (the logical cores); anything else is refused", () => {
  assert.equal(parseWorkers("1"), 1);
  assert.equal(parseWorkers("2"), 2);
  assert.equal(parseWorkers("auto"), navigator.hardwareConcurrency);
  for (const bad of ["0", "-1", "abc", "2.5", "", " 2", "99999"]) {
    assert.equal(parseWorkers(bad), undefined, bad);
  }
  assert.equal(
    needsSharedState(3, "./accounts.ts"),
    "error: --workers 3 needs shared state: set state.redis in ./accounts.ts (docs/redis.md)",
  );
});

Deno.test("permissions --workers 2 adds exactly --allow-read of the relay's src/; --workers 1 does not", async () => {
  const sandbox = await startSandbox();
  const dir = await Deno.makeTempDir({ prefix: "relay-workers-perm-" });
  try {
    await Deno.writeTextFile(`${dir}/accounts.ts`, await configText(sandbox, makeAccounts(1)));
    const run = async (args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-run", LAUNCH, "permissions", "--format", "json", ...args],
        cwd: dir,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      return JSON.parse(new TextDecoder().decode(out.stdout));
    };
    const one = await run([]);
    const two = await run(["--workers", "2"]);
    assert.deepEqual(two.net, one.net);
    assert.deepEqual(two.write, one.write);
    assert.deepEqual(two.env, one.env);
    assert.deepEqual(two.read, [...one.read, RELAY_SOURCE_DIR].sort());
    assert.ok(!one.read.includes(RELAY_SOURCE_DIR));
    const auto = await run(["--workers", "auto"]);
    assert.deepEqual(
      auto.read,
      navigator.hardwareConcurrency > 1 ? two.read : one.read,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
    await sandbox.close();
  }
});
