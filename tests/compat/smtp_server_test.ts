/** smtp-server's internals are touched in src/compat/smtp_server.ts only. */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { Rng } from "../ingress/rng.ts";

/** Members of smtp-server's SMTPConnection/SMTPServer that are not its documented API. */
const PRIVATE =
  /\b_socket\b|\b_nextHandler\b|\b_closing\b|\bconnectionReady\b|\b_resetSession\b|\bhandler_[A-Z]+\b|(?<!stats\.)\bconnections\.add\b|\b_onCommand\b|\b_parser\b|\bconnection\.send\(/;

Deno.test("smtp-server's private members are touched in src/compat/smtp_server.ts only", async () => {
  const offenders: string[] = [];
  for await (const file of walk(new URL("../../src/", import.meta.url))) {
    if (file.endsWith("/compat/smtp_server.ts")) continue;
    const text = await Deno.readTextFile(file);
    text.split("\n").forEach((line, i) => {
      if (PRIVATE.test(line)) offenders.push(`${file}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.deepEqual(offenders, []);
});

async function* walk(dir: URL): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* walk(url);
    else if (entry.name.endsWith(".ts")) yield url.pathname;
  }
}

Deno.test("the self-check names each hook the ingress relies on when it is missing", async () => {
  const { checkSmtpServer } = await import("../../src/compat/smtp_server.ts");
  const { SMTPConnection } = await import("smtp-server/lib/smtp-connection.js");
  checkSmtpServer(); // the pinned version has them all
  for (const name of ["handler_AUTH", "_onCommand", "send"]) {
    class Without extends SMTPConnection {}
    Object.defineProperty(Without.prototype, name, { value: undefined });
    assert.throws(
      () => checkSmtpServer(Without),
      new RegExp(
        `^Error: smtp-server \\d+\\.\\d+\\.\\d+: SMTPConnection\\.${name}\\(\\) is missing`,
      ),
    );
  }
});

/** Random DATA streams: dots, CR, LF and 8-bit bytes, often a terminator and commands. */
function randomStream(rng: Rng): Uint8Array {
  const alphabet = [0x2e, 0x2e, 0x2e, 0x0d, 0x0a, 0x0a, 0x61, 0xe9];
  const bytes: number[] = [];
  const n = rng.int(0, 60);
  for (let i = 0; i < n; i++) bytes.push(alphabet[rng.int(0, alphabet.length - 1)]);
  if (rng.int(0, 3) > 0) bytes.push(...new TextEncoder().encode("\r\n.\r\nRSET\r\nNOOP"));
  return Uint8Array.from(bytes);
}

/** `bytes` cut into pieces of 1 to `most` bytes. */
function split(rng: Rng, bytes: Uint8Array, most: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = rng.int(1, most);
    chunks.push(bytes.subarray(at, at + n));
    at += n;
  }
  return chunks;
}

Deno.test("DATA phase: the relay's native search ends, unstuffs and counts as smtp-server's own, on random streams split at random", async () => {
  const { unstuffWith, sameOutcome } = await import("../../src/compat/smtp_server.ts");
  const rng = new Rng(0x5eed14);
  let ended = 0;
  let unstuffed = 0;
  let oversized = 0;
  for (let i = 0; i < 10_000; i++) {
    const bytes = randomStream(rng);
    const chunks = split(rng, bytes, rng.int(1, 8));
    const limit = rng.int(0, 3) === 0 ? rng.int(0, 40) : Infinity;
    const native = unstuffWith("native", chunks, limit);
    const library = unstuffWith("library", chunks, limit);
    if (!sameOutcome(native, library)) {
      assert.fail(
        `differs on ${JSON.stringify(new TextDecoder("latin1").decode(bytes))} split ` +
          `${JSON.stringify(chunks.map((c) => c.length))}, limit ${limit}`,
      );
    }
    if (library.ended) ended++;
    if (library.ended && library.dataBytes < bytes.length - library.after.length - 3) {
      unstuffed++;
    }
    if (library.sizeExceeded) oversized++;
  }
  // The random streams exercise every path: ends, escapes removed, overruns.
  assert.ok(ended > 5_000, `${ended} ended`);
  assert.ok(unstuffed > 1_000, `${unstuffed} with an escape dot removed`);
  assert.ok(oversized > 500, `${oversized} over the limit`);
});

Deno.test("DATA phase: known streams give exact bytes (escape dots, bare LF, the terminator split three ways)", async () => {
  const { unstuffWith } = await import("../../src/compat/smtp_server.ts");
  const enc = new TextEncoder();
  const latin1 = (b: Uint8Array) => new TextDecoder("latin1").decode(b);
  const cases: [string[], string, string][] = [
    [["a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n"], "a\r\n.b\r\n.c\r\n", "QUIT\r\n"],
    [["a\r\n.", ".b\r\n", ".\r\n"], "a\r\n.b\r\n", ""],
    [["a\r\n", ".", "\r", "\nRSET\r\n"], "a\r\n", "RSET\r\n"],
    // A bare LF starts a line for unstuffing, but LF . CRLF does not end the message.
    [["x\n..y\n.\r\nz\r\n.\r\n"], "x\n.y\n.\r\nz\r\n", ""],
    [[".\r\n"], "", ""],
    [["..\r\n.\r\n"], ".\r\n", ""],
  ];
  for (const [pieces, body, after] of cases) {
    for (const which of ["native", "library"] as const) {
      const out = unstuffWith(which, pieces.map((p) => enc.encode(p)));
      assert.ok(out.ended, `${which} ${JSON.stringify(pieces)}`);
      assert.equal(latin1(out.body), body, `${which} ${JSON.stringify(pieces)}`);
      assert.equal(latin1(out.after), after);
      assert.equal(out.dataBytes, out.body.length);
    }
  }
});

Deno.test("DATA phase through smtp-server's stream: a slow reader, then the pipelined commands, as smtp-server's own reads them", async () => {
  const { unstuffWith } = await import("../../src/compat/smtp_server.ts");
  const { SMTPStream } = await import("smtp-server/lib/smtp-stream.js");
  const rng = new Rng(1414);
  for (let i = 0; i < 300; i++) {
    const bytes = randomStream(rng);
    const chunks = split(rng, bytes, 12);
    const expected = unstuffWith("library", chunks);
    const parser = new SMTPStream();
    const commands: string[] = [];
    parser.oncommand = (command: Uint8Array, next?: () => void) => {
      commands.push(new TextDecoder("latin1").decode(command));
      next?.();
    };
    const data = parser.startDataMode();
    const got: Uint8Array[] = [];
    const ended = new Promise<void>((ok) => data.once("end", ok));
    // A reader that takes a chunk per timer turn: the parser must wait for it (drain).
    data.on("data", (c: Uint8Array) => {
      got.push(c);
      data.pause();
      setTimeout(() => data.resume(), 0);
    });
    data.once("end", () => parser.continue());
    for (const c of chunks) parser.write(Buffer.from(c));
    const finished = new Promise<void>((ok) => parser.once("finish", ok));
    parser.end();
    if (!expected.ended) {
      // No end of data: the message never ends (its tail is held back meanwhile).
      parser.destroy();
      continue;
    }
    await ended;
    await finished;
    assert.deepEqual(Buffer.concat(got), Buffer.from(expected.body));
    const lines = new TextDecoder("latin1").decode(expected.after).split(/\r?\n/);
    if (lines[lines.length - 1] === "") lines.pop();
    assert.deepEqual(commands, lines);
    assert.equal((data as unknown as { byteLength: number }).byteLength, expected.dataBytes);
  }
});
