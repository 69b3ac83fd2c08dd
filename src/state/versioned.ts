/**
 * The file backend of {@link VersionedStore}: one JSON file per key,
 * `<stateDir>/<kind>/<address>.json`, holding the value's fields and its `version`.
 *
 * Version 0 (a key's first value) is written without a `version` field, and a file
 * without one reads as version 0: files from releases before versioning load unchanged,
 * and a first value's file looks exactly as those releases wrote it.
 *
 * A compare-and-set reads the current version, compares, and writes (temp file, fsync,
 * rename, fsync of the directory) while holding the directory's exclusive lock
 * (`dir_lock.ts`): no other compare-and-set on this state directory, in this process or
 * another, can come between the read and the write, so two writers that expect the same
 * version cannot both succeed. Loads take no lock: a rename replaces the file at once,
 * so a reader sees the old or the new value, and the old one is never removed before
 * the new one is in place. A successful compare-and-set has fsynced the file and the
 * directory entry: an acknowledged version survives a crash.
 * @module
 */
import { join } from "node:path";
import { DEFAULT_LOCK_TIMEOUT_MS, withDirLock } from "./dir_lock.ts";
import {
  type CasResult,
  directoryMaker,
  type ExpectedVersion,
  readJsonFile,
  StateContentError,
  statePath,
  type Versioned,
  type VersionedStore,
  writeFileAtomic,
} from "./store.ts";

/** Options of {@link FileVersionedStore}. */
export interface FileVersionedStoreOptions {
  /** Longest wait for the state directory's lock, ms (default 10000). */
  readonly lockTimeoutMs?: number;
}

/**
 * A {@link VersionedStore} of JSON files under `<stateDir>/<kind>/`. Values are JSON
 * objects without a field named `version` (the store's own).
 */
export class FileVersionedStore<T extends object> implements VersionedStore<T> {
  readonly #dir: string;
  readonly #valid: (value: unknown) => value is T;
  readonly #ready: () => Promise<void>;
  readonly #lockTimeoutMs: number;

  /** `valid` rejects files that are not of this kind (a corrupt file is an error). */
  constructor(
    stateDir: string,
    kind: string,
    valid: (value: unknown) => value is T,
    options: FileVersionedStoreOptions = {},
  ) {
    this.#dir = join(stateDir, kind);
    this.#valid = valid;
    this.#ready = directoryMaker(this.#dir);
    this.#lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  }

  /** The file that holds `key`'s value (for messages to operators). */
  pathOf(key: string): string {
    return statePath(this.#dir, key);
  }

  /** Reads a value and its version; a missing file is `undefined`, a corrupt one an error. */
  async load(key: string): Promise<Versioned<T> | undefined> {
    const path = this.pathOf(key);
    const data = await readJsonFile(path);
    if (data === undefined) return undefined;
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw new StateContentError(path, "unexpected content");
    }
    const { version = 0, ...value } = data as { version?: unknown };
    if (!Number.isSafeInteger(version) || (version as number) < 0 || !this.#valid(value)) {
      throw new StateContentError(path, "unexpected content");
    }
    return { value, version: version as number };
  }

  /** See {@link VersionedStore.compareAndSet}; atomic across processes on this directory. */
  compareAndSet(key: string, expected: ExpectedVersion, value: T): Promise<CasResult<T>> {
    return this.#locked(async (directory) => {
      const current = await this.load(key);
      if (expected !== (current?.version ?? "absent")) return { ok: false, current };
      const version = current ? current.version + 1 : 0;
      await this.#write(key, value, version, directory);
      return { ok: true, version };
    });
  }

  /**
   * Stores `value` whatever is stored (the next version; 0 over a missing or corrupt
   * file), in call order within this process. For seeding and repairs: writers that
   * share state use {@link compareAndSet}.
   */
  save(key: string, value: T): Promise<number> {
    return this.#locked(async (directory) => {
      let current: Versioned<T> | undefined;
      try {
        current = await this.load(key);
      } catch (err) {
        if (!(err instanceof StateContentError)) throw err;
      }
      const version = current ? current.version + 1 : 0;
      await this.#write(key, value, version, directory);
      return version;
    });
  }

  /** Runs `fn` under the directory lock, after creating the directory if needed. */
  #locked<R>(fn: (directory: Deno.FsFile) => Promise<R>): Promise<R> {
    return this.#ready().then(() => withDirLock(this.#dir, fn, this.#lockTimeoutMs));
  }

  async #write(key: string, value: T, version: number, directory: Deno.FsFile): Promise<void> {
    const record = version === 0 ? { ...value } : { ...value, version };
    await writeFileAtomic(this.pathOf(key), JSON.stringify(record) + "\n");
    await directory.syncData(); // the rename itself is durable before we report success
  }
}
