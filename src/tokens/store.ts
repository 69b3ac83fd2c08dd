/**
 * The refresh-token store: one small unit that writes atomically and nothing else.
 *
 * Each account has one file, `<stateDir>/tokens/<address>.json`, mode 0600 in a 0700
 * directory, replaced by write-to-temp + fsync + rename, so a crash leaves the old or
 * the new token, never half of one. Writes for one account are serialised in the order
 * they were asked for, so the newest token is always the one left on disk.
 * @module
 */
import { join } from "node:path";

/** What is kept for one account. */
export interface StoredToken {
  /** The newest refresh token the provider issued. */
  readonly refreshToken: string;
  /**
   * Fingerprint of the refresh token the config held when this one was stored. If the
   * config's token changes later (the operator re-authorised), the config wins again.
   */
  readonly configFingerprint: string;
  /** When it was written (ISO 8601), for operators. */
  readonly updatedAt: string;
}

/** A per-account store of rotated refresh tokens. */
export interface TokenStore {
  /** The stored token of an account, if any. */
  load(account: string): Promise<StoredToken | undefined>;
  /** Stores a token; resolves once it is durably on disk. */
  save(account: string, token: StoredToken): Promise<void>;
}

/** A {@link TokenStore} backed by files in a state directory. */
export class FileTokenStore implements TokenStore {
  readonly #dir: string;
  readonly #queues = new Map<string, Promise<void>>();
  #ready?: Promise<void>;

  /** Uses `<stateDir>/tokens`, created on first write. */
  constructor(stateDir: string) {
    this.#dir = join(stateDir, "tokens");
  }

  /** The file that holds `account`'s token (for messages to operators). */
  pathOf(account: string): string {
    return join(this.#dir, `${encodeURIComponent(account.toLowerCase())}.json`);
  }

  /** Reads the stored token; a missing file is `undefined`, a corrupt one an error. */
  async load(account: string): Promise<StoredToken | undefined> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.pathOf(account));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return undefined;
      throw err;
    }
    const data = JSON.parse(text);
    if (typeof data?.refreshToken !== "string" || typeof data?.configFingerprint !== "string") {
      throw new Error(`${this.pathOf(account)}: not a token file`);
    }
    return data as StoredToken;
  }

  /** Queues an atomic write behind earlier writes for the same account. */
  save(account: string, token: StoredToken): Promise<void> {
    const key = account.toLowerCase();
    const previous = this.#queues.get(key) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(() => this.#write(account, token));
    this.#queues.set(key, next);
    const cleanup = () => {
      if (this.#queues.get(key) === next) this.#queues.delete(key);
    };
    next.then(cleanup, cleanup);
    return next;
  }

  async #write(account: string, token: StoredToken): Promise<void> {
    this.#ready ??= Deno.mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await this.#ready;
    const target = this.pathOf(account);
    const temp = `${target}.${crypto.randomUUID()}.tmp`;
    const file = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
    try {
      let bytes = new TextEncoder().encode(JSON.stringify(token) + "\n");
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
