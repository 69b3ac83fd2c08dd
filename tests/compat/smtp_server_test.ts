/** smtp-server's internals are touched in src/compat/smtp_server.ts only. */
import assert from "node:assert/strict";

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
