/**
 * The DATA phase over a real socket: the relay's native end-of-data search and
 * dot-unstuffing (src/compat/smtp_server.ts) with the message cut into TCP writes at every
 * awkward place, and a large message with dot lines, delivered byte for byte to the sandbox
 * provider; a pipelined command after the final dot is answered.
 * @module
 */
import assert from "node:assert/strict";
import { PASSWORD, startHarness } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";

const USER = "user0@example.com";
const MAIL = `MAIL FROM:<${USER}>`;
const RCPT = "RCPT TO:<r@example.net>";
const enc = new TextEncoder();
const latin1 = (b: Uint8Array) => new TextDecoder("latin1").decode(b);

/** Waits a little, so the next write leaves in a segment of its own. */
const pause = () => new Promise((ok) => setTimeout(ok, 20));

Deno.test("DATA over a socket: writes cut after a line's leading dot, inside the terminator and inside an escape are unstuffed and ended exactly", async () => {
  const h = await startHarness();
  try {
    const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
    await c.command("EHLO client.test");
    assert.equal((await c.command(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code, 235);
    const send = async (pieces: string[]) => {
      assert.equal((await c.command(MAIL)).code, 250);
      assert.equal((await c.command(RCPT)).code, 250);
      assert.equal((await c.command("DATA")).code, 354);
      for (const p of pieces) {
        await c.write(enc.encode(p));
        await pause();
      }
    };
    // 1: a dot line cut after its dot, an escape cut between its dots, the terminator
    // cut after CR LF . and after its CR; NOOP pipelined after the final dot.
    await send([
      "Subject: cuts\r\n\r\nline\r\n.",
      ".escaped\r\n..",
      "two dots\r\nlast\r\n.",
      "\r",
      "\nNOOP\r\n",
    ]);
    assert.match((await c.reply()).last, /^250 2\.0\.0 /);
    assert.equal((await c.reply()).code, 250); // the NOOP
    assert.equal(
      latin1(h.sandbox.received[0].data),
      "Subject: cuts\r\n\r\nline\r\n.escaped\r\n.two dots\r\nlast\r\n",
    );
    // 2: 8-bit bytes, a lone dot line (escaped), an empty line, the terminator in one-byte
    // pieces.
    await send(["Subject: 8bit\r\n\r\n\xe9t\xe9\r\n", "..\r\n", "\r", "\n", ".", "\r", "\n"]);
    assert.match((await c.reply()).last, /^250 2\.0\.0 /);
    const second = h.sandbox.received[1].data;
    assert.deepEqual(
      [...second],
      [
        ...enc.encode("Subject: 8bit\r\n\r\n"),
        0xc3,
        0xa9,
        0x74,
        0xc3,
        0xa9,
        13,
        10,
        0x2e,
        13,
        10,
        13,
        10,
      ],
    );
    assert.equal(h.sandbox.received.length, 2);
    await c.close();
  } finally {
    await h.close();
  }
});

Deno.test("DATA over a socket: a 3 MiB message with a dot line every few kilobytes arrives byte for byte", async () => {
  const h = await startHarness();
  try {
    const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
    await c.command("EHLO client.test");
    assert.equal((await c.command(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code, 235);
    const lines: string[] = ["Subject: large", ""];
    const expected: string[] = ["Subject: large", ""];
    for (let i = 0, size = 0; size < 3 * 1024 * 1024; i++) {
      const text = `${i % 50 === 0 ? "." : ""}line ${i} ${"x".repeat(60)}`;
      size += text.length + 3;
      lines.push(text.startsWith(".") ? "." + text : text);
      expected.push(text);
    }
    assert.equal((await c.command(MAIL)).code, 250);
    assert.equal((await c.command(RCPT)).code, 250);
    assert.equal((await c.command("DATA")).code, 354);
    await c.write(enc.encode(lines.join("\r\n") + "\r\n.\r\n"));
    assert.match((await c.reply(30_000)).last, /^250 2\.0\.0 /);
    const got = latin1(h.sandbox.received[0].data);
    assert.equal(got.length, expected.join("\r\n").length + 2);
    assert.equal(got, expected.join("\r\n") + "\r\n");
    await c.close();
  } finally {
    await h.close();
  }
});
