/**
 * A message body as it arrives: the ingress {@link MessageBody.push}es the client's bytes
 * (after dot-unstuffing) and {@link MessageBody.end}s it at the final dot, or
 * {@link MessageBody.fail}s it when the message will never be complete (the client went
 * away, timed out or overran the size limit). The delivery reads it while it arrives
 * ({@link MessageBody.chunkAt} / {@link MessageBody.changed}), from the start as often as
 * it needs to (a retry on another connection), so the bytes are held once, as received,
 * never copied; {@link MessageBody.bytes} gives the whole message in one buffer for
 * whoever needs that (one copy, unless it arrived in one piece).
 * @module
 */

/** Why a body will never be complete. */
export class BodyIncomplete extends Error {
  /** `size`: over the size limit; `gone`: the client disconnected or timed out. */
  readonly why: "size" | "gone";
  /** Creates the error. */
  constructor(why: "size" | "gone", message: string) {
    super(message);
    this.name = "BodyIncomplete";
    this.why = why;
  }
}

/** One message's bytes, arriving. */
export class MessageBody {
  #chunks: Uint8Array[] = [];
  #length = 0;
  #state: "open" | "complete" | "failed" = "open";
  #failure?: BodyIncomplete;
  #whole?: Uint8Array;
  #waiters: (() => void)[] = [];
  readonly #abort = new AbortController();
  readonly #settled: Promise<void>;
  #settle!: (ok: boolean) => void;
  #wanted!: () => void;
  /** Resolves once a reader asked for the body ({@link want}). */
  readonly wanted: Promise<void>;

  /** An empty body, open for {@link push}. */
  constructor() {
    this.#settled = new Promise<boolean>((ok) => this.#settle = ok).then(() => {});
    this.wanted = new Promise<void>((ok) => this.#wanted = ok);
  }

  /** A complete body of `bytes` (not copied). */
  static of(bytes: Uint8Array): MessageBody {
    const body = new MessageBody();
    body.push(bytes);
    body.end();
    return body;
  }

  /** Appends the next bytes (kept, not copied: the caller must not reuse the buffer). */
  push(chunk: Uint8Array): void {
    if (this.#state !== "open" || chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    this.#notify();
  }

  /** The final dot: the message is complete. */
  end(): void {
    if (this.#state !== "open") return;
    this.#state = "complete";
    this.#settle(true);
    this.#notify();
  }

  /**
   * The message will never be complete: its bytes are dropped, {@link signal} aborts and
   * readers see the failure. No-op once complete.
   */
  fail(reason: BodyIncomplete): void {
    if (this.#state !== "open") return;
    this.#state = "failed";
    this.#failure = reason;
    this.#chunks = [];
    this.#abort.abort(reason);
    this.#settle(false);
    this.#notify();
  }

  /** A reader is ready for the body (the provider said 354): see {@link wanted}. */
  want(): void {
    this.#wanted();
  }

  /** Bytes so far (all of them once complete). */
  get length(): number {
    return this.#length;
  }

  /** True once {@link end} was called. */
  get complete(): boolean {
    return this.#state === "complete";
  }

  /** Why the body failed, if it did. */
  get failure(): BodyIncomplete | undefined {
    return this.#failure;
  }

  /** Aborts when the body fails (reason: the {@link BodyIncomplete}). */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** Resolves when the body is complete or has failed (never rejects). */
  get settled(): Promise<void> {
    return this.#settled;
  }

  /** The `i`-th chunk received, if it has arrived (undefined after a failure). */
  chunkAt(i: number): Uint8Array | undefined {
    return this.#chunks[i];
  }

  /** Calls `listener` once, at the next chunk, end or failure. */
  changed(listener: () => void): void {
    this.#waiters.push(listener);
  }

  /**
   * The chunks as received, once complete (not copied: do not modify them); rejects with
   * the {@link BodyIncomplete} if it fails. For readers that need the whole message but not
   * in one buffer (a `Blob` of them costs one copy fewer than {@link bytes}).
   */
  async parts(): Promise<readonly Uint8Array[]> {
    await this.#settled;
    if (this.#failure) throw this.#failure;
    return this.#whole ? [this.#whole] : [...this.#chunks];
  }

  /**
   * The whole message in one buffer once complete; rejects with the
   * {@link BodyIncomplete} if it fails. Concatenated at the first call (a copy, kept for
   * later calls) unless it arrived in one chunk.
   */
  async bytes(): Promise<Uint8Array> {
    await this.#settled;
    if (this.#failure) throw this.#failure;
    if (this.#chunks.length === 1) return this.#chunks[0];
    return this.#whole ??= concatChunks(this.#chunks, this.#length);
  }

  #notify(): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** `chunks` joined into one new buffer of `length` bytes (their total). */
export function concatChunks(chunks: readonly Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
