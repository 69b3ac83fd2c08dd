/**
 * A service account key file and the relay's permissions, as real processes:
 * - the start task (the launcher) derives the set from the config, so the key file is
 *   readable wherever it is, and nothing more: a mailbox of the domain relays;
 * - a missing key file is a clear start error naming the field and the path;
 * - a relay run by hand with flags that do not cover the key file (a hand-written unit)
 *   stops with one line naming the field, the path and the flag to add.
 * Never a stack trace, never a byte of the key.
 */
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { freePort, PASSWORD, startTaskArgs, type TaskPorts, until } from "../harness.ts";
import { DOMAIN, passwordHash, SA_EMAIL } from "./helpers.ts";

const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

Deno.test("a key file: the start task allows exactly it and relays; missing or not allowed is one clear line", async () => {
  const sandbox = await startSandbox();
  const dir = await Deno.makeTempDir({ prefix: "relay-apponly-process-" });
  const outside = await Deno.makeTempDir({ prefix: "relay-apponly-outside-" });
  let child: Deno.ChildProcess | undefined;
  try {
    const generated = await generateServiceAccountKey(SA_EMAIL, sandbox.tokenUrl);
    sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: SA_EMAIL,
      publicKeyPem: generated.publicKeyPem,
      domains: [DOMAIN],
    });
    await Deno.writeTextFile(`${outside}/sa.json`, generated.keyFile, { mode: 0o600 });
    await Deno.mkdir(`${dir}/tls`);
    await Deno.writeTextFile(`${dir}/tls/sa.json`, generated.keyFile, { mode: 0o600 });
    const config = async (keyFile: string) =>
      `import { defineConfig } from "${CONFIG_MOD}";
export default defineConfig({
  domains: [{
    domain: "${DOMAIN}",
    provider: ${
        JSON.stringify({ type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort })
      },
    credential: { type: "serviceAccount", keyFile: ${JSON.stringify(keyFile)} },
    passwordHash: "${await passwordHash()}",
  }],
});
`;
    const ports: TaskPorts = {
      smtp: freePort(),
      metrics: freePort(),
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const command = async () =>
      new Deno.Command(Deno.execPath(), {
        args: [...await startTaskArgs(ports), "--log-format", "json"],
        cwd: dir,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      });

    const keyLine = JSON.parse(generated.keyFile).private_key.split("\n")[1];
    const main = new URL("../../src/main.ts", import.meta.url).pathname;

    // Missing: the start path names the field and the path.
    await Deno.writeTextFile(`${dir}/accounts.ts`, await config(`${outside}/missing.json`));
    const missing = await (await command()).output();
    const missingErr = new TextDecoder().decode(missing.stderr);
    assert.equal(missing.code, 2, missingErr);
    assert.match(
      missingErr,
      new RegExp(
        `domains\\[0\\]\\.credential\\.keyFile: cannot read ${outside}/missing\\.json: no such file`,
      ),
    );
    assert.doesNotMatch(missingErr, /\n\s+at |Error:/); // no stack trace

    // By hand, flags without the key file: one line naming the flag to add.
    await Deno.writeTextFile(`${dir}/accounts.ts`, await config(`${outside}/sa.json`));
    const refused = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        `--allow-read=${dir}`,
        "--allow-env=RELAY_*",
        main,
        "check",
      ],
      cwd: dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(refused.stderr);
    assert.equal(refused.code, 2, stderr);
    assert.match(
      stderr,
      new RegExp(
        `domains\\[0\\]\\.credential\\.keyFile: cannot read ${outside}/sa\\.json: not readable ` +
          `under the relay's permissions \\(start it with --allow-read=${outside}/sa\\.json\\)`,
      ),
    );
    assert.doesNotMatch(stderr, /\n\s+at |Error:/); // no stack trace
    assert.ok(!stderr.includes(keyLine));

    // The start task: the printed set reads exactly the config, the key file and the state.
    const printed = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-run",
        new URL("../../src/launch.ts", import.meta.url).pathname,
        "permissions",
        "--format",
        "json",
      ],
      cwd: dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(printed.code, 0, new TextDecoder().decode(printed.stderr));
    const real = await Deno.realPath(dir);
    assert.deepEqual(
      JSON.parse(new TextDecoder().decode(printed.stdout)).read,
      [
        `${real}/accounts.ts`,
        `${real}/state`,
        `${await Deno.realPath(outside)}/sa.json`,
      ].sort(),
    );
    child = (await command()).spawn();
    const transport = nodemailer.createTransport({
      host: "127.0.0.1",
      port: ports.smtp,
      ignoreTLS: true,
      auth: { user: `alice@${DOMAIN}`, pass: PASSWORD },
      logger: false,
    });
    let reply = "";
    assert.ok(
      await until(async () => {
        try {
          reply = (await transport.sendMail({
            envelope: { from: `alice@${DOMAIN}`, to: ["r@example.net"] },
            raw: "Subject: hi\r\n\r\nhello\r\n",
          })).response;
          return true;
        } catch (err) {
          reply = String(err);
          return !/ECONNREFUSED/.test(reply);
        }
      }, 30_000),
      reply,
    );
    transport.close();
    assert.match(reply, /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 OK 1 - sandbox$/);
    assert.equal(sandbox.received[0].user, `alice@${DOMAIN}`);
  } finally {
    if (child) {
      child.kill("SIGTERM");
      await child.output();
    }
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});
