/**
 * Every refusal the SMTP listener sends, in one place: the reasons it is counted under
 * (`smtp_relay_ingress_refusals_total{reason}`), and smtp-server's own bare replies
 * (`501 Error: Bad recipient address syntax`, `552 Error: message exceeds fixed maximum
 * message size N`, `500 Error: command not recognized`, …) turned into replies with an
 * enhanced status code (RFC 3463) and a reason. `docs/replies.md` lists them all.
 * @module
 */
import type { OutgoingReply } from "../compat/smtp_server.ts";

/** Every reason of `smtp_relay_ingress_refusals_total` (pre-created at 0). */
export const REFUSAL_REASONS = [
  "auth",
  "auth_plaintext",
  "auth_throttled",
  "auth_account_locked",
  "auth_mechanism",
  "unauthenticated",
  "sender",
  "sender_syntax",
  "recipient",
  "recipient_syntax",
  "recipients",
  "size",
  "syntax",
  "sequence",
  "unknown_command",
  "line_too_long",
  "early_talker",
  "clients",
  "per_ip",
  "idle_timeout",
  "session_timeout",
  "idle_shed",
  "shutdown",
  "local_error",
  "other",
] as const;

/** A reason of `smtp_relay_ingress_refusals_total`. */
export type RefusalReason = typeof REFUSAL_REASONS[number];

/**
 * Why a reply refuses something: a counted reason, or `message` for the backend's
 * answer to a message it was handed (counted as `smtp_relay_messages_total{result}`).
 */
export type ReplyReason = RefusalReason | "message";

/** A refusal as it goes out: code, text after the code, and its reason. */
export interface Refusal {
  /** Reply code (4xx or 5xx). */
  readonly code: number;
  /** The text after the code, starting with the enhanced status code. */
  readonly text: string;
  /** What it is counted as. */
  readonly reason: ReplyReason;
}

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}( |$)/;

/**
 * The refusal `r` becomes. `pending` is the reason the relay gave when it refused
 * (its own replies carry their enhanced code already); smtp-server's own replies have
 * none and are classified here from their code, context and text, using the command
 * being answered (`command`, upper case) and its argument for MAIL and RCPT.
 */
export function classifyRefusal(
  r: OutgoingReply & { text: string },
  command: string,
  argument: string,
  pending?: ReplyReason,
): Refusal {
  if (ENHANCED.test(r.text)) {
    return { code: r.code, text: r.text, reason: pending ?? enhancedReason(r.code, r.text) };
  }
  const own = ownReply(r, command, argument);
  return { ...own, reason: pending ?? own.reason };
}

/** A reason for a reply that has an enhanced code but no reason was given (a bug's path). */
function enhancedReason(code: number, text: string): RefusalReason {
  if (code === 530) return "unauthenticated";
  if (code === 421 && text.startsWith("4.3.2")) return "shutdown";
  if (code === 421 && text.startsWith("4.4.2")) return "idle_timeout";
  return "other";
}

/** smtp-server's own bare reply, given an enhanced code and a reason. */
function ownReply(
  r: OutgoingReply & { text: string },
  command: string,
  argument: string,
): Refusal {
  // smtp-server's text is kept as it is (operators and docs quote it); it gains the code.
  const text = r.text;
  const as = (code: number, enhanced: string, reason: RefusalReason, t = text): Refusal => ({
    code,
    text: `${enhanced} ${t}`,
    reason,
  });
  switch (r.code) {
    case 421:
      if (/timeout/i.test(text)) return as(421, "4.4.2", "idle_timeout");
      if (/shutting down/i.test(text)) return as(421, "4.3.2", "shutdown");
      if (/talk too soon/i.test(text)) return as(421, "4.7.0", "early_talker");
      if (/unauthenticated/i.test(text)) return as(421, "4.7.0", "unauthenticated");
      if (/unrecognized/i.test(text)) return as(421, "4.7.0", "unknown_command");
      if (/too long/i.test(text)) return as(421, "4.7.0", "line_too_long");
      if (/too many connected/i.test(text)) return as(421, "4.7.0", "clients");
      return as(421, "4.7.0", "other");
    case 451:
      return as(451, "4.3.0", "local_error");
    case 452:
      return as(452, "4.5.3", "recipients");
    case 500:
    case 502:
      return as(r.code, r.code === 500 ? "5.5.2" : "5.5.1", "unknown_command");
    case 501:
      if (r.context === "SENDER_SYNTAX_ERROR") return as(501, "5.1.7", "sender_syntax");
      if (r.context === "MAILBOX_SYNTAX_ERROR") {
        // A quoted local part smtp-server cannot parse (one with a space) gets the same
        // reply as one it can parse: the relay accepts no quoted local part.
        if (argument.includes('"')) {
          return as(550, "5.1.3", "recipient_syntax", "Quoted local parts are not accepted");
        }
        return as(501, "5.1.3", "recipient_syntax");
      }
      return as(501, "5.5.4", "syntax");
    case 503:
      return as(503, "5.5.1", "sequence");
    case 504:
      return as(504, "5.5.4", command === "AUTH" ? "auth_mechanism" : "syntax");
    case 530:
      return as(530, "5.7.0", "unauthenticated");
    case 538:
      return as(538, "5.7.11", "auth_plaintext");
    case 552: {
      const limit = /(\d+)\s*$/.exec(text)?.[1];
      const t = limit ? `Message exceeds fixed maximum message size of ${limit} bytes` : text;
      return as(552, "5.3.4", "size", t);
    }
    default:
      return as(r.code, `${Math.floor(r.code / 100)}.0.0`, "other");
  }
}
