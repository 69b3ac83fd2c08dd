/**
 * A throwaway self-signed certificate for `deno task demo`: a fresh ECDSA P-256 key from
 * WebCrypto and an X.509 v3 certificate for `localhost` and `127.0.0.1`, valid for one
 * day, encoded here (a few DER structures; no library). The certificate is its own trust
 * anchor: clients trust exactly it (`swaks --tls-verify --tls-ca-path cert.pem`).
 * @module
 */

/** PEM certificate and PKCS#8 private key. */
export interface DemoCertificate {
  /** The certificate, PEM. */
  readonly cert: string;
  /** Its private key, PKCS#8 PEM. */
  readonly key: string;
}

const enc = new TextEncoder();

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One DER element: tag, definite length, content. */
function tlv(tag: number, ...content: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const body = concat(...content);
  const n = body.length;
  const length = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return concat(new Uint8Array([tag, ...length]), body);
}

const seq = (...c: Uint8Array[]) => tlv(0x30, ...c);
/** A non-negative INTEGER from big-endian bytes (leading zeros dropped, sign byte added). */
function int(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const b = bytes.subarray(i);
  return tlv(0x02, b[0] & 0x80 ? concat(new Uint8Array([0]), b) : b);
}
const oid = (...bytes: number[]) => tlv(0x06, new Uint8Array(bytes));
const utcTime = (d: Date) =>
  tlv(0x17, enc.encode(d.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z"));

/** ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters. */
const ECDSA_SHA256 = seq(oid(0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02));

function pem(label: string, der: Uint8Array): string {
  const b64 = btoa(String.fromCharCode(...der)).replace(/(.{64})/g, "$1\n").trimEnd();
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** Makes a new key pair and a self-signed certificate for localhost and 127.0.0.1. */
export async function makeDemoCertificate(now = new Date()): Promise<DemoCertificate> {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  // CN (2.5.4.3) as UTF8String.
  const name = seq(
    tlv(0x31, seq(oid(0x55, 0x04, 0x03), tlv(0x0c, enc.encode("smtp-oauth2-relay demo")))),
  );
  // subjectAltName (2.5.29.17): dNSName localhost, iPAddress 127.0.0.1.
  const san = seq(
    oid(0x55, 0x1d, 0x11),
    tlv(0x04, seq(tlv(0x82, enc.encode("localhost")), tlv(0x87, new Uint8Array([127, 0, 0, 1])))),
  );
  const tbs = seq(
    tlv(0xa0, int(new Uint8Array([2]))), // v3
    int(crypto.getRandomValues(new Uint8Array(16))),
    ECDSA_SHA256,
    name,
    seq(utcTime(new Date(now.getTime() - 60_000)), utcTime(new Date(now.getTime() + 86_400_000))),
    name,
    spki,
    tlv(0xa3, seq(san)),
  );
  const raw = new Uint8Array(
    await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, pair.privateKey, tbs),
  );
  // WebCrypto gives r || s; X.509 wants SEQUENCE { INTEGER r, INTEGER s }.
  const signature = seq(int(raw.subarray(0, 32)), int(raw.subarray(32)));
  const cert = seq(tbs, ECDSA_SHA256, tlv(0x03, new Uint8Array([0]), signature));
  return { cert: pem("CERTIFICATE", cert), key: pem("PRIVATE KEY", pkcs8) };
}
