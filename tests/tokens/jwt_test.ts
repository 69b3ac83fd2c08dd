/**
 * RS256 JWTs through WebCrypto (src/tokens/jwt.ts): what is signed verifies with the
 * matching public key only, tampering is caught, and a certificate's `x5t` is the SHA-1
 * thumbprint openssl reports.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  certificateInfo,
  certificateThumbprint,
  decodeJwt,
  importSigningKey,
  importVerifyKey,
  keyMatchesCertificate,
  rsaPrivateKeyDer,
  signJwt,
  verifyJwt,
} from "../../src/tokens/jwt.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { makeCertificate } from "../apponly/helpers.ts";

async function keyPair() {
  const g = await generateServiceAccountKey("sa@p.iam.test", "http://127.0.0.1:1/token");
  const privateKey = JSON.parse(g.keyFile).private_key as string;
  return { privateKey, publicKeyPem: g.publicKeyPem };
}

Deno.test("jwt: a signed JWT verifies with its key only, and tampering is caught", async () => {
  const a = await keyPair(), b = await keyPair();
  const jwt = await signJwt(
    { iss: "sa@p.iam.test", sub: "x@example.com", iat: 1, exp: 2 },
    await importSigningKey(a.privateKey),
    { kid: "k1" },
  );
  const decoded = decodeJwt(jwt)!;
  assert.deepEqual(decoded.header, { alg: "RS256", typ: "JWT", kid: "k1" });
  assert.deepEqual(decoded.claims, { iss: "sa@p.iam.test", sub: "x@example.com", iat: 1, exp: 2 });
  assert.equal(await verifyJwt(decoded, await importVerifyKey(a.publicKeyPem)), true);
  assert.equal(await verifyJwt(decoded, await importVerifyKey(b.publicKeyPem)), false);
  // Another subject under the same signature.
  const [h, , s] = jwt.split(".");
  const forged = `${h}.${
    Buffer.from(JSON.stringify({ sub: "boss@example.com" })).toString("base64url")
  }.${s}`;
  assert.equal(await verifyJwt(decodeJwt(forged)!, await importVerifyKey(a.publicKeyPem)), false);
  // alg other than RS256 is never accepted.
  const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${jwt.split(".")[1]}.`;
  assert.equal(await verifyJwt(decodeJwt(none)!, await importVerifyKey(a.publicKeyPem)), false);
});

Deno.test("jwt: malformed input is not a JWT", () => {
  for (const bad of ["", "a.b", "a.b.c.d", "@@.e30.", "e30.bm90IGpzb24.", "W10.e30."]) {
    assert.equal(decodeJwt(bad), undefined, bad);
  }
});

Deno.test("jwt: non-RSA or non-key PEM is refused with a message naming no content", () => {
  assert.throws(
    () => rsaPrivateKeyDer("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
    {
      message: "not a PEM private key",
    },
  );
  assert.throws(() => certificateThumbprint("nope"), { message: "not a PEM certificate" });
});

Deno.test("jwt: x5t is the certificate's SHA-1 thumbprint (as openssl reports it)", async () => {
  const cert = await makeCertificate();
  try {
    const out = await new Deno.Command("openssl", {
      args: ["x509", "-noout", "-fingerprint", "-sha1", "-in", cert.certFile],
      stdout: "piped",
    }).output();
    const hex = new TextDecoder().decode(out.stdout).trim().split("=")[1].replaceAll(":", "");
    const expected = Buffer.from(hex, "hex").toString("base64url");
    assert.equal(certificateThumbprint(cert.certPem).x5t, expected);
    assert.equal((await certificateInfo(cert.certPem)).x5t, expected);
    assert.equal(keyMatchesCertificate(cert.keyPem, cert.certPem), true);
    const other = await keyPair();
    assert.equal(keyMatchesCertificate(other.privateKey, cert.certPem), false);
  } finally {
    await Deno.remove(cert.dir, { recursive: true });
  }
});
