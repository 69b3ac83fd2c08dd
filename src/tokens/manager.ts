/**
 * Access tokens for one account: cached until shortly before expiry, refreshed once
 * however many messages ask at the same time, refreshed ahead of expiry while the
 * account is in use, retried with backoff on transient failures, and parked in
 * `needs_reauth` when the provider says the refresh token is dead.
 *
 * Failures are held: after a refresh failed, the account answers with that failure at
 * once for a short while (the endpoint's Retry-After, capped, or `failureHoldMs`), and
 * then one refresh with a single attempt (a probe) decides, while other callers still
 * get the held failure. An account in `needs_reauth` or `state_corrupt` is rechecked on
 * a timer, so it recovers without traffic once the operator has fixed it. A rotated
 * refresh token that cannot be written is kept in memory and its write retried with
 * backoff until it succeeds ({@link AccountTokens.unsaved}); {@link AccountTokens.flush}
 * tries once more at stop.
 *
 * Its state sits behind interfaces a shared backend can implement: the refresh-token
 * store (versioned, compare-and-set), the access-token cache, the refresh lease, and
 * the clock. The defaults are this process's files, memory, single flight and time.
 * @module
 */
import { createHash } from "node:crypto";
import { LockTimeoutError } from "../state/dir_lock.ts";
import { type ExpectedVersion, StateContentError } from "../state/store.ts";
import { clip } from "../text.ts";
import { type AccessTokenCache, type CachedAccessToken, MemoryAccessTokenCache } from "./cache.ts";
import { REAL_TIMING, startTimer, type Timing } from "./clock.ts";
import { InProcessRefreshLease, type RefreshLease } from "./lease.ts";
import {
  type OAuthClient,
  refreshAccessToken,
  TokenError,
  type TokenGrant,
  TokenTimeoutError,
} from "./oauth.ts";
import type { RefreshTokenStore, StoredToken } from "./store.ts";
import type { AppGrant } from "./app_grant.ts";

/** A bearer token and the time it stops being handed out (ms since the epoch). */
export interface AccessToken {
  /** The bearer token. */
  readonly token: string;
  /** Expiry minus the refresh margin: after this a new token is fetched. */
  readonly useUntil: number;
}

/**
 * Health of an account's tokens: `unknown` before the first refresh, `ok`, `failing`
 * (the latest refresh failed transiently), `needs_reauth` (the refresh token is dead or
 * missing; only `authorize` or a new token in the config helps), `state_corrupt` (the
 * account's token file cannot be read as a token file: the operator must move it away
 * or restore it).
 */
export type TokenState = "unknown" | "ok" | "failing" | "needs_reauth" | "state_corrupt";

/** The states in which an account cannot send: the ones `/readyz` counts against it. */
export const BROKEN_STATES: readonly TokenState[] = ["failing", "needs_reauth", "state_corrupt"];

/**
 * A rotated refresh token that lives in memory only, because writing it failed: lost if
 * the process ends before a retried write succeeds. Secret-free.
 */
export interface UnsavedToken {
  /** The file it belongs in, when the store says. */
  readonly path?: string;
  /**
   * What kind of failure: the system's error code (`ENOSPC`, `EROFS`, `EACCES`,
   * `ENOTDIR`, `EEXIST`, …), `state_corrupt` (the file there is not a token file),
   * `lock_timeout` (another writer held the directory's lock) or `contended`.
   */
  readonly error: string;
  /** The latest failure's message (a path at most, never content). */
  readonly message: string;
  /** First failure, ms since the epoch. */
  readonly since: number;
  /** Writes tried so far. */
  readonly attempts: number;
  /** When the next write is due, ms since the epoch (none after {@link AccountTokens.close}). */
  readonly nextAttemptAt?: number;
}

/** An account's token health as readiness and metrics count it. */
export interface TokenHealth {
  /** Token state. */
  readonly state: TokenState;
  /** A rotated refresh token is not saved yet. */
  readonly unsaved: boolean;
}

