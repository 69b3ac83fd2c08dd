/**
 * `authorize` end to end as a subprocess of the real Deno binary, under least-privilege
 * flags (the `authorize` task's: the launcher derives them from the config), against the sandbox in this
 * process: device code and PKCE (the test plays the browser, or pastes the URL on stdin),
 * the stored file, what is printed, and a relay started afterwards delivering.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import nodemailer from "nodemailer";
import { startRelay } from "../../src/app.ts";
import { parseConfig } from "../../src/config/load.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import { fingerprint } from "../../src/tokens/manager.ts";
import { makeAccounts, PASSWORD, rawMessage, type TestAccount } from "../harness.ts";

const ROOT = new URL("../../", import.meta.url);
const MAIN = fileURLToPath(new URL("src/main.ts", ROOT));
const LAUNCH = fileURLToPath(new URL("src/launch.ts", ROOT));
const ENTRY = fileURLToPath(new URL("authorize_entry.ts", import.meta.url));
const CONFIG_MOD = new URL("src/config/mod.ts", ROOT).href;
/** The flags proposed for `deno task authorize`, used until deno.json has that task. */
const AUTHORIZE_FLAGS = [
  "--allow-net=127.0.0.1,oauth2.googleapis.com:443,login.microsoftonline.com:443",
  "--allow-read=./accounts.ts,./state",
  "--allow-write=./state",
  "--allow-env=RELAY_*",
];

/** `deno` arguments up to and including the command name. */
async function launcher(): Promise<string[]> {
  const json = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const task: string | undefined = json.tasks.authorize;
  if (!task) return ["run", ...AUTHORIZE_FLAGS, ENTRY];
  const words = task.split(/\s+/);
  assert.equal(words[0], "deno");
  assert.ok(!words.some((w) => w === "-A" || w.startsWith("--allow-all")), "no -A");
  return words.slice(1).map((w) => w === "src/main.ts" ? MAIN : w === "src/launch.ts" ? LAUNCH : w);
}

/** Text of a stream as it arrives, with a way to wait for a pattern. */
function collect(stream: ReadableStream<Uint8Array>) {
  let text = "";
  const waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const done = (async () => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      for (const w of [...waiters]) {
        const m = text.match(w.re);
        if (m) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
    return text;
  })();
  return {
    done,
    waitFor(re: RegExp): Promise<RegExpMatchArray> {
      const m = text.match(re);
      if (m) return Promise.resolve(m);
      const found = Promise.withResolvers<RegExpMatchArray>();
      waiters.push({ re, resolve: found.resolve });
      done.then(() => found.reject(new Error(`never printed ${re}:\n${text}`)));
      return found.promise;
    },
  };
}

/** A test directory with accounts.ts for one sandbox account, and its sandbox. */
interface Setup {
  dir: string;
  sandbox: Sandbox;
  account: TestAccount;
  /** The config object the relay gets (stateDir absolute). */
  relayConfig: Record<string, unknown>;
}

async function setup(options: { configToken?: string } = {}): Promise<Setup> {
  const dir = await Deno.makeTempDir({ prefix: "relay-authorize-" });
  const sandbox = await startSandbox();
  sandbox.tokens.deviceIntervalSeconds = 1;
  const [account] = makeAccounts(1);
  account.refreshToken = options.configToken ?? "token-from-an-earlier-life";
  sandbox.addAccount(account);
  const provider = { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort };
  const passwordHash = await hashPassword(PASSWORD);
  const entry = {
    email: account.email,
    provider,
    clientId: account.clientId,
    passwordHash,
    ...(options.configToken ? { refreshToken: options.configToken } : {}),
  };
  await Deno.writeTextFile(
    join(dir, "accounts.ts"),
    `import { defineConfig, env } from "${CONFIG_MOD}";
export default defineConfig({
  accounts: [{
    ...${JSON.stringify(entry)},
    clientSecret: env("RELAY_TEST_CLIENT_SECRET"),
  }],
});
`,
  );
  const relayConfig = {
    smtp: { port: 0 },
    http: { port: 0 },
    stateDir: join(dir, "state"),
    accounts: [{ ...entry, clientSecret: account.clientSecret }],
  };
  return { dir, sandbox, account, relayConfig };
}

