/** `check` as a subprocess against the sandbox: table, JSON, hints, exit status, no secrets. */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { makeAccounts, PASSWORD } from "../harness.ts";
import { smtpHint, tokenHint } from "../../src/commands/hints.ts";

const MAIN = fileURLToPath(new URL("../../src/main.ts", import.meta.url));
const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

Deno.test("check reports good and bad accounts with hints and exits 1", async () => {
  const sandbox = await startSandbox();
  const dir = await Deno.makeTempDir();
  const accounts = makeAccounts(3);
  sandbox.addAccount(accounts[0]);
  sandbox.addAccount(accounts[1]);
  sandbox.tokens.revoke(accounts[1].email);
  // accounts[2]'s refresh token belongs to another mailbox: token ok, SMTP AUTH refused.
  sandbox.addAccount({ ...accounts[2], email: "someone-else@example.com" });
  const hash = await hashPassword(PASSWORD);
  const provider =
    `{ type: "sandbox", tokenUrl: "${sandbox.tokenUrl}", smtpPort: ${sandbox.smtpPort} }`;
  await Deno.writeTextFile(
    `${dir}/accounts.ts`,
    `import { defineConfig } from "${CONFIG_MOD}";
export default defineConfig({
  stateDir: "./state",
  accounts: ${JSON.stringify(accounts)}.map((a) => ({
    email: a.email, provider: ${provider}, clientId: a.clientId,
    clientSecret: a.clientSecret, refreshToken: a.refreshToken, passwordHash: "${hash}",
  })),
});
`,
  );
  const run = async (...extra: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1,localhost",
        "--allow-read=.",
        "--allow-write=./state",
        MAIN,
        "check",
        "--smtp",
        ...extra,
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  try {
    const text = await run();
    assert.equal(text.code, 1, text.stderr);
    const lines = text.stdout.trimEnd().split("\n");
    assert.match(lines[0], /^ACCOUNT\s+PROVIDER\s+TOKEN\s+SMTP$/);
    assert.match(lines[1], /^user0@example\.com\s+sandbox\s+ok\s+ok$/);
    assert.match(lines[2], /^user1@example\.com\s+sandbox\s+failed\s+skipped$/);
    assert.match(lines[3], /^ {4}error: invalid_grant/);
    assert.equal(
      lines[4],
      "    hint:  refresh token revoked or expired: run `deno task authorize --account user1@example.com`",
    );
    assert.match(lines[5], /^user2@example\.com\s+sandbox\s+ok\s+failed$/);
    assert.match(lines[6], /^ {4}error: 535 5\.7\.8 /);
    assert.match(lines[7], /^ {4}hint: {2}token not accepted/);
    assert.equal(lines.at(-1), "1 ok, 2 failed");

    const json = await run("--json", "--concurrency", "1");
    assert.equal(json.code, 1);
    const parsed = JSON.parse(json.stdout);
    assert.deepEqual(parsed.map((r: { token: string; smtp: string }) => [r.token, r.smtp]), [
      ["ok", "ok"],
      ["failed", "skipped"],
      ["ok", "failed"],
    ]);
    const everything = text.stdout + text.stderr + json.stdout + json.stderr;
    for (const a of accounts) {
      assert.ok(!everything.includes(a.refreshToken), "refresh token printed");
      assert.ok(!everything.includes(a.clientSecret), "client secret printed");
    }
    const rotated = sandbox.tokens.currentRefreshToken(accounts[0].email)!;
    assert.ok(!everything.includes(rotated), "rotated refresh token printed");
    // check persisted the rotated token, or the account would be dead for the relay.
    const stored = JSON.parse(
      await Deno.readTextFile(`${dir}/state/tokens/${encodeURIComponent(accounts[0].email)}.json`),
    );
    assert.equal(stored.refreshToken, rotated);
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hints name the fix for well-known provider errors", () => {
  assert.equal(
    tokenHint(
      "microsoft",
      "invalid_client",
      "invalid_client: AADSTS7000218: The request body must contain client_secret",
    ),
    "AADSTS7000218: public client flows are disabled: enable 'Allow public client flows' in the app registration, or configure a clientSecret",
  );
  assert.match(
    tokenHint("microsoft", "invalid_request", "AADSTS90002: Tenant 'x' not found")!,
    /tenant not found/,
  );
  assert.match(tokenHint("microsoft", "invalid_grant", "AADSTS65001: consent")!, /consent missing/);
  assert.match(
    tokenHint("google", "invalid_grant", "invalid_grant: Token has been expired or revoked.")!,
    /"Testing" gets 7-day tokens/,
  );
  assert.match(
    smtpHint(
      "microsoft",
      "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
    )!,
    /SMTP AUTH is disabled/,
  );
  assert.equal(tokenHint("google", undefined, "something else"), undefined);
});
