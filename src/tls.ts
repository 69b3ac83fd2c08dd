/**
 * The client-facing certificate: read from its files at start and again at each reload.
 * @module
 */
import type { TlsMaterial } from "./ingress/server.ts";

/** Where the certificate and key are (the config's `tls`). */
export interface TlsFiles {
  /** Certificate chain, PEM. */
  readonly certFile: string;
  /** Private key, PEM. */
  readonly keyFile: string;
}

/** Reads both files. */
export async function readTls(tls: TlsFiles): Promise<TlsMaterial> {
  const [cert, key] = await Promise.all([
    Deno.readTextFile(tls.certFile),
    Deno.readTextFile(tls.keyFile),
  ]);
  return { cert, key };
}
