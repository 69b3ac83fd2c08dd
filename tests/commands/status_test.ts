/**
 * `status` against real relay processes: after a restart on the same state directory, a
 * busy account shows its real token state (ok), not "unknown"; an unused one shows
 * "unknown"; `status --help` prints its usage. And the token state of an account served
 * from a shared access-token cache (another instance, or a restarted one with a shared
 * cache) is "ok", not "unknown".
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { SANDBOX_DEFAULTS } from "../../src/config/providers.ts";
import { MemoryAccessTokenCache } from "../../src/tokens/cache.ts";
import { AccountTokens } from "../../src/tokens/manager.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import nodemailer from "nodemailer";
import { makeAccounts } from "../harness.ts";
import { configText, RelayProcess } from "../operations/relay_process.ts";

const LAUNCH = fileURLToPath(new URL("../../src/launch.ts", import.meta.url));

async function status(port: number) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-run", LAUNCH, "status", "--url", `http://127.0.0.1:${port}`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("status after a restart: the busy account is ok, the unused one unknown", async () => {
  const sandbox = await startSandbox();
  const accounts = makeAccounts(2);
  for (const a of accounts) sandbox.addAccount(a);
  const state = await Deno.makeTempDir({ prefix: "relay-status-" });
  const config = await configText(sandbox, accounts, { top: `stateDir: "${state}",` });
  const send = async (relay: RelayProcess) => {
    const client = nodemailer.createTransport({
      host: "127.0.0.1",
      port: relay.ports.smtp,
      ignoreTLS: true,
      auth: { user: accounts[0].email, pass: accounts[0].password },
    });
    try {
      return (await client.sendMail({
        envelope: { from: accounts[0].email, to: ["r@example.net"] },
        raw: "From: a\r\nSubject: s\r\n\r\nbody\r\n",
      })).response;
    } finally {
      client.close();
    }
  };
  try {
    const first = await RelayProcess.start(sandbox, config);
    try {
      assert.match(await send(first), /^250 /);
      first.kill("SIGTERM");
      assert.equal((await first.exited()).code, 0);
    } finally {
      await first.close();
    }
    const second = await RelayProcess.start(sandbox, config);
    try {
      assert.match(await send(second), /^250 /);
      const r = await status(second.ports.metrics);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trim().split("\n");
      assert.match(lines[1], new RegExp(`^${accounts[0].email}\\s+sandbox\\s+ok\\s`));
      assert.match(lines[2], new RegExp(`^${accounts[1].email}\\s+sandbox\\s+unknown\\s`));
      const help = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-run", LAUNCH, "status", "--help"],
        stdout: "piped",
      }).output();
      assert.equal(help.code, 0);
      assert.equal(
        new TextDecoder().decode(help.stdout),
        "usage: main.ts status [--url http://127.0.0.1:9090] [--json]\n",
      );
    } finally {
      await second.close();
    }
  } finally {
    await sandbox.close();
    await Deno.remove(state, { recursive: true });
  }
});

Deno.test("an account served from a shared access-token cache is ok, not unknown", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const dir = await Deno.makeTempDir({ prefix: "relay-status-cache-" });
  const cache = new MemoryAccessTokenCache();
  const make = () =>
    new AccountTokens({
      account: account.email,
      client: {
        tokenUrl: sandbox.tokenUrl,
        clientId: account.clientId,
        clientSecret: account.clientSecret,
        scope: SANDBOX_DEFAULTS.scope,
      },
      configRefreshToken: account.refreshToken,
      store: new FileTokenStore(dir),
      cache,
      marginMs: 300_000,
      timeoutMs: 5_000,
      retry: { attempts: 1, baseMs: 10, maxMs: 100 },
      reauthRecheckMs: 60_000,
    });
  const first = make();
  const restarted = make(); // the same account after a restart, sharing the cache
  try {
    const token = await first.get();
    assert.equal(first.state, "ok");
    assert.equal(restarted.state, "unknown");
    assert.equal((await restarted.get()).token, token.token); // from the cache, no refresh
    assert.equal(restarted.state, "ok");
  } finally {
    first.close();
    restarted.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
