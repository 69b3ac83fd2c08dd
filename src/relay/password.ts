/**
 * Client passwords: scrypt hashes in the config, checked in constant time.
 *
 * A successful check is remembered as an HMAC under a per-process random key, so a
 * client that logs in once per message pays for scrypt only on its first login. Every
 * failure (unknown user included) costs one full scrypt, so timing tells nothing.
 * @module
 */
import { createHmac, randomBytes, scrypt, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";

/** scrypt cost parameters of new hashes: N=2^14, r=8, p=1 (16 MiB, ~50 ms). */
const N = 16384, R = 8, P = 1, KEYLEN = 32;

/**
 * scrypt runs at most this many at a time: each holds 16 MiB, and a burst of failed
 * logins must queue rather than grow the process by hundreds of MB.
 */
const MAX_CONCURRENT_HASHES = 2;
let running = 0;
const waiting: (() => void)[] = [];

async function derive(password: string, salt: Buffer, n: number, r: number, p: number) {
  if (running >= MAX_CONCURRENT_HASHES) await new Promise<void>((go) => waiting.push(go));
  running++;
  try {
    return await scryptOnce(password, salt, n, r, p);
  } finally {
    running--;
    waiting.shift()?.();
  }
}

function scryptOnce(password: string, salt: Buffer, n: number, r: number, p: number) {
  return new Promise<Buffer>((ok, fail) =>
    scrypt(
      password,
      salt,
      KEYLEN,
      { N: n, r, p, maxmem: 256 * n * r + 1024 * 1024 },
      (e, k) => e ? fail(e) : ok(k),
    )
  );
}

/** Hashes a password into the `scrypt$N$r$p$salt$hash` form the config expects. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, N, R, P);
  return `scrypt$${N}$${R}$${P}$${salt.toString("base64")}$${key.toString("base64")}`;
}

interface Parsed {
  n: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
}

function parse(hash: string): Parsed {
  const [scheme, n, r, p, salt, key] = hash.split("$");
  if (scheme !== "scrypt") throw new Error("unsupported password hash scheme");
  return {
    n: Number(n),
    r: Number(r),
    p: Number(p),
    salt: Buffer.from(salt, "base64"),
    key: Buffer.from(key, "base64"),
  };
}

const processKey = randomBytes(32);
const mac = (password: string) => createHmac("sha256", processKey).update(password).digest();

/** Checks passwords against one stored hash. */
export class PasswordVerifier {
  readonly #hash: Parsed;
  #verified?: Buffer;

  /** Parses a `scrypt$…` hash (validated by the config schema). */
  constructor(hash: string) {
    this.#hash = parse(hash);
  }

  /** True when `password` matches, compared in constant time. */
  async verify(password: string): Promise<boolean> {
    if (this.#verified && timingSafeEqual(this.#verified, mac(password))) return true;
    const h = this.#hash;
    const key = await derive(password, h.salt, h.n, h.r, h.p);
    const ok = key.length === h.key.length && timingSafeEqual(key, h.key);
    if (ok) this.#verified = mac(password);
    return ok;
  }
}

let dummy: PasswordVerifier | undefined;

/** Burns the same scrypt time as a real check, for unknown users. Always false. */
export async function verifyNobody(password: string): Promise<false> {
  dummy ??= new PasswordVerifier(
    `scrypt$${N}$${R}$${P}$${Buffer.alloc(16).toString("base64")}$${
      Buffer.alloc(KEYLEN).toString("base64")
    }`,
  );
  await dummy.verify(password);
  return false;
}