async function teardown(s: Setup): Promise<void> {
  await s.sandbox.close();
  await Deno.remove(s.dir, { recursive: true });
}

/** Starts `authorize` in `s.dir` with `args`. */
async function spawn(s: Setup, args: string[], stdin: "null" | "piped" = "null") {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...await launcher(), ...args],
    cwd: s.dir,
    clearEnv: true,
    env: { RELAY_TEST_CLIENT_SECRET: s.account.clientSecret, NO_COLOR: "1" },
    stdin,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const finished = (async () => {
    const { code } = await child.status;
    return { code, stdout: await stdout.done, stderr: await stderr.done };
  })();
  return { child, stderr, finished };
}

function tokenFile(s: Setup): string {
  return join(s.dir, "state", "tokens", `${encodeURIComponent(s.account.email)}.json`);
}

/** Neither the new token nor any other secret was printed. */
function assertNoSecret(s: Setup, output: string, token: string): void {
  for (const secret of [token, s.account.clientSecret, s.account.refreshToken]) {
    assert.ok(!output.includes(secret), `a secret was printed:\n${output}`);
  }
}

Deno.test("authorize (device code): stores the token 0600, prints no secret; a relay delivers with it", async () => {
  const s = await setup();
  try {
    const run = await spawn(s, ["--account", s.account.email.toUpperCase()]);
    const [, userCode] = await run.stderr.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/);
    assert.equal(s.sandbox.deviceAuthorization(userCode)!.status, "pending");
    s.sandbox.approveDevice(userCode, s.account.email);
    const { code, stdout, stderr } = await run.finished;
    assert.equal(code, 0, stderr);
    // The new token was tried at the provider's SMTP login before it was stored.
    assert.equal(s.sandbox.stats.smtp.authSuccesses, 1);
    assert.ok(!stderr.includes("could not check"), stderr);

    const token = s.sandbox.tokens.currentRefreshToken(s.account.email)!;
    const file = tokenFile(s);
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(join(s.dir, "state", "tokens"))).mode! & 0o777, 0o700);
    const stored = JSON.parse(await Deno.readTextFile(file));
    assert.deepEqual(Object.keys(stored).sort(), [
      "configFingerprint",
      "refreshToken",
      "updatedAt",
    ]);
    assert.equal(stored.refreshToken, token);
    assert.equal(stored.configFingerprint, fingerprint(undefined));
    assert.ok(!Number.isNaN(Date.parse(stored.updatedAt)));
    assertNoSecret(s, stdout + stderr, token);
    assert.match(stdout, /^Authorized user0@example\.com \(sandbox, device code\)\.$/m);
    assert.match(stdout, /stored in state\/tokens\/user0%40example\.com\.json \(mode 0600\)/);
    assert.match(stdout, /leave refreshToken out for user0@example\.com/);
    const polls = s.sandbox.deviceAuthorization(userCode)!.polls;
    for (let i = 1; i < polls.length; i++) assert.ok(polls[i] - polls[i - 1] >= 1000);

    // A relay started afterwards, with no refresh token in its config, uses the stored one.
    const relay = await startRelay(parseConfig(s.relayConfig));
    try {
      const client = nodemailer.createTransport({
        host: "127.0.0.1",
        port: relay.smtp.port,
        ignoreTLS: true,
        auth: { user: s.account.email, pass: PASSWORD },
      });
      const raw = rawMessage(s.account.email, "r@example.net", "authorized\r\n");
      const info = await client.sendMail({
        envelope: { from: s.account.email, to: ["r@example.net"] },
        raw: Buffer.from(raw),
      });
      client.close();
      assert.match(info.response, /^250 2\.0\.0 OK/);
    } finally {
      await relay.close();
    }
    assert.equal(s.sandbox.received.length, 1);
    assert.equal(s.sandbox.stats.token.refreshesByEmail.get(s.account.email), 1);
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize (pkce, --show-token): the browser comes back to the listener", async () => {
  const s = await setup({ configToken: "config-token" });
  try {
    const run = await spawn(s, ["--account", s.account.email, "--flow", "pkce", "--show-token"]);
    const [url] = await run.stderr.waitFor(/http:\/\/127\.0\.0\.1:\d+\/authorize\?\S+/);
    const page = await fetch(url);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /^Authorized/);
    const { code, stdout, stderr } = await run.finished;
    assert.equal(code, 0, stderr);
    const token = s.sandbox.tokens.currentRefreshToken(s.account.email)!;
    const stored = JSON.parse(await Deno.readTextFile(tokenFile(s)));
    assert.equal(stored.refreshToken, token);
    assert.equal(stored.configFingerprint, fingerprint("config-token"));
    assert.match(stdout, /authorization code \+ PKCE/);
    assert.match(stdout, /keep refreshToken for user0@example\.com exactly as it is/);
    assert.ok(stdout.includes(`refresh token (secret): ${token}\n`));
    assert.ok(!stderr.includes(token));
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize (pkce): the redirected URL pasted on stdin (stdin left open)", async () => {
  const s = await setup();
  try {
    const run = await spawn(s, ["--account", s.account.email, "--flow", "pkce"], "piped");
    const [url] = await run.stderr.waitFor(/http:\/\/127\.0\.0\.1:\d+\/authorize\?\S+/);
    await run.stderr.waitFor(/press Enter/);
    const response = await fetch(url, { redirect: "manual" });
    assert.equal(response.status, 302);
    const writer = run.child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(`${response.headers.get("location")}\n`));
    const { code, stdout, stderr } = await run.finished;
    await writer.close().catch(() => {});
    assert.equal(code, 0, stderr);
    const token = s.sandbox.tokens.currentRefreshToken(s.account.email)!;
    assert.equal(JSON.parse(await Deno.readTextFile(tokenFile(s))).refreshToken, token);
    assertNoSecret(s, stdout + stderr, token);
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize: state mismatch and denial exit 1 with one line, nothing stored", async () => {
  const s = await setup();
  try {
    const pkce = await spawn(s, ["--account", s.account.email, "--flow", "pkce"]);
    const [url] = await pkce.stderr.waitFor(/http:\/\/127\.0\.0\.1:\d+\/authorize\?\S+/);
    const forged = new URL(url);
    forged.searchParams.set("state", "forged");
    assert.equal((await fetch(forged).then(async (r) => (await r.body?.cancel(), r))).status, 400);
    const mismatch = await pkce.finished;
    assert.equal(mismatch.code, 1);
    assert.match(
      mismatch.stderr,
      /^error: authorize user0@example\.com: the redirect's state does not match .*$/m,
    );
    assert.equal(mismatch.stdout, "");

    const device = await spawn(s, ["--account", s.account.email]);
    const [, userCode] = await device.stderr.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/);
    s.sandbox.denyDevice(userCode);
    const denied = await device.finished;
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error: authorize user0@example\.com: .*\(access_denied\)/m);

    await assert.rejects(Deno.stat(tokenFile(s)), Deno.errors.NotFound);
    assert.equal(s.sandbox.stats.token.authorizations, 0);
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize: a token for another mailbox fails the SMTP login; the stored token stays", async () => {
  const s = await setup();
  try {
    // The same OAuth client also knows another mailbox; the "browser" signs in as that one.
    s.sandbox.addAccount({
      email: "other@example.com",
      clientId: s.account.clientId,
      clientSecret: s.account.clientSecret,
      refreshToken: `other-${crypto.randomUUID()}`,
    });
    await Deno.mkdir(join(s.dir, "state", "tokens"), { recursive: true });
    const earlier = JSON.stringify({
      refreshToken: "the-working-one",
      configFingerprint: fingerprint(undefined),
      updatedAt: "2026-11-01T00:00:00.000Z",
    });
    await Deno.writeTextFile(tokenFile(s), earlier, { mode: 0o600 });
    const logins = s.sandbox.stats.smtp.authFailures;

    const run = await spawn(s, ["--account", s.account.email]);
    const [, userCode] = await run.stderr.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/);
    s.sandbox.approveDevice(userCode, "other@example.com");
    const { code, stdout, stderr } = await run.finished;
    assert.equal(code, 1, stderr);
    assert.equal(stdout, "");
    assert.match(
      stderr,
      /^error: authorize user0@example\.com: the provider refused the new token at SMTP login \(535 5\.7\.8 .*\): was the browser signed in as user0@example\.com\? Nothing was stored\./m,
    );
    assert.ok(s.sandbox.stats.smtp.authFailures > logins, "the login was really tried");
    assert.equal(await Deno.readTextFile(tokenFile(s)), earlier);
    assertNoSecret(s, stdout + stderr, s.sandbox.tokens.currentRefreshToken("other@example.com")!);
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize: SMTP unreachable from this host: a warning, the token is stored", async () => {
  const s = await setup();
  try {
    await s.sandbox.smtp.close();
    const run = await spawn(s, ["--account", s.account.email]);
    const [, userCode] = await run.stderr.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/);
    s.sandbox.approveDevice(userCode, s.account.email);
    const { code, stderr } = await run.finished;
    assert.equal(code, 0, stderr);
    assert.match(
      stderr,
      /^warning: could not check the SMTP login for user0@example\.com \(.*ECONNREFUSED.*\); storing the token anyway\. Check it with: deno task start check --smtp$/m,
    );
    const stored = JSON.parse(await Deno.readTextFile(tokenFile(s)));
    assert.equal(stored.refreshToken, s.sandbox.tokens.currentRefreshToken(s.account.email));
  } finally {
    await teardown(s);
  }
});

