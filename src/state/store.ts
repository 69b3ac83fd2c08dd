/**
 * Per-account state (refresh tokens, quota counters) behind small interfaces, so a shared
 * backend (Redis, for several relay instances) can replace the files later.
 *
 * Two kinds of store:
 *
 * - {@link StateStore}: load and save, last writer wins. For state only one process
 *   writes (quota counters). File backend: {@link FileStateStore}.
 * - {@link VersionedStore}: load with a version, and compare-and-set. For state several
 *   writers share (refresh tokens: the relay, `check`, `authorize`; later several relay
 *   instances): a writer that read an older version loses instead of overwriting a newer
 *   value. File backend: `FileVersionedStore` in `versioned.ts`.
 *
 * The file backends write one JSON file per account and kind,
 * `<stateDir>/<kind>/<address>.json`, mode 0600 in a 0700 directory, by write-to-temp +
 * fsync + rename ({@link writeFileAtomic}): a crash leaves the old or the new value, never
 * half of one, and the old value stays in place until the new one replaces it.
 * @module
 */
import { join } from "node:path";

/** Keyed state of one kind. Keys are account addresses (case-insensitive). */
export interface StateStore<T> {
  /** The stored value, if any. */
  load(key: string): Promise<T | undefined>;
  /** Stores a value; resolves once it is durably stored. */
  save(key: string, value: T): Promise<void>;
}

/**
 * A stored value and its version. The first value stored under a key is version 0;
 * every write adds 1.
 */
export interface Versioned<T> {
  /** The value. */
  readonly value: T;
  /** Its version. */
  readonly version: number;
}

/** The version a compare-and-set expects to replace, or `"absent"`: nothing stored. */
export type ExpectedVersion = number | "absent";

/**
 * Outcome of a compare-and-set: applied, with the version now stored; or not applied,
 * with what is stored instead (`undefined`: nothing), for the caller to adopt.
 */
export type CasResult<T> =
  | { readonly ok: true; readonly version: number }
  | { readonly ok: false; readonly current: Versioned<T> | undefined };

/**
 * Keyed, versioned state with compare-and-set. Keys are account addresses
 * (case-insensitive). Implementations make each compare-and-set atomic against every
 * other writer of the key (in this process, in other processes, on other hosts: as far
 * as the backend is shared).
 */
export interface VersionedStore<T> {
  /** The stored value and its version, if any. */
  load(key: string): Promise<Versioned<T> | undefined>;
  /**
   * Stores `value` if the stored version is still `expected` (`"absent"`: nothing is
   * stored), as the next version (0 for a first value); resolves once it is durably
   * stored. Otherwise stores nothing and resolves to the current value: a stale writer
   * loses and can adopt the newer value. The previous value stays readable until the
   * new one replaces it.
   */
  compareAndSet(key: string, expected: ExpectedVersion, value: T): Promise<CasResult<T>>;
  /** Where `key`'s value is kept, for messages to operators (a file path), if known. */
  pathOf?(key: string): string;
}

/** A state file whose content is not what its store holds (not JSON, wrong shape). */
export class StateContentError extends Error {
  /** The file. */
  readonly path: string;
  /** What is wrong with it (never its content: it may hold secrets). */
  readonly what: string;
  /** `path`: the file; `what`: what is wrong (never the content: it may hold secrets). */
  constructor(path: string, what: string) {
    super(`${path}: ${what}`);
    this.name = "StateContentError";
    this.path = path;
    this.what = what;
  }
}

/** The file that holds `key`'s value under `dir`: `<dir>/<URL-encoded lower-case key>.json`. */
export function statePath(dir: string, key: string): string {
  return join(dir, `${encodeURIComponent(key.toLowerCase())}.json`);
}

/**
 * Reads and parses a JSON state file; `undefined` when it does not exist. A file that is
 * not JSON is a {@link StateContentError} (the parser's message, which quotes the
 * content, is dropped).
 */
export async function readJsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new StateContentError(path, "not JSON");
  }
}

/**
 * Replaces `path` with `text` atomically: written to a temporary file (0600, created
 * exclusively) in the same directory, fsynced, renamed over `path`. Readers see the old
 * or the new content, never a mix. Whatever fails (a full disk on write or fsync, the
 * rename), the temporary file is removed: a failed write leaves nothing behind.
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const temp = `${path}.${crypto.randomUUID()}.tmp`;
  const file = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
  let renamed = false;
  try {
    try {
      let bytes = new TextEncoder().encode(text);
      while (bytes.length > 0) bytes = bytes.subarray(await file.write(bytes));
      await file.syncData();
    } finally {
      file.close();
    }
    await Deno.rename(temp, path);
    renamed = true;
  } finally {
    if (!renamed) await Deno.remove(temp).catch(() => {});
  }
}

/**
 * `mkdir -p` with mode 0700 for new directories, run once per store; a failure is not
 * remembered (the next write tries again).
 */
export function directoryMaker(dir: string): () => Promise<void> {
  let ready: Promise<void> | undefined;
  return () => {
    ready ??= Deno.mkdir(dir, { recursive: true, mode: 0o700 }).catch((err) => {
      ready = undefined;
      throw err;
    });
    return ready;
  };
}

/**
 * A {@link StateStore} of JSON files under `<stateDir>/<kind>/`. Writes for one key are
 * serialised in the order they were asked for, so the newest value is always the one
 * left on disk (within this process: use a {@link VersionedStore} for shared state).
 */
export class FileStateStore<T> implements StateStore<T> {
  readonly #dir: string;
  readonly #valid: (value: unknown) => value is T;
  readonly #queues = new Map<string, Promise<void>>();
  readonly #ready: () => Promise<void>;

  /** `valid` rejects files that are not of this kind (a corrupt file is an error). */
  constructor(stateDir: string, kind: string, valid: (value: unknown) => value is T) {
    this.#dir = join(stateDir, kind);
    this.#valid = valid;
    this.#ready = directoryMaker(this.#dir);
  }

  /** The file that holds `key`'s value (for messages to operators). */
  pathOf(key: string): string {
    return statePath(this.#dir, key);
  }

  /** Reads a value; a missing file is `undefined`, an unreadable one an error. */
  async load(key: string): Promise<T | undefined> {
    const data = await readJsonFile(this.pathOf(key));
    if (data === undefined) return undefined;
    if (!this.#valid(data)) throw new StateContentError(this.pathOf(key), "unexpected content");
    return data;
  }

  /** Queues an atomic write behind earlier writes for the same key. */
  save(key: string, value: T): Promise<void> {
    const k = key.toLowerCase();
    const previous = this.#queues.get(k) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(async () => {
      await this.#ready();
      await writeFileAtomic(this.pathOf(key), JSON.stringify(value) + "\n");
    });
    this.#queues.set(k, next);
    const cleanup = () => {
      if (this.#queues.get(k) === next) this.#queues.delete(k);
    };
    next.then(cleanup, cleanup);
    return next;
  }
}
