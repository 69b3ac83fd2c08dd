/**
 * The command line, run as a subprocess of the real Deno binary: the start task's exact
 * permission flags suffice to relay a message, bad configs exit 2 naming the field,
 * hash-password works.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
import nodemailer from "nodemailer";
import { startSandbox } from "../src/sandbox/mod.ts";
import { PasswordVerifier } from "../src/relay/password.ts";
import {
  freePort,
  makeAccounts,
  PASSWORD,
  rawMessage,
  startTaskArgs as taskArgs,
  type TaskPorts,
} from "./harness.ts";

const ROOT = new URL("../", import.meta.url);
const MAIN = fileURLToPath(new URL("src/main.ts", ROOT));
const CONFIG_MOD = new URL("src/config/mod.ts", ROOT).href;

/**
 * The start task's arguments after `deno`, with the entry point made absolute, for a relay
 * on free ports (`deno task demo` may hold the fixed ones).
 */
async function startTaskArgs(ports: TaskPorts): Promise<string[]> {
  const words = await taskArgs(ports);
  assert.ok(!words.some((w) => w === "-A" || w.startsWith("--allow-all")), "no -A");
  return words;
}

/** Runs the CLI to completion with the given args in `cwd`. */
async function run(args: string[], cwd: string, stdin?: string, env: Record<string, string> = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env,
    clearEnv: true,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("the start task's flags suffice to relay a message; no secret is printed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-start-" });
  const sandbox = await startSandbox();
  const ports: TaskPorts = {
    smtp: freePort(),
    metrics: freePort(),
    sandboxToken: Number(new URL(sandbox.tokenUrl).port),
    sandboxSmtp: sandbox.smtpPort,
  };
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const hash = await import("../src/relay/password.ts").then((m) => m.hashPassword(PASSWORD));
  await Deno.writeTextFile(
    `${dir}/accounts.ts`,
    `import { defineConfig, env } from "${CONFIG_MOD}";
export default defineConfig({
  accounts: [{
    email: "${account.email}",
    provider: { type: "sandbox", tokenUrl: "${sandbox.tokenUrl}", smtpPort: ${sandbox.smtpPort} },
    clientId: "${account.clientId}",
    clientSecret: env("RELAY_TEST_CLIENT_SECRET"),
    refreshToken: env("RELAY_TEST_REFRESH_TOKEN"),
    passwordHash: "${hash}",
  }],
});
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: [...await startTaskArgs(ports), "--log-format", "json", "--log-level", "debug"],
    cwd: dir,
    clearEnv: true,
    env: {
      RELAY_TEST_CLIENT_SECRET: account.clientSecret,
      RELAY_TEST_REFRESH_TOKEN: account.refreshToken,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const listening = Promise.withResolvers<void>();
  const drain = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      if (stderr.includes("SMTP on")) listening.resolve();
    }
    listening.reject(new Error(`relay exited early:\n${stderr}`));
  })();
  const stdout = new Response(child.stdout).text();
  try {
    await listening.promise;
    const client = nodemailer.createTransport({
      host: "127.0.0.1",
      port: ports.smtp,
      ignoreTLS: true,
      auth: { user: account.email, pass: PASSWORD },
    });
    const raw = rawMessage(account.email, "r@example.net", "through the start flags\r\n");
    const info = await client.sendMail({
      envelope: { from: account.email, to: ["r@example.net"] },
      raw: Buffer.from(raw),
    });
    client.close();
    assert.match(info.response, /^250 2\.0\.0 OK/);
    assert.equal(sandbox.received.length, 1);
    assert.ok(Buffer.from(sandbox.received[0].data).equals(Buffer.from(raw)));

    const ready = await fetch(`http://127.0.0.1:${ports.metrics}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), {
      ready: true,
      listening: true,
      accounts: { total: 1, ok: 1, failing: 0, needsReauth: 0, stateCorrupt: 0, unsaved: 0 },
    });
    const metrics = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
    assert.match(metrics, /^smtp_relay_messages_total\{result="delivered"\} 1$/m);
    // Process gauges work under the start flags (prom-client's own read /proc: they would be 0).
    const rss = Number(metrics.match(/^process_resident_memory_bytes (\d+)/m)?.[1]);
    assert.ok(rss > 10_000_000, `rss ${rss}`);
    assert.match(metrics, /^smtp_relay_event_loop_lag_seconds \d/m);
    assert.equal((await fetch(`http://127.0.0.1:${ports.metrics}/healthz`)).status, 200);
    // The rotated refresh token went to ./state, readable only by the owner.
    const stored = await Deno.stat(`${dir}/state/tokens/${encodeURIComponent(account.email)}.json`);
    assert.equal(stored.mode! & 0o777, 0o600);
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    await drain.catch(() => {});
    await stdout;
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
    assert.equal(status.code, 0, stderr);
  }
  assert.match(stderr, /"result":"delivered"/);
  const secrets = [
    account.refreshToken,
    account.clientSecret,
    PASSWORD,
    sandbox.tokens.currentRefreshToken(account.email) ?? "",
  ];
  for (const s of secrets) assert.ok(!stderr.includes(s), "a secret appeared in the log");
  assert.ok(!/access_token|Bearer [A-Za-z0-9]/.test(stderr), "an access token appeared in the log");
});

