/**
 * `authorize` for an account that sends through Graph: the device-code request asks for
 * Graph's `Mail.Send offline_access`, and the new token is tried with a harmless Graph call
 * (not an SMTP login) before it is stored.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { makeAccounts, PASSWORD } from "../harness.ts";

const ROOT = new URL("../../", import.meta.url);
const CONFIG_MOD = new URL("src/config/mod.ts", ROOT).href;

Deno.test("authorize (device code) for a graph account: Graph's scope asked for, the token tried on Graph, stored", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-authorize-graph-" });
  const sandbox = await startSandbox();
  sandbox.tokens.deviceIntervalSeconds = 1;
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  try {
    await Deno.writeTextFile(
      join(dir, "accounts.ts"),
      `import { defineConfig } from "${CONFIG_MOD}";
export default defineConfig({
  accounts: [{
    email: "${account.email}",
    provider: { type: "sandbox", tokenUrl: "${sandbox.tokenUrl}" },
    clientId: "${account.clientId}",
    clientSecret: "${account.clientSecret}",
    passwordHash: "${await hashPassword(PASSWORD)}",
    transport: { type: "graph", apiUrl: "${sandbox.apiUrl}" },
  }],
});
`,
    );
    const task: string = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))).tasks
      .authorize;
    const launcher = new URL("src/launch.ts", ROOT).pathname;
    const args = task.split(/\s+/).slice(1).map((w) => w === "src/launch.ts" ? launcher : w);
    const child = new Deno.Command(Deno.execPath(), {
      args: [...args, "--account", account.email],
      cwd: dir,
      clearEnv: true,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderrText: string[] = [];
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let userCode: string | undefined;
    while (!userCode) {
      const { value, done } = await reader.read();
      if (done) break;
      stderrText.push(value);
      userCode = /enter the code ([A-Z]{4}-[A-Z]{4})/.exec(stderrText.join(""))?.[1];
    }
    assert.ok(userCode, stderrText.join(""));
    assert.equal(
      sandbox.deviceAuthorization(userCode)!.scope,
      "https://graph.microsoft.com/Mail.Send offline_access",
    );
    sandbox.approveDevice(userCode, account.email);
    const rest = (async () => {
      while (true) {
        const { value, done } = await reader.read();
        if (done) return;
        stderrText.push(value);
      }
    })();
    const [{ code }, stdout] = await Promise.all([
      child.status,
      new Response(child.stdout).text(),
      rest,
    ]);
    assert.equal(code, 0, stderrText.join(""));
    assert.match(stdout, /^Authorized user0@example\.com \(sandbox, device code\)\.$/m);
    // Tried on Graph (its 400 to the empty message), not by an SMTP login; nothing sent.
    assert.equal(sandbox.api!.stats.byStatus.get(400), 1);
    assert.equal(sandbox.stats.smtp.connections, 0);
    assert.equal(sandbox.api!.received.length, 0);
    const token = sandbox.tokens.currentRefreshToken(account.email)!;
    const stored = JSON.parse(
      await Deno.readTextFile(
        join(dir, "state", "tokens", `${encodeURIComponent(account.email)}.json`),
      ),
    );
    assert.equal(stored.refreshToken, token);
    assert.ok(!(stdout + stderrText.join("")).includes(token));
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
