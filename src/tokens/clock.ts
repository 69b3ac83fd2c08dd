/**
 * Time, injectable: the token manager and the authorize flows read the clock, sleep and
 * set background timers through a {@link Timing}, so tests can drive expiry, polling,
 * rechecks and retried saves without waiting.
 * @module
 */

/** A clock, a way to wait, and (optionally) background timers. */
export interface Timing {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`; rejects with the signal's reason once `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /**
   * Runs `fn` once after `ms` without keeping the process alive; returns a function that
   * cancels it. Optional: without it, background work uses {@link REAL_TIMING}'s timers.
   */
  timer?(ms: number, fn: () => void): () => void;
}

/** Wall-clock time and real timers (background timers are unref'd). */
export const REAL_TIMING: Timing = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal!.reason);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
  timer: (ms, fn) => {
    const timer = setTimeout(fn, Math.max(0, ms));
    Deno.unrefTimer(timer);
    return () => clearTimeout(timer);
  },
};

/** Starts a background timer on `timing` (real, unref'd timers when it has none). */
export function startTimer(timing: Timing, ms: number, fn: () => void): () => void {
  return timing.timer ? timing.timer(ms, fn) : REAL_TIMING.timer!(ms, fn);
}
