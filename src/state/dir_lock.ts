/**
 * An exclusive lock on a directory, held by at most one writer on the host at a time:
 * `flock(2)` on the directory's own file descriptor (Deno's `FsFile.lock`), behind an
 * in-process FIFO queue.
 *
 * Why this is safe where a lock file is not:
 *
 * - The kernel releases the lock when its holder closes the descriptor, exits or crashes.
 *   There is no stale lock to detect, so no age heuristic that could break the lock of a
 *   holder that is merely slow (paused, swapping) and let two writers in.
 * - No lock file is created or removed: nothing is left behind in the directory, and
 *   there is no window between "remove" and "create" for a third writer to slip through.
 * - Renaming files inside the directory (the atomic writes the lock protects) does not
 *   change the directory's inode, so every writer always locks the same object.
 * - Two descriptors of one directory conflict even inside one process, so separate store
 *   instances in one process exclude each other as processes do. The in-process queue
 *   only keeps this process's waiters in call order and off the blocking thread pool
 *   (one waiting `flock` per directory, not one per caller).
 *
 * Limits: the lock is advisory (it binds writers that take it: every versioned store
 * does); it is for one host's processes on a local filesystem (NFS emulates `flock` with
 * byte-range locks; several hosts need a shared backend such as Redis); it needs a
 * system that can open a directory (Linux, macOS; not Windows). A holder stuck longer
 * than the timeout (a hung disk) makes waiters fail with an error rather than wait
 * forever; they never proceed without the lock.
 * @module
 */

/** Default longest wait for the lock, ms: writes under it take milliseconds. */
export const DEFAULT_LOCK_TIMEOUT_MS = 10_000;

/** The lock was not obtained in time: another writer held it (a hung disk, a stuck process). */
export class LockTimeoutError extends Error {
  /** `dir`: the locked directory; `timeoutMs`: how long was waited. */
  constructor(dir: string, timeoutMs: number) {
    super(`${dir}: another writer held the lock for over ${timeoutMs} ms`);
    this.name = "LockTimeoutError";
  }
}

/** Tail of each directory's in-process queue. */
const queues = new Map<string, Promise<void>>();

/**
 * Runs `fn` holding the exclusive lock on `dir` (which must exist). `fn` gets the open
 * directory, e.g. to fsync it after a rename. Rejects without running `fn` if the lock
 * is not obtained within `timeoutMs`.
 */
export async function withDirLock<T>(
  dir: string,
  fn: (directory: Deno.FsFile) => Promise<T>,
  timeoutMs: number = DEFAULT_LOCK_TIMEOUT_MS,
): Promise<T> {
  const previous = queues.get(dir) ?? Promise.resolve();
  const turn = Promise.withResolvers<void>();
  const tail = previous.then(() => turn.promise);
  queues.set(dir, tail);
  const done = () => {
    turn.resolve();
    if (queues.get(dir) === tail) queues.delete(dir);
  };
  let abandoned = false;
  const acquired = previous.then(async () => {
    if (abandoned) return undefined;
    const handle = await Deno.open(dir, { read: true });
    try {
      await handle.lock(true);
    } catch (err) {
      handle.close();
      throw err;
    }
    return handle;
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new LockTimeoutError(dir, timeoutMs)),
      timeoutMs,
    );
  });
  let handle: Deno.FsFile | undefined;
  try {
    handle = await Promise.race([acquired, timeout]);
  } catch (err) {
    abandoned = true;
    // If the lock is granted after all, give it back at once (closing releases it).
    acquired.then((late) => late?.close(), () => {});
    done();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  try {
    return await fn(handle!);
  } finally {
    handle!.close(); // releases the lock
    done();
  }
}