Deno.test("authorize: usage mistakes exit 2 before anything is asked", async () => {
  const s = await setup();
  try {
    await Deno.writeTextFile(
      join(s.dir, "google.ts"),
      `export default ${
        JSON.stringify({
          accounts: [{
            email: "g@example.org",
            provider: "google",
            clientId: "id.apps.googleusercontent.com",
            passwordHash: (s.relayConfig.accounts as { passwordHash: string }[])[0].passwordHash,
          }],
        })
      };\n`,
    );
    const cases: [string[], RegExp][] = [
      [[], /needs --account EMAIL/],
      [["--account", "nobody@example.com"], /nobody@example\.com is not an account/],
      [["--account", s.account.email, "--flow", "magic"], /--flow: expected device or pkce/],
      [["--account", s.account.email, "--port", "99999"], /--port: expected a port/],
      [["--account", s.account.email, "--bogus"], /bogus/],
    ];
    for (const [args, expected] of cases) {
      const { code, stderr } = await (await spawn(s, args)).finished;
      assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
      assert.match(stderr, expected);
    }
    // Google has no device flow; the config path is read under its own permission.
    const google = await new Deno.Command(Deno.execPath(), {
      args: [
        ...(await launcher()).map((w) => w.startsWith("--allow-read=") ? `${w},./google.ts` : w),
        "--config",
        "./google.ts",
        "--account",
        "g@example.org",
        "--flow",
        "device",
      ],
      cwd: s.dir,
      clearEnv: true,
      stdin: "null",
    }).output();
    assert.equal(google.code, 2);
    assert.match(
      new TextDecoder().decode(google.stderr),
      /--flow device: Google has no device-code flow for Gmail scopes; use --flow pkce/,
    );
    assert.equal(s.sandbox.stats.token.requests, 0);
  } finally {
    await teardown(s);
  }
});
