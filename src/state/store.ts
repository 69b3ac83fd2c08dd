/**
 * Per-account state (refresh tokens, quota counters) behind one small interface, so a
 * shared backend (Redis, for several relay instances) can replace the files later.
 *
 * The file backend writes one JSON file per account and kind,
 * `<stateDir>/<kind>/<address>.json`, mode 0600 in a 0700 directory, by write-to-temp +
 * fsync + rename: a crash leaves the old or the new value, never half of one. Writes
 * for one key are serialised in the order they were asked for, so the newest value is
 * always the one left on disk.
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

/** A {@link StateStore} of JSON files under `<stateDir>/<kind>/`. */
export class FileStateStore<T> implements StateStore<T> {
  readonly #dir: string;
  readonly #valid: (value: unknown) => value is T;
  readonly #queues = new Map<string, Promise<void>>();
  #ready?: Promise<void>;

  /** `valid` rejects files that are not of this kind (a corrupt file is an error). */
  constructor(stateDir: string, kind: string, valid: (value: unknown) => value is T) {
    this.#dir = join(stateDir, kind);
    this.#valid = valid;
  }

  /** The file that holds `key`'s value (for messages to operators). */
  pathOf(key: string): string {
    return join(this.#dir, `${encodeURIComponent(key.toLowerCase())}.json`);
  }

  /** Reads a value; a missing file is `undefined`, an unreadable one an error. */
  async load(key: string): Promise<T | undefined> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.pathOf(key));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      throw err;
    }
    const data: unknown = JSON.parse(text);
    if (!this.#valid(data)) throw new Error(`${this.pathOf(key)}: unexpected content`);
    return data;
  }

  /** Queues an atomic write behind earlier writes for the same key. */
  save(key: string, value: T): Promise<void> {
    const k = key.toLowerCase();
    const previous = this.#queues.get(k) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(() => this.#write(key, value));
    this.#queues.set(k, next);
    const cleanup = () => {
      if (this.#queues.get(k) === next) this.#queues.delete(k);
    };
    next.then(cleanup, cleanup);
    return next;
  }

  async #write(key: string, value: T): Promise<void> {
    this.#ready ??= Deno.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await this.#ready;
    const target = this.pathOf(key);
    const temp = `${target}.${crypto.randomUUID()}.tmp`;
    const file = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
    try {
      let bytes = new TextEncoder().encode(JSON.stringify(value) + "\n");
      while (bytes.length > 0) bytes = bytes.subarray(await file.write(bytes));
      await file.syncData();
    } finally {
      file.close();
    }
    try {
      await Deno.rename(temp, target);
    } catch (err) {
      await Deno.remove(temp).catch(() => {});
      throw err;
    }
  }
}
