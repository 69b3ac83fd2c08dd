/**
 * src/launch.ts as a process: the start task derives the permission set from the config
 * and runs the relay with it (`--host 0.0.0.0` serves); `permissions` prints the set,
 * `compile --print` bakes in the same; a config that reaches beyond its file or `RELAY_*`
 * is one line; a denied listener is one line; a SIGKILLed launcher leaves no relay behind.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
import nodemailer from "nodemailer";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import { freePort, makeAccounts, PASSWORD, rawMessage, until } from "../harness.ts";
import { configText, RelayProcess } from "./relay_process.ts";

const ROOT = new URL("../../", import.meta.url);
const LAUNCH = fileURLToPath(new URL("src/launch.ts", ROOT));
const MAIN = fileURLToPath(new URL("src/main.ts", ROOT));

/** Runs the real binary to completion in `cwd`. */
async function run(args: string[], cwd: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function relayOne(port: number, account: ReturnType<typeof makeAccounts>[number]) {
  const client = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    ignoreTLS: true,
    auth: { user: account.email, pass: PASSWORD },
  });
  try {
    const info = await client.sendMail({
      envelope: { from: account.email, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(account.email, "r@example.net", "launched\r\n")),
    });
    return info.response;
  } finally {
    client.close();
  }
}

Deno.test("deno task start --host 0.0.0.0 serves, with the derived set; permissions prints it", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const relay = await RelayProcess.start(sandbox, await configText(sandbox, [account]), [
    "--host",
    "0.0.0.0",
  ]);
  try {
    assert.ok(relay.log.includes(`"smtp":"0.0.0.0:${relay.ports.smtp}"`), relay.log);
    assert.match(await relayOne(relay.ports.smtp, account), /^250 2\.0\.0 OK/);
    assert.equal(sandbox.received.length, 1);
    assert.ok(!/NotCapable|\n\s+at /.test(relay.log), relay.log);

    const printed = await run([
      "run",
      "--allow-run",
      LAUNCH,
      "permissions",
      "--host",
      "0.0.0.0",
      "--port",
      String(relay.ports.smtp),
      "--metrics-port",
      String(relay.ports.metrics),
    ], relay.dir);
    assert.equal(printed.code, 0, printed.stderr);
    const dir = await Deno.realPath(relay.dir);
    const token = new URL(sandbox.tokenUrl);
    assert.equal(
      printed.stdout,
      `--no-prompt --allow-net=${
        [
          `0.0.0.0:${relay.ports.smtp}`,
          `127.0.0.1:${relay.ports.metrics}`,
          `127.0.0.1:${token.port}`,
          `localhost:${sandbox.smtpPort}`,
        ].sort().join(",")
      } ` +
        `--allow-read=${dir}/accounts.ts,${dir}/state --allow-write=${dir}/state ` +
        "--allow-env=RELAY_ADMIN_TOKEN\n",
    );

    // The compile task bakes in the set for the config as it is (its default ports).
    const plain = await run(["run", "--allow-run", LAUNCH, "permissions"], relay.dir);
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stdout, /--allow-net=127\.0\.0\.1:2525,127\.0\.0\.1:\d+,127\.0\.0\.1:9090,/);
    const compile = await run(["run", "--allow-run", LAUNCH, "compile", "--print"], relay.dir);
    assert.equal(compile.code, 0, compile.stderr);
    assert.equal(
      compile.stdout,
      `deno compile ${plain.stdout.trim()} --v8-flags=--max-semi-space-size=2 ` +
        `--include=${
          MAIN.replace(/main\.ts$/, "workers_entry.ts")
        } --output smtp-oauth2-relay ${MAIN}\n`,
    );
  } finally {
    await relay.close();
    await sandbox.close();
  }
});