/** What a retried write of an unsaved refresh token did (no secrets). */
export interface SaveOutcome {
  /** Saved (or a newer token another writer stored was adopted). */
  readonly ok: boolean;
  /** Writes tried for it so far, this one included. */
  readonly attempts: number;
  /** When it was first not saved, ms since the epoch. */
  readonly since: number;
  /** The file, when the store says. */
  readonly path?: string;
  /** When not saved: the condition now. */
  readonly unsaved?: UnsavedToken;
}

/**
 * The account's token file is there but is not a token file (not JSON, wrong shape), and
 * no token in memory replaces it: nothing can be refreshed until the operator moves the
 * file away (and runs `authorize`) or restores it. The message names the file, never its
 * content.
 */
export class CorruptTokenFileError extends TokenError {
  /** The file. */
  readonly path: string;
  /** Builds the verdict from the store's error. */
  constructor(cause: StateContentError) {
    super(`the stored token file ${cause.path} is corrupt (${cause.what})`, "permanent");
    this.name = "CorruptTokenFileError";
    this.path = cause.path;
  }
}

/**
 * A failure held from an earlier refresh: answered at once, without asking the token
 * endpoint, until {@link retryAt}. The message is the held failure's, with that time.
 */
export class HeldTokenError extends TokenError {
  /** When the endpoint is asked again, ms since the epoch. */
  readonly retryAt: number;
  /** Wraps `held`, asked again at `retryAt`; `now` is the clock's time. */
  constructor(held: TokenError, retryAt: number, now: number) {
    const at = new Date(Math.max(retryAt, now)).toISOString().slice(11, 19);
    super(
      `${held.message} (next try after ${at} UTC)`,
      held.kind,
      held.oauthError,
      Math.max(0, retryAt - now),
    );
    this.name = "HeldTokenError";
    this.retryAt = retryAt;
  }
}

/** Retry policy of one refresh. */
export interface RetryPolicy {
  /** Attempts per refresh, first included. */
  readonly attempts: number;
  /** First backoff, ms; doubled per attempt, with full jitter. */
  readonly baseMs: number;
  /** No single wait is longer; a longer Retry-After ends the refresh instead. */
  readonly maxMs: number;
}

/** Settings for {@link AccountTokens}. */
export interface AccountTokensOptions {
  /** Mailbox address (store key). */
  readonly account: string;
  /** Token endpoint and client credentials. */
  readonly client: OAuthClient;
  /** The refresh token written in the config, if any. */
  readonly configRefreshToken?: string;
  /**
   * App-only credential (service account, client credentials): each refresh runs this
   * grant instead of the refresh grant, and no refresh token is read or stored.
   */
  readonly grant?: AppGrant;
  /** Where rotated refresh tokens go (compare-and-set: a newer stored token wins). */
  readonly store: RefreshTokenStore;
  /** Where access tokens are cached (default: this manager's memory). */
  readonly cache?: AccessTokenCache;
  /** Who may refresh (default: one refresh at a time in this manager, shared by callers). */
  readonly lease?: RefreshLease;
  /** Clock and sleep, for expiry and backoff (default: real time). */
  readonly timing?: Timing;
  /** Tokens are refreshed this long before expiry, in ms (at least {@link MIN_LIFETIME_MS}). */
  readonly marginMs: number;
  /** Time allowed to one token call, in ms. */
  readonly timeoutMs: number;
  /** Retries of transient failures. */
  readonly retry: RetryPolicy;
  /**
   * In `needs_reauth` (and `state_corrupt`), the store and the endpoint are tried again
   * this often, ms: on a timer, and by a message that needs the token once it is due.
   */
  readonly reauthRecheckMs: number;
  /**
   * After a refresh failed transiently, its failure is answered at once for this long,
   * ms (the endpoint's Retry-After instead, at most {@link MAX_FAILURE_HOLD_MS}); then
   * one single-attempt refresh decides. 0: no hold, every caller refreshes (default
   * {@link DEFAULT_FAILURE_HOLD_MS}).
   */
  readonly failureHoldMs?: number;
  /**
   * Backoff of the retried write of a rotated refresh token that could not be saved:
   * first wait, doubled per failure up to the longest (default 2 s to 60 s).
   */
  readonly saveRetry?: { readonly baseMs: number; readonly maxMs: number };
  /** Called after every refresh (not every attempt). */
  readonly onRefresh?: (outcome: RefreshOutcome) => void;
  /** Called after every retried write of an unsaved refresh token. */
  readonly onSave?: (outcome: SaveOutcome) => void;
}

