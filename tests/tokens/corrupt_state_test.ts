/**
 * Issue 16, item 10: a corrupt token file (invalid JSON holding a refresh token's
 * characters) makes the account `state_corrupt`: not ready, counted in a metric, shown
 * by `/accounts` and `status` with the file and what to do; messages get a precise 454
 * without anything of the file; nothing of it reaches replies, operator surfaces or logs.
 * Moving the file away brings the account back without traffic.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { statusTable } from "../../src/commands/status.ts";
import { type Harness, metricValue, startHarness, until } from "../harness.ts";
import { accounts, CapturedLogs, readyz, send } from "./helpers.ts";

/** What a refresh token looks like (Google's shape), planted in the corrupt file. */
const FAKE = `1//0gFAKE-${crypto.randomUUID().replaceAll("-", "")}`;
const GARBAGE = `{"refreshToken":"${FAKE}","configFingerprint":"x",,}\n`;
const REPLY =
  "454 4.7.0 Account needs repair by the relay operator (its stored token file is unreadable)";
const TOKENS = { attempts: 1, retryBaseMs: 10, timeoutMs: 2_000, reauthRecheckSeconds: 1 };

function tokenFile(h: { stateDir: string; accounts: { email: string }[] }): string {
  return join(h.stateDir, "tokens", `${encodeURIComponent(h.accounts[0].email)}.json`);
}

/** Every operator surface of the relay, as text. */
async function surfaces(h: Harness): Promise<string> {
  const get = async (path: string) =>
    await (await fetch(`http://127.0.0.1:${h.relay.http.port}${path}`)).text();
  return [await get("/accounts"), await get("/readyz"), await get("/metrics")].join("\n");
}

Deno.test("a token file with invalid JSON: 454 without its content, state_corrupt, not ready", async () => {
  const logs = await CapturedLogs.start();
  const h = await startHarness({ config: { tokens: TOKENS } });
  try {
    const file = tokenFile(h);
    await Deno.mkdir(join(h.stateDir, "tokens"), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(file, GARBAGE, { mode: 0o600 });

    const replies = [await send(h), await send(h)];
    assert.deepEqual(replies, [REPLY, REPLY]);
    assert.equal(h.sandbox.stats.token.requests, 0, "the garbage was sent as a refresh token");

    const ready = await readyz(h);
    assert.equal(ready.status, 503);
    assert.equal(ready.body.ready, false);
    assert.equal(ready.body.accounts.stateCorrupt, 1);
    const m = await h.metrics();
    assert.equal(metricValue(m, 'smtp_relay_accounts{state="state_corrupt"}'), 1);
    assert.equal(metricValue(m, 'smtp_relay_messages_total{result="token_error"}'), 2);

    const [entry] = (await accounts(h)).body;
    assert.equal(entry.token, "state_corrupt");
    assert.equal(entry.lastError, `the stored token file ${file} is corrupt (not JSON)`);
    assert.equal(
      entry.action,
      `move ${file} away and run \`deno task authorize --account ${h.accounts[0].email}\`, ` +
        "or restore the file from a backup",
    );
    const table = statusTable([entry]);
    assert.match(table, /^user0@example\.com\s+sandbox\s+state_corrupt\s/m);
    assert.ok(table.includes(`to do: move ${file} away`), table);

    // The file's content is nowhere: replies, /accounts, /readyz, /metrics, logs.
    const everywhere = [...replies, table, await surfaces(h), logs.text].join("\n");
    assert.ok(!everywhere.includes(FAKE.slice(5)), "the file's content leaked");
    assert.ok(logs.text.includes("is corrupt (not JSON)"), "no log line names the problem");
    assert.ok(logs.text.includes("restore it from a backup"), "the log line says what to do");

    // The operator moves the file away: the account recovers without a message (the
    // config's refresh token is still good here).
    await Deno.rename(file, `${file}.broken`);
    assert.ok(await until(async () => (await readyz(h)).status === 200, 5_000), "still broken");
    assert.equal((await accounts(h)).body[0].token, "ok");
    assert.match(await send(h), /^250 /);
  } finally {
    await h.close();
    await logs.stop();
  }
});

Deno.test("a corrupt token file found at start-up shows before any message", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "relay-corrupt-" });
  await Deno.mkdir(join(stateDir, "tokens"), { mode: 0o700 });
  // Valid JSON of the wrong shape counts as corrupt too.
  const file = join(stateDir, "tokens", `${encodeURIComponent("user0@example.com")}.json`);
  await Deno.writeTextFile(file, `{"refresh":"${FAKE}"}\n`, { mode: 0o600 });
  const h = await startHarness({ stateDir, config: { tokens: TOKENS } });
  try {
    assert.equal(tokenFile(h), file);
    assert.ok(
      await until(async () => (await readyz(h)).status === 503, 2_000),
      "ready with a corrupt token file",
    );
    const ready = await readyz(h);
    assert.equal(ready.body.accounts.stateCorrupt, 1);
    const [entry] = (await accounts(h)).body;
    assert.equal(entry.token, "state_corrupt");
    assert.equal(entry.lastError, `the stored token file ${file} is corrupt (unexpected content)`);
    assert.equal(h.sandbox.stats.token.requests, 0);
    assert.ok(!(await surfaces(h)).includes(FAKE.slice(5)));
    assert.equal(await send(h), REPLY);
  } finally {
    await h.close();
    await Deno.remove(stateDir, { recursive: true });
  }
});
