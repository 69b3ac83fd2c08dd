/**
 * Helpers for the HTTPS transport tests: a harness whose accounts send through the
 * sandbox's Graph or Gmail API, and a raw-message sender that returns the relay's reply.
 * @module
 */
import { Buffer } from "node:buffer";
import { freePort, type Harness, type HarnessOptions, startHarness } from "../harness.ts";

/** A harness whose accounts use `transport` against the sandbox's HTTPS APIs. */
export async function startHttpsHarness(
  transport: "graph" | "gmail-api",
  options: HarnessOptions & { transportExtras?: Record<string, unknown> } = {},
): Promise<Harness> {
  // The sandbox binds this port for its APIs; the config must name it before it starts.
  const apiPort = freePort();
  return await startHarness({
    ...options,
    sandbox: { ...options.sandbox, apiPort },
    accountExtras: (i) => ({
      transport: {
        type: transport,
        apiUrl: `https://localhost:${apiPort}`,
        ...options.transportExtras,
      },
      ...options.accountExtras?.(i),
    }),
  });
}

/**
 * Sends `raw` with envelope `from` → `to` as account `i` (nodemailer, AUTH PLAIN) and
 * returns the relay's final reply line, also for a refusal.
 */
export async function sendRaw(
  h: Harness,
  raw: string | Uint8Array,
  to: string[],
  options: { i?: number; from?: string } = {},
): Promise<string> {
  const a = h.accounts[options.i ?? 0];
  try {
    const info = await h.client(a).sendMail({
      envelope: { from: options.from ?? a.email, to },
      raw: Buffer.from(typeof raw === "string" ? new TextEncoder().encode(raw) : raw),
    });
    return info.response;
  } catch (err) {
    return (err as { response?: string }).response ?? String(err);
  }
}

/** A CRLF message from the harness account `from` with the given header lines. */
export function message(headers: string[], body = "Hello\r\n"): Uint8Array {
  return new TextEncoder().encode(
    [...headers, "Subject: https test", `Message-ID: <${crypto.randomUUID()}@test>`].join("\r\n") +
      "\r\n\r\n" + body,
  );
}
