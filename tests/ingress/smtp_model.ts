/**
 * An executable model of what the relay's SMTP listener must answer to each command line
 * of an untrusted, plaintext, loopback client: smtp-server 3.21's command dispatch and
 * SASL steps plus the relay's own decisions (530/535/550/452). The fuzz test feeds it the
 * exact bytes a session sends and compares its expectations with the real replies, so a
 * session passes only if every reply is the precise one.
 *
 * Written from smtp-server's documented behaviour and sources (`_onCommand`, `sasl.js`,
 * `_parseAddressCommand`) for the commands the fuzzer sends; parameters after MAIL/RCPT
 * addresses are outside the model (they yield an "any refusal" expectation).
 * @module
 */
import { Buffer } from "node:buffer";
import { recipientProblem } from "../../src/ingress/address.ts";

/** What one command line must get. */
export interface Expectation {
  /** Exact reply code; `0`: input outside the model, any reply (and the model is lost). */
  readonly code: number;
  /** The reply's first line must match (when given). */
  readonly text?: RegExp;
  /** The server closes the connection after this reply. */
  readonly closes?: boolean;
  /** Why (for failure messages). */
  readonly why: string;
}

/** Fixed facts of the relay under test. */
export interface ModelOptions {
  /** The one account's address. */
  readonly account: string;
  /** Its client password. */
  readonly password: string;
  /** `smtp.maxRecipients`. */
  readonly maxRecipients: number;
  /** `limits.maxUnauthenticatedCommands`. */
  readonly maxUnauthenticated: number;
  /** `limits.maxCommandLength`. */
  readonly maxCommandLength: number;
}

/** Commands smtp-server has a handler for (STARTTLS is disabled: no certificate). */
const HANDLERS = new Set([
  "AUTH",
  "DATA",
  "EHLO",
  "HELO",
  "HELP",
  "KILL",
  "MAIL",
  "NOOP",
  "QUIT",
  "RCPT",
  "RSET",
  "SHELL",
  "VRFY",
  "WIZ",
  "XCLIENT",
  "XFORWARD",
]);
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1F\x7F-\x9F]/;
// deno-lint-ignore no-control-regex
const ADDRESS_UNSAFE = /[\x00-\x1F\x7F-\x9F\u200B\u2060\uFEFF]/;
const HTTP = /^(OPTIONS|GET|HEAD|POST|PUT|DELETE|TRACE|CONNECT) \/.* HTTP\/\d\.\d$/i;
const decoder = new TextDecoder();

const AUTH_REQUIRED = /^530 5\.7\.0 Authentication required$/;
const AUTH_FAILED = /^535 5\.7\.8 Authentication credentials invalid$/;

/** The model of one session. Feed it every byte the client sends, in order. */
export class SmtpModel {
  /** The server has closed (or will close) the connection. */
  closed = false;
  /** DATA was accepted: every further byte is message content. */
  dataMode = false;
  /** Logged in. */
  user = false;
  /** Input outside the model was sent; later expectations are not reliable. */
  lost = false;
  /** Password checks that fail (each costs the relay one scrypt). */
  failedPasswordChecks = 0;
  readonly #o: ModelOptions;
  #hello = false;
  #mailFrom = false;
  #rcpts = new Set<string>();
  #unrecognized = 0;
  #unauthenticated = 0;
  #next?: (text: string) => Expectation;
  #remainder = "";

  /** A fresh session right after the greeting. */
  constructor(options: ModelOptions) {
    this.#o = options;
  }

  /** A partial line (no line ending yet) is buffered. */
  get partial(): boolean {
    return this.#remainder.length > 0;
  }

