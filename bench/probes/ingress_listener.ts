/**
 * Ingress sockets from `Deno.listen` handed to smtp-server (`server.connect(duplex)`, a
 * node:stream Duplex over the `Deno.Conn` with the net.Socket fields smtp-server reads
 * faked) against today's node:net listener (smtp-server's own `listen`), in one process,
 * same hooks as the relay's listener (TCP_NODELAY, replies coalesced, no greeting pause
 * for loopback), a sink behind `onData`. A client process (this file, `client` mode)
 * measures connect → 220 (sequential connections) and 2 KB messages over persistent
 * pipelining sessions; the server's CPU per message is its own `process.cpuUsage()` over
 * each load phase (it does nothing else meanwhile). Rounds alternate the two listeners;
 * medians, and Deno.listen / node:net ratios within the same round.
 *
 *     deno task bench:ingress-listener [--rounds 3] [--seconds 3] [--sessions 20]
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import type { Socket } from "node:net";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { captureNew, coalesceWrites, skipGreetingPause } from "../../src/compat/smtp_server.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rounds: { type: "string", default: "3" },
    seconds: { type: "string", default: "3" },
    sessions: { type: "string", default: "20" },
    connections: { type: "string", default: "200" },
  },
});

// ---------------------------------------------------------------- server side

const options: SMTPServerOptions = {
  name: "probe.invalid",
  logger: false,
  disableReverseLookup: true,
  authOptional: true,
  disabledCommands: ["STARTTLS", "AUTH"],
  size: 10 * 1024 * 1024,
  onData(stream, _session, callback) {
    stream.on("data", () => {});
    stream.on("end", () => callback(null, "2.0.0 OK"));
  },
};

/** smtp-server with the relay listener's per-connection hooks. */
class Probe extends SMTPServer {
  override connect(socket: Socket, socketOptions?: Parameters<SMTPServer["connect"]>[1]) {
    socket.setNoDelay?.(true);
    coalesceWrites(socket);
    const c = captureNew(this, () => super.connect(socket, socketOptions));
    if (c) skipGreetingPause(c);
  }
}

/** A Deno.Conn as the node:net Socket smtp-server expects (the fields it reads, faked). */
function denoSocket(conn: Deno.TcpConn): Socket {
  conn.setNoDelay(true);
  const remote = conn.remoteAddr as Deno.NetAddr;
  const local = conn.localAddr as Deno.NetAddr;
  const buf = new Uint8Array(64 * 1024);
  let pumping = false;
  const writeAll = async (bytes: Uint8Array) => {
    while (bytes.length > 0) bytes = bytes.subarray(await conn.write(bytes));
  };
  const d = new Duplex({
    read() {
      if (pumping) return;
      pumping = true;
      (async () => {
        try {
          while (true) {
            const n = await conn.read(buf);
            if (n === null) return void d.push(null);
            if (!d.push(Buffer.from(buf.subarray(0, n)))) return;
          }
        } catch (err) {
          d.destroy(err as Error);
        } finally {
          pumping = false;
        }
      })();
    },
    write(chunk: Uint8Array, _enc, cb) {
      writeAll(chunk).then(() => cb(), (err) => cb(err));
    },
    writev(chunks: { chunk: Uint8Array }[], cb) {
      writeAll(Buffer.concat(chunks.map((c) => c.chunk))).then(() => cb(), (err) => cb(err));
    },
    final(cb) {
      conn.closeWrite().then(() => cb(), () => cb());
    },
    destroy(err, cb) {
      try {
        conn.close();
      } catch { /* already closed */ }
      cb(err);
    },
  });
  return Object.assign(d, {
    remoteAddress: remote.hostname,
    remotePort: remote.port,
    localAddress: local.hostname,
    localPort: local.port,
    readyState: "open",
    setNoDelay: () => d,
    setKeepAlive: () => d,
    setTimeout: () => d,
  }) as unknown as Socket;
}

/** What the client reports of connect → 220. */
interface Greeting {
  medianMs: number;
  p95Ms: number;
}
/** What the client reports of a load phase. */
interface Load {
  messages: number;
  seconds: number;
}

