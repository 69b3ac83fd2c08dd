/**
 * Compact JWS (RS256) through WebCrypto, for the app-only grants: the JWT bearer
 * assertion of a Google service account (RFC 7523 §2.1) and the client assertion of a
 * Microsoft app with a certificate (RFC 7523 §2.2). Keys are parsed by node:crypto and
 * used through `crypto.subtle`; nothing here does cryptography by hand.
 *
 * The sandbox token endpoint verifies with {@link verifyJwt}.
 * @module
 */
import { Buffer } from "node:buffer";
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";

/** RS256 in WebCrypto terms. */
const RS256: RsaHashedImportParams = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };

/** JSON claims of a JWT. */
export type JwtClaims = Record<string, unknown>;

/** base64url without padding (RFC 7515 §2). */
export function b64url(bytes: Uint8Array | string): string {
  return Buffer.from(typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes)
    .toString("base64url");
}

/**
 * PKCS#8 DER of an RSA private key given as PEM (PKCS#8 or PKCS#1). Throws an Error that
 * names no key material when it is not an RSA private key.
 */
export function rsaPrivateKeyDer(pem: string): Uint8Array {
  let key;
  try {
    key = createPrivateKey({ key: pem, format: "pem" });
  } catch {
    throw new Error("not a PEM private key");
  }
  if (key.asymmetricKeyType !== "rsa") {
    throw new Error(`expected an RSA key, got ${key.asymmetricKeyType ?? "an unknown type"}`);
  }
  return new Uint8Array(key.export({ format: "der", type: "pkcs8" }));
}

/** Imports an RSA private key (PEM) for RS256 signing; not extractable. */
export function importSigningKey(pem: string): Promise<CryptoKey> {
  return crypto.subtle.importKey("pkcs8", toBuffer(rsaPrivateKeyDer(pem)), RS256, false, [
    "sign",
  ]);
}

/** Imports an RSA public key (or a certificate's key), PEM, for RS256 verification. */
export function importVerifyKey(pem: string): Promise<CryptoKey> {
  const der = createPublicKey({ key: pem, format: "pem" }).export({ format: "der", type: "spki" });
  return crypto.subtle.importKey("spki", toBuffer(new Uint8Array(der)), RS256, false, ["verify"]);
}

/** A certificate (PEM) and what a client assertion header says of it. */
export interface CertificateInfo {
  /** `x5t`: base64url SHA-1 of the DER certificate (what Microsoft matches). */
  readonly x5t: string;
  /** `x5t#S256`: base64url SHA-256 of the DER certificate. */
  readonly x5tS256: string;
  /** Not valid after, ms since the epoch. */
  readonly notAfter: number;
  /** The certificate's public key, PEM (SPKI). */
  readonly publicKeyPem: string;
}

/** Reads a PEM certificate; throws an Error naming no content when it is not one. */
export async function certificateInfo(pem: string): Promise<CertificateInfo> {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw new Error("not a PEM certificate");
  }
  const der = new Uint8Array(cert.raw);
  const sha1 = new Uint8Array(await crypto.subtle.digest("SHA-1", toBuffer(der)));
  const sha256 = new Uint8Array(await crypto.subtle.digest("SHA-256", toBuffer(der)));
  return {
    x5t: b64url(sha1),
    x5tS256: b64url(sha256),
    notAfter: Date.parse(cert.validTo),
    publicKeyPem: cert.publicKey.export({ format: "pem", type: "spki" }).toString(),
  };
}

/** True when the private key (PEM) belongs to the certificate (PEM). */
export function keyMatchesCertificate(keyPem: string, certPem: string): boolean {
  const fromKey = createPublicKey(createPrivateKey(keyPem)).export({ format: "der", type: "spki" });
  const fromCert = new X509Certificate(certPem).publicKey.export({ format: "der", type: "spki" });
  return Buffer.compare(fromKey, fromCert) === 0;
}

/** Signs `claims` with `key` as a compact RS256 JWS; `header` adds to `{alg, typ}`. */
export async function signJwt(
  claims: JwtClaims,
  key: CryptoKey,
  header: Record<string, string> = {},
): Promise<string> {
  const input = `${b64url(JSON.stringify({ alg: "RS256", typ: "JWT", ...header }))}.${
    b64url(JSON.stringify(claims))
  }`;
  const signature = await crypto.subtle.sign(RS256, key, new TextEncoder().encode(input));
  return `${input}.${b64url(new Uint8Array(signature))}`;
}

/** A JWT split into its parts, unverified. */
export interface DecodedJwt {
  /** The protected header. */
  readonly header: Record<string, unknown>;
  /** The claims. */
  readonly claims: JwtClaims;
  /** `header.claims`, the signed bytes. */
  readonly input: string;
  /** The signature bytes. */
  readonly signature: Uint8Array;
}

/** Splits a compact JWS without verifying it; undefined when it is not one. */
export function decodeJwt(jwt: string): DecodedJwt | undefined {
  const parts = jwt.split(".");
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) return undefined;
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    if (!isObject(header) || !isObject(claims)) return undefined;
    return {
      header,
      claims,
      input: `${parts[0]}.${parts[1]}`,
      signature: new Uint8Array(Buffer.from(parts[2], "base64url")),
    };
  } catch {
    return undefined;
  }
}

/** True when `jwt`'s RS256 signature verifies with `key`. */
export async function verifyJwt(jwt: DecodedJwt, key: CryptoKey): Promise<boolean> {
  if (jwt.header.alg !== "RS256") return false;
  return await crypto.subtle.verify(
    RS256,
    key,
    toBuffer(jwt.signature),
    new TextEncoder().encode(jwt.input),
  );
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A copy in an ArrayBuffer of its own (WebCrypto's BufferSource typing). */
function toBuffer(bytes: Uint8Array): ArrayBuffer {
  const out = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(out).set(bytes);
  return out;
}

/** `x5t` of a PEM certificate, synchronously (node:crypto's SHA-1 fingerprint). */
export function certificateThumbprint(pem: string): { x5t: string; notAfter: number } {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    throw new Error("not a PEM certificate");
  }
  const hex = cert.fingerprint.replaceAll(":", "");
  return { x5t: Buffer.from(hex, "hex").toString("base64url"), notAfter: Date.parse(cert.validTo) };
}