  /** Expectations for the complete lines in `bytes` (a partial line is kept for later). */
  feed(bytes: Uint8Array): Expectation[] {
    const out: Expectation[] = [];
    if (this.closed) return out;
    // smtp-server splits a latin1 view of the bytes on /\r?\n/.
    let data = this.#remainder + Buffer.from(bytes).toString("latin1");
    this.#remainder = "";
    while (!this.closed) {
      if (this.dataMode) {
        if (/(^|\n)\.\r?\n/.test(data)) throw new Error("model: the fuzzer ended a DATA body");
        return out; // content; the fuzzer never ends it
      }
      const m = /\r?\n/.exec(data);
      if (!m) {
        if (data.length > this.#o.maxCommandLength) out.push(this.#tooLong());
        else this.#remainder = data;
        return out;
      }
      const line = data.slice(0, m.index);
      data = data.slice(m.index + m[0].length);
      if (line.length > this.#o.maxCommandLength) {
        out.push(this.#tooLong());
        return out;
      }
      out.push(this.#command(decoder.decode(Buffer.from(line, "latin1"))));
    }
    return out;
  }

  #tooLong(): Expectation {
    this.closed = true;
    return {
      code: 421,
      text: /^421 4\.7\.0 Error: Command line too long$/,
      closes: true,
      why: "line too long",
    };
  }

  #close(code: number, text: RegExp, why: string): Expectation {
    this.closed = true;
    return { code, text, closes: true, why };
  }

  #command(text: string): Expectation {
    if (HTTP.test(text)) return this.#close(421, /HTTP requests not allowed/, "HTTP line");
    const name = text.split(" ")[0].toUpperCase();
    // A pending AUTH step takes the line whatever it says; smtp-server still applies the
    // checks below to it by its first word (counted as an unauthenticated command, 530
    // if it starts with MAIL/RCPT/DATA, and the AUTH exchange is then dropped).
    const next = this.#next;
    this.#next = undefined;
    if (!next && !HANDLERS.has(name)) {
      if (++this.#unrecognized >= 10) {
        return this.#close(421, /too many unrecognized commands/, "10th unknown command");
      }
      return {
        code: 500,
        text: /^500 5\.5\.2 Error: command not recognized$/,
        why: "unknown command",
      };
    }
    if (!this.user && name !== "AUTH") {
      if (++this.#unauthenticated >= this.#o.maxUnauthenticated) {
        return this.#close(421, /too many unauthenticated commands/, "unauthenticated limit");
      }
    }
    if (!this.#hello && name && ["MAIL", "RCPT", "DATA", "AUTH"].includes(name)) {
      return { code: 503, text: /send HELO\/EHLO first/, why: `${name} before EHLO` };
    }
    if (!this.user && ["MAIL", "RCPT", "DATA"].includes(name)) {
      return { code: 530, text: AUTH_REQUIRED, why: `${name} without AUTH` };
    }
    if (next) return next(text);
    const args = text.trim().split(/\s+/);
    switch (name) {
      case "EHLO":
      case "HELO": {
        if (args.length !== 2) return { code: 501, why: `${name} syntax` };
        if (args[1].length > 300 || CONTROL.test(args[1])) {
          return { code: 501, text: /Bad hostname syntax/, why: `${name} hostname` };
        }
        this.#hello = true;
        this.#reset();
        return { code: 250, why: name };
      }
      case "QUIT":
        return this.#close(221, /^221 Bye$/, "QUIT");
      case "NOOP":
        return { code: 250, why: "NOOP" };
      case "RSET":
        this.#reset();
        return { code: 250, why: "RSET" };
      case "HELP":
        return { code: 214, why: "HELP" };
      case "VRFY":
        return args[1] ? { code: 252, why: "VRFY" } : { code: 501, why: "VRFY syntax" };
      case "XCLIENT":
      case "XFORWARD":
        return { code: 550, text: /Not allowed/, why: name };
      case "WIZ":
        return args[1] ? { code: 200, why: "WIZ pw" } : { code: 500, why: "WIZ" };
      case "SHELL":
      case "KILL":
        return { code: 500, why: name };
      case "AUTH":
        return this.#auth(args);
      case "MAIL":
        return this.#mail(text);
      case "RCPT":
        return this.#rcpt(text);
      case "DATA":
        if (this.#rcpts.size === 0) return { code: 503, text: /need RCPT command/, why: "DATA" };
        this.dataMode = true;
        return { code: 354, why: "DATA accepted" };
    }
    throw new Error(`model: unhandled ${name}`);
  }

  #lose(why: string): Expectation {
    this.lost = true;
    return { code: 0, why: `${why} (not modelled)` };
  }

