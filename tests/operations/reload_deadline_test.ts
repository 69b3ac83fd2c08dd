/**
 * A reload that never finishes (an `accounts.ts` whose top-level await never resolves) is
 * given up at the reload deadline, reported (log, metrics), and the next SIGHUP applies
 * the file as it is then. A real process, signalled; `--reload-timeout 2` keeps it short.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { makeAccounts, metricValue, PASSWORD } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { configText, RelayProcess } from "./relay_process.ts";

async function canLogIn(port: number, email: string): Promise<boolean> {
  const { client } = await RawSmtp.connect(port);
  try {
    await client.command("EHLO c");
    return (await client.command(`AUTH PLAIN ${plain(email, PASSWORD)}`)).code === 235;
  } finally {
    await client.close();
  }
}

Deno.test("SIGHUP: a config that never finishes loading is given up at the deadline and does not block the next reload", async () => {
  const sandbox = await startSandbox();
  const accounts = makeAccounts(2);
  for (const a of accounts) sandbox.addAccount(a);
  const relay = await RelayProcess.start(
    sandbox,
    await configText(sandbox, [accounts[0]]),
    ["--reload-timeout", "2"],
  );
  try {
    const port = relay.ports.smtp;
    assert.equal(await canLogIn(port, accounts[1].email), false);

    // Waits forever at top level (it would add the second account if it ever finished).
    await relay.writeConfig(
      await configText(sandbox, accounts, {
        prelude: `console.error("hanging config evaluated");\nawait new Promise(() => {});`,
      }),
    );
    relay.kill("SIGHUP");
    await relay.waitFor("hanging config evaluated");

    // The fixed file, and another SIGHUP while the first reload hangs.
    await relay.writeConfig(await configText(sandbox, accounts));
    relay.kill("SIGHUP");
    await relay.waitFor(/reload given up: loading .* did not finish within 2 s/, 8_000);
    await relay.waitFor("configuration reloaded", 8_000);
    assert.equal(await canLogIn(port, accounts[1].email), true);

    const metrics = await relay.metrics();
    assert.equal(metricValue(metrics, 'smtp_relay_config_reloads_total{result="timeout"}'), 1);
    assert.equal(metricValue(metrics, 'smtp_relay_config_reloads_total{result="success"}'), 1);
    assert.equal(metricValue(metrics, "smtp_relay_config_last_reload_success"), 1);
    const given = relay.lines().find((l) => String(l.message).includes("reload given up"));
    assert.equal(given?.level, "ERROR");

    // The deadline does not cut short a reload that finishes: a plain one still applies.
    relay.kill("SIGHUP");
    await relay.waitFor(/configuration reloaded[^]*configuration reloaded/, 8_000);

    relay.kill("SIGTERM");
    assert.equal((await relay.exited()).code, 0);
  } finally {
    await relay.close();
    await sandbox.close();
  }
});
