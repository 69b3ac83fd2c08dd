/**
 * A plain TCP forwarder for the multi-host test: it lets a relay in a network namespace
 * reach the sandbox provider (which the config allows on loopback only) at the same
 * loopback port it would use on one host, while the bytes really cross to the sandbox's
 * namespace. In-process ({@link forward}) or as a process in a namespace:
 *
 *     deno run --allow-net=… tests/redis/tcp_forward.ts 127.0.0.1:2580=10.2.3.1:2580 …
 *
 * which prints `ready` once every listener is up.
 * @module
 */

/** A running forwarder. */
export interface Forwarder {
  /** Stops listening and cuts the connections it carries. */
  close(): void;
}

/** Listens on `listen` and pipes each connection to a new one to `target` (both host:port). */
export function forward(listen: string, target: string): Forwarder {
  const [lh, lp] = split(listen);
  const [th, tp] = split(target);
  const listener = Deno.listen({ hostname: lh, port: lp });
  const open = new Set<Deno.Conn>();
  (async () => {
    for await (const inbound of listener) {
      open.add(inbound);
      (async () => {
        let outbound: Deno.Conn | undefined;
        try {
          outbound = await Deno.connect({ hostname: th, port: tp });
          open.add(outbound);
          await Promise.all([
            inbound.readable.pipeTo(outbound.writable),
            outbound.readable.pipeTo(inbound.writable),
          ]);
        } catch {
          // either side went away: close both below
        } finally {
          for (const c of [inbound, outbound]) {
            if (!c) continue;
            open.delete(c);
            try {
              c.close();
            } catch {
              // closed already
            }
          }
        }
      })();
    }
  })().catch(() => {});
  return {
    close() {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch {
          // closed already
        }
      }
    },
  };
}

function split(hostPort: string): [string, number] {
  const at = hostPort.lastIndexOf(":");
  return [hostPort.slice(0, at).replace(/^\[(.*)\]$/, "$1"), Number(hostPort.slice(at + 1))];
}

if (import.meta.main) {
  for (const pair of Deno.args) {
    const [listen, target] = pair.split("=");
    forward(listen, target);
  }
  console.log("ready");
}