/** What one refresh did, for metrics and logs (no secrets). */
export interface RefreshOutcome {
  /** Whether a new access token was obtained. */
  readonly ok: boolean;
  /** Why not. */
  readonly error?: TokenError;
  /** State after the refresh. */
  readonly state: TokenState;
  /** State before it (a failure into the same state repeats a standing verdict). */
  readonly previous: TokenState;
  /** A single-attempt try while a failure was held (a probe or a recheck). */
  readonly probe?: boolean;
  /** HTTP attempts made (0: none could be, e.g. the token file is corrupt). */
  readonly attempts: number;
  /** Refreshed ahead of expiry, with a valid token still in hand. */
  readonly background: boolean;
  /** The provider issued a new refresh token. */
  readonly rotated: boolean;
  /** Writing the rotated refresh token failed: it lives in memory until a retried write. */
  readonly persistError?: string;
  /** With {@link persistError}: where, what kind, and when the write is retried. */
  readonly unsaved?: UnsavedToken;
  /**
   * While this refresh ran, another writer (another process, `authorize`) stored a newer
   * refresh token: that one was adopted and the one this refresh got was dropped.
   */
  readonly adopted?: boolean;
}

/**
 * No token is handed out with less than this left: Microsoft's high-volume endpoint
 * refuses tokens close to expiry. (A token whose whole lifetime is under twice this is
 * used for half its life.)
 */
export const MIN_LIFETIME_MS = 120_000;

/** Share of a token's usable life after which use triggers a background refresh. */
const REFRESH_AHEAD_AT = 0.75;

/**
 * Fingerprint of the config's refresh token: enough to notice a change, useless to an
 * attacker. `""` when the config has none.
 */
export function fingerprint(refreshToken: string | undefined): string {
  if (refreshToken === undefined) return "";
  return createHash("sha256").update(refreshToken).digest("hex").slice(0, 16);
}

/** The refresh token in use, and the store version it was read at or written as. */
interface HeldToken {
  readonly token: string;
  readonly seen: ExpectedVersion;
}

/** What an app-only account "holds": no refresh token (its grants never rotate one). */
const APP_ONLY: HeldToken = { token: "", seen: "absent" };

/** Compare-and-set rounds when what is stored belongs to another config token. */
const CAS_ROUNDS = 3;
/** Time allowed to the store (lock, write) within one lease, on top of the token calls. */
const LEASE_STORE_ALLOWANCE_MS = 30_000;
/** Default of {@link AccountTokensOptions.failureHoldMs}. */
export const DEFAULT_FAILURE_HOLD_MS = 30_000;
/** A Retry-After longer than this holds a failure this long only. */
export const MAX_FAILURE_HOLD_MS = 300_000;
/** A Retry-After shorter than this holds a failure this long. */
const MIN_FAILURE_HOLD_MS = 1_000;
/** Default of {@link AccountTokensOptions.saveRetry}. */
const SAVE_RETRY = { baseMs: 2_000, maxMs: 60_000 };
/** Background rechecks of many accounts are spread over up to this share of the wait. */
const RECHECK_JITTER = 0.1;

/** Another writer kept changing the stored token during every compare-and-set round. */
class StoreContendedError extends Error {
  constructor() {
    super("the stored refresh token kept changing under other writers");
    this.name = "StoreContendedError";
  }
}

