/**
 * Domain entries in the config: each problem is reported on the field at fault, the key
 * and certificate files are read and checked at load, and no key material appears in
 * any problem line.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { MICROSOFT_APP_SCOPE } from "../../src/config/domains.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { makeCertificate } from "../apponly/helpers.ts";
import { HASH, problems } from "./helpers.ts";

const SANDBOX = { type: "sandbox", tokenUrl: "http://127.0.0.1:1/token", smtpPort: 1 };

Deno.test("domains: a service account key file and a certificate are read and resolved", async () => {
  const dir = await Deno.makeTempDir();
  const cert = await makeCertificate();
  try {
    const sa = await generateServiceAccountKey(
      "sa@p.iam.test",
      "https://oauth2.googleapis.com/token",
    );
    await Deno.writeTextFile(`${dir}/sa.json`, sa.keyFile);
    const config = parseConfig({
      domains: [
        {
          domain: "Example.COM",
          provider: "google",
          credential: { type: "serviceAccount", keyFile: `${dir}/sa.json` },
          passwordHash: HASH,
          passwords: { Carol: HASH, "dave@example.com": HASH },
          quota: { messagesPerDay: 100 },
        },
        {
          domain: "contoso.test",
          provider: { type: "microsoft", tenant: "contoso.test" },
          credential: {
            type: "certificate",
            clientId: "app",
            certificateFile: cert.certFile,
            privateKeyFile: cert.keyFile,
          },
          passwords: { erin: HASH },
        },
      ],
    });
    assert.deepEqual(config.accounts, []);
    const [google, microsoft] = config.domains;
    assert.equal(google.domain, "example.com");
    assert.equal(google.provider.scope, "https://mail.google.com/");
    assert.equal(google.credential.type, "serviceAccount");
    assert.deepEqual(Object.keys(google.passwords), ["carol@example.com", "dave@example.com"]);
    assert.deepEqual(google.quota, {
      messagesPerDay: 100,
      recipientsPerDay: 10_000,
      messagesPerMinute: 0,
    });
    assert.equal(google.maxConnections, 5);
    assert.equal(microsoft.provider.scope, MICROSOFT_APP_SCOPE);
    assert.equal(
      microsoft.provider.tokenUrl,
      "https://login.microsoftonline.com/contoso.test/oauth2/v2.0/token",
    );
    assert.equal(microsoft.maxConnections, 3);
    assert.equal(microsoft.credential.type, "certificate");
    if (microsoft.credential.type === "certificate") {
      assert.match(microsoft.credential.x5t, /^[A-Za-z0-9_-]{27}$/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cert.dir, { recursive: true });
  }
});

Deno.test("domains: each problem names its field, and no key material", async () => {
  const dir = await Deno.makeTempDir();
  const cert = await makeCertificate();
  const otherCert = await makeCertificate();
  try {
    const sa = await generateServiceAccountKey(
      "sa@p.iam.test",
      "https://oauth2.googleapis.com/token",
    );
    const broken = {
      ...JSON.parse(sa.keyFile),
      private_key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    };
    await Deno.writeTextFile(`${dir}/broken.json`, JSON.stringify(broken));
    await Deno.writeTextFile(`${dir}/notjson.json`, "private_key=abc");
    const entry = (over: Record<string, unknown>) => ({
      domain: "example.com",
      provider: SANDBOX,
      credential: { type: "clientSecret", clientId: "app", clientSecret: "s3cret-123" },
      passwordHash: HASH,
      ...over,
    });
    const lines = problems({
      domains: [
        entry({ credential: { type: "serviceAccount", keyFile: `${dir}/missing.json` } }),
        entry({
          domain: "b.example",
          credential: { type: "serviceAccount", keyFile: `${dir}/notjson.json` },
        }),
        entry({
          domain: "c.example",
          credential: { type: "serviceAccount", keyFile: `${dir}/broken.json` },
        }),
        entry({ domain: "d.example", credential: { type: "serviceAccount" } }),
        entry({ domain: "e.example", passwordHash: undefined }),
        entry({ domain: "f.example", provider: "outlook" }),
        entry({ domain: "g.example", provider: "google" }),
        entry({
          domain: "h.example",
          mailboxes: ["x@elsewhere.example"],
          passwords: { "y@elsewhere.example": HASH },
        }),
        entry({
          domain: "i.example",
          credential: {
            type: "certificate",
            clientId: "app",
            certificateFile: cert.certFile,
            privateKeyFile: otherCert.keyFile,
          },
        }),
        entry({
          domain: "j.example",
          credential: {
            type: "certificate",
            clientId: "app",
            certificateFile: `${dir}/broken.json`,
            privateKeyFile: cert.keyFile,
          },
        }),
        entry({ domain: "not a domain", credential: { type: "password" } }),
        entry({
          domain: "k.example",
          provider: { type: "microsoft", tenant: "t" },
          credential: { type: "serviceAccount", key: sa.keyFile },
        }),
      ],
    });
    assert.deepEqual(
      lines,
      [
        `domains[0].credential.keyFile: cannot read ${dir}/missing.json: no such file`,
        "domains[1].credential.keyFile: not a usable service account key: not JSON (expected a service account key file from the Cloud console)",
        "domains[2].credential.keyFile: not a usable service account key: private_key: not a PEM private key",
        "domains[3].credential.keyFile: expected keyFile (a path) or key (the file's content, from env), one of them",
        "domains[4].passwordHash: expected passwordHash (one password for the domain) or passwords (per mailbox)",
        "domains[5].provider: Outlook.com has no app-only credentials: use { type: 'microsoft', tenant }",
        "domains[6].credential.type: expected 'serviceAccount' for Google (client credentials are Microsoft's)",
        "domains[7].passwords.y@elsewhere.example: expected a mailbox of h.example or its local part",
        "domains[7].mailboxes[0]: expected a mailbox of h.example",
        "domains[8].credential.privateKeyFile: the private key does not belong to certificateFile",
        "domains[9].credential.certificateFile: not a PEM certificate",
        "domains[10].domain: expected a domain name such as example.com",
        "domains[10].credential.type: expected { type: 'serviceAccount' | 'clientSecret' | 'certificate', ... }",
        "domains[11].credential.type: expected 'clientSecret' or 'certificate' for Microsoft",
      ],
    );
    const text = lines.join("\n");
    const keyBody = JSON.parse(sa.keyFile).private_key.split("\n")[1];
    assert.ok(!text.includes(keyBody));
    assert.ok(!text.includes(cert.keyPem.split("\n")[1]));
    assert.ok(!text.includes("s3cret-123"));
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cert.dir, { recursive: true });
    await Deno.remove(otherCert.dir, { recursive: true });
  }
});

Deno.test("domains: a domain configured twice", () => {
  const entry = (domain: string) => ({
    domain,
    provider: SANDBOX,
    credential: { type: "clientSecret", clientId: "app", clientSecret: "s3cret-123" },
    passwordHash: HASH,
  });
  assert.deepEqual(problems({ domains: [entry("a.example"), entry("A.Example")] }), [
    "domains[1].domain: expected a unique domain, A.Example is also domains[0]",
  ]);
});

Deno.test("domains: no accounts and no domains is one problem on accounts", () => {
  assert.deepEqual(problems({}), [
    "accounts: expected at least one account (or a domain entry in domains)",
  ]);
  assert.deepEqual(problems({ domains: "x" }), [
    "domains: expected an array of domain entries",
  ]);
});
