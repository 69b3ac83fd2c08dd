/**
 * Per-account sending quotas over sliding windows: messages and recipients per 24 hours
 * (Google Workspace, Microsoft), messages per minute (Microsoft). A message that would
 * overrun a quota is deferred with the time it may be retried, instead of being sent
 * for the provider to refuse (and count against the mailbox).
 * @module
 */

/** Limits of one account; `0` means no limit. */
export interface QuotaLimits {
  /** Messages per rolling 24 hours. */
  readonly messagesPerDay: number;
  /** Recipients per rolling 24 hours. */
  readonly recipientsPerDay: number;
  /** Messages per rolling minute. */
  readonly messagesPerMinute: number;
}

/** Which limit refused a message. */
export type QuotaKind = "messages_per_day" | "recipients_per_day" | "messages_per_minute";

/** The counters of one account, as persisted (times in ms since the epoch). */
export interface QuotaSnapshot {
  /** [minute start, messages, recipients], oldest first, within the last 24 hours. */
  readonly minutes: [number, number, number][];
  /** Send times within the last minute. */
  readonly recent: number[];
}

/**
 * Quota held for one message: {@link commit}ted once the provider took the message,
 * {@link release}d if it did not. The first of the two calls decides; later calls of
 * either do nothing, so a `release()` in a cleanup path after a `commit()` is harmless.
 */
export interface Reservation {
  /** Keeps the use (the provider took the message). */
  commit(): void;
  /** Gives the quota back (the provider did not take the message). */
  release(): void;
}

/** Use of an account's quotas in the current windows. */
export interface QuotaUsage {
  /** Messages in the last 24 hours. */
  readonly messagesToday: number;
  /** Recipients in the last 24 hours. */
  readonly recipientsToday: number;
  /** Messages in the last minute. */
  readonly lastMinute: number;
}

/** A refusal with the time from which the message would fit. */
export interface QuotaExceeded {
  /** The limit that was hit. */
  readonly kind: QuotaKind;
  /** Its value. */
  readonly limit: number;
  /** When enough of the window has passed, ms since the epoch. */
  readonly retryAt: number;
}

const DAY = 86_400_000;
const MINUTE = 60_000;

/** Checks a snapshot read from storage. */
export function isQuotaSnapshot(value: unknown): value is QuotaSnapshot {
  const v = value as QuotaSnapshot | null;
  return Array.isArray(v?.minutes) && Array.isArray(v?.recent);
}

/** The quota counters of one account. */
export class AccountQuota {
  #limits: QuotaLimits;
  readonly #minutes: [number, number, number][];
  readonly #recent: number[];
  /** Sums over #minutes, kept in step with it (no per-message pass over 1,440 buckets). */
  #dayMessages = 0;
  #dayRecipients = 0;
  #dirty = false;

  /** Starts empty or from a persisted snapshot. */
  constructor(limits: QuotaLimits, snapshot?: QuotaSnapshot) {
    this.#limits = limits;
    this.#minutes = snapshot ? snapshot.minutes.map((m) => [m[0], m[1], m[2]]) : [];
    this.#recent = snapshot ? [...snapshot.recent] : [];
    for (const m of this.#minutes) {
      this.#dayMessages += m[1];
      this.#dayRecipients += m[2];
    }
  }

  /** Current limits (replaced on reload; counters stay). */
  get limits(): QuotaLimits {
    return this.#limits;
  }
  set limits(limits: QuotaLimits) {
    this.#limits = limits;
  }

  /** True when counters changed since the last {@link snapshot}. */
  get dirty(): boolean {
    return this.#dirty;
  }

  /** Reserves one message to `recipients` recipients, or says which limit it would break. */
  reserve(recipients: number, now = Date.now()): Reservation | QuotaExceeded {
    this.#prune(now);
    const l = this.#limits;
    const day = [this.#dayMessages, this.#dayRecipients];
    if (l.messagesPerMinute > 0 && this.#recent.length + 1 > l.messagesPerMinute) {
      const excess = this.#recent.length + 1 - l.messagesPerMinute;
      return {
        kind: "messages_per_minute",
        limit: l.messagesPerMinute,
        retryAt: this.#recent[excess - 1] + MINUTE,
      };
    }
    if (l.messagesPerDay > 0 && day[0] + 1 > l.messagesPerDay) {
      return {
        kind: "messages_per_day",
        limit: l.messagesPerDay,
        retryAt: this.#freeAt(1, day[0] + 1 - l.messagesPerDay),
      };
    }
    if (l.recipientsPerDay > 0 && day[1] + recipients > l.recipientsPerDay) {
      return {
        kind: "recipients_per_day",
        limit: l.recipientsPerDay,
        retryAt: this.#freeAt(2, day[1] + recipients - l.recipientsPerDay),
      };
    }
    const minute = now - (now % MINUTE);
    let bucket = this.#minutes.at(-1);
    if (!bucket || bucket[0] !== minute) {
      bucket = [minute, 0, 0];
      this.#minutes.push(bucket);
    }
    bucket[1] += 1;
    bucket[2] += recipients;
    this.#dayMessages += 1;
    this.#dayRecipients += recipients;
    this.#recent.push(now);
    this.#dirty = true;
    const b = bucket;
    let settled = false;
    return {
      commit: () => {
        settled = true;
      },
      release: () => {
        if (settled) return;
        settled = true;
        // The bucket may have left the window meanwhile: then there is nothing to give back.
        if (this.#minutes.includes(b)) {
          b[1] -= 1;
          b[2] -= recipients;
          this.#dayMessages -= 1;
          this.#dayRecipients -= recipients;
        }
        const i = this.#recent.indexOf(now);
        if (i >= 0) this.#recent.splice(i, 1);
        this.#dirty = true;
      },
    };
  }

  /** Usage in the current windows. */
  usage(now = Date.now()): QuotaUsage {
    this.#prune(now);
    return {
      messagesToday: this.#dayMessages,
      recipientsToday: this.#dayRecipients,
      lastMinute: this.#recent.length,
    };
  }

  /** The counters for persistence; clears {@link dirty}. */
  snapshot(now = Date.now()): QuotaSnapshot {
    this.#prune(now);
    this.#dirty = false;
    return { minutes: this.#minutes.map((m) => [m[0], m[1], m[2]]), recent: [...this.#recent] };
  }

  /** When the oldest buckets holding `excess` units of column `col` leave the window. */
  #freeAt(col: 1 | 2, excess: number): number {
    let freed = 0;
    for (const m of this.#minutes) {
      freed += m[col];
      if (freed >= excess) return m[0] + MINUTE + DAY;
    }
    return Date.now() + DAY; // more than a whole window: a single message over the limit
  }

  #prune(now: number): void {
    while (this.#minutes.length > 0 && this.#minutes[0][0] + MINUTE <= now - DAY) {
      const [, messages, recipients] = this.#minutes.shift()!;
      this.#dayMessages -= messages;
      this.#dayRecipients -= recipients;
    }
    while (this.#recent.length > 0 && this.#recent[0] <= now - MINUTE) this.#recent.shift();
  }
}
