/**
 * The sandbox's public CA stays out of the production trust path: the schema admits the
 * sandbox provider on loopback only (SMTP host and token URL), only the sandbox gets a
 * `ca`, and a config that breaks the rule stops the relay with exit status 2.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseConfig } from "../../src/config/load.ts";
import { HASH, problems } from "./helpers.ts";
import { upstreamTarget } from "../../src/accounts.ts";
import { SANDBOX_CA_PEM } from "../../src/sandbox/tls.ts";

const ROOT = new URL("../../", import.meta.url);
const MAIN = fileURLToPath(new URL("src/main.ts", ROOT));
const CONFIG_MOD = new URL("src/config/mod.ts", ROOT).href;

const LOOPBACK = "the sandbox provider only runs on loopback (localhost, 127.0.0.0/8, ::1)";

/** A one-account config object with `provider`. */
function config(provider: unknown) {
  return {
    accounts: [{
      email: "a@example.com",
      provider,
      clientId: "client",
      clientSecret: "client-secret",
      refreshToken: "refresh",
      passwordHash: HASH,
    }],
  };
}

Deno.test("sandbox with a non-loopback smtpHost is refused, the field and host named", () => {
  const hosts = [
    "mail.example.com",
    "127.0.0.1.example.com", // starts like loopback, resolves anywhere
    "localhost.example.com",
    "10.0.0.1",
    "::2",
    "0.0.0.0",
  ];
  for (const smtpHost of hosts) {
    assert.deepEqual(problems(config({ type: "sandbox", smtpHost })), [
      `accounts[0].provider.smtpHost: ${LOOPBACK}, got ${JSON.stringify(smtpHost)}`,
    ], smtpHost);
  }
});

Deno.test("sandbox with a non-loopback tokenUrl is refused, the field and host named", () => {
  const cases: [string, string][] = [
    ["http://auth.example.com/token", "auth.example.com"],
    ["https://auth.example.com:2580/token", "auth.example.com"],
    ["http://127.0.0.1.example.com/token", "127.0.0.1.example.com"],
    // userinfo that looks like a host: the host is what follows the @
    ["http://localhost@auth.example.com/token", "auth.example.com"],
    ["http://[::2]:2580/token", "[::2]"],
  ];
  for (const [tokenUrl, host] of cases) {
    assert.deepEqual(problems(config({ type: "sandbox", tokenUrl })), [
      `accounts[0].provider.tokenUrl: ${LOOPBACK}, got ${JSON.stringify(host)}`,
    ], tokenUrl);
  }
});

Deno.test("sandbox off loopback in both fields: one line each, other accounts unaffected", () => {
  const input = config({
    type: "sandbox",
    tokenUrl: "http://auth.example.com/token",
    smtpHost: "mail.example.com",
  });
  input.accounts.unshift({ ...input.accounts[0], email: "ok@example.com", provider: "sandbox" });
  assert.deepEqual(problems(input), [
    `accounts[1].provider.tokenUrl: ${LOOPBACK}, got "auth.example.com"`,
    `accounts[1].provider.smtpHost: ${LOOPBACK}, got "mail.example.com"`,
  ]);
});

Deno.test("sandbox on loopback loads and its upstream trusts the sandbox CA", () => {
  const providers: unknown[] = [
    "sandbox",
    { type: "sandbox" },
    { type: "sandbox", tokenUrl: "http://127.0.0.1:2580/token", smtpHost: "localhost" },
    { type: "sandbox", tokenUrl: "http://localhost:2580/token", smtpHost: "127.0.0.1" },
    { type: "sandbox", tokenUrl: "https://127.0.0.2/token", smtpHost: "127.0.0.2" },
    { type: "sandbox", tokenUrl: "http://[::1]:2580/token", smtpHost: "::1" },
    { type: "sandbox", tokenUrl: "http://LOCALHOST:2580/token", smtpHost: "LocalHost" },
  ];
  for (const provider of providers) {
    const relayConfig = parseConfig(config(provider));
    const account = relayConfig.accounts[0];
    assert.equal(account.provider.kind, "sandbox");
    assert.equal(account.provider.ca, SANDBOX_CA_PEM, JSON.stringify(provider));
    assert.equal(upstreamTarget(relayConfig, account).ca, SANDBOX_CA_PEM);
  }
});

Deno.test("google, microsoft, outlook and custom providers never get a ca", () => {
  const providers: [unknown, string][] = [
    ["google", "smtp.gmail.com"],
    [{ type: "microsoft", tenant: "contoso.onmicrosoft.com" }, "smtp.office365.com"],
    ["outlook", "smtp-mail.outlook.com"],
    [{
      type: "custom",
      tokenUrl: "https://auth.example.com/token",
      scope: "smtp",
      smtpHost: "mail.example.com",
      smtpPort: 587,
      tls: "starttls",
    }, "mail.example.com"],
    // A custom provider on loopback is still verified against the system's roots.
    [{
      type: "custom",
      tokenUrl: "https://localhost/token",
      scope: "smtp",
      smtpHost: "localhost",
      smtpPort: 465,
      tls: "implicit",
    }, "localhost"],
  ];
  for (const [provider, smtpHost] of providers) {
    const relayConfig = parseConfig(config(provider));
    const account = relayConfig.accounts[0];
    assert.equal(account.provider.smtpHost, smtpHost);
    assert.equal("ca" in account.provider, false, JSON.stringify(provider));
    const target = upstreamTarget(relayConfig, account);
    assert.equal(target.host, smtpHost);
    assert.equal(target.ca, undefined);
  }
});

Deno.test("custom provider: no ca field, and no http token endpoint even on loopback", () => {
  const custom = {
    type: "custom",
    tokenUrl: "https://auth.example.com/token",
    scope: "smtp",
    smtpHost: "mail.example.com",
    smtpPort: 587,
    tls: "starttls",
  };
  assert.deepEqual(problems(config({ ...custom, ca: SANDBOX_CA_PEM })), [
    "accounts[0].provider.ca: unknown field",
  ]);
  assert.deepEqual(problems(config({ ...custom, tokenUrl: "http://auth.example.com/token" })), [
    "accounts[0].provider.tokenUrl: expected an https:// URL",
  ]);
  assert.deepEqual(problems(config({ ...custom, tokenUrl: "http://127.0.0.1:2580/token" })), [
    "accounts[0].provider.tokenUrl: expected an https:// URL",
  ]);
});

Deno.test("the relay exits 2 naming the field when accounts.ts puts the sandbox off loopback", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-sandbox-trust-" });
  try {
    await Deno.writeTextFile(
      `${dir}/accounts.ts`,
      `import { defineConfig } from "${CONFIG_MOD}";
export default defineConfig({
  accounts: [{
    email: "a@example.com",
    provider: { type: "sandbox", smtpHost: "mail.example.com" },
    clientId: "client",
    refreshToken: "refresh",
    passwordHash: "${HASH}",
  }],
});
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read=.", MAIN, "--config", "accounts.ts"],
      cwd: dir,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 2, stderr);
    assert.deepEqual(stderr.trimEnd().split("\n"), [
      "accounts.ts: invalid configuration",
      `  accounts[0].provider.smtpHost: ${LOOPBACK}, got "mail.example.com"`,
    ]);
    assert.equal(new TextDecoder().decode(out.stdout), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
