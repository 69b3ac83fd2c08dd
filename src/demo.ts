/**
 * `deno task demo`: the whole loop on this machine. Starts the sandbox provider and a
 * relay for one sandbox account, sends a message through the relay, shows what the
 * provider received and which metrics moved, then keeps serving for swaks.
 * `deno task demo --graph` (or `--gmail-api`) routes the account through the sandbox's
 * Microsoft Graph (Gmail API) over HTTPS instead of SMTP.
 * @module
 */
import nodemailer from "nodemailer";
import { parseConfig } from "./config/load.ts";
import { SANDBOX_DEFAULTS } from "./config/providers.ts";
import { DEFAULTS } from "./config/defaults.ts";
import { startRelay } from "./app.ts";
import { startSandbox } from "./sandbox/mod.ts";
import { hashPassword } from "./relay/password.ts";
import { setupLogging } from "./log.ts";

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

if (import.meta.main) {
  await setupLogging("pretty");
  const transport = Deno.args.includes("--graph")
    ? "graph"
    : Deno.args.includes("--gmail-api")
    ? "gmail-api"
    : "smtp";
  const sandbox = await startSandbox({
    tokenPort: Number(new URL(SANDBOX_DEFAULTS.tokenUrl).port),
    smtpPort: SANDBOX_DEFAULTS.smtpPort,
    apiPort: Number(new URL(SANDBOX_DEFAULTS.apiUrl).port),
  });
  const refreshToken = `demo-refresh-${crypto.randomUUID()}`;
  sandbox.addAccount({ email: EMAIL, clientId: "demo-client", refreshToken });
  const relay = await startRelay(parseConfig({
    stateDir: "./.demo-state",
    accounts: [{
      email: EMAIL,
      provider: "sandbox",
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
    ignoreTLS: true,
    name: "demo-client.localhost",
    auth: { user: EMAIL, pass: PASSWORD },
  });
  const info = await client.sendMail({
    from: EMAIL,
    to: "friend@example.net",
    subject: "Hello through the relay",
    text: transport === "smtp"
      ? "Sent with AUTH PLAIN to the relay, relayed with XOAUTH2 to the sandbox.\n"
      : `Sent with AUTH PLAIN to the relay, relayed over HTTPS to the sandbox's ${transport}.\n`,
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
The relay keeps serving on 127.0.0.1:${relay.smtp.port} (metrics: http://127.0.0.1:${relay.http.port}/metrics).
Try it with swaks (apt-get install swaks):

  swaks --server 127.0.0.1:${DEFAULTS.smtpPort} --auth LOGIN --auth-user ${EMAIL} \\
        --auth-password ${PASSWORD} --from ${EMAIL} --to someone@example.net

Ctrl-C stops it.`);
  await new Promise<void>((done) => Deno.addSignalListener("SIGINT", done));
  await relay.close();
  await sandbox.close();
}
