/**
 * What nodemailer writes toward a server that offers PIPELINING (and CHUNKING): a plain
 * TCP server on loopback advertises both, answers every command, and prints each chunk it
 * reads with the time since the connection opened, so what arrives together is visible.
 * The message goes through the relay's own path (`sendRaw` with a body that is still
 * arriving when the envelope goes out). No TLS here (the commands are the point; the relay
 * itself always requires STARTTLS upstream).
 *
 *     deno task bench:pipelining
 * @module
 */
import nodemailer from "nodemailer";
import { type PoolTransport, sendRaw } from "../../src/compat/nodemailer.ts";
import { MessageBody } from "../../src/smtp/body.ts";

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const port = (listener.addr as Deno.NetAddr).port;
const lines: string[] = [];
const t0 = performance.now();
const stamp = () => `${(performance.now() - t0).toFixed(1).padStart(7)} ms`;
const show = (s: string) =>
  s.length > 120 ? `${JSON.stringify(s.slice(0, 60))}…(${s.length} bytes)` : JSON.stringify(s);

const serving = (async () => {
  const conn = await listener.accept();
  conn.setNoDelay(true);
  const write = async (text: string) => {
    lines.push(`${stamp()} S: ${show(text)}`);
    await conn.write(new TextEncoder().encode(text));
  };
  await write("220 probe ESMTP\r\n");
  const buffer = new Uint8Array(65536);
  let data = false;
  let pending = "";
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    const chunk = new TextDecoder("latin1").decode(buffer.subarray(0, n));
    lines.push(`${stamp()} C: ${show(chunk)}`);
    pending += chunk;
    for (;;) {
      if (data) {
        const end = pending.indexOf("\r\n.\r\n");
        if (end < 0) break;
        pending = pending.slice(end + 5);
        data = false;
        await write("250 2.0.0 queued\r\n");
        continue;
      }
      const eol = pending.indexOf("\r\n");
      if (eol < 0) break;
      const line = pending.slice(0, eol);
      pending = pending.slice(eol + 2);
      const verb = line.split(" ")[0].toUpperCase();
      if (verb === "EHLO") {
        await write(
          "250-probe\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n",
        );
      } else if (verb === "DATA") {
        data = true;
        await write("354 go ahead\r\n");
      } else if (verb === "QUIT") {
        await write("221 bye\r\n");
        conn.close();
        return;
      } else await write("250 ok\r\n");
    }
  }
})();

const transport = nodemailer.createTransport({
  pool: true,
  host: "127.0.0.1",
  port,
  secure: false,
  ignoreTLS: true,
  name: "relay.probe",
  logger: false,
}) as PoolTransport;
const body = new MessageBody();
const sent = sendRaw(transport, {
  from: "a@probe.test",
  to: ["b@probe.test", "c@probe.test"],
  body,
  size: 0,
  use8BitMime: true,
  onStart: () => lines.push(`${stamp()} -- nodemailer starts reading the body (after the 354)`),
});
// The client's message arrives in two pieces while the envelope is on its way.
setTimeout(() => body.push(new TextEncoder().encode("Subject: probe\r\n\r\n")), 5);
setTimeout(() => {
  body.push(new TextEncoder().encode(".leading dot\r\nend\r\n"));
  body.end();
}, 30);
const info = await sent;
lines.push(`${stamp()} -- result: ${info.response}`);
transport.close();
listener.close();
await serving.catch(() => {});
console.log(lines.join("\n"));
