/**
 * CPU of the ingress DATA phase alone: a message's bytes written into smtp-server's input
 * parser (`SMTPStream`, 64 KiB chunks as a socket delivers them) until its data stream
 * ends, with smtp-server's own per-byte `_feedDataStream` (`library`) and with the relay's
 * native search (`native`, src/compat/smtp_server.ts), alternating in one process. Bodies:
 * text lines with sentence dots, base64 lines, each as 1 MiB and 2 KB, dot lines escaped.
 *
 *     deno run --allow-read=bench/probes/ bench/probes/data_phase.ts [--rounds 5]
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { Buffer } from "node:buffer";

// smtp-server's own implementation, taken before src/compat replaces it.
const { SMTPStream } = await import("smtp-server/lib/smtp-stream.js");
type Feed = (chunk: Uint8Array, done: () => void) => void;
const library = (SMTPStream.prototype as unknown as { _feedDataStream: Feed })._feedDataStream;
await import("../../src/compat/smtp_server.ts");
const native = (SMTPStream.prototype as unknown as { _feedDataStream: Feed })._feedDataStream;
if (native === library) throw new Error("src/compat/smtp_server.ts did not replace it");

const { values } = parseArgs({
  args: Deno.args,
  options: { rounds: { type: "string", default: "5" } },
});

/** A message of `size` bytes of `words` in 76-byte lines, one dot line in 40, escaped. */
function message(words: string, size: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    let line = "";
    while (line.length < 76) line += words[(i * 76 + line.length) % words.length];
    if (i % 40 === 39) line = ".." + line.slice(2);
    lines.push(line);
    n += line.length + 2;
  }
  return Buffer.from(lines.join("\r\n") + "\r\n.\r\n", "latin1");
}

const TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs. ";
const BASE64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3";

/** Runs one message through a fresh parser with `feed`; the bytes its data stream got. */
async function once(feed: Feed, chunks: readonly Buffer[]): Promise<number> {
  const parser = new SMTPStream();
  (parser as unknown as { _feedDataStream: Feed })._feedDataStream = feed;
  parser.oncommand = () => {};
  const data = parser.startDataMode();
  let n = 0;
  data.on("data", (c: Uint8Array) => n += c.length);
  const ended = new Promise<void>((ok) => data.once("end", ok));
  for (const c of chunks) parser.write(c);
  await ended;
  return n;
}

/** CPU µs per message over `count` messages. */
async function cpuPerMessage(feed: Feed, chunks: readonly Buffer[], count: number) {
  const before = process.cpuUsage();
  let bytes = 0;
  for (let i = 0; i < count; i++) bytes += await once(feed, chunks);
  const used = process.cpuUsage(before);
  return { us: (used.user + used.system) / count, bytes: bytes / count };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rounds = Math.max(1, Number(values.rounds) || 5);
console.log("| body | library µs/msg | native µs/msg | native/library (per-round median) |");
console.log("| --- | --- | --- | --- |");
for (
  const [name, words, size, count] of [
    ["text 1 MiB", TEXT, 1 << 20, 40],
    ["base64 1 MiB", BASE64, 1 << 20, 40],
    ["text 2 KB", TEXT, 2048, 4000],
  ] as const
) {
  const msg = message(words, size);
  const chunks: Buffer[] = [];
  for (let i = 0; i < msg.length; i += 65536) chunks.push(msg.subarray(i, i + 65536));
  const lib: number[] = [];
  const nat: number[] = [];
  const ratio: number[] = [];
  await cpuPerMessage(library, chunks, count); // warm-up
  await cpuPerMessage(native, chunks, count);
  for (let r = 0; r < rounds; r++) {
    const a = await cpuPerMessage(library, chunks, count);
    const b = await cpuPerMessage(native, chunks, count);
    if (a.bytes !== b.bytes) throw new Error(`${name}: ${a.bytes} bytes against ${b.bytes}`);
    lib.push(a.us);
    nat.push(b.us);
    ratio.push(b.us / a.us);
  }
  console.log(
    `| ${name} | ${median(lib).toFixed(0)} | ${median(nat).toFixed(0)} | ` +
      `${median(ratio).toFixed(2)} |`,
  );
}
