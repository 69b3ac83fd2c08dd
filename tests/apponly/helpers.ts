/**
 * App-only test fixtures: a sandbox with a Google-style service account or a
 * Microsoft-style app registration, key material generated per test run (WebCrypto for
 * the service account key, openssl for the app's X.509 certificate), and a relay in this
 * process with a domain entry for it.
 * @module
 */
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import { parseConfig, type RelayConfig } from "../../src/config/load.ts";
import { type RunningRelay, startRelay } from "../../src/app.ts";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import {
  generateServiceAccountKey,
  type SandboxApp,
  type SandboxServiceAccount,
} from "../../src/sandbox/app_only.ts";
import { hashPassword } from "../../src/relay/password.ts";
import { PASSWORD, rawMessage } from "../harness.ts";

/** The domain every fixture serves. */
export const DOMAIN = "fleet.example";
/** The service account's address. */
export const SA_EMAIL = "relay@sandbox-project.iam.gserviceaccount.test";
/** The Microsoft app's client id. */
export const APP_ID = "00000000-0000-4000-8000-00000000a99";
/** The Microsoft app's client secret. */
export const APP_SECRET = `app-secret-${crypto.randomUUID()}`;

let hash: Promise<string> | undefined;
/** The hash of {@link PASSWORD}, computed once. */
export function passwordHash(): Promise<string> {
  return hash ??= hashPassword(PASSWORD);
}

/** A certificate and its key (PEM), made by openssl in a temporary directory. */
export interface TestCertificate {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly certPem: string;
  readonly keyPem: string;
}

/** A self-signed RSA certificate valid for two days (openssl). */
export async function makeCertificate(days = 2): Promise<TestCertificate> {
  const dir = await Deno.makeTempDir({ prefix: "relay-cert-" });
  const certFile = `${dir}/app.crt`, keyFile = `${dir}/app.key`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      keyFile,
      "-out",
      certFile,
      "-days",
      String(days),
      "-subj",
      "/CN=relay-app-only-test",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`openssl failed: ${new TextDecoder().decode(out.stderr)}`);
  return {
    dir,
    certFile,
    keyFile,
    certPem: await Deno.readTextFile(certFile),
    keyPem: await Deno.readTextFile(keyFile),
  };
}

/** Which credential a fixture uses. */
export type CredentialKind = "serviceAccount" | "clientSecret" | "certificate";

/** A running sandbox + relay with one domain entry. */
export interface DomainHarness {
  readonly sandbox: Sandbox;
  readonly relay: RunningRelay;
  readonly config: RelayConfig;
  /** The config object the relay was started with (as `accounts.ts` would export it). */
  readonly input: Record<string, unknown>;
  readonly stateDir: string;
  /** Temporary directory with the key files. */
  readonly keyDir: string;
  /** The service account key file's content (serviceAccount fixtures). */
  readonly keyFile?: string;
  /** The service account as the sandbox knows it. */
  readonly serviceAccount?: SandboxServiceAccount;
  /** The app as the sandbox knows it. */
  readonly app?: SandboxApp;
  /** The certificate (certificate fixtures). */
  readonly certificate?: TestCertificate;
  /** Sends one message as `mailbox`; the relay's final reply line (also refusals). */
  send(mailbox: string, options?: { password?: string; to?: string }): Promise<string>;
  /** Scrapes /metrics. */
  metrics(): Promise<string>;
  close(): Promise<void>;
}

/** Options of {@link startDomainHarness}. */
export interface DomainHarnessOptions {
  /** Credential (default serviceAccount). */
  readonly kind?: CredentialKind;
  /** Mailboxes the sandbox lets the app send as (client credentials; default all used). */
  readonly permitted?: string[];
  /** Extra fields of the domain entry. */
  readonly domain?: Record<string, unknown>;
  /** Extra top-level config. */
  readonly config?: Record<string, unknown>;
  /** Sandbox access token lifetime, s. */
  readonly accessTokenTtlSeconds?: number;
}

/** Starts a sandbox with the credential, and a relay with a domain entry for it. */
export async function startDomainHarness(o: DomainHarnessOptions = {}): Promise<DomainHarness> {
  const kind = o.kind ?? "serviceAccount";
  const sandbox = await startSandbox({ accessTokenTtlSeconds: o.accessTokenTtlSeconds });
  const stateDir = await Deno.makeTempDir({ prefix: "relay-apponly-" });
  const keyDir = await Deno.makeTempDir({ prefix: "relay-apponly-keys-" });
  let credential: Record<string, unknown>;
  let keyFile: string | undefined, serviceAccount, app;
  let certificate: TestCertificate | undefined;
  if (kind === "serviceAccount") {
    const generated = await generateServiceAccountKey(SA_EMAIL, sandbox.tokenUrl);
    keyFile = generated.keyFile;
    serviceAccount = sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: SA_EMAIL,
      publicKeyPem: generated.publicKeyPem,
      domains: [DOMAIN],
    });
    await Deno.writeTextFile(`${keyDir}/sa.json`, keyFile, { mode: 0o600 });
    credential = { type: "serviceAccount", keyFile: `${keyDir}/sa.json` };
  } else {
    certificate = kind === "certificate" ? await makeCertificate() : undefined;
    app = sandbox.tokens.appOnly.addApp({
      clientId: APP_ID,
      clientSecret: APP_SECRET,
      certificates: certificate ? [certificate.certPem] : [],
      mailboxes: new Set(o.permitted ?? []),
    });
    credential = certificate
      ? {
        type: "certificate",
        clientId: APP_ID,
        certificateFile: certificate.certFile,
        privateKeyFile: certificate.keyFile,
      }
      : { type: "clientSecret", clientId: APP_ID, clientSecret: APP_SECRET };
  }
  const input = {
    smtp: { port: 0 },
    http: { port: 0 },
    stateDir,
    domains: [{
      domain: DOMAIN,
      provider: { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort },
      credential,
      passwordHash: await passwordHash(),
      ...o.domain,
    }],
    ...o.config,
  };
  const config = parseConfig(input);
  const relay = await startRelay(config);
  const h: DomainHarness = {
    sandbox,
    relay,
    config,
    input,
    stateDir,
    keyDir,
    keyFile,
    serviceAccount,
    app,
    certificate,
    async send(mailbox, so = {}) {
      const t = nodemailer.createTransport({
        host: "127.0.0.1",
        port: relay.smtp.port,
        secure: false,
        ignoreTLS: true,
        name: "client.test",
        auth: { user: mailbox, pass: so.password ?? PASSWORD },
        logger: false,
      });
      const to = so.to ?? "rcpt@example.net";
      try {
        const info = await t.sendMail({
          envelope: { from: mailbox, to: [to] },
          raw: Buffer.from(rawMessage(mailbox, to, `from ${mailbox}\r\n`)),
        });
        return info.response;
      } catch (err) {
        return (err as { response?: string }).response ?? String(err);
      } finally {
        t.close();
      }
    },
    async metrics() {
      return await (await fetch(`http://127.0.0.1:${relay.http.port}/metrics`)).text();
    },
    async close() {
      await relay.close();
      await sandbox.close();
      await Deno.remove(stateDir, { recursive: true });
      await Deno.remove(keyDir, { recursive: true });
      if (certificate) await Deno.remove(certificate.dir, { recursive: true });
    },
  };
  return h;
}
