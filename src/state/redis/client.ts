/**
 * The relay's one connection to Redis (node-redis), for every shared-state backend in
 * `src/state/redis/` and beside the seams. What it adds to the library:
 *
 * - **a deadline on every call** (`timeoutMs`): a slow or stalled Redis fails the call
 *   with a {@link RedisUnavailableError}, it never hangs a message;
 * - **no offline queue**: while disconnected a call fails at once; nothing is replayed
 *   after a reconnect (a quota script must not run twice);
 * - **health**: up or down, from the socket and from every call, plus a PING each second,
 *   so `/readyz` follows Redis without traffic; one log line per change;
 * - **metrics**: calls, errors and latency per operation ({@link RedisObserver});
 * - **scripts**: EVALSHA, and EVAL once when Redis answers NOSCRIPT (after a restart);
 * - **keys**: every key under the configured prefix ({@link RedisState.key}).
 *
 * Reconnection is the library's, with a capped backoff: Redis coming back needs no
 * restart of the relay.
 * @module
 */
import { createHash } from "node:crypto";
import { getLogger } from "@logtape/logtape";
import { createClient, ErrorReply } from "redis";

/** Where and how to reach Redis. */
export interface RedisOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS). Secret: never logged. */
  readonly url: string;
  /** Prefix of every key, e.g. `relay:`. */
  readonly keyPrefix: string;
  /** Deadline of each call, ms. */
  readonly timeoutMs: number;
  /** PEM CA bundle for `rediss://` (default: the system's roots). */
  readonly ca?: string;
}

/** Sees every call (metrics). */
export interface RedisObserver {
  /** A call ended: `error` is undefined on success, else `timeout`, `unavailable` or `error`. */
  redisCall(op: string, seconds: number, error?: "timeout" | "unavailable" | "error"): void;
  /** Health changed. */
  redisUp(up: boolean): void;
}

/**
 * Shared state could not be read or written in time (Redis unreachable, slow, or it
 * refused the call). Messages that need it get a 4xx; nothing is sent on a guess.
 */
export class RedisUnavailableError extends Error {
  /** `timeout`, `unavailable` (not connected) or `error` (Redis answered with an error). */
  readonly kind: "timeout" | "unavailable" | "error";
  /** `what`: the operation and the cause, without the URL (it may hold a password). */
  constructor(kind: "timeout" | "unavailable" | "error", what: string) {
    super(`shared state (Redis) unavailable: ${what}`);
    this.name = "RedisUnavailableError";
    this.kind = kind;
  }
}

/** A Lua script with its SHA-1, for EVALSHA. */
export class Script {
  /** The source. */
  readonly source: string;
  /** Its SHA-1 (hex). */
  readonly sha: string;
  /** Hashes `source`. */
  constructor(source: string) {
    this.source = source;
    this.sha = createHash("sha1").update(source).digest("hex");
  }
}

const log = getLogger(["relay", "redis"]);
/** Calls in a row without an answer in time that mark Redis down. */
const DOWN_AFTER_TIMEOUTS = 3;
/** Health PING period, ms. */
const PING_MS = 1_000;

type Client = ReturnType<typeof createClient>;

