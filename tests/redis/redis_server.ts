/**
 * A real `redis-server` (Debian's) for the tests: on a free loopback port, in its own
 * temporary directory, append-only file on (fsync always, as docs/redis.md asks), no
 * RDB snapshots; stopped by its PID (SIGKILL for the fault tests, or SIGTERM).
 * {@link RedisServer.restart} starts it again on the same port and directory.
 * @module
 */
import { freePort, until } from "../harness.ts";

/** A running (or stopped) redis-server. */
export class RedisServer {
  readonly port: number;
  readonly dir: string;
  #child?: Deno.ChildProcess;
  #password?: string;

  private constructor(port: number, dir: string, password?: string) {
    this.port = port;
    this.dir = dir;
    this.#password = password;
  }

  /** TLS port (with `tls`), beside the plain one. */
  tlsPort?: number;

  /**
   * Starts one; `password`: `requirepass`; `tls`: also a TLS port with a certificate for
   * 127.0.0.1 from a new CA (`<dir>/ca.pem`), made with openssl.
   */
  static async start(options: { password?: string; tls?: boolean } = {}): Promise<RedisServer> {
    const dir = await Deno.makeTempDir({ prefix: "relay-redis-" });
    const server = new RedisServer(freePort(), dir, options.password);
    if (options.tls) {
      await makeCertificates(dir);
      server.tlsPort = freePort();
    }
    await server.restart();
    return server;
  }

  /** `redis://127.0.0.1:<port>` (with the password when one is set). */
  get url(): string {
    return this.#password
      ? `redis://default:${encodeURIComponent(this.#password)}@127.0.0.1:${this.port}`
      : `redis://127.0.0.1:${this.port}`;
  }

  /** PID of the running server. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** (Re)starts it on the same port and directory; resolves once it answers PING. */
  async restart(): Promise<void> {
    const args = [
      "--port",
      String(this.port),
      "--bind",
      "127.0.0.1",
      "--dir",
      this.dir,
      "--save",
      "",
      "--appendonly",
      "yes",
      "--appendfsync",
      "always",
      "--daemonize",
      "no",
      "--loglevel",
      "warning",
    ];
    if (this.#password) args.push("--requirepass", this.#password);
    if (this.tlsPort) {
      args.push(
        "--tls-port",
        String(this.tlsPort),
        "--tls-cert-file",
        `${this.dir}/server.pem`,
        "--tls-key-file",
        `${this.dir}/server.key`,
        "--tls-ca-cert-file",
        `${this.dir}/ca.pem`,
        "--tls-auth-clients",
        "no",
      );
    }
    this.#child = new Deno.Command("redis-server", {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    if (!await until(() => this.ping(), 10_000)) throw new Error("redis-server did not start");
  }

  /** True when it answers PING (a raw RESP round trip). */
  async ping(): Promise<boolean> {
    try {
      const reply = await this.command(["PING"]);
      return reply.startsWith("+PONG");
    } catch {
      return false;
    }
  }

  /** Sends one command (raw RESP) and returns the raw reply (first read). */
  async command(args: string[]): Promise<string> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    try {
      const enc = new TextEncoder();
      let out = "";
      if (this.#password) out += resp(["AUTH", this.#password]);
      out += resp(args);
      await conn.write(enc.encode(out));
      const buf = new Uint8Array(1 << 16);
      let text = "";
      const dec = new TextDecoder();
      const deadline = Date.now() + 5_000;
      const want = this.#password ? 2 : 1;
      while (Date.now() < deadline) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += dec.decode(buf.subarray(0, n));
        if (complete(text, want)) break;
      }
      return this.#password ? text.slice(text.indexOf("\r\n") + 2) : text;
    } finally {
      conn.close();
    }
  }

  /** SIGSTOP: connections stay open, nothing is answered (a stalled Redis). */
  stall(): void {
    this.#child?.kill("SIGSTOP");
  }

  /** SIGCONT after {@link stall}. */
  resume(): void {
    this.#child?.kill("SIGCONT");
  }

  /** SIGKILL (a crash): no goodbye to clients. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  }

  /** Kills it and removes its directory. */
  async close(): Promise<void> {
    await this.kill();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** A CA and a server certificate for 127.0.0.1 in `dir` (ca.pem, server.pem, server.key). */
async function makeCertificates(dir: string): Promise<void> {
  const run = async (args: string[]) => {
    const out = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdout: "null",
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      throw new Error(`openssl ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    }
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run([
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=relay test CA",
  ]);
  await run([
    "req",
    ...ec,
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=127.0.0.1",
  ]);
  await Deno.writeTextFile(`${dir}/ext`, "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await run([
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "2",
    "-extfile",
    "ext",
  ]);
}

function resp(args: string[]): string {
  return `*${args.length}\r\n` +
    args.map((a) => `$${new TextEncoder().encode(a).length}\r\n${a}\r\n`).join("");
}

/** Crude: enough replies for PING/GET/simple values (tests only). */
function complete(text: string, replies: number): boolean {
  let pos = 0;
  for (let i = 0; i < replies; i++) {
    const end = text.indexOf("\r\n", pos);
    if (end < 0) return false;
    if (text[pos] === "$") {
      const len = Number(text.slice(pos + 1, end));
      if (len < 0) {
        pos = end + 2;
        continue;
      }
      if (text.length < end + 2 + len + 2) return false;
      pos = end + 2 + len + 2;
    } else pos = end + 2;
  }
  return true;
}