/** The token source of one account. */
export class AccountTokens {
  readonly #o: AccountTokensOptions;
  readonly #cache: AccessTokenCache;
  readonly #lease: RefreshLease;
  readonly #timing: Timing;
  #held?: HeldToken;
  /** Refreshes this manager is running or waiting for. */
  #running = 0;
  #state: TokenState = "unknown";
  #lastError?: TokenError;
  /**
   * While a failure is held (`failing` with a hold, `needs_reauth`, `state_corrupt`):
   * until then callers get it at once; 0 when nothing is held.
   */
  #retryAt = 0;
  #recheckTimer?: () => void;
  #unsaved?: UnsavedToken;
  #saveTimer?: () => void;
  /** A retried write in progress (a refresh waits for it before reading the store). */
  #saving?: Promise<void>;
  #closed = false;

  /** Nothing is read or fetched until the first {@link get} (or {@link inspect}). */
  constructor(options: AccountTokensOptions) {
    this.#o = options;
    this.#cache = options.cache ?? new MemoryAccessTokenCache();
    this.#lease = options.lease ?? new InProcessRefreshLease();
    this.#timing = options.timing ?? REAL_TIMING;
  }

  /** Current state; see {@link TokenState}. */
  get state(): TokenState {
    return this.#state;
  }

  /** The latest failure (secret-free), cleared by a success. */
  get lastError(): TokenError | undefined {
    return this.#lastError;
  }

  /** The rotated refresh token that is not saved yet, if any (where, why; never the token). */
  get unsaved(): UnsavedToken | undefined {
    return this.#unsaved;
  }

