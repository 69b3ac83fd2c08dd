/**
 * The operator's HTTP listener (Deno.serve): `/metrics`, `/healthz`, `/readyz`.
 * @module
 */
import type { Registry } from "prom-client";

/** What `/readyz` reports. */
export interface Readiness {
  /** The SMTP listener accepts connections. */
  readonly listening: boolean;
  /** Accounts by token state. */
  readonly accounts: {
    readonly total: number;
    readonly ok: number;
    readonly failing: number;
    readonly needsReauth: number;
  };
}

/** Settings of the HTTP listener. */
export interface HttpOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port (0: any free port). */
  readonly port: number;
  /** Registry served at `/metrics`. */
  readonly registry: Registry;
  /** Current readiness, computed per request. */
  readonly readiness: () => Readiness;
}

/** A running HTTP listener. */
export interface HttpServer {
  /** Where it listens. */
  readonly address: { host: string; port: number };
  /** Stops it. */
  close(): Promise<void>;
}

/**
 * Ready means: listening, and at least one account not failing. One broken account of a
 * thousand must not take the relay out of a load balancer; `/readyz` shows the counts.
 */
export function isReady(r: Readiness): boolean {
  return r.listening && r.accounts.total > r.accounts.failing + r.accounts.needsReauth;
}

/** Starts the HTTP listener. */
export function startHttp(o: HttpOptions): Promise<HttpServer> {
  const { promise, resolve } = Promise.withResolvers<
    { host: string; port: number }
  >();
  const server = Deno.serve({
    hostname: o.host,
    port: o.port,
    onListen: (addr) => resolve({ host: addr.hostname, port: addr.port }),
  }, async (request) => {
    const path = new URL(request.url).pathname;
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405 });
    }
    switch (path) {
      case "/metrics":
        return new Response(await o.registry.metrics(), {
          headers: { "content-type": o.registry.contentType },
        });
      case "/healthz":
        return new Response("ok\n");
      case "/readyz": {
        const r = o.readiness();
        return Response.json({ ready: isReady(r), ...r }, {
          status: isReady(r) ? 200 : 503,
        });
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  });
  return promise.then((address) => ({
    address,
    close: () => server.shutdown(),
  }));
}
