/**
 * A delaying TCP forwarder: distance to a provider on loopback (this kernel has no netem).
 * Every chunk read from one side is written to the other side `oneWayMs` after it was
 * read, in both directions, order kept; pipelined commands stay pipelined (unlike a sleep
 * before each reply in the server, which serialises them). A round trip through it costs
 * 2 × `oneWayMs` plus timer slack.
 * @module
 */

/** A running forwarder. */
export interface Forwarder {
  /** The loopback port it listens on. */
  readonly port: number;
  /** One-way delay of chunks read from now on, ms (the round trip is twice it). */
  oneWayMs: number;
  /** Connections forwarded so far. */
  readonly connections: number;
  /** Stops listening and closes every forwarded connection. */
  close(): Promise<void>;
}

/** Forwards 127.0.0.1:<ephemeral> to `targetHost:targetPort`, each chunk held `oneWayMs`. */
export function startForwarder(
  targetHost: string,
  targetPort: number,
  oneWayMs: number,
): Forwarder {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  let connections = 0;
  const forwarder: Forwarder = {
    port: (listener.addr as Deno.NetAddr).port,
    oneWayMs,
    get connections() {
      return connections;
    },
    async close() {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed already */ }
      }
      await accepting;
    },
  };
  const accepting = (async () => {
    for await (const client of listener) {
      connections++;
      open.add(client);
      Deno.connect({ hostname: targetHost, port: targetPort }).then((server) => {
        open.add(server);
        client.setNoDelay(true);
        server.setNoDelay(true);
        const done = () => {
          for (const c of [client, server]) {
            open.delete(c);
            try {
              c.close();
            } catch { /* closed already */ }
          }
        };
        Promise.allSettled([
          pump(client, server, () => forwarder.oneWayMs),
          pump(server, client, () => forwarder.oneWayMs),
        ]).then(done);
      }, () => {
        open.delete(client);
        client.close();
      });
    }
  })().catch(() => {});
  return forwarder;
}

/**
 * Copies `from` to `to`, each chunk written `delay()` ms after it was read, in order. The
 * reader never waits for the writer, as a network link does not: what is in flight is the
 * queue.
 */
async function pump(from: Deno.Conn, to: Deno.Conn, delay: () => number): Promise<void> {
  const queue: { at: number; data: Uint8Array }[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  const writer = (async () => {
    for (;;) {
      if (queue.length === 0) {
        if (ended) break;
        await new Promise<void>((ok) => wake = ok);
        continue;
      }
      const wait = queue[0].at - performance.now();
      if (wait > 0.5) await new Promise((ok) => setTimeout(ok, wait));
      // Everything due now leaves in one write, as a link delivers back-to-back segments.
      const now = performance.now() + 0.5;
      let n = 0;
      let size = 0;
      while (n < queue.length && queue[n].at <= now) size += queue[n++].data.length;
      const parts = queue.splice(0, Math.max(1, n));
      const out = parts.length === 1 ? parts[0].data : concat(parts.map((p) => p.data), size);
      for (let at = 0; at < out.length;) at += await to.write(out.subarray(at));
    }
    await to.closeWrite().catch(() => {});
  })();
  const buffer = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      queue.push({ at: performance.now() + delay(), data: buffer.slice(0, n) });
      wake?.();
      wake = undefined;
    }
  } finally {
    ended = true;
    wake?.();
  }
  await writer;
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
