/**
 * The nodemailer self-check passes against the pinned nodemailer and fails loudly,
 * naming the library, its version and the missing piece, when a shape it relies on is
 * gone. nodemailer's private fields are touched in src/compat/nodemailer.ts only.
 */
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import {
  checkNodemailer,
  LOADED_NODEMAILER_VERSION,
  type NodemailerLibrary,
  PINNED_NODEMAILER_VERSION,
} from "../../src/compat/nodemailer.ts";

const REAL: NodemailerLibrary = {
  version: LOADED_NODEMAILER_VERSION,
  createTransport: nodemailer.createTransport as NodemailerLibrary["createTransport"],
  SMTPConnection: SMTPConnection as unknown as NodemailerLibrary["SMTPConnection"],
};

/** The real library with the SMTP pool of every transport changed by `alter`. */
function withPool(alter: (pool: Record<string, unknown>) => void): NodemailerLibrary {
  return {
    ...REAL,
    createTransport: (options) => {
      const transport = REAL.createTransport(options) as { transporter: Record<string, unknown> };
      alter(transport.transporter);
      return transport;
    },
  };
}

/** Asserts the check fails with the library, its version, `piece` and what to do. */
async function assertFails(library: NodemailerLibrary, piece: RegExp, timeoutMs?: number) {
  await assert.rejects(checkNodemailer(library, timeoutMs), (err: Error) => {
    assert.match(
      err.message,
      new RegExp(`^nodemailer ${library.version.replaceAll(".", "\\.")}: `),
    );
    assert.match(err.message, piece);
    assert.match(err.message, /pin nodemailer 10\.6\.1 or update src\/compat\/nodemailer\.ts/);
    return true;
  });
}

Deno.test("the self-check passes against the pinned nodemailer", async () => {
  assert.equal(PINNED_NODEMAILER_VERSION, "10.6.1");
  assert.deepEqual(await checkNodemailer(), { version: "10.6.1", pinned: "10.6.1" });
});

Deno.test("another version with every shape in place passes and says which it is", async () => {
  assert.deepEqual(await checkNodemailer({ ...REAL, version: "10.7.0" }), {
    version: "10.7.0",
    pinned: "10.6.1",
  });
});

Deno.test("a missing SMTPConnection.prototype.quit fails the check", async () => {
  class NoQuit extends SMTPConnection {}
  Object.defineProperty(NoQuit.prototype, "quit", { value: undefined });
  await assertFails(
    { ...REAL, version: "10.7.0", SMTPConnection: NoQuit as unknown as REALCtor },
    /SMTPConnection\.prototype\.quit is missing/,
  );
});

Deno.test("a renamed SMTPConnection#_maxAllowedSize fails the check", async () => {
  class Renamed extends SMTPConnection {
    constructor(options: Record<string, unknown>) {
      super(options);
      delete (this as unknown as Record<string, unknown>)._maxAllowedSize;
    }
  }
  await assertFails(
    { ...REAL, SMTPConnection: Renamed as unknown as REALCtor },
    /SMTPConnection#_maxAllowedSize .* is missing/,
  );
});

type REALCtor = NodemailerLibrary["SMTPConnection"];

Deno.test("a transport without its SMTP pool fails the check", async () => {
  await assertFails({ ...REAL, createTransport: () => ({ close() {} }) }, /Mail#transporter/);
});

Deno.test("an SMTP pool without send fails the check", async () => {
  await assertFails(
    withPool((pool) => pool.send = undefined),
    /SMTPPool\.prototype\.send is missing/,
  );
});

Deno.test("an SMTP pool without a _connections array fails the check", async () => {
  await assertFails(
    withPool((pool) => pool._connections = new Set()),
    /SMTPPool#_connections is not an array/,
  );
});

Deno.test("a pool that ignores the getSocket option fails the check", async () => {
  await assertFails(
    withPool((pool) => pool.getSocket = () => {}),
    /SMTPPool#getSocket \(the getSocket option\) is not used/,
  );
});

Deno.test("a changed SIZE refusal fails the check", async () => {
  // As if nodemailer now reported its SIZE check as an envelope error.
  await assertFails(
    withPool((pool) => {
      const send = (pool.send as (mail: unknown, cb: (...args: unknown[]) => void) => void)
        .bind(pool);
      pool.send = (mail: unknown, cb: (err: Error | null, info?: unknown) => void) =>
        send(mail, (err, info) => {
          if (err) Object.assign(err as Error, { code: "EENVELOPE" });
          cb(err as Error | null, info);
        });
    }),
    /the SIZE refusal .* has changed/,
  );
});

Deno.test("a pool whose idle connection cannot be found to QUIT fails the check", async () => {
  await assertFails(
    withPool((pool) => {
      const send = (pool.send as (mail: unknown, cb: (...args: unknown[]) => void) => void)
        .bind(pool);
      let sent = 0;
      pool.send = (mail: unknown, cb: (err: unknown, info?: unknown) => void) =>
        send(mail, (err, info) => {
          cb(err, info);
          // After both messages: the connection list moves where nobody looks.
          if (++sent === 2) pool._connections = [];
        });
    }),
    /quitting an idle pooled connection failed \(no idle connection/,
    300,
  );
});

Deno.test("nodemailer's private fields are read in src/compat/nodemailer.ts only", async () => {
  const offenders: string[] = [];
  for await (const file of walk(new URL("../../src/", import.meta.url))) {
    if (file.endsWith("/compat/nodemailer.ts") || file.includes("/sandbox/")) continue;
    const text = await Deno.readTextFile(file);
    text.split("\n").forEach((line, i) => {
      if (
        /\.transporter\b|\b_connections\b|_maxAllowedSize|queueEntry|\bPoolResource\b/.test(line)
      ) {
        offenders.push(`${file}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  for await (const file of walk(new URL("../../src/upstream/", import.meta.url))) {
    const text = await Deno.readTextFile(file);
    text.split("\n").forEach((line, i) => {
      // Any `._name` or `["_name"]` access in the upstream code.
      if (/\._[A-Za-z]|\[["']_[A-Za-z]/.test(line)) {
        offenders.push(`${file}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  assert.deepEqual(offenders, []);
});

async function* walk(dir: URL): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
    if (entry.isDirectory) yield* walk(url);
    else if (entry.name.endsWith(".ts")) yield url.pathname;
  }
}
