/**
 * The SMTP clients of the multi-host test, run as a process in their own network
 * namespace (so the relay sees the namespace's address through haproxy's PROXY header).
 * Prints one JSON line per attempt: `{subject, messageId, reply}` (`reply`: the reply
 * line to the message, or the error when there was none).
 *
 *     hosts_client.ts burst <host:port> <email> <password> <n> <tag>
 *         n messages at once, one attempt each
 *     hosts_client.ts load <host:port> <email> <password> <workers> <tag>
 *         each worker sends message after message until stdin ends, retrying one that
 *         got no 250 (as an MTA does; each attempt its own Message-ID)
 *     hosts_client.ts auth <host:port> <email> <password>
 *         one AUTH PLAIN and QUIT; prints `{reply}`
 * @module
 */
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";

const [mode, target, email, password, countArg, tag] = Deno.args;
const at = target.lastIndexOf(":");
const host = target.slice(0, at);
const port = Number(target.slice(at + 1));

/** One attempt: the reply line (or the error). */
async function send(subject: string, messageId: string): Promise<string> {
  const t = nodemailer.createTransport({
    host,
    port,
    secure: false,
    ignoreTLS: true,
    name: "client.test",
    auth: { user: email, pass: password, method: "PLAIN" },
    logger: false,
    connectionTimeout: 60_000,
    socketTimeout: 120_000,
  });
  const raw = `From: <${email}>\r\nTo: <r@example.net>\r\nSubject: ${subject}\r\n` +
    `Message-ID: <${messageId}>\r\nMIME-Version: 1.0\r\n\r\n${subject}\r\n`;
  try {
    const info = await t.sendMail({
      envelope: { from: email, to: ["r@example.net"] },
      raw: Buffer.from(raw),
    });
    return info.response;
  } catch (err) {
    const e = err as { response?: string; message?: string };
    return e.response ?? `no reply: ${e.message ?? String(err)}`;
  } finally {
    t.close();
  }
}

function report(line: Record<string, string>): void {
  console.log(JSON.stringify(line));
}

if (mode === "burst") {
  await Promise.all(Array.from({ length: Number(countArg) }, async (_, i) => {
    const subject = `${tag}-${i}`;
    const messageId = `${subject}.0@client.test`;
    report({ subject, messageId, reply: await send(subject, messageId) });
  }));
} else if (mode === "load") {
  let stop = false;
  // The test ends the load by closing stdin.
  (async () => {
    for await (const _ of Deno.stdin.readable) {
      // nothing to read: only the end matters
    }
    stop = true;
  })();
  let n = 0;
  await Promise.all(Array.from({ length: Number(countArg) }, async () => {
    while (!stop) {
      const subject = `${tag}-${n++}`;
      for (let attempt = 0; attempt < 40; attempt++) {
        const messageId = `${subject}.${attempt}@client.test`;
        const reply = await send(subject, messageId);
        report({ subject, messageId, reply });
        if (reply.startsWith("250 ")) break;
        await new Promise((ok) => setTimeout(ok, 200));
      }
    }
  }));
} else if (mode === "auth") {
  const conn = await Deno.connect({ hostname: host, port });
  const text = new TextDecoder();
  const buf = new Uint8Array(4096);
  const read = async () => {
    let got = "";
    while (!/(^|\n)\d{3} [^\n]*\r\n$/.test(got)) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += text.decode(buf.subarray(0, n));
    }
    return got;
  };
  const say = async (line: string) => {
    await conn.write(new TextEncoder().encode(`${line}\r\n`));
    return await read();
  };
  await read();
  await say("EHLO client.test");
  const plain = btoa(`\0${email}\0${password}`);
  const reply = (await say(`AUTH PLAIN ${plain}`)).trim().split("\r\n").pop() ?? "";
  await say("QUIT").catch(() => "");
  conn.close();
  report({ reply });
} else {
  console.error(`unknown mode ${mode}`);
  Deno.exit(2);
}