  /** State and unsaved flag, for readiness and metrics. */
  get health(): TokenHealth {
    return { state: this.#state, unsaved: this.#unsaved !== undefined };
  }

  /**
   * A token with at least the margin left; refreshes (once, shared) when needed. While
   * the account is in use, the next token is fetched in the background before this one
   * runs out. While a failure is held it fails at once (see {@link HeldTokenError}),
   * except for the one probe per hold; in `needs_reauth` and `state_corrupt` it fails at
   * once until the next recheck is due.
   */
  async get(): Promise<AccessToken> {
    const now = this.#timing.now();
    const cached = await this.#cache.get(this.#o.account);
    if (cached && cached.useUntil > now) {
      // A valid token from a shared cache (another instance's, or this account's before a
      // restart or a reload) shows the grant works: "ok", not "unknown".
      if (this.#state === "unknown") this.#state = "ok";
      if (now >= cached.refreshAt && this.#running === 0 && now >= this.#retryAt) {
        this.#refresh(true).catch(() => {}); // outcome reported through onRefresh
      }
      return cached;
    }
    this.#failIfHeld(now);
    return this.#refresh(false);
  }

  /**
   * The provider refused a token: forget it and fetch another. Callers that ask while a
   * refresh is running share it, so a burst of refusals costs one refresh. While a
   * failure is held it fails at once, as {@link get} does.
   */
  async renew(): Promise<AccessToken> {
    const cached = await this.#cache.get(this.#o.account);
    if (cached) await this.#cache.delete(this.#o.account, cached.token);
    this.#failIfHeld(this.#timing.now());
    return this.#refresh(false, cached?.token);
  }

  /**
   * Reads the store once, without refreshing: a corrupt token file shows as
   * `state_corrupt` before any message needs the account. Does nothing once the account
   * has been used. Never rejects.
   */
  async inspect(): Promise<void> {
    const idle = () => this.#state === "unknown" && !this.#held && this.#running === 0;
    if (!idle() || this.#o.grant) return;
    try {
      await this.#o.store.load(this.#o.account);
    } catch (err) {
      if (!(err instanceof StateContentError) || !idle()) return;
      await this.#failed(new CorruptTokenFileError(err), {
        attempts: 0,
        background: false,
        previous: "unknown",
        probe: false,
      });
    }
  }

  /**
   * After a reload rebuilt the account: takes over `previous`'s unsaved refresh token
   * (and the retried write of it) when both use the same grant (token endpoint, client,
   * config token); `previous` stops retrying it. Without this the token would be lost
   * with the retired runtime.
   */
  inherit(previous: AccountTokens): void {
    const a = previous.#o, b = this.#o;
    const sameGrant = a.account.toLowerCase() === b.account.toLowerCase() &&
      a.client.tokenUrl === b.client.tokenUrl && a.client.clientId === b.client.clientId &&
      fingerprint(a.configRefreshToken) === fingerprint(b.configRefreshToken);
    if (!sameGrant || !previous.#unsaved || !previous.#held || this.#held) return;
    this.#held = previous.#held;
    this.#unsaved = previous.#unsaved;
    previous.#unsaved = undefined;
    previous.#saveTimer?.();
    previous.#saveTimer = undefined;
    this.#scheduleSave();
  }

  /**
   * Stop: one more write of an unsaved refresh token, whatever its backoff says.
   * Resolves to what is still unsaved (undefined: nothing is, or it is saved now).
   */
  async flush(): Promise<UnsavedToken | undefined> {
    await this.#saving;
    if (this.#unsaved) await this.#saveNow();
    return this.#unsaved;
  }

  /**
   * Stops the background timers (rechecks, retried writes) for good. Tokens can still
   * be had; {@link flush} still writes.
   */
  close(): void {
    this.#closed = true;
    this.#recheckTimer?.();
    this.#recheckTimer = undefined;
    this.#saveTimer?.();
    this.#saveTimer = undefined;
  }

  /** True while a failure is held (callers get it without a refresh until it is due). */
  #holding(): boolean {
    return this.#retryAt > 0 && this.#state !== "ok" && this.#lastError !== undefined;
  }

  /** Throws the held failure while it is not due yet, or while its probe is running. */
  #failIfHeld(now: number): void {
    if (!this.#holding() || (now >= this.#retryAt && this.#running === 0)) return;
    if (this.#state === "failing") throw new HeldTokenError(this.#lastError!, this.#retryAt, now);
    throw this.#lastError;
  }

  /** Refreshes under the lease; `refused` is a token the provider refused (never reused). */
  #refresh(background: boolean, refused?: string): Promise<AccessToken> {
    const o = this.#o;
    const ttlMs = o.retry.attempts * (o.timeoutMs + o.retry.maxMs) + LEASE_STORE_ALLOWANCE_MS;
    this.#running++;
    return this.#lease.run(o.account, () => this.#doRefresh(background, refused), ttlMs)
      .finally(() => this.#running--);
  }

  async #doRefresh(background: boolean, refused?: string): Promise<AccessToken> {
    const o = this.#o;
    // A retried write may be changing the held token and the store's version.
    await this.#saving;
    // Under a shared lease, the previous holder may have left a fresh token.
    const fresh = await this.#cache.get(o.account);
    if (fresh && fresh.token !== refused && this.#timing.now() < fresh.refreshAt) {
      this.#recovered();
      return fresh;
    }
    const previous = this.#state;
    // While a failure is held, one attempt decides (a probe); otherwise the retry policy.
    const probe = this.#holding();
    const maxAttempts = probe ? 1 : o.retry.attempts;
    let attempts = 0;
    let invalidGrantRetried = probe;
    try {
      // After an invalid_grant verdict, `authorize` may have stored a new token: the one
      // held here is dead. (Other verdicts, such as invalid_client, say nothing about it.)
      if (previous === "needs_reauth" && this.#lastError?.oauthError === "invalid_grant") {
        this.#held = undefined;
      }
      let held = o.grant ? APP_ONLY : await this.#refreshTokenToUse();
      while (true) {
        attempts++;
        try {
          const now = () => this.#timing.now();
          const grant = o.grant
            ? await o.grant(o.timeoutMs, now)
            : await refreshAccessToken(o.client, held.token, o.timeoutMs, now);
          return await this.#accept(grant, held, { attempts, background, previous, probe });
        } catch (err) {
          const error = toTokenError(err);
          // A single invalid_grant can be a provider hiccup, or `authorize` stored a new
          // token meanwhile: one more try, with the stored token, before the verdict.
          const retryGrant: boolean = error.oauthError === "invalid_grant" &&
            !invalidGrantRetried && !o.grant;
          if (error.kind === "permanent" && !retryGrant) throw error;
          // A call that hung is not repeated: the held failure answers the next callers.
          if (error instanceof TokenTimeoutError) throw error;
          if (retryGrant) {
            invalidGrantRetried = true;
            const refusedToken = held;
            this.#held = undefined;
            held = await this.#refreshTokenToUse().catch(() => this.#held = refusedToken);
          }
          const delay = backoff(o.retry, attempts, error.retryAfterMs);
          if (attempts >= maxAttempts || delay === undefined) throw error;
          await this.#timing.sleep(delay);
        }
      }
    } catch (err) {
      const error = toTokenError(err);
      await this.#failed(error, { attempts, background, previous, probe });
      throw error;
    }
  }

  /** A refresh failed: the new state, the hold or recheck, the report. */
  async #failed(
    error: TokenError,
    r: { attempts: number; background: boolean; previous: TokenState; probe: boolean },
  ): Promise<void> {
    const o = this.#o;
    this.#lastError = error;
    this.#state = error instanceof CorruptTokenFileError
      ? "state_corrupt"
      : error.kind === "permanent"
      ? "needs_reauth"
      : "failing";
    const now = this.#timing.now();
    if (this.#state === "failing") {
      const hold = this.#holdMs(error);
      this.#retryAt = hold > 0 ? now + hold : 0;
    } else {
      this.#retryAt = now + o.reauthRecheckMs;
      const cached = await this.#cache.get(o.account).catch(() => undefined);
      if (cached) await this.#cache.delete(o.account, cached.token).catch(() => {});
      // A refused refresh token is not worth saving.
      if (error.oauthError === "invalid_grant") this.#dropUnsaved();
    }
    this.#scheduleRecheck();
    o.onRefresh?.({
      ok: false,
      error,
      state: this.#state,
      previous: r.previous,
      attempts: r.attempts,
      background: r.background,
      rotated: false,
      ...(r.probe ? { probe: true } : {}),
    });
  }

  /** A refresh succeeded (or found a fresh token): nothing is held any more. */
  #recovered(): void {
    this.#state = "ok";
    this.#lastError = undefined;
    this.#retryAt = 0;
    this.#recheckTimer?.();
    this.#recheckTimer = undefined;
  }