Deno.test("the loader may read the config file and RELAY_* only: anything else is one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-launch-" });
  try {
    const cases: [string, RegExp][] = [
      [
        `Deno.readTextFileSync("/etc/hostname");\nexport default {};\n`,
        /^\.\/accounts\.ts: cannot load module: Requires read access to "\/etc\/hostname"/,
      ],
      [
        `export default { x: Deno.env.get("HOME") };\n`,
        /^\.\/accounts\.ts: cannot load module: Requires env access to "HOME"/,
      ],
    ];
    for (const [text, expected] of cases) {
      await Deno.writeTextFile(`${dir}/accounts.ts`, text);
      const r = await run(["run", "--allow-run", LAUNCH, "--port", "0"], dir);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, expected);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    // An unset env() secret: the set is printed (a build machine has no secrets), the
    // relay is not started.
    const sandbox = { tokenUrl: "http://127.0.0.1:1/token", smtpPort: 1 } as Sandbox;
    const [account] = makeAccounts(1);
    await Deno.writeTextFile(
      `${dir}/accounts.ts`,
      (await configText(sandbox, [account])).replace(
        "clientSecret: a.clientSecret",
        'clientSecret: { env: "RELAY_UNSET_SECRET" }',
      ),
    );
    const printed = await run(["run", "--allow-run", LAUNCH, "permissions"], dir);
    assert.equal(printed.code, 0, printed.stderr);
    assert.match(printed.stdout, / --allow-env=RELAY_ADMIN_TOKEN,RELAY_UNSET_SECRET\n$/);
    const start = await run(["run", "--allow-run", LAUNCH], dir);
    assert.equal(start.code, 2);
    assert.equal(
      start.stderr,
      "./accounts.ts: invalid configuration\n" +
        "  accounts[0].clientSecret: environment variable RELAY_UNSET_SECRET is not set\n",
    );

    const missing = await run(["run", "--allow-run", LAUNCH, "check"], dir + "/..");
    assert.equal(missing.code, 2);
    assert.match(
      missing.stderr,
      /^\.\/accounts\.ts: no such file \(.*\/accounts\.ts\); create it: cp accounts\.example\.ts \.\/accounts\.ts and edit it/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a listener the flags do not allow is one line, not a stack trace", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  const dir = await Deno.makeTempDir({ prefix: "relay-denied-" });
  try {
    await Deno.writeTextFile(`${dir}/accounts.ts`, await configText(sandbox, [account]));
    const port = freePort();
    const r = await run([
      "run",
      "--allow-read=.",
      "--allow-write=./state",
      "--allow-env=RELAY_*",
      "--allow-net=127.0.0.1,localhost",
      MAIN,
      "--host",
      "0.0.0.0",
      "--port",
      String(port),
      "--metrics-port",
      String(freePort()),
      "--log-format",
      "json",
    ], dir);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split("\n").filter((l) => !l.startsWith("{"));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], new RegExp(`Requires net access to "0\\.0\\.0\\.0:${port}"`));
    assert.match(lines[0], /deno task permissions/);
    assert.ok(!/\n\s+at /.test(r.stderr), "no stack trace");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await sandbox.close();
  }
});

Deno.test("a SIGKILLed launcher leaves no relay behind", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const relay = await RelayProcess.start(sandbox, await configText(sandbox, [account]));
  try {
    relay.kill("SIGKILL");
    await relay.exited();
    const gone = await until(async () => {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port: relay.ports.smtp })).close();
        return false;
      } catch {
        return true;
      }
    }, 15_000);
    assert.ok(gone, "the relay still listens after its launcher was killed");
  } finally {
    await relay.close();
    await sandbox.close();
  }
});

Deno.test("a reload that needs hosts the relay was started without is refused, naming the flags", async () => {
  const sandbox = await startSandbox();
  const [account, other] = makeAccounts(2);
  sandbox.addAccount(account);
  const relay = await RelayProcess.start(sandbox, await configText(sandbox, [account]));
  try {
    const elsewhere = freePort();
    // Both accounts on a sandbox SMTP port the relay was not started with.
    const moved = { tokenUrl: sandbox.tokenUrl, smtpPort: elsewhere } as typeof sandbox;
    const text = await configText(moved, [account, other]);
    await relay.writeConfig(text);
    const from = relay.log.length;
    relay.kill("SIGHUP");
    await relay.waitFor("reload failed", 20_000, from);
    assert.ok(
      relay.log.slice(from).includes(
        `needs permissions the relay was not started with; restart it to apply: ` +
          `--allow-net=localhost:${elsewhere}`,
      ),
      relay.log.slice(from),
    );
    assert.match(await relay.metrics(), /smtp_relay_config_reloads_total\{result="failure"\} 1/);
    assert.match(await relayOne(relay.ports.smtp, account), /^250 2\.0\.0 OK/);
  } finally {
    await relay.close();
    await sandbox.close();
  }
});

Deno.test("a missing TLS file named by the config is one line, exit 1", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-launch-tls-" });
  try {
    const sandbox = { tokenUrl: "http://127.0.0.1:1/token", smtpPort: 1 } as Sandbox;
    const [account] = makeAccounts(1);
    await Deno.writeTextFile(
      `${dir}/accounts.ts`,
      await configText(sandbox, [account], {
        top: `smtp: { port: 0 }, http: { port: 0 }, ` +
          `tls: { certFile: "${dir}/cert.pem", keyFile: "${dir}/key.pem" },`,
      }),
    );
    const r = await run(["run", "--allow-run", LAUNCH], dir);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `^cannot start: No such file or directory \\(os error 2\\): readfile '${dir}/(cert|key)\\.pem'\\n$`,
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
