/**
 * `hash-password`: reads a client password from stdin (not echoed on a terminal) and
 * prints the hash to put in `accounts.ts`.
 * @module
 */
import { hashPassword } from "../relay/password.ts";
import { EXIT_USAGE, UsageError } from "./common.ts";

/** Usage line of this command. */
export const HASH_PASSWORD_USAGE = "hash-password        (reads the password from stdin)";

/** Hashes one password; resolves to the exit status. */
export async function hashPasswordCommand(args: string[]): Promise<number> {
  if (args.length > 0) throw new UsageError(`hash-password takes no arguments, got "${args[0]}"`);
  const password = await readPassword();
  if (!password) {
    console.error("error: empty password");
    return EXIT_USAGE;
  }
  console.log(await hashPassword(password));
  return 0;
}

/** One line from stdin; not echoed when stdin is a terminal. */
async function readPassword(): Promise<string> {
  const tty = Deno.stdin.isTerminal();
  if (tty) {
    Deno.stderr.writeSync(new TextEncoder().encode("password: "));
    Deno.stdin.setRaw(true);
  }
  const bytes: number[] = [];
  const buf = new Uint8Array(1);
  try {
    while (true) {
      const n = await Deno.stdin.read(buf);
      if (n === null || buf[0] === 0x0a || buf[0] === 0x0d) break;
      if (tty && buf[0] === 0x03) throw new Error("interrupted");
      bytes.push(buf[0]);
    }
  } finally {
    if (tty) {
      Deno.stdin.setRaw(false);
      Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    }
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}