  /** How long a transient failure is held, ms (0: not at all). */
  #holdMs(error: TokenError): number {
    const hold = this.#o.failureHoldMs ?? DEFAULT_FAILURE_HOLD_MS;
    if (hold <= 0) return 0;
    if (error.retryAfterMs === undefined) return hold;
    return Math.min(Math.max(error.retryAfterMs, MIN_FAILURE_HOLD_MS), MAX_FAILURE_HOLD_MS);
  }

  /**
   * While a failure is held, a timer tries again once it is due, so the account recovers
   * (and `/readyz` with it) without waiting for a message.
   */
  #scheduleRecheck(): void {
    this.#recheckTimer?.();
    this.#recheckTimer = undefined;
    if (this.#closed || !this.#holding()) return;
    const wait = Math.max(0, this.#retryAt - this.#timing.now());
    const jitter = Math.random() * wait * RECHECK_JITTER;
    this.#recheckTimer = startTimer(this.#timing, wait + jitter, () => {
      this.#recheckTimer = undefined;
      if (this.#closed || !this.#holding() || this.#running > 0) return;
      if (this.#timing.now() < this.#retryAt) return this.#scheduleRecheck();
      this.#refresh(false).catch(() => {}); // outcome reported through onRefresh
    });
  }

  async #accept(
    grant: TokenGrant,
    used: HeldToken,
    r: { attempts: number; background: boolean; previous: TokenState; probe: boolean },
  ): Promise<AccessToken> {
    const o = this.#o;
    const rotated = !o.grant && grant.refreshToken !== undefined &&
      grant.refreshToken !== used.token;
    let persistError: string | undefined;
    let adopted = false;
    if (rotated) {
      // Held at once: if storing fails, the next refresh still uses the newest token.
      this.#held = { token: grant.refreshToken!, seen: used.seen };
      try {
        adopted = await this.#persist(grant.refreshToken!, used.seen);
        this.#dropUnsaved(); // an older unsaved token is superseded
      } catch (err) {
        persistError = safeMessage(err);
        this.#markUnsaved(err);
      }
    }
    const now = this.#timing.now();
    const lifetime = grant.expiresAt - now;
    const margin = Math.min(Math.max(o.marginMs, MIN_LIFETIME_MS), lifetime / 2);
    const useUntil = grant.expiresAt - margin;
    const token: CachedAccessToken = {
      token: grant.accessToken,
      useUntil,
      refreshAt: now + (useUntil - now) * REFRESH_AHEAD_AT,
    };
    await this.#cache.set(o.account, token);
    this.#recovered();
    o.onRefresh?.({
      ok: true,
      state: "ok",
      previous: r.previous,
      attempts: r.attempts,
      background: r.background,
      rotated,
      persistError,
      ...(persistError ? { unsaved: this.#unsaved } : {}),
      ...(adopted ? { adopted } : {}),
      ...(r.probe ? { probe: true } : {}),
    });
    return token;
  }

  /** Records a failed write of the held token and schedules the next one. */
  #markUnsaved(err: unknown): void {
    const previous = this.#unsaved;
    this.#unsaved = {
      path: this.#o.store.pathOf?.(this.#o.account),
      error: storeErrorKind(err),
      message: safeMessage(err),
      since: previous?.since ?? this.#timing.now(),
      attempts: (previous?.attempts ?? 0) + 1,
    };
    this.#scheduleSave();
  }

  /** Nothing is unsaved any more (saved, superseded, or refused by the provider). */
  #dropUnsaved(): void {
    this.#unsaved = undefined;
    this.#saveTimer?.();
    this.#saveTimer = undefined;
  }

  /** The next write of the unsaved token, after a backoff that grows with the failures. */
  #scheduleSave(): void {
    this.#saveTimer?.();
    this.#saveTimer = undefined;
    const unsaved = this.#unsaved;
    if (this.#closed || !unsaved) return;
    const p = this.#o.saveRetry ?? SAVE_RETRY;
    const wait = Math.min(p.maxMs, p.baseMs * 2 ** Math.min(30, unsaved.attempts - 1));
    this.#unsaved = { ...unsaved, nextAttemptAt: this.#timing.now() + wait };
    this.#saveTimer = startTimer(this.#timing, wait, () => {
      this.#saveTimer = undefined;
      if (this.#closed || !this.#unsaved) return;
      // A refresh in progress writes (or marks) a newer token itself; try again later.
      if (this.#running > 0) return this.#scheduleSave();
      void this.#saveNow();
    });
  }

  /** Writes the held token now; never rejects (a failure is recorded and rescheduled). */
  #saveNow(): Promise<void> {
    const attempt = (async () => {
      const held = this.#held;
      const unsaved = this.#unsaved;
      if (!held || !unsaved) return;
      try {
        await this.#persist(held.token, held.seen);
        if (this.#unsaved !== unsaved) return; // superseded meanwhile
        this.#dropUnsaved();
        this.#o.onSave?.({
          ok: true,
          attempts: unsaved.attempts + 1,
          since: unsaved.since,
          path: unsaved.path,
        });
      } catch (err) {
        if (this.#unsaved !== unsaved) return;
        this.#markUnsaved(err);
        this.#o.onSave?.({
          ok: false,
          attempts: this.#unsaved!.attempts,
          since: unsaved.since,
          path: unsaved.path,
          unsaved: this.#unsaved,
        });
      }
    })();
    const settled: Promise<void> = attempt.finally(() => {
      if (this.#saving === settled) this.#saving = undefined;
    });
    this.#saving = settled;
    return settled;
  }

  /**
   * Stores a rotated refresh token by compare-and-set against the version it replaces.
   * If another writer stored a newer token for this config meanwhile, that one wins: it
   * is adopted (resolves true) and ours is dropped; the access token just obtained stays
   * good either way. A newer token stored for another config token does not win (the
   * config's token, which ours descends from, takes precedence, as at start-up).
   */
  async #persist(token: string, expected: ExpectedVersion): Promise<boolean> {
    const o = this.#o;
    const mine = fingerprint(o.configRefreshToken);
    const value: StoredToken = {
      refreshToken: token,
      configFingerprint: mine,
      updatedAt: new Date().toISOString(),
    };
    for (let round = 0; round < CAS_ROUNDS; round++) {
      const r = await o.store.compareAndSet(o.account, expected, value);
      if (r.ok) {
        this.#held = { token, seen: r.version };
        return false;
      }
      const current = r.current;
      if (current && current.value.configFingerprint === mine) {
        this.#held = { token: current.value.refreshToken, seen: current.version };
        return true;
      }
      expected = current?.version ?? "absent";
      this.#held = { token, seen: expected };
    }
    throw new StoreContendedError();
  }

  /**
   * The refresh token to use, read from the store on every refresh (another process or
   * `authorize` may have stored a newer one). The token held here is kept while the
   * store is unchanged since it was read or written: it is as new or newer (a rotation
   * whose write failed lives only here). Otherwise the stored token, unless the config's
   * token changed since it was stored (the operator put a new one there: the config's
   * wins). Without either, the account needs `authorize`.
   */
  async #refreshTokenToUse(): Promise<HeldToken> {
    const o = this.#o;
    let stored;
    try {
      stored = await o.store.load(o.account);
    } catch (err) {
      if (this.#held) return this.#held;
      if (err instanceof StateContentError) throw new CorruptTokenFileError(err);
      throw err;
    }
    const seen: ExpectedVersion = stored?.version ?? "absent";
    const held = this.#held;
    if (held && held.seen === seen) return held;
    if (stored && stored.value.configFingerprint === fingerprint(o.configRefreshToken)) {
      return this.#held = { token: stored.value.refreshToken, seen };
    }
    const token = held?.token ?? o.configRefreshToken;
    if (token === undefined) {
      throw new TokenError(
        "no refresh token in the config or the state directory",
        "permanent",
        "no_refresh_token",
      );
    }
    return this.#held = { token, seen };
  }
}

/** The wait before the next attempt, or undefined when a Retry-After is too long. */
function backoff(p: RetryPolicy, attempt: number, retryAfterMs?: number): number | undefined {
  if (retryAfterMs !== undefined) return retryAfterMs <= p.maxMs ? retryAfterMs : undefined;
  return Math.random() * Math.min(p.maxMs, p.baseMs * 2 ** (attempt - 1));
}

/** The kind of a store failure, for operators and alerts (see {@link UnsavedToken.error}). */
function storeErrorKind(err: unknown): string {
  if (err instanceof StateContentError) return "state_corrupt";
  if (err instanceof LockTimeoutError) return "lock_timeout";
  if (err instanceof StoreContendedError) return "contended";
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) return code;
  return err instanceof Error ? err.name : "error";
}

/** A store failure's message: system errors name a path at most, never content. */
function safeMessage(err: unknown): string {
  return clip(err instanceof Error ? err.message : String(err));
}

function toTokenError(err: unknown): TokenError {
  if (err instanceof TokenError) return err;
  return new TokenError(`failed: ${err instanceof Error ? err.message : String(err)}`, "transient");
}
