/**
 * The ingress against a fake backend (go-smtp's way of testing a server): a backend that
 * records every call and fails on demand, an observer that records refusals, and a client
 * that connects from a chosen loopback address (127.0.0.0/8), for limits per address.
 * @module
 */
import net from "node:net";
import type { Backend, IngressObserver, Peer, Session } from "../../src/ingress/backend.ts";
import { type Ingress, type IngressOptions, startIngress } from "../../src/ingress/server.ts";
import { type Reply as SmtpReply, reply } from "../../src/smtp/reply.ts";
import type { Reply } from "../smtp_client.ts";

type Stage = "newSession" | "auth" | "mail" | "rcpt" | "data";

/** A backend that logs each call and answers as `script` says (default: accept). */
export class FakeBackend implements Backend {
  readonly calls: string[] = [];
  readonly messages: Uint8Array[] = [];
  /** Per stage: a refusal to return, or "throw". */
  readonly script: Partial<Record<Stage, SmtpReply | "throw" | false>> = {};
  /** When set, decides each AUTH (instead of `script.auth`). */
  password?: string;
  /** When set, every AUTH check waits for it. */
  authGate?: Promise<void>;
  logouts = 0;

  /** The AUTH checks made so far (calls starting with "auth "). */
  get authChecks(): number {
    return this.calls.filter((c) => c.startsWith("auth ")).length;
  }

  newSession(peer: Peer): Session {
    this.calls.push(`newSession ${peer.address} trusted=${peer.trusted}`);
    if (this.script.newSession === "throw") throw new Error("backend broken");
    const answer = <T>(stage: Stage, ok: T): Promise<T | SmtpReply> => {
      const s = this.script[stage];
      if (s === "throw") return Promise.reject(new Error(`${stage} broken`));
      if (s) return Promise.resolve(s);
      return Promise.resolve(ok);
    };
    return {
      auth: async (username, password) => {
        // The password's length only: test output must never show a password.
        this.calls.push(`auth ${username} ${password.length}`);
        if (this.authGate) await this.authGate;
        if (this.password !== undefined) return password === this.password;
        if (this.script.auth === false) return false;
        return await (answer("auth", true) as Promise<boolean>);
      },
      mail: (from, authenticated) => {
        this.calls.push(`mail <${from}> authenticated=${authenticated}`);
        return answer("mail", undefined);
      },
      rcpt: (to) => {
        this.calls.push(`rcpt <${to}>`);
        return answer("rcpt", undefined);
      },
      data: async (body) => {
        // Called at DATA; the message is recorded once the client's final dot is in.
        body.want();
        await body.settled;
        if (body.failure) return reply(451, "4.3.0", "incomplete");
        const message = await body.bytes();
        this.calls.push(`data ${message.length}`);
        this.messages.push(message);
        return await (answer("data", reply(250, "2.0.0", "OK queued")) as Promise<SmtpReply>);
      },
      reset: () => this.calls.push("reset"),
      logout: () => {
        this.calls.push("logout");
        this.logouts++;
      },
    };
  }
}

/** Records what the ingress reports to its observer. */
export class FakeObserver implements IngressObserver {
  /** `refused` reasons, in order. */
  readonly refusals: string[] = [];
  sessionOpened(): void {}
  sessionClosed(): void {}
  refused(reason: string): void {
    this.refusals.push(reason);
  }
  /** How often `reason` was reported. */
  count(reason: string): number {
    return this.refusals.filter((r) => r === reason).length;
  }
}

/** What a test may change of the ingress {@link withIngress} starts. */
export interface FakeIngressOptions {
  /** Trusted networks of the one listener. */
  trustedNetworks?: string[];
  /** Limits over the defaults below. */
  limits?: Partial<IngressOptions["limits"]>;
  /** The ingress's account-name hook. */
  accountName?: (username: string) => string | undefined;
}

/**
 * Runs `fn` against an ingress on 127.0.0.1 (any port) with a {@link FakeBackend}: small
 * message and recipient limits, AUTH failure limits out of the way unless `options` say
 * otherwise. Closed afterwards.
 */
