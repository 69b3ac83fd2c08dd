/**
 * Where a Deno process's RSS goes, and what the process-wide levers do to it: for each
 * variant (glibc malloc environment, V8 flags) a fresh client process imports the relay's
 * libraries (nodemailer, smtp-server, prom-client, LogTape, zod), then opens N `node:tls`
 * connections (TLS over a connected `node:net` socket, as nodemailer upgrades after
 * STARTTLS), all at once and by host name as the upstream pool does, and writes and reads a
 * little on each; the servers run in another process. Printed per variant: RSS after the
 * imports, RSS with the N connections open, RSS per connection, the V8 heap
 * (used/total/external) and RSS once they are closed again (after a full GC).
 *
 *     deno task bench:memory-levers                   # 3,000 connections, every variant
 *     deno task bench:memory-levers --count 1000 --repeat 3
 *
 * Deno links glibc malloc (`nm -D $(which deno)`: `U malloc@GLIBC_2.2.5`), so the
 * `MALLOC_*` variables reach it; they are read once at process start.
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { SANDBOX_CA_PEM, SANDBOX_CERT_PEM, SANDBOX_KEY_PEM } from "../../src/sandbox/tls.ts";
import { denoBinary } from "../child.ts";

const MB = 1024 * 1024;

/** A variant: environment of the client process and its V8 flags. */
interface Variant {
  readonly name: string;
  readonly env: Record<string, string>;
  readonly v8: string[];
}

const VARIANTS: Variant[] = [
  { name: "default", env: {}, v8: [] },
  { name: "MALLOC_ARENA_MAX=2", env: { MALLOC_ARENA_MAX: "2" }, v8: [] },
  {
    name: "MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=131072",
    env: { MALLOC_ARENA_MAX: "2", MALLOC_TRIM_THRESHOLD_: "131072" },
    v8: [],
  },
  { name: "--max-semi-space-size=2", env: {}, v8: ["--max-semi-space-size=2"] },
  { name: "--optimize-for-size", env: {}, v8: ["--optimize-for-size"] },
  {
    name: "MALLOC_ARENA_MAX=2 + --max-semi-space-size=2",
    env: { MALLOC_ARENA_MAX: "2" },
    v8: ["--max-semi-space-size=2"],
  },
];

/** Child: a TLS server on an ephemeral port that answers each line; runs until stdin closes. */
async function serve(): Promise<void> {
  const secure = tls.createServer({ key: SANDBOX_KEY_PEM, cert: SANDBOX_CERT_PEM }, (s) => {
    s.on("data", () => s.write("250 ok\r\n"));
    s.on("error", () => {});
  });
  const port = await new Promise<number>((ok) =>
    secure.listen(0, "127.0.0.1", () => ok((secure.address() as net.AddressInfo).port))
  );
  console.log(JSON.stringify({ port }));
  for await (const _ of Deno.stdin.readable) { /* until the parent goes */ }
  Deno.exit(0);
}

function settle(ms = 500): Promise<void> {
  (globalThis as { gc?: () => void }).gc?.();
  return new Promise((ok) => setTimeout(ok, ms));
}

function connectOne(port: number): Promise<tls.TLSSocket> {
  return new Promise((ok, fail) => {
    const raw = net.connect({ host: "localhost", port }, () => {
      raw.setNoDelay(true);
      const s = tls.connect({ socket: raw, servername: "localhost", ca: SANDBOX_CA_PEM });
      s.once("secureConnect", () => {
        s.once("data", () => ok(s));
        s.write("EHLO x\r\n");
      });
      s.once("error", fail);
    });
    raw.once("error", fail);
  });
}

/** Client: figures for one variant, as one JSON line. */
async function client(port: number, n: number): Promise<void> {
  // The relay's libraries, so that the base RSS is the relay's, not an empty isolate's.
  await import("nodemailer");
  await import("smtp-server");
  await import("prom-client");
  await import("@logtape/logtape");
  await import("zod");
  await settle();
  const base = Deno.memoryUsage().rss;
  const sockets: tls.TLSSocket[] = [];
  // At most 500 handshakes in flight, as a pool filling up under load would.
  for (let i = 0; i < n; i += 500) {
    const batch = Math.min(500, n - i);
    sockets.push(...await Promise.all(Array.from({ length: batch }, () => connectOne(port))));
  }
  await settle();
  const open = Deno.memoryUsage();
  await Promise.all(
    sockets.map((s) => new Promise<void>((ok) => s.once("close", () => ok()).destroy())),
  );
  await settle(1000);
  const closed = Deno.memoryUsage().rss;
  console.log(JSON.stringify({
    baseMB: base / MB,
    openMB: open.rss / MB,
    perConnKiB: (open.rss - base) / n / 1024,
    heapUsedMB: open.heapUsed / MB,
    heapTotalMB: open.heapTotal / MB,
    externalMB: open.external / MB,
    closedMB: closed / MB,
  }));
}

function spawn(args: string[], env: Record<string, string> = {}, v8: string[] = []) {
  return new Deno.Command(denoBinary(), {
    args: [
      "run",
      "--allow-net=127.0.0.1,localhost",
      "--allow-read",
      "--allow-env",
      "--allow-sys",
      `--v8-flags=${["--expose-gc", ...v8].join(",")}`,
      import.meta.filename!,
      ...args,
    ],
    env,
    stdin: "piped",
    stdout: "piped",
  }).spawn();
}

if (Deno.args[0] === "--serve") {
  await serve();
} else if (Deno.args[0] === "--client") {
  await client(Number(Deno.args[1]), Number(Deno.args[2]));
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string", default: "3000" },
      repeat: { type: "string", default: "1" },
      variant: { type: "string", multiple: true },
    },
  });
  const n = Number(values.count);
  const variants = values.variant
    ? VARIANTS.filter((v) => values.variant!.includes(v.name))
    : VARIANTS;
  const server = spawn(["--serve"]);
  const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("server child ended early");
    line += value;
  }
  const { port } = JSON.parse(line) as { port: number };
  const f = (x: number) => x.toFixed(1);
  console.log(
    `Deno ${Deno.version.deno}; ${n} node:tls client connections by host name, one process ` +
      `per line; MB unless marked`,
  );
  for (let r = 0; r < Number(values.repeat); r++) {
    for (const v of variants) {
      const c = spawn(["--client", String(port), String(n)], v.env, v.v8);
      await c.stdin.close();
      const out = await c.output();
      const text = new TextDecoder().decode(out.stdout).trim();
      if (!out.success || !text) {
        console.log(`${v.name}: client failed (status ${out.code})`);
        continue;
      }
      const x = JSON.parse(text);
      console.log(
        `${v.name.padEnd(48)} base ${f(x.baseMB)}, ${n} open ${f(x.openMB)} ` +
          `(${f(x.perConnKiB)} KiB each; heap ${f(x.heapUsedMB)} used of ${f(x.heapTotalMB)}, ` +
          `external ${f(x.externalMB)}), closed again ${f(x.closedMB)}`,
      );
    }
  }
  await server.stdin.close();
  reader.releaseLock();
  await server.stdout.cancel().catch(() => {});
  await server.status;
}
