/**
 * The refresh-token store: rotated refresh tokens per account, written atomically
 * (see {@link FileStateStore}) to `<stateDir>/tokens/<address>.json`.
 * @module
 */
import { FileStateStore, type StateStore } from "../state/store.ts";

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
export type TokenStore = StateStore<StoredToken>;

function isStoredToken(value: unknown): value is StoredToken {
  const v = value as StoredToken | null;
  return typeof v?.refreshToken === "string" && typeof v?.configFingerprint === "string";
}

/** A {@link TokenStore} backed by files in a state directory. */
export class FileTokenStore extends FileStateStore<StoredToken> {
  /** Uses `<stateDir>/tokens`, created on first write. */
  constructor(stateDir: string) {
    super(stateDir, "tokens", isStoredToken);
  }
}
