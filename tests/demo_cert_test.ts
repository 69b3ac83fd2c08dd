/**
 * src/demo_cert.ts: a fresh key and a self-signed X.509 v3 certificate for localhost and
 * 127.0.0.1, checked by openssl (parse, SAN, self-verification) and by a real STARTTLS
 * handshake in the demo (tests/operations/docs_commands_test.ts, swaks --tls-verify).
 */
import assert from "node:assert/strict";
import { makeDemoCertificate } from "../src/demo_cert.ts";

async function openssl(args: string[], dir: string): Promise<string> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  return text;
}

Deno.test("the demo certificate: v3, ECDSA P-256, SAN localhost and 127.0.0.1, verifies as its own anchor", async () => {
  const dir = await Deno.makeTempDir({ prefix: "relay-demo-cert-" });
  try {
    const now = new Date("2026-11-29T01:00:00Z");
    const a = await makeDemoCertificate(now);
    const b = await makeDemoCertificate(now);
    assert.notEqual(a.key, b.key, "a new key each time");
    await Deno.writeTextFile(`${dir}/cert.pem`, a.cert);
    await Deno.writeTextFile(`${dir}/key.pem`, a.key);
    const text = await openssl(["x509", "-in", "cert.pem", "-noout", "-text"], dir);
    assert.match(text, /Version: 3 \(0x2\)/);
    assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
    assert.match(text, /NIST CURVE: P-256/);
    assert.match(text, /DNS:localhost, IP Address:127\.0\.0\.1/);
    assert.match(text, /Not Before: Nov 29 00:59:00 2026 GMT/);
    assert.match(text, /Not After : Nov 30 01:00:00 2026 GMT/);
    assert.match(
      await openssl(["verify", "-CAfile", "cert.pem", "cert.pem"], dir),
      /cert\.pem: OK/,
    );
    // The key is the certificate's.
    const pub = (args: string[]) => openssl(args, dir);
    assert.equal(
      await pub(["pkey", "-in", "key.pem", "-pubout"]),
      await pub(["x509", "-in", "cert.pem", "-noout", "-pubkey"]),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
