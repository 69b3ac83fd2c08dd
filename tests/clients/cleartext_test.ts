/**
 * No credentials in clear (RFC 4954 section 4): a client that is neither loopback nor on a
 * trusted network, before STARTTLS, is not offered AUTH, and the AUTH command itself is
 * refused with 538 5.7.11 before any credential is asked for. The clients run in a
 * network namespace of their own (see netns.ts), so the relay sees a real non-loopback
 * address: a raw dialogue, swaks, msmtp and Postfix. Each real client, told to log in
 * without TLS, sends no credential (no AUTH command reaches the relay) and nothing is
 * delivered.
 */
import assert from "node:assert/strict";
import { PASSWORD } from "../harness.ts";
import { clientFile, inside, type Rig, startRig } from "./rig.ts";
import { PostfixClient } from "./postfix.ts";

const DIALOGUE = new URL("./dialogue.ts", import.meta.url).pathname;
const NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism";

/** AUTH commands the relay saw from the client network (refused or not) so far. */
function authCommands(rig: Rig): number {
  return rig.refusals().filter((l) => l.command === "AUTH").length;
}

Deno.test("cleartext: EHLO offers no AUTH to a non-loopback client; AUTH gets 538 5.7.11 at once, no 334; swaks, msmtp and Postfix send no credential", async (t) => {
  const rig = await startRig();
  try {
    const host = rig.net.hostAddress;
    const from = rig.account.email;

    await t.step("raw dialogue", async () => {
      const r = await inside(rig, Deno.execPath(), [
        "run",
        `--allow-net=${host}`,
        DIALOGUE,
        host,
        String(rig.port),
        "EHLO client.test",
        "AUTH LOGIN",
        "AUTH PLAIN",
        "QUIT",
      ]);
      assert.equal(r.code, 0, r.out);
      const lines = r.out.trim().split("\n");
      assert.equal(lines[0], "220 relay.test ESMTP OAuth2 relay");
      const ehlo = lines.filter((l) => l.startsWith("250"));
      assert.ok(ehlo.includes("250-STARTTLS"), r.out);
      assert.ok(!ehlo.some((l) => /AUTH/.test(l)), `AUTH offered in clear:\n${r.out}`);
      assert.deepEqual(lines.slice(lines.indexOf(ehlo.at(-1)!) + 1), [
        NEEDS_TLS,
        NEEDS_TLS,
        "221 Bye",
      ]);
      const metric = 'smtp_relay_ingress_refusals_total{reason="auth_plaintext"}';
      assert.equal(await rig.metric(metric), 2);
      const refused = rig.refusals().filter((l) => l.reason === "auth_plaintext");
      assert.deepEqual(refused.map((l) => [l.level, l.ip, l.command, l.reply]), [
        ["INFO", rig.net.clientAddress, "AUTH", NEEDS_TLS],
        ["INFO", rig.net.clientAddress, "AUTH", NEEDS_TLS],
      ]);
    });

    await t.step("a client that talks before the greeting", async () => {
      const r = await inside(rig, Deno.execPath(), [
        "run",
        `--allow-net=${host}`,
        DIALOGUE,
        host,
        String(rig.port),
        "--early",
        "EHLO client.test",
      ]);
      assert.equal(r.out.trim(), "421 4.7.0 relay.test You talk too soon");
      const metric = 'smtp_relay_ingress_refusals_total{reason="early_talker"}';
      assert.equal(await rig.metric(metric), 1);
      const line = rig.refusals().find((l) => l.reason === "early_talker");
      assert.equal(line?.ip, rig.net.clientAddress);
      assert.equal(line?.command, "connection");
    });

    await t.step("swaks --auth without --tls stops before AUTH", async () => {
      const before = authCommands(rig);
      const r = await inside(rig, "swaks", [
        "--server",
        `${host}:${rig.port}`,
        "--from",
        from,
        "--to",
        "someone@example.net",
        "--auth",
        "LOGIN",
        "--auth-user",
        from,
        "--auth-password",
        PASSWORD,
      ]);
      assert.notEqual(r.code, 0);
      assert.match(r.out, /Host did not advertise authentication/);
      assert.ok(!/AUTH LOGIN/.test(r.out), "swaks sent AUTH");
      assert.equal(authCommands(rig), before);
      assert.equal(rig.sandbox.received.length, 0);
    });

    await t.step("msmtp with auth on and tls off refuses to send", async () => {
      const before = authCommands(rig);
      const conf = await clientFile(
        rig,
        "msmtprc-cleartext",
        `account relay\nhost ${host}\nport ${rig.port}\nfrom ${from}\nauth on\n` +
          `user ${from}\npassword ${PASSWORD}\ntls off\naccount default : relay\n`,
      );
      const r = await inside(
        rig,
        "msmtp",
        ["-C", conf, "someone@example.net"],
        "Subject: cleartext\r\n\r\nnot sent\r\n",
      );
      assert.notEqual(r.code, 0);
      assert.match(r.out, /does not support authentication/);
      assert.equal(authCommands(rig), before);
      assert.equal(rig.sandbox.received.length, 0);
    });

    await t.step("Postfix with SASL and TLS off never sends AUTH; MAIL gets 530", async () => {
      const before = authCommands(rig);
      const postfix = await PostfixClient.start(rig, { tls: "none" });
      try {
        await postfix.send(from, "someone@example.net", "Subject: cleartext\n\nnot sent\n");
        const line = await postfix.waitForLog(/status=(deferred|bounced)/);
        assert.match(line, /530 5\.7\.0 Authentication required/, line);
      } finally {
        await postfix.close();
      }
      assert.equal(authCommands(rig), before);
      assert.equal(rig.sandbox.received.length, 0);
      const refused = rig.refusals().filter((l) => l.reason === "unauthenticated");
      assert.ok(refused.some((l) => l.ip === rig.net.clientAddress && l.command === "MAIL"));
    });
  } finally {
    await rig.close();
  }
});