export async function withIngress(
  fn: (ingress: Ingress, backend: FakeBackend, observer: FakeObserver) => Promise<void>,
  options: FakeIngressOptions = {},
): Promise<void> {
  const backend = new FakeBackend();
  const observer = new FakeObserver();
  const errors: unknown[] = [];
  const ingress = await startIngress({
    listeners: [{
      host: "127.0.0.1",
      port: 0,
      implicitTls: false,
      trustedNetworks: options.trustedNetworks ?? [],
      proxyFrom: [],
    }],
    name: "fake.test",
    allowPlaintextAuth: false,
    maxMessageSize: 1_000,
    maxRecipients: 3,
    limits: {
      maxClients: 10,
      maxConnectionsPerIp: 10,
      authFailuresBeforeTarpit: 100,
      authFailuresBeforeDisconnect: 100,
      authFailureWindowMs: 60_000,
      tarpitStepMs: 0,
      maxUnauthenticatedCommands: 10,
      maxCommandLength: 4_096,
      idleTimeoutMs: 10_000,
      sessionTimeoutMs: 60_000,
      ...options.limits,
    },
    backend,
    observer,
    accountName: options.accountName,
    onError: (err) => errors.push(err),
  });
  try {
    await fn(ingress, backend, observer);
  } finally {
    await ingress.close();
  }
}

const REPLY_LINE = /^(\d{3})([ -])(.*)$/;

/**
 * A raw SMTP client connected from `localAddress` (any address in 127.0.0.0/8 on Linux),
 * through node:net since Deno.connect cannot choose its source address. Every reply is
 * recorded; every wait has a deadline.
 */
export class SourceClient {
  /** Every complete reply, in order. */
  readonly replies: Reply[] = [];
  readonly #socket: net.Socket;
  #buffer = "";
  #lines: string[] = [];
  #consumed = 0;
  #ended = false;
  readonly #waiters = new Set<() => void>();

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.#buffer += chunk;
      let at;
      while ((at = this.#buffer.indexOf("\r\n")) >= 0) {
        const line = this.#buffer.slice(0, at);
        this.#buffer = this.#buffer.slice(at + 2);
        const m = REPLY_LINE.exec(line);
        this.#lines.push(line);
        if (!m || m[2] === " ") {
          const lines = this.#lines;
          this.#lines = [];
          this.replies.push({ code: Number(m?.[1] ?? 0), lines, last: line });
        }
      }
      this.#notify();
    });
    const ended = () => {
      this.#ended = true;
      this.#notify();
    };
    socket.on("end", ended);
    socket.on("close", ended);
    socket.on("error", ended);
  }

  /** Connects to 127.0.0.1:`port` from `localAddress` and reads the greeting. */
  static async connect(
    port: number,
    localAddress: string,
  ): Promise<{ client: SourceClient; greeting: Reply }> {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress });
    const client = new SourceClient(socket);
    return { client, greeting: await client.reply() };
  }

  /** Replies not yet returned by {@link reply}. */
  get unread(): number {
    return this.replies.length - this.#consumed;
  }

  /** Sends a line (CRLF added) without waiting for a reply. */
  send(line: string): void {
    this.#socket.write(`${line}\r\n`);
  }

  /** Sends a line and returns the next reply. */
  command(line: string): Promise<Reply> {
    this.send(line);
    return this.reply();
  }

  /** The next reply not yet returned; throws after `timeoutMs` or when the server left. */
  async reply(timeoutMs = 5_000): Promise<Reply> {
    if (!(await this.#until(() => this.unread > 0 || this.#ended, timeoutMs))) {
      throw new Error(`no reply within ${timeoutMs} ms`);
    }
    if (this.unread === 0) throw new Error("the server closed the connection");
    return this.replies[this.#consumed++];
  }

  /** True once the server ended the connection (waits up to `timeoutMs`). */
  closedByServer(timeoutMs = 5_000): Promise<boolean> {
    return this.#until(() => this.#ended, timeoutMs);
  }

  /** Closes the connection. */
  close(): void {
    this.#socket.destroy();
  }

  #notify(): void {
    for (const w of this.#waiters) w();
  }

  #until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
    if (condition()) return Promise.resolve(true);
    return new Promise((done) => {
      const check = () => {
        if (!condition()) return;
        finish(true);
      };
      const finish = (value: boolean) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        done(value);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      this.#waiters.add(check);
    });
  }
}
