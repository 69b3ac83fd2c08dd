/**
 * `check` for domain entries, as a subprocess against the sandbox: it tries the mailboxes
 * named with --mailbox (token, then SMTP login) and maps each provider error to its hint:
 * delegation missing, unknown mailbox, wrong secret, certificate not registered, mailbox
 * permission missing (535 5.7.3), SMTP AUTH off (535 5.7.139).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import type { AccountCheck } from "../../src/commands/check.ts";
import { APP_ID, APP_SECRET, makeCertificate, passwordHash, SA_EMAIL } from "./helpers.ts";

const MAIN = fileURLToPath(new URL("../../src/main.ts", import.meta.url));
const CONFIG_MOD = new URL("../../src/config/mod.ts", import.meta.url).href;

Deno.test("check --mailbox: token and SMTP login per mailbox, with a hint per provider error", async () => {
  const sandbox = await startSandbox();
  const dir = await Deno.makeTempDir({ prefix: "relay-apponly-check-" });
  const cert = await makeCertificate();
  const stranger = await makeCertificate();
  try {
    const generated = await generateServiceAccountKey(SA_EMAIL, sandbox.tokenUrl);
    const sa = sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: SA_EMAIL,
      publicKeyPem: generated.publicKeyPem,
      domains: ["g.example"],
      unknownMailboxes: new Set(["ghost@g.example"]),
    });
    const app = sandbox.tokens.appOnly.addApp({
      clientId: APP_ID,
      clientSecret: APP_SECRET,
      certificates: [cert.certPem],
      mailboxes: new Set(["a@m.example", "c@m.example", "a@c.example"]),
    });
    sandbox.tokens.appOnly.smtpAuthDisabled.add("c@m.example");
    await Deno.writeTextFile(`${dir}/sa.json`, generated.keyFile);
    await Deno.copyFile(stranger.certFile, `${dir}/stranger.crt`);
    await Deno.copyFile(stranger.keyFile, `${dir}/stranger.key`);
    await Deno.copyFile(cert.certFile, `${dir}/app.crt`);
    await Deno.copyFile(cert.keyFile, `${dir}/app.key`);
    const provider = JSON.stringify({
      type: "sandbox",
      tokenUrl: sandbox.tokenUrl,
      smtpPort: sandbox.smtpPort,
    });
    const writeConfig = async (secret: string, certName: string) =>
      await Deno.writeTextFile(
        `${dir}/accounts.ts`,
        `import { defineConfig } from "${CONFIG_MOD}";
const provider = ${provider};
const passwordHash = "${await passwordHash()}";
export default defineConfig({
  stateDir: "./state",
  domains: [
    { domain: "g.example", provider, credential: { type: "serviceAccount", keyFile: "./sa.json" }, passwordHash },
    { domain: "m.example", provider, credential: { type: "clientSecret", clientId: "${APP_ID}", clientSecret: "${secret}" }, passwordHash },
    { domain: "c.example", provider, credential: { type: "certificate", clientId: "${APP_ID}", certificateFile: "./${certName}.crt", privateKeyFile: "./${certName}.key" }, passwordHash, mailboxes: ["a@c.example"] },
  ],
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
          ...extra,
        ],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    };
    await writeConfig(APP_SECRET, "app");
    const mailboxes = [
      "a@g.example",
      "ghost@g.example",
      "a@m.example",
      "b@m.example",
      "c@m.example",
    ];
    const out = await run("--smtp", "--json", ...mailboxes.flatMap((m) => ["--mailbox", m]));
    assert.equal(out.code, 1, out.stderr);
    const results: AccountCheck[] = JSON.parse(out.stdout);
    const row = (m: string) => results.find((r) => r.account === m)!;
    assert.deepEqual(results.map((r) => r.account), mailboxes);
    assert.deepEqual([row("a@g.example").token, row("a@g.example").smtp], ["ok", "ok"]);
    assert.deepEqual([row("a@m.example").token, row("a@m.example").smtp], ["ok", "ok"]);
    assert.equal(row("ghost@g.example").token, "failed");
    assert.equal(row("ghost@g.example").error, "invalid_grant: Invalid email or User ID");
    assert.match(row("ghost@g.example").hint!, /^no such user in the Workspace domain/);
    assert.deepEqual([row("b@m.example").token, row("b@m.example").smtp], ["ok", "failed"]);
    assert.match(row("b@m.example").error!, /535 5\.7\.3 Authentication unsuccessful/);
    assert.match(row("b@m.example").hint!, /New-ServicePrincipal.*Add-MailboxPermission/);
    assert.match(row("c@m.example").error!, /535 5\.7\.139/);
    assert.match(row("c@m.example").hint!, /SMTP AUTH is disabled/);

    // Without --mailbox: the configured list (c.example), a row with a hint for the others.
    const plain = await run();
    assert.equal(plain.code, 0, plain.stderr);
    const lines = plain.stdout.trimEnd().split("\n");
    assert.match(lines[1], /^\*@g\.example\s+sandbox\s+skipped\s+skipped$/);
    assert.match(
      lines[2],
      /^\s+hint:\s+name mailboxes to try: check --mailbox someone@g\.example$/,
    );
    assert.match(plain.stdout, /\na@c\.example\s+sandbox\s+ok\s+skipped\n/);

    // The credentials break: delegation removed, wrong secret, unregistered certificate.
    sa.domains = [];
    app.clientSecret = "rotated-in-azure";
    await writeConfig(APP_SECRET, "stranger");
    const broken = await run(
      "--json",
      "--mailbox",
      "a@g.example",
      "--mailbox",
      "a@m.example",
      "--mailbox",
      "a@c.example",
    );
    assert.equal(broken.code, 1, broken.stderr);
    const [g, m, c]: AccountCheck[] = JSON.parse(broken.stdout);
    assert.match(g.error!, /^unauthorized_client: /);
    assert.match(g.hint!, /^domain-wide delegation missing: .*https:\/\/mail\.google\.com\//);
    assert.match(m.error!, /AADSTS7000215/);
    assert.match(m.hint!, /^AADSTS7000215: invalid client secret/);
    assert.match(c.error!, /AADSTS700027/);
    assert.match(c.hint!, /^AADSTS700027: the certificate is not registered with the app/);
    for (const text of [out.stdout, plain.stdout, broken.stdout, out.stderr, broken.stderr]) {
      assert.ok(!text.includes(APP_SECRET));
      assert.ok(!text.includes(cert.keyPem.split("\n")[1]));
    }
    // A mailbox of no configured domain is a usage error.
    const usage = await run("--mailbox", "x@nowhere.example");
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--mailbox x@nowhere\.example: neither an account nor a mailbox/);
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cert.dir, { recursive: true });
    await Deno.remove(stranger.dir, { recursive: true });
  }
});
