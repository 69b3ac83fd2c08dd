/**
 * The operator's HTTP listener (Deno.serve): `/metrics`, `/healthz`, `/readyz`, `/accounts`.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Registry } from "prom-client";
import { isLoopback } from "./ingress/network.ts";

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
    /** Token file corrupt: the account cannot send until the operator repairs it. */
    readonly stateCorrupt: number;
    /**
     * Accounts holding a rotated refresh token that could not be written (retried):
     * they send, but a restart now would lose the token. Not counted against readiness.
     */
    readonly unsaved: number;
  };
  /** The shared-state backend (Redis), when configured: not ready while it does not answer. */
  readonly sharedState?: {
    readonly backend: "redis";
    /** `host:port` (no credentials). */
    readonly host: string;
    /** Redis answers in time. */
    readonly up: boolean;
    /** Why not (while down). */
    readonly reason?: string;
  };
  /** `--workers N`: each worker (1…N) and whether it is ready; all must be. */
  readonly workers?: readonly { readonly worker: number; readonly ready: boolean }[];
}

/** Settings of the HTTP listener. */
export interface HttpOptions {
  /** Address to listen on. */
  readonly host: string;
  /** Port (0: any free port). */
  readonly port: number;
  /** Registry served at `/metrics` (or anything that renders like one: the workers' sum). */
  readonly registry: Pick<Registry, "metrics" | "contentType">;
  /** Current readiness, computed per request. */
  readonly readiness: () => Promise<Readiness>;
  /** Per-account status for `/accounts`. */
  readonly accounts: () => Promise<unknown[]>;
  /**
   * Bearer token for `/accounts` (from the environment). Without one, `/accounts`
   * answers loopback clients only.
   */
  readonly adminToken?: string;
}

/** A running HTTP listener. */
export interface HttpServer {
  /** Where it listens. */
  readonly address: { host: string; port: number };
  /** Stops it. */
  close(): Promise<void>;
}

/**
 * Ready means: listening, and at least one account not failing (failing, needs_reauth,
 * state_corrupt). One broken account of a thousand must not take the relay out of a load
 * balancer; `/readyz` shows the counts. Unsaved tokens do not count: those accounts send,
 * and taking the relay out would not get the token written.
 */
export function isReady(r: Readiness): boolean {
  const a = r.accounts;
  return r.listening && a.total > a.failing + a.needsReauth + a.stateCorrupt &&
    r.sharedState?.up !== false && (r.workers ?? []).every((w) => w.ready);
}

/** 401/403 unless the request may see `/accounts`; undefined when it may. */
function checkAdmin(request: Request, remote: string, token?: string): Response | undefined {
  if (token) {
    // Digests have equal lengths, so the comparison takes the same time whatever was sent.
    const digest = (v: string) => createHash("sha256").update(v).digest();
    const given = digest(request.headers.get("authorization") ?? "");
    if (!timingSafeEqual(given, digest(`Bearer ${token}`))) {
      return new Response("bearer token required\n", {
        status: 401,
        headers: { "www-authenticate": "Bearer" },
      });
    }
    return undefined;
  }
  return isLoopback(remote) ? undefined : new Response("loopback only\n", { status: 403 });
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
  }, async (request, info) => {
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
      case "/accounts": {
        const denied = checkAdmin(request, info.remoteAddr.hostname, o.adminToken);
        if (denied) return denied;
        return Response.json(await o.accounts());
      }
      case "/readyz": {
        const r = await o.readiness();
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
