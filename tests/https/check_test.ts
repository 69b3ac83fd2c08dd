/**
 * `check --smtp` on HTTPS accounts, as a subprocess against the sandbox: a token refresh
 * plus a harmless API call (an empty message, which a working token gets a 400 for; the
 * API keeps nothing), and a token for another mailbox fails with the API's 403.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { makeAccounts, PASSWORD } from "../harness.ts";

const MAIN = fileURLToPath(new URL("../../src/main.ts", import.meta.url));
const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

Deno.test("check --smtp: Graph and Gmail API accounts get a token and one harmless API call each", async () => {
  const sandbox = await startSandbox();
  const dir = await Deno.makeTempDir();
  const accounts = makeAccounts(3);
  sandbox.addAccount(accounts[0]);
  sandbox.addAccount(accounts[1]);
  // accounts[2]'s refresh token belongs to another mailbox: token ok, the API says 403.
  sandbox.addAccount({ ...accounts[2], email: "someone-else@example.com" });
  const hash = await hashPassword(PASSWORD);
  const transports = ["graph", "gmail-api", "graph"];
  await Deno.writeTextFile(
    `${dir}/accounts.ts`,
    `import { defineConfig } from "${CONFIG_MOD}";
const transports = ${JSON.stringify(transports)};
export default defineConfig({
  stateDir: "./state",
  accounts: ${JSON.stringify(accounts)}.map((a, i) => ({
    email: a.email, provider: { type: "sandbox", tokenUrl: "${sandbox.tokenUrl}" },
    clientId: a.clientId, clientSecret: a.clientSecret, refreshToken: a.refreshToken,
    passwordHash: "${hash}",
    transport: { type: transports[i], apiUrl: "${sandbox.apiUrl}" },
  })),
});
`,
  );
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1,localhost",
        "--allow-read=.",
        "--allow-write=./state",
        MAIN,
        "check",
        "--smtp",
        "--json",
        "--concurrency",
        "1",
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 1, new TextDecoder().decode(out.stderr));
    const parsed = JSON.parse(stdout);
    assert.deepEqual(parsed.map((r: { token: string; smtp: string }) => [r.token, r.smtp]), [
      ["ok", "ok"],
      ["ok", "ok"],
      ["ok", "failed"],
    ]);
    assert.equal(
      parsed[2].error,
      "535 5.7.8 Microsoft Graph answered 403 ErrorAccessDenied: Access is denied. Check " +
        "credentials and try again.",
    );
    const api = sandbox.api!;
    assert.equal(api.received.length, 0);
    assert.equal(api.stats.byStatus.get(400), 2);
    assert.equal(api.stats.byStatus.get(403), 1);
    for (const token of api.bearerTokens) assert.ok(!stdout.includes(token));
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
