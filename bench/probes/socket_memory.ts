/**
 * What one open socket costs a Deno process, apart from any SMTP code: RSS per connection
 * for N `node:tls` client connections (as the relay's upstream pool holds them) and N plain
 * `node:net` connections (as its ingress holds loopback clients). The servers run in a child
 * process, so only the client side is measured. Figures for bench/README.md ("what limits
 * it", target 6).
 *
 *     deno task bench:sockets            # 1,000 and 3,000 of each
 *     deno task bench:sockets --count 500
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { SANDBOX_CA_PEM, SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "../../src/sandbox/tls.ts";
import { denoBinary } from "../child.ts";

const MB = 1024 * 1024;

/** Child: a TLS and a plain server on ephemeral ports; prints them, runs until stdin closes. */
async function serve(): Promise<void> {
  const sink = (s: net.Socket) => {
    s.on("data", () => {});
    s.on("error", () => {});
  };
  const secure = tls.createServer({ key: SANDBOX_KEY_PEM, cert: SANDBOX_CERT_PEM }, sink);
  const plain = net.createServer(sink);
  const listen = (s: net.Server) =>
    new Promise<number>((ok) =>
      s.listen(0, "127.0.0.1", () => ok((s.address() as net.AddressInfo).port))
    );
  console.log(JSON.stringify({ tls: await listen(secure), plain: await listen(plain) }));
  for await (const _ of Deno.stdin.readable) { /* until the parent goes */ }
  Deno.exit(0);
}

function settle(): Promise<void> {
  (globalThis as { gc?: () => void }).gc?.();
  return new Promise((ok) => setTimeout(ok, 300));
}

async function open(kind: "tls" | "plain", port: number, n: number): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    sockets.push(
      await new Promise<net.Socket>((ok, fail) => {
        const raw = net.connect({ host: "127.0.0.1", port }, () => {
          raw.setNoDelay(true);
          if (kind === "plain") return ok(raw);
          // As nodemailer upgrades after STARTTLS: TLS over the connected socket.
          const s = tls.connect({ socket: raw, servername: "localhost", ca: SANDBOX_CA_PEM });
          s.once("secureConnect", () => ok(s));
          s.once("error", fail);
        });
        raw.once("error", fail);
      }),
    );
  }
  for (const s of sockets) s.write("EHLO x\r\n");
  return sockets;
}

async function measure(kind: "tls" | "plain", port: number, n: number): Promise<number> {
  await settle();
  const before = Deno.memoryUsage().rss;
  const sockets = await open(kind, port, n);
  await settle();
  const after = Deno.memoryUsage().rss;
  await Promise.all(
    sockets.map((s) => new Promise<void>((ok) => s.once("close", () => ok()).destroy())),
  );
  return (after - before) / n;
}

/** Runs this file again with `args`; returns what it printed. */
function self(args: string[], flags: string[] = []): Deno.ChildProcess {
  return new Deno.Command(denoBinary(), {
    args: ["run", "--allow-net=127.0.0.1", ...flags, import.meta.filename!, ...args],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
}

if (Deno.args[0] === "--serve") {
  await serve();
} else if (Deno.args[0] === "--client") {
  // A fresh process per measurement: memory freed by an earlier one would be reused.
  const [, kind, port, n] = Deno.args;
  console.log(await measure(kind as "tls" | "plain", Number(port), Number(n)));
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: { count: { type: "string", multiple: true } },
  });
  const counts = (values.count ?? ["1000", "3000"]).map(Number);
  const server = self(["--serve"]);
  const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("server child ended early");
    line += value;
  }
  const ports = JSON.parse(line) as { tls: number; plain: number };
  const client = async (kind: "tls" | "plain", n: number) => {
    const c = self(["--client", kind, String(ports[kind]), String(n)], ["--v8-flags=--expose-gc"]);
    await c.stdin.close();
    const out = await c.output();
    return Number(new TextDecoder().decode(out.stdout));
  };
  console.log(`Deno ${Deno.version.deno}; RSS per open client connection, one process per line`);
  for (const n of counts) {
    const plain = await client("plain", n);
    const secure = await client("tls", n);
    console.log(
      `${n} connections: node:net ${(plain / 1024).toFixed(1)} KiB each, ` +
        `node:tls (over node:net) ${(secure / 1024).toFixed(1)} KiB each; ` +
        `${n} of both: ${((n * (plain + secure)) / MB).toFixed(0)} MB`,
    );
  }
  await server.stdin.close();
  reader.releaseLock();
  await server.stdout.cancel().catch(() => {});
  await server.status;
}
