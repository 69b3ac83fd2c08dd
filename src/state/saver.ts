/**
 * Writes state that is kept in memory (quota counters) back to its store: every
 * interval, skipping a tick while the previous write is still running, and once more,
 * completely, at stop.
 * @module
 */

/** Something whose state can be flushed; `all` writes even what did not change. */
export interface Flushable {
  /** Writes changed state (all state with `all`). Never rejects. */
  flush(all?: boolean): Promise<void>;
  /** True while a flush is running. */
  readonly flushing: boolean;
}

/** The periodic saver of one {@link Flushable}. */
export class StateSaver {
  readonly #target: Flushable;
  readonly #timer: ReturnType<typeof setInterval>;

  /** Starts saving every `intervalMs`. */
  constructor(target: Flushable, intervalMs: number) {
    this.#target = target;
    this.#timer = setInterval(() => {
      if (!target.flushing) void target.flush();
    }, intervalMs);
  }

  /** Stops the timer and writes everything once more. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#target.flush(true);
  }
}