Deno.test("a bad config exits 2 with one line per field, no stack trace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/accounts.ts`,
      `import { defineConfig, env } from "${CONFIG_MOD}";
export default defineConfig({
  smtp: { port: 70000 },
  accounts: [
    { email: "not-an-address", provider: "google", clientId: "x",
      refreshToken: env("RELAY_MISSING"), passwordHash: "plain" },
    // @ts-expect-error: tenant missing, caught at load time too
    { email: "b@example.com", provider: { type: "microsoft" }, clientId: "x",
      refreshToken: "r", passwordHash: "plain", color: "blue" },
  ],
});
`,
    );
    const r = await run(
      ["run", "--allow-read=.", "--allow-env=RELAY_*", MAIN, "--config", "accounts.ts"],
      dir,
    );
    assert.equal(r.code, 2);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines[0], "accounts.ts: invalid configuration");
    const problems = lines.slice(1).map((l) => l.trim());
    assert.deepEqual(problems, [
      "smtp.port: expected a port 0-65535",
      "accounts[0].email: expected an email address",
      "accounts[0].refreshToken: environment variable RELAY_MISSING is not set",
      "accounts[0].passwordHash: expected a hash from `deno task hash-password` (scrypt$N$r$p$salt$hash)",
      "accounts[1].provider.tenant: expected a tenant id, domain, 'organizations' or 'common'",
      "accounts[1].passwordHash: expected a hash from `deno task hash-password` (scrypt$N$r$p$salt$hash)",
      "accounts[1].color: unknown field",
    ]);
    assert.ok(!/\n\s+at /.test(r.stderr), "no stack trace");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config module problems: missing file, no default export, syntax error", async (t) => {
  const dir = await Deno.makeTempDir();
  const cases: [string, string | null, RegExp][] = [
    [
      "missing.ts",
      null,
      /^missing\.ts: no such file \(\/.*\/missing\.ts\); create it: cp accounts\.example\.ts missing\.ts and edit it, or name another one with --config PATH\n$/,
    ],
    ["nodefault.ts", "export const x = 1;\n", /nodefault\.ts: expected a default export/],
    ["syntax.ts", "export default {\n", /syntax\.ts: cannot load module: /],
    ["noaccounts.ts", "export default { accounts: [] };\n", /accounts: expected at least one/],
  ];
  try {
    for (const [file, content, expected] of cases) {
      await t.step(file, async () => {
        if (content !== null) await Deno.writeTextFile(`${dir}/${file}`, content);
        const r = await run(["run", "--allow-read=.", MAIN, "--config", file], dir);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, expected);
        assert.ok(!/\n\s+at /.test(r.stderr), "no stack trace");
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("usage errors exit 2 with the flag named", async () => {
  const cwd = Deno.cwd();
  const bad = await run(["run", MAIN, "--port", "http"], cwd);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^error: --port: expected a port number 0-65535, got "http"$/m);
  const unknown = await run(["run", MAIN, "--colour"], cwd);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /^error: Unknown option '--colour'/m);
  const command = await run(["run", MAIN, "frobnicate"], cwd);
  assert.equal(command.code, 2);
  assert.match(command.stderr, /^error: unknown command "frobnicate"$/m);
});

Deno.test("hash-password prints a hash the relay accepts", async () => {
  const r = await run(["run", MAIN, "hash-password"], Deno.cwd(), "s3cret password\n");
  assert.equal(r.code, 0, r.stderr);
  const hash = r.stdout.trim();
  assert.match(hash, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
  assert.ok(!r.stdout.includes("s3cret"));
  const verifier = new PasswordVerifier(hash);
  assert.equal(await verifier.verify("s3cret password"), true);
  assert.equal(await verifier.verify("s3cret passwore"), false);
});
