/**
 * `deno task demo`: the whole loop on this machine. Starts the sandbox provider and a
 * relay for one sandbox account, with STARTTLS on a throwaway self-signed certificate, sends a message
 * through the relay, shows what the provider received and which metrics moved, then keeps
 * serving for swaks and prints one line for every message the provider receives.
 *
 * `--port`, `--metrics-port`, `--token-port` and `--sandbox-smtp-port` move it off the
 * fixed ports (2525, 9090, 2580, 2587). `--graph` (or `--gmail-api`) routes the account
 * through the sandbox's Microsoft Graph (Gmail API) over HTTPS instead of SMTP.
 * @module
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import nodemailer from "nodemailer";
import { parseConfig } from "./config/load.ts";
import { SANDBOX_DEFAULTS } from "./config/providers.ts";
import { DEFAULTS } from "./config/defaults.ts";
import { startRelay } from "./app.ts";
import { type ReceivedMessage, startSandbox } from "./sandbox/mod.ts";
import { makeDemoCertificate } from "./demo_cert.ts";
import { hashPassword } from "./relay/password.ts";
import { setupLogging } from "./log.ts";
import { parsePort } from "./commands/common.ts";

const STATE_DIR = "./.demo-state";

const EMAIL = "demo@sandbox.localhost";
const PASSWORD = "demo-password";

async function scrape(port: number): Promise<Map<string, string>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const values = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    values.set(line.slice(0, at), line.slice(at + 1));
  }
  return values;
}

/** One line about a message the sandbox provider received. */
export function receivedLine(n: number, m: ReceivedMessage): string {
  const text = new TextDecoder().decode(m.data);
  const subject = /^Subject: (.*)$/im.exec(text.split("\r\n\r\n")[0])?.[1] ?? "(none)";
  return `sandbox received #${n}: from <${m.from}> to <${m.to.join(">, <")}> as ${m.user}, ` +
    `${m.data.length} bytes, Subject: ${subject}`;
}

/**
 * The demo's certificate: a throwaway self-signed one for localhost and 127.0.0.1, made
 * anew at each start (src/demo_cert.ts), written to `<stateDir>/tls/` (key 0600). Clients
 * trust the certificate itself.
 */
async function writeDemoTls(dir: string) {
  await Deno.mkdir(`${dir}/tls`, { recursive: true, mode: 0o700 });
  const files = {
    certFile: resolve(`${dir}/tls/cert.pem`),
    keyFile: resolve(`${dir}/tls/key.pem`),
  };
  const { cert, key } = await makeDemoCertificate();
  await Deno.writeTextFile(files.certFile, cert);
  await Deno.writeTextFile(files.keyFile, key, { mode: 0o600 });
  return { ...files, cert };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string" },
      "metrics-port": { type: "string" },
      "token-port": { type: "string" },
      "sandbox-smtp-port": { type: "string" },
      "api-port": { type: "string" },
      graph: { type: "boolean", default: false },
      "gmail-api": { type: "boolean", default: false },
    },
  });
  const ports = {
    smtp: parsePort("port", values.port) ?? DEFAULTS.smtpPort,
    http: parsePort("metrics-port", values["metrics-port"]) ?? DEFAULTS.httpPort,
    token: parsePort("token-port", values["token-port"]) ??
      Number(new URL(SANDBOX_DEFAULTS.tokenUrl).port),
    sandboxSmtp: parsePort("sandbox-smtp-port", values["sandbox-smtp-port"]) ??
      SANDBOX_DEFAULTS.smtpPort,
  };
  await setupLogging("pretty");
  const transport = values.graph ? "graph" : values["gmail-api"] ? "gmail-api" : "smtp";
  let received = 0;
  const sandbox = await startSandbox({
    tokenPort: ports.token,
    smtpPort: ports.sandboxSmtp,
    apiPort: parsePort("api-port", values["api-port"]) ??
      Number(new URL(SANDBOX_DEFAULTS.apiUrl).port),
    onMessage: (m) => console.log(receivedLine(++received, m)),
  });
  const refreshToken = `demo-refresh-${crypto.randomUUID()}`;
  sandbox.addAccount({ email: EMAIL, clientId: "demo-client", refreshToken });
  const tls = await writeDemoTls(STATE_DIR);
  const relay = await startRelay(parseConfig({
    stateDir: STATE_DIR,
    smtp: { port: ports.smtp },
    http: { port: ports.http },
    tls: { certFile: tls.certFile, keyFile: tls.keyFile },
    accounts: [{
      email: EMAIL,
      provider: { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort },
      clientId: "demo-client",
      refreshToken,
      passwordHash: await hashPassword(PASSWORD),
      transport,
    }],
  }));
  const before = await scrape(relay.http.port);

  const client = nodemailer.createTransport({
    host: "127.0.0.1",
    port: relay.smtp.port,
    requireTLS: true,
    tls: { ca: tls.cert, servername: "localhost" },
    name: "demo-client.localhost",
    auth: { user: EMAIL, pass: PASSWORD },
  });
  const info = await client.sendMail({
    from: EMAIL,
    to: "friend@example.net",
    subject: "Hello through the relay",
    text: transport === "smtp"
      ? "Sent over STARTTLS with AUTH PLAIN to the relay, relayed with XOAUTH2 to the sandbox.\n"
      : `Sent over STARTTLS with AUTH PLAIN to the relay, relayed over HTTPS to the sandbox's ${transport}.\n`,
  });
  client.close();
  console.log(`\nclient got: ${info.response}`);

  if (transport === "smtp") {
    const got = sandbox.received.at(-1)!;
    console.log(
      `\nsandbox received from <${got.from}> to <${got.to.join(">, <")}> as ${got.user}:`,
    );
    console.log(new TextDecoder().decode(got.data).replaceAll("\r\n", "\n").replace(/^/gm, "  | "));
  } else {
    const got = sandbox.api!.received.at(-1)!;
    console.log(
      `\nsandbox ${got.api} API received for ${got.mailbox} (${got.upload}), ` +
        `delivering to <${got.recipients.join(">, <")}>:`,
    );
    console.log(new TextDecoder().decode(got.mime).replaceAll("\r\n", "\n").replace(/^/gm, "  | "));
  }

  const after = await scrape(relay.http.port);
  console.log("metrics that moved:");
  for (const [series, value] of after) {
    if (before.get(series) !== value && !/_bucket|memory/.test(series)) {
      console.log(`  ${series} ${before.get(series) ?? "(new)"} -> ${value}`);
    }
  }
  console.log(`
The relay keeps serving on 127.0.0.1:${relay.smtp.port} with STARTTLS (metrics: http://127.0.0.1:${relay.http.port}/metrics).
Its certificate is a throwaway self-signed one for localhost and 127.0.0.1, made at this start:
${tls.certFile}. Try it with swaks (apt-get install swaks), trusting exactly that certificate:

  swaks --server 127.0.0.1:${relay.smtp.port} --tls --tls-verify --tls-ca-path ${tls.certFile} --auth LOGIN --auth-user ${EMAIL} --auth-password ${PASSWORD} --from ${EMAIL} --to someone@example.net

Each message the sandbox provider receives is shown here as a "sandbox received #N" line.
Ctrl-C stops it.`);
  await new Promise<void>((done) => Deno.addSignalListener("SIGINT", done));
  await relay.close();
  await sandbox.close();
}
