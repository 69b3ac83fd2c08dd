/**
 * The client tests' set-up: the sandbox provider (in this process, on loopback), a relay
 * child process listening on the host end of a {@link ClientNetwork}, with STARTTLS on a
 * certificate from a throwaway CA made with openssl, and the client network itself.
 * Clients run inside the namespace and reach the relay at a non-loopback address.
 * @module
 */
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import {
  makeAccounts,
  metricValue,
  PASSWORD,
  sandboxConfig,
  type TestAccount,
} from "../harness.ts";
import { ClientNetwork } from "./netns.ts";

/** What {@link startRig} may change. */
export interface RigOptions {
  /** The client network is a trusted network (clients may send without AUTH). */
  trusted?: boolean;
  /** Offer STARTTLS (default true). */
  tls?: boolean;
}

/** A running sandbox + relay process + client network. */
export interface Rig {
  readonly net: ClientNetwork;
  readonly sandbox: Sandbox;
  readonly account: TestAccount;
  /** The relay's SMTP port on `net.hostAddress`. */
  readonly port: number;
  /** Working directory: certificates, configs, state. */
  readonly dir: string;
  /** The CA certificate (PEM file) that signed the relay's certificate. */
  readonly caFile: string;
  /** The relay's log (JSON lines) so far. */
  log(): string;
  /** The relay's log lines, parsed: level, message and the properties, flattened. */
  lines(): Record<string, unknown>[];
  /** The relay's refusal log lines (those with a `reason`), flattened. */
  refusals(): Record<string, unknown>[];
  /** One metric series' value. */
  metric(series: string): Promise<number>;
  /** Stops everything and removes what it made. */
  close(): Promise<void>;
}

async function run(program: string, args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command(program, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** A CA and a server certificate for `address` (IP SAN) and relay.test, in `dir`. */
async function makeCertificates(dir: string, address: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await run("openssl", [
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=relay client-test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
  ], dir);
  await run("openssl", [
    "req",
    ...ec,
    "-keyout",
    "key.pem",
    "-out",
    "req.csr",
    "-subj",
    "/CN=relay.test",
  ], dir);
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    `subjectAltName=IP:${address},DNS:relay.test\nbasicConstraints=CA:FALSE\n` +
      `extendedKeyUsage=serverAuth\n`,
  );
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    "req.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "cert.pem",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
  ], dir);
}

/** Starts the sandbox, the client network and the relay process. */
export async function startRig(options: RigOptions = {}): Promise<Rig> {
  const dir = await Deno.makeTempDir({ prefix: "relay-clients-" });
  // Postfix's daemons run as the postfix user and must reach their queue below it; the
  // secrets in it (key, client configs) are files of mode 0600.
  await Deno.chmod(dir, 0o755);
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  let net: ClientNetwork | undefined;
  let child: Deno.ChildProcess | undefined;
  let log = "";
  try {
    net = await ClientNetwork.create();
    const tls = options.tls ?? true;
    if (tls) await makeCertificates(dir, net.hostAddress);
    await Deno.mkdir(`${dir}/state`);
    const config = await sandboxConfig(sandbox, [account], `${dir}/state`, {
      smtp: {
        host: net.hostAddress,
        port: 0,
        name: "relay.test",
        trustedNetworks: options.trusted ? [net.subnet] : [],
      },
      http: { port: 0 },
      ...(tls ? { tls: { certFile: `${dir}/cert.pem`, keyFile: `${dir}/key.pem` } } : {}),
    });
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        `--allow-net=127.0.0.1,localhost,${net.hostAddress}`,
        `--allow-read`,
        `--allow-write=${dir}/state`,
        "--allow-env",
        new URL("./relay_main.ts", import.meta.url).pathname,
        `${dir}/config.json`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const c = child;
    (async () => {
      for await (const text of c.stderr.pipeThrough(new TextDecoderStream())) log += text;
    })();
    const stdout = c.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const first = await firstLine(stdout);
    if (!first) throw new Error(`the relay did not start:\n${log}`);
    const ports = JSON.parse(first) as { smtp: number; http: number };
    stdout.cancel().catch(() => {});
    const n = net;
    return {
      net: n,
      sandbox,
      account,
      port: ports.smtp,
      dir,
      caFile: `${dir}/ca.pem`,
      log: () => log,
      lines: () => parseLines(log),
      refusals: () => parseLines(log).filter((l) => typeof l.reason === "string"),
      async metric(series) {
        const r = await fetch(`http://127.0.0.1:${ports.http}/metrics`);
        return metricValue(await r.text(), series);
      },
      async close() {
        await stop(c);
        await n.close();
        await sandbox.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  } catch (err) {
    if (child) await stop(child);
    await net?.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
    throw err;
  }
}

/** JSON log lines: level, message and properties in one object. */
function parseLines(log: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of log.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const r = JSON.parse(line);
      out.push({ level: r.level, message: r.message, ...r.properties });
    } catch {
      // a line still being written
    }
  }
  return out;
}

/** SIGTERM, then SIGKILL after 5 s; waits for the exit. */
async function stop(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch {
    // gone already
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
  }, 5_000);
  await child.status;
  clearTimeout(timer);
}

/** The first line a reader yields. */
async function firstLine(
  reader: ReadableStreamDefaultReader<string>,
): Promise<string | undefined> {
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  return text.includes("\n") ? text.slice(0, text.indexOf("\n")) : undefined;
}

/** Writes a client's config file (0600: msmtp refuses others) in the rig's directory. */
export async function clientFile(rig: Rig, name: string, text: string): Promise<string> {
  const path = `${rig.dir}/${name}`;
  await Deno.writeTextFile(path, text, { mode: 0o600 });
  await Deno.chmod(path, 0o600);
  return path;
}

/** Runs a client inside the rig's namespace; stdout and stderr together, and the exit code. */
export async function inside(
  rig: Rig,
  program: string,
  args: string[],
  stdin?: string,
): Promise<{ code: number; out: string }> {
  const child = rig.net.command(program, args, {
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
  const d = new TextDecoder();
  return { code: out.code, out: redact(d.decode(out.stdout) + d.decode(out.stderr)) };
}

/**
 * A client's transcript without credentials (swaks shows AUTH data in base64), so that no
 * password reaches test output.
 */
export function redact(text: string): string {
  return text
    .replace(/^( [-~]> )[A-Za-z0-9+/=]{4,}$/gm, "$1[redacted]")
    .replace(/(AUTH (PLAIN|LOGIN) )\S+/g, "$1[redacted]")
    .replaceAll(PASSWORD, "[password]");
}
