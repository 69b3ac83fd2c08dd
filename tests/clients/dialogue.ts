/**
 * A raw SMTP client for use inside a network namespace (`ip netns exec … deno run`):
 * connects to `host:port`, sends each further argument as one command line after the
 * previous reply, and prints every reply line (the greeting first) on stdout. Stops at a
 * reply that closes the session or when the commands run out. With `--early` before the
 * commands, the first command goes out at once, before the greeting (an early talker).
 * @module
 */
const [host, port, ...rest] = Deno.args;
const early = rest[0] === "--early";
const commands = early ? rest.slice(1) : rest;
const conn = await Deno.connect({ hostname: host, port: Number(port) });
const decoder = new TextDecoder();
let buffer = "";
const chunk = new Uint8Array(4096);

/** The next complete reply (its lines), or undefined once the server closed. */
async function reply(): Promise<string[] | undefined> {
  const lines: string[] = [];
  while (true) {
    const at = buffer.indexOf("\r\n");
    if (at >= 0) {
      const line = buffer.slice(0, at);
      buffer = buffer.slice(at + 2);
      lines.push(line);
      if (!/^\d{3}-/.test(line)) return lines;
      continue;
    }
    const n = await conn.read(chunk);
    if (n === null) return lines.length ? lines : undefined;
    buffer += decoder.decode(chunk.subarray(0, n));
  }
}

const encoder = new TextEncoder();
if (early) await conn.write(encoder.encode(`${commands.shift()}\r\n`));
let r = await reply();
for (const command of ["", ...commands]) {
  if (command) {
    if (!r || r.at(-1)!.startsWith("421")) break;
    await conn.write(encoder.encode(`${command}\r\n`));
    r = await reply();
  }
  if (!r) break;
  for (const line of r) console.log(line);
}
conn.close();
