/**
 * The relay as a real process under the start task's permission flags: a service
 * account key file outside what `--allow-read` allows is a clear start error naming the
 * field, the path and the flag (exit 2, no stack trace, nothing of the key); the same key
 * where the flags allow it relays a mailbox of the domain.
 */
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { freePort, PASSWORD, startTaskArgs, type TaskPorts, until } from "../harness.ts";
import { DOMAIN, passwordHash, SA_EMAIL } from "./helpers.ts";

const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

Deno.test("a key file the permissions do not cover stops the start with a clear error; one they cover relays", async () => {
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

    await Deno.writeTextFile(`${dir}/accounts.ts`, await config(`${outside}/sa.json`));
    const refused = await (await command()).output();
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
    const keyLine = JSON.parse(generated.keyFile).private_key.split("\n")[1];
    assert.ok(!stderr.includes(keyLine));

    await Deno.writeTextFile(`${dir}/accounts.ts`, await config("./tls/sa.json"));
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