/** Runs the rounds and prints the table. */
async function serve(): Promise<void> {
  const nodeNet = new Probe(options);
  nodeNet.on("error", () => {});
  await new Promise<void>((ok) => nodeNet.listen(0, "127.0.0.1", ok));
  const nodePort = (nodeNet.server.address() as { port: number }).port;

  const denoServer = new Probe(options);
  denoServer.on("error", () => {});
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) denoServer.connect(denoSocket(conn));
  })();
  const denoPort = (listener.addr as Deno.NetAddr).port;

  /** Runs the client in its own process; the server's CPU over that run. */
  async function phase<T>(port: number, mode: string): Promise<{ result: T; cpuMs: number }> {
    const before = process.cpuUsage();
    const out = await new Deno.Command("deno", {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        import.meta.filename!,
        "client",
        String(port),
        mode,
        "--sessions",
        values.sessions!,
        "--seconds",
        values.seconds!,
        "--connections",
        values.connections!,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const used = process.cpuUsage(before);
    if (!out.success) throw new Error(`client ${mode} failed`);
    return {
      result: JSON.parse(new TextDecoder().decode(out.stdout)) as T,
      cpuMs: (used.user + used.system) / 1000,
    };
  }

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const rows: Record<string, number[]> = {};
  const add = (k: string, v: number) => (rows[k] ??= []).push(v);
  const rounds = Math.max(1, Number(values.rounds) || 3);
  for (let r = 0; r < rounds; r++) {
    const round: Record<string, number> = {};
    // Alternate which goes first, so a drift of the machine hits both alike.
    const order = r % 2 === 0 ? ["node:net", "Deno.listen"] : ["Deno.listen", "node:net"];
    for (const kind of order) {
      const port = kind === "node:net" ? nodePort : denoPort;
      const g = await phase<Greeting>(port, "greeting");
      const l = await phase<Load>(port, "load");
      round[`${kind} connect→220 ms`] = g.result.medianMs;
      round[`${kind} msg/s`] = l.result.messages / l.result.seconds;
      round[`${kind} CPU µs/msg`] = (l.cpuMs * 1000) / l.result.messages;
    }
    for (const [k, v] of Object.entries(round)) add(k, v);
    add("Deno.listen/node:net msg/s", round["Deno.listen msg/s"] / round["node:net msg/s"]);
    add(
      "Deno.listen/node:net CPU µs/msg",
      round["Deno.listen CPU µs/msg"] / round["node:net CPU µs/msg"],
    );
    add(
      "Deno.listen/node:net connect→220",
      round["Deno.listen connect→220 ms"] / round["node:net connect→220 ms"],
    );
    console.log(`round ${r + 1}: ${JSON.stringify(round)}`);
  }
  console.log(
    `\nmedians over ${rounds} rounds (${values.sessions} sessions, 2 KB, ` +
      `${values.seconds} s per load phase, ${values.connections} sequential connections):`,
  );
  console.log("| measure | median | per round |\n| --- | --- | --- |");
  for (const [k, v] of Object.entries(rows)) {
    console.log(`| ${k} | ${median(v).toFixed(3)} | ${v.map((x) => x.toFixed(3)).join(", ")} |`);
  }
  listener.close();
  await new Promise<void>((ok) => nodeNet.close(() => ok()));
  await new Promise<void>((ok) => denoServer.close(() => ok()));
}

// ---------------------------------------------------------------- client side

/** Reads replies off a connection: whole reply lines (`ddd ` final lines) one at a time. */
class Replies {
  #conn: Deno.Conn;
  #buf = new Uint8Array(16 * 1024);
  #text = "";
  #dec = new TextDecoder("latin1");
  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }
  /** The next final reply line (multi-line replies: their last line). */
  async next(): Promise<string> {
    while (true) {
      let end: number;
      while ((end = this.#text.indexOf("\r\n")) !== -1) {
        const line = this.#text.slice(0, end);
        this.#text = this.#text.slice(end + 2);
        if (line[3] !== "-") return line;
      }
      const n = await this.#conn.read(this.#buf);
      if (n === null) throw new Error("closed by the server");
      this.#text += this.#dec.decode(this.#buf.subarray(0, n));
    }
  }
}

async function greetings(port: number, n: number): Promise<Greeting> {
  const times: number[] = [];
  const quit = new TextEncoder().encode("QUIT\r\n");
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const replies = new Replies(conn);
    const line = await replies.next();
    times.push(performance.now() - started);
    if (!line.startsWith("220")) throw new Error(`greeting: ${line}`);
    await conn.write(quit);
    await replies.next().catch(() => "");
    conn.close();
  }
  times.sort((a, b) => a - b);
  return { medianMs: times[Math.floor(n / 2)], p95Ms: times[Math.floor(n * 0.95)] };
}

async function load(port: number, sessions: number, ms: number): Promise<Load> {
  const enc = new TextEncoder();
  const envelope = enc.encode("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
  const line = "x".repeat(76) + "\r\n";
  const body = enc.encode("Subject: probe\r\n\r\n" + line.repeat(26) + ".\r\n");
  let messages = 0;
  const started = performance.now();
  const deadline = started + ms;
  await Promise.all(Array.from({ length: sessions }, async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    const replies = new Replies(conn);
    await replies.next();
    await conn.write(enc.encode("EHLO probe.test\r\n"));
    await replies.next();
    while (performance.now() < deadline) {
      await conn.write(envelope);
      for (const want of ["250", "250", "354"]) {
        const r = await replies.next();
        if (!r.startsWith(want)) throw new Error(`expected ${want}: ${r}`);
      }
      await conn.write(body);
      const r = await replies.next();
      if (!r.startsWith("250")) throw new Error(`after the body: ${r}`);
      messages++;
    }
    await conn.write(enc.encode("QUIT\r\n"));
    conn.close();
  }));
  return { messages, seconds: (performance.now() - started) / 1000 };
}

if (positionals[0] === "client") {
  const [, port, mode] = positionals;
  const result = mode === "greeting"
    ? await greetings(Number(port), Number(values.connections))
    : await load(Number(port), Number(values.sessions), Number(values.seconds) * 1000);
  console.log(JSON.stringify(result));
  Deno.exit(0);
}
await serve();
Deno.exit(0);
