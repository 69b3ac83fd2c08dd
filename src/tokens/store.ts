/**
 * The refresh-token store: the newest refresh token per account, versioned, written by
 * compare-and-set so that the relay, `check` and `authorize` (and later several relay
 * instances) never overwrite a newer token with an older one. The file backend keeps
 * `<stateDir>/tokens/<address>.json` (see `state/versioned.ts` for why its
 * compare-and-set is atomic across processes).
 * @module
 */
import type { ExpectedVersion, VersionedStore } from "../state/store.ts";
import { FileVersionedStore, type FileVersionedStoreOptions } from "../state/versioned.ts";

/** What is kept for one account. */
export interface StoredToken {
  /** The newest refresh token the provider issued (secret). */
  readonly refreshToken: string;
  /**
   * Fingerprint of the refresh token the config held when this one was stored. If the
   * config's token changes later (the operator re-authorised), the config wins again.
   */
  readonly configFingerprint: string;
  /** When it was written (ISO 8601), for operators. */
  readonly updatedAt: string;
}

/**
 * Per-account refresh tokens with versions and compare-and-set:
 * `load(account) -> {value, version} | undefined` and
 * `compareAndSet(account, expectedVersion | "absent", value) -> {ok: true, version} |
 * {ok: false, current}`. A stale writer's token is not stored; it gets the current one
 * to adopt.
 */
export type RefreshTokenStore = VersionedStore<StoredToken>;

/** The name the wiring (`accounts.ts`) uses for a {@link RefreshTokenStore}. */
export type TokenStore = RefreshTokenStore;

function isStoredToken(value: unknown): value is StoredToken {
  const v = value as StoredToken | null;
  return typeof v?.refreshToken === "string" && typeof v?.configFingerprint === "string";
}

/** A {@link RefreshTokenStore} backed by files in a state directory. */
export class FileTokenStore extends FileVersionedStore<StoredToken> {
  /** Uses `<stateDir>/tokens`, created on first write. */
  constructor(stateDir: string, options?: FileVersionedStoreOptions) {
    super(stateDir, "tokens", isStoredToken, options);
  }
}

/** Compare-and-set rounds {@link replaceToken} tries before giving up. */
const REPLACE_ATTEMPTS = 5;

/**
 * Stores `value` over whatever is stored, by compare-and-set against the version just
 * read (so it goes through the same atomic path as every other writer): for a token the
 * operator has just obtained with `authorize`, which must win over the old grant's.
 * Resolves to the version stored.
 */
export async function replaceToken(
  store: RefreshTokenStore,
  account: string,
  value: StoredToken,
): Promise<number> {
  let expected: ExpectedVersion = (await store.load(account))?.version ?? "absent";
  for (let round = 0; round < REPLACE_ATTEMPTS; round++) {
    const r = await store.compareAndSet(account, expected, value);
    if (r.ok) return r.version;
    expected = r.current?.version ?? "absent";
  }
  throw new Error(`the stored token of ${account} kept changing; try again`);
}
