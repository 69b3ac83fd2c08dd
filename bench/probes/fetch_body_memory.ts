/**
 * What `fetch` costs in RSS to POST one large body (as the HTTP transports send a message),
 * by the form the body is given in: one `Uint8Array` concatenated from the received chunks
 * (`MessageBody.bytes()` then `fetch`), or a `Blob` of the chunks themselves. The receiving
 * server runs in another process; each figure is a fresh process (growth of its peak RSS,
 * sampled every 10 ms, over its RSS before the body is put together).
 *
 *     deno task bench:fetch-body                 # 25 MiB, 2 runs of each form
 *     deno task bench:fetch-body --size 10485760 --runs 3
 * @module
 */
import { parseArgs } from "node:util";
import { denoBinary } from "../child.ts";

const MB = 1024 * 1024;
const CHUNK = 64 * 1024;

/** Child: an HTTP server on an ephemeral port that reads each body; prints the port. */
function sink(): void {
  Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: (a) => console.log(a.port),
  }, async (req) => {
    let n = 0;
    for await (const c of req.body!) n += c.length;
    return new Response(String(n));
  });
}

/** Child: one POST of `size` bytes to `port`, the body as `form`; prints growth in bytes. */
async function post(form: string, port: number, size: number): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc!;
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < size; at += CHUNK) {
    chunks.push(new Uint8Array(Math.min(CHUNK, size - at)).fill(65 + (at / CHUNK) % 26));
  }
  gc();
  gc();
  await new Promise((ok) => setTimeout(ok, 300));
  const before = Deno.memoryUsage().rss;
  let peak = before;
  const timer = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 10);
  let body: BodyInit;
  if (form === "bytes") {
    const whole = new Uint8Array(size);
    let at = 0;
    for (const c of chunks) {
      whole.set(c, at);
      at += c.length;
    }
    body = whole;
  } else {
    body = new Blob(chunks as Uint8Array<ArrayBuffer>[]);
  }
  const r = await fetch(`http://127.0.0.1:${port}/`, { method: "POST", body });
  const got = Number(await r.text());
  peak = Math.max(peak, Deno.memoryUsage().rss);
  clearInterval(timer);
  if (got !== size) throw new Error(`the server read ${got} bytes of ${size}`);
  console.log(peak - before);
}

function spawn(args: string[], stdin: "piped" | "null") {
  return new Deno.Command(denoBinary(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--v8-flags=--expose-gc",
      import.meta.filename!,
      ...args,
    ],
    stdin,
    stdout: "piped",
  });
}

if (Deno.args[0] === "--sink") {
  sink();
} else if (Deno.args[0] === "--post") {
  await post(Deno.args[1], Number(Deno.args[2]), Number(Deno.args[3]));
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string", default: String(25 * MB) },
      runs: { type: "string", default: "2" },
    },
  });
  const size = Number(values.size);
  const server = spawn(["--sink"], "piped").spawn();
  const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("sink ended early");
    line += value;
  }
  const port = Number(line.trim());
  console.log(`Deno ${Deno.version.deno}; one POST of ${(size / MB).toFixed(1)} MiB per process`);
  try {
    for (let run = 0; run < Number(values.runs); run++) {
      for (const form of ["bytes", "blob"]) {
        const out = await spawn(["--post", form, String(port), String(size)], "null").output();
        const grew = Number(new TextDecoder().decode(out.stdout).trim());
        console.log(
          `${form === "bytes" ? "Uint8Array (concatenated)" : "Blob of the chunks"}: RSS ` +
            `+${(grew / MB).toFixed(1)} MB = ${(grew / size).toFixed(2)}× the body`,
        );
      }
    }
  } finally {
    server.kill();
    reader.releaseLock();
    await server.stdout.cancel().catch(() => {});
    await server.status;
  }
}
