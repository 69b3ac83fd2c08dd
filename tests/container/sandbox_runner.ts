/**
 * The sandbox provider run inside a container of the relay's pod (the image's own Deno and
 * sources; this file is mounted at `/app/tests/container/`), so the relay reaches it on
 * the pod's loopback, the only place the sandbox provider is admitted. Driven over
 * stdin/stdout with one JSON object per line:
 *
 * - in: `{"account": {email, clientId, clientSecret?, refreshToken}}` registers an account;
 *   `{"replyDelayMs": N}` delays the SMTP server's replies (MAIL, RCPT, end of DATA).
 *   Each is answered `{"ok": <the command's key>}`. End of stdin stops the sandbox.
 * - out: `{"ready": {tokenUrl, smtpPort}}` once listening; `{"message": {user, from, to,
 *   data}}` (data base64, the bytes as received) for each accepted message.
 *
 * Sandbox values only: nothing here is a real credential.
 * @module
 */
import { Buffer } from "node:buffer";
import { startSandbox } from "../../src/sandbox/mod.ts";

const encoder = new TextEncoder();

function emit(value: unknown): void {
  Deno.stdout.writeSync(encoder.encode(JSON.stringify(value) + "\n"));
}

const sandbox = await startSandbox({
  tokenPort: 2580,
  smtpPort: 2587,
  onMessage: (m) =>
    emit({
      message: {
        user: m.user,
        from: m.from,
        to: m.to,
        data: Buffer.from(m.data).toString("base64"),
      },
    }),
});
emit({ ready: { tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort } });

let buffered = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buffered += chunk;
  let newline: number;
  while ((newline = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, newline).trim();
    buffered = buffered.slice(newline + 1);
    if (!line) continue;
    const command = JSON.parse(line) as { account?: unknown; replyDelayMs?: number };
    if (command.account) {
      sandbox.addAccount(command.account as Parameters<typeof sandbox.addAccount>[0]);
      emit({ ok: "account" });
    } else if (typeof command.replyDelayMs === "number") {
      sandbox.smtpFaults.replyDelayMs = command.replyDelayMs;
      emit({ ok: "replyDelayMs" });
    } else {
      emit({ error: `unknown command ${line.slice(0, 80)}` });
    }
  }
}
await sandbox.close();