  #reset(): void {
    this.#mailFrom = false;
    this.#rcpts = new Set();
  }

  #auth(args: string[]): Expectation {
    const method = (args[1] ?? "").toUpperCase();
    const rest = args.slice(2);
    if (this.user) return { code: 503, text: /No identity changes/, why: "second AUTH" };
    if (method !== "PLAIN" && method !== "LOGIN") {
      return { code: 504, text: /Unrecognized authentication type/, why: "AUTH method" };
    }
    if (rest.length > 1) return { code: 501, why: "AUTH syntax" };
    if (method === "PLAIN") {
      if (rest.length === 0) {
        this.#next = (t) => this.#plain(true, t);
        return { code: 334, why: "AUTH PLAIN" };
      }
      return this.#plain(false, rest[0]);
    }
    if (rest.length === 0) {
      this.#next = (t) => this.#loginUser(true, t);
      return { code: 334, text: /^334 VXNlcm5hbWU6$/, why: "AUTH LOGIN" };
    }
    return this.#loginUser(false, rest[0]);
  }

  #plain(canAbort: boolean, raw: string): Expectation {
    const token = raw.trim();
    if (canAbort && token === "*") return { code: 501, why: "PLAIN aborted" };
    const data = Buffer.from(token, "base64").toString().split("\x00");
    if (data.length !== 3) return { code: 501, text: /invalid userdata/, why: "PLAIN blob" };
    const username = data[1] || data[0] || "";
    if (CONTROL.test(username) || CONTROL.test(data[0] || "")) {
      return { code: 501, text: /invalid userdata/, why: "PLAIN control chars" };
    }
    return this.#check(username, data[2] || "");
  }

  #loginUser(canAbort: boolean, raw: string): Expectation {
    let username = raw.trim();
    if (canAbort && username === "*") return { code: 501, why: "LOGIN aborted" };
    username = Buffer.from(username, "base64").toString();
    if (!username) return { code: 501, text: /missing username/, why: "LOGIN empty user" };
    if (CONTROL.test(username)) return { code: 501, why: "LOGIN control chars" };
    this.#next = (t) => this.#loginPassword(username, t);
    return { code: 334, text: /^334 UGFzc3dvcmQ6$/, why: "LOGIN user" };
  }

  #loginPassword(username: string, raw: string): Expectation {
    const password = raw.trim();
    if (password === "*") return { code: 501, why: "LOGIN aborted" };
    return this.#check(username, Buffer.from(password, "base64").toString());
  }

  #check(username: string, password: string): Expectation {
    if (username.trim().toLowerCase() === this.#o.account && password === this.#o.password) {
      this.user = true;
      return { code: 235, why: "AUTH ok" };
    }
    this.failedPasswordChecks++;
    return { code: 535, text: AUTH_FAILED, why: "AUTH refused" };
  }

  #mail(text: string): Expectation {
    const parsed = parseAddress("MAIL FROM", text);
    if (parsed === "params") return this.#lose("MAIL with parameters");
    if (parsed === undefined) return { code: 501, text: /Bad sender address/, why: "MAIL syntax" };
    if (this.#mailFrom) return { code: 503, text: /nested MAIL/, why: "nested MAIL" };
    const address = parsed.toLowerCase();
    if (address !== "" && address !== this.#o.account) {
      return { code: 550, text: /^550 5\.7\.1 Sender <.*> is not allowed/, why: "foreign sender" };
    }
    this.#mailFrom = true;
    return { code: 250, why: "MAIL" };
  }

  #rcpt(text: string): Expectation {
    const parsed = parseAddress("RCPT TO", text);
    if (parsed === "params") return this.#lose("RCPT with parameters");
    if (!parsed) return { code: 501, text: /Bad recipient address/, why: "RCPT syntax" };
    if (!this.#mailFrom) return { code: 503, text: /need MAIL command/, why: "RCPT before MAIL" };
    if (recipientProblem(parsed)) return { code: 550, text: /^550 5\.1\.3 /, why: "RCPT policy" };
    if (this.#rcpts.size >= this.#o.maxRecipients) {
      return { code: 452, text: /^452 4\.5\.3 Too many recipients/, why: "RCPT over limit" };
    }
    this.#rcpts.add(parsed.toLowerCase());
    return { code: 250, why: "RCPT" };
  }
}

/**
 * smtp-server's `_parseAddressCommand` for parameter-less commands: the address, or
 * undefined when it is refused as syntax, or "params" when parameters follow.
 */
function parseAddress(name: string, text: string): string | undefined | "params" {
  const parts = text.split(":");
  const command = (parts.shift() ?? "").trim().toUpperCase();
  const rest = parts.join(":").trim().split(/\s+/);
  let address = rest.shift() ?? "";
  if (command !== name) return undefined;
  if (rest.some((p) => p.split("=")[0].trim() !== "")) return "params";
  if (!/^<[^<>]*>$/.test(address)) return undefined;
  address = address.slice(1, -1).replace(/^@[^\s,:@]+(?:,@[^\s,:@]+)*:/, "");
  if (address && ADDRESS_UNSAFE.test(address)) return undefined;
  if (name === "RCPT TO" && address.toLowerCase() === "postmaster") return address;
  if (!address) return address;
  const at = address.split("@");
  if (at.length !== 2 || !at[0] || !at[1]) return undefined;
  const [local, domain] = at;
  if (local.length + 1 + domain.length > 253) return undefined;
  if (local.startsWith(".") || local.endsWith(".") || local.includes("..")) return undefined;
  if (domain.startsWith("[")) return "params"; // IP literals: not modelled
  if (
    domain.startsWith(".") || domain.endsWith(".") || domain.includes("..") ||
    domain.includes(".-") || domain.includes("-.") || !/^[a-zA-Z0-9\u0080-\uFFFF.-]+$/.test(domain)
  ) return undefined;
  if (/xn--/i.test(domain)) return "params"; // punycode: not modelled
  return address;
}
