/** A real Debian SMTP client (swaks) against the relay: AUTH LOGIN and AUTH PLAIN. */
import assert from "node:assert/strict";
import { PASSWORD, startHarness } from "../harness.ts";

async function swaks(args: string[]) {
  const out = await new Deno.Command("swaks", { args, stdout: "piped", stderr: "piped" }).output();
  // The transcript carries AUTH data in base64: redact it so no password reaches test output.
  const text = new TextDecoder().decode(out.stdout)
    .replace(/^( -> )[A-Za-z0-9+/=]{4,}$/gm, "$1[redacted]")
    .replace(/(AUTH PLAIN )\S+/g, "$1[redacted]");
  return { code: out.code, text };
}

Deno.test("swaks relays with AUTH LOGIN and AUTH PLAIN; a bad password gets 535", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const base = [
      "--server",
      `127.0.0.1:${h.relay.smtp.port}`,
      "--from",
      a.email,
      "--to",
      "someone@example.net",
      "--auth-user",
      a.email,
      "--header",
      "Subject: swaks test",
      "--body",
      "Hello from swaks.",
    ];
    for (const method of ["LOGIN", "PLAIN"]) {
      const r = await swaks([...base, "--auth", method, "--auth-password", PASSWORD]);
      assert.equal(r.code, 0, r.text);
      assert.match(r.text, /<- {2}235 /);
      assert.match(r.text, /<- {2}250 2\.0\.0 OK, upstream said: 250 /);
    }
    assert.equal(h.sandbox.received.length, 2);
    const body = new TextDecoder().decode(h.sandbox.received[0].data);
    assert.match(body, /^Subject: swaks test\r$/m);
    assert.match(body, /\r\n\r\nHello from swaks\.\r\n/);

    const bad = await swaks([...base, "--auth", "LOGIN", "--auth-password", "nope"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.text, /^<\*\* 535 5\.7\.8 Authentication credentials invalid$/m);
    assert.equal(h.sandbox.received.length, 2);
  } finally {
    await h.close();
  }
});