/** The host:port of a Redis URL (for messages and permissions; no credentials). */
export function redisHost(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port || "6379"}`;
}

/** One Redis connection with deadlines, health and metrics. */
export class RedisState {
  readonly #o: RedisOptions;
  readonly #client: Client;
  readonly #observers: RedisObserver[] = [];
  #up = false;
  #closed = false;
  #pinger?: ReturnType<typeof setInterval>;
  /** Calls in a row that got no answer in time. */
  #timeouts = 0;
  /** Why it is down, for the log and /readyz. */
  #reason = "not connected yet";

  /** Builds the client; nothing connects until {@link start}. */
  constructor(options: RedisOptions, observer?: RedisObserver) {
    this.#o = options;
    if (observer) this.#observers.push(observer);
    const tls = options.url.startsWith("rediss:");
    this.#client = createClient({
      url: options.url,
      disableOfflineQueue: true,
      // Enterprise maintenance notices: off (their handshake reads REDIS_DEBUG_MAINTENANCE
      // from the environment, which the relay may not read).
      maintNotifications: "disabled",
      socket: {
        connectTimeout: Math.max(options.timeoutMs, 1_000),
        reconnectStrategy: (retries: number) => Math.min(50 * 2 ** Math.min(retries, 6), 2_000),
        ...(tls ? { tls: true as const, ...(options.ca ? { ca: options.ca } : {}) } : {}),
      },
    });
    this.#client.on("error", (err: unknown) => this.#down(describe(err)));
    this.#client.on("ready", () => this.#ping());
    this.#client.on("end", () => this.#down("connection closed"));
  }

  /** Adds an observer (the metrics). */
  observe(observer: RedisObserver): void {
    this.#observers.push(observer);
    observer.redisUp(this.#up);
  }

  /** The key prefix. */
  get prefix(): string {
    return this.#o.keyPrefix;
  }

  /** `host:port` (no credentials). */
  get host(): string {
    return redisHost(this.#o.url);
  }

  /** Deadline of each call, ms. */
  get timeoutMs(): number {
    return this.#o.timeoutMs;
  }

  /** True while Redis answers in time. */
  get up(): boolean {
    return this.#up;
  }

  /** Why it is down (empty while up). */
  get reason(): string {
    return this.#up ? "" : this.#reason;
  }

  /**
   * `prefix` + `kind` + `{account}` (lower-cased; the braces are a cluster hash tag, so an
   * account's keys share a slot) + `rest`.
   */
  key(kind: string, account: string, rest = ""): string {
    return `${this.#o.keyPrefix}${kind}:{${account.toLowerCase()}}${rest}`;
  }

  /**
   * Connects, waiting up to `waitMs` for the first connection. Does not fail when Redis
   * is unreachable: the relay starts not ready and the client keeps trying.
   */
  async start(waitMs = this.#o.timeoutMs * 2): Promise<void> {
    const connected = this.#client.connect().then(() => true, (err) => {
      this.#down(describe(err));
      return false;
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([connected, new Promise((ok) => timer = setTimeout(ok, waitMs))]);
    clearTimeout(timer);
    if (this.#client.isReady) await this.#ping();
    this.#pinger = setInterval(() => void this.#ping(), PING_MS);
    Deno.unrefTimer(this.#pinger as unknown as number);
    if (!this.#up) this.#logDown();
  }

  /** Runs a command (`args[0]` is its name) under the deadline. */
  call(op: string, args: string[]): Promise<unknown> {
    return this.#timed(op, (signal) => this.#client.sendCommand(args, { abortSignal: signal }));
  }

  /** Runs a script (EVALSHA; EVAL once if Redis does not know it) under the deadline. */
  script(op: string, script: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    const tail = [String(keys.length), ...keys, ...args.map(String)];
    return this.#timed(op, async (signal) => {
      try {
        return await this.#client.sendCommand(["EVALSHA", script.sha, ...tail], {
          abortSignal: signal,
        });
      } catch (err) {
        if (!String((err as Error)?.message).startsWith("NOSCRIPT")) throw err;
        return await this.#client.sendCommand(["EVAL", script.source, ...tail], {
          abortSignal: signal,
        });
      }
    });
  }

  /** Stops pinging and closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#pinger);
    try {
      // A client still trying to connect has nothing to say goodbye on: stop it.
      if (this.#client.isReady) await this.#client.close();
      else if (this.#client.isOpen) this.#client.destroy();
    } catch {
      try {
        this.#client.destroy();
      } catch {
        // already closed
      }
    }
  }

  async #timed<T>(op: string, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const started = performance.now();
    const done = (error?: RedisUnavailableError) => {
      const seconds = (performance.now() - started) / 1000;
      for (const o of this.#observers) o.redisCall(op, seconds, error?.kind);
    };
    if (this.#closed || !this.#client.isReady) {
      const error = new RedisUnavailableError("unavailable", `${op}: not connected`);
      done(error);
      throw error;
    }
    const control = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, fail) => {
      timer = setTimeout(() => {
        const error = new RedisUnavailableError(
          "timeout",
          `${op}: no answer within ${this.#o.timeoutMs} ms`,
        );
        control.abort(error);
        fail(error);
      }, this.#o.timeoutMs);
    });
    try {
      const result = await Promise.race([run(control.signal), deadline]);
      this.#timeouts = 0;
      done();
      return result;
    } catch (err) {
      const error = err instanceof RedisUnavailableError ? err : new RedisUnavailableError(
        isReplyError(err) ? "error" : "unavailable",
        `${op}: ${describe(err)}`,
      );
      done(error);
      // One slow call on a loaded machine is not an outage: down after a few in a row, or
      // at once when the connection itself fails.
      if (error.kind === "unavailable") this.#down(error.message);
      else if (error.kind === "timeout" && ++this.#timeouts >= DOWN_AFTER_TIMEOUTS) {
        this.#down(error.message);
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  async #ping(): Promise<void> {
    if (this.#closed || !this.#client.isReady) return;
    try {
      await this.#timed(
        "ping",
        (signal) => this.#client.sendCommand(["PING"], { abortSignal: signal }),
      );
      this.#setUp();
    } catch {
      // #timed marked it down
    }
  }

  #setUp(): void {
    if (this.#up) return;
    this.#up = true;
    this.#reason = "";
    log.info("Redis at {host} is reachable: shared state in use", { host: this.host });
    for (const o of this.#observers) o.redisUp(true);
  }

  #down(reason: string): void {
    if (this.#closed) return;
    this.#reason = reason;
    if (!this.#up) return;
    this.#up = false;
    this.#logDown();
    for (const o of this.#observers) o.redisUp(false);
  }

  #logDown(): void {
    log.error(
      "Redis at {host} is unavailable ({reason}): messages get 451 4.3.0 until it answers again",
      { host: this.host, reason: this.#reason },
    );
  }
}

function isReplyError(err: unknown): boolean {
  return err instanceof ErrorReply;
}

/** An error's message, with any URL credentials cut out. */
function describe(err: unknown): string {
  const text = err instanceof Error ? err.message || err.name : String(err);
  return text.replace(/\/\/[^@/\s]*@/g, "//***@").slice(0, 200);
}
