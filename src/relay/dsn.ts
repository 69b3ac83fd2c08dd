/**
 * Non-delivery reports (RFC 3464) for recipients the provider refused after the relay had
 * said 250 to their RCPT TO. The client took those 250s as the relay's promise to deliver
 * or report (RFC 5321 section 6.1); the relay keeps no queue, so it reports at once. This
 * module only builds the report; the relay sends it.
 * @module
 */
import { formatReply, type Reply } from "../smtp/reply.ts";
import type { RefusedRecipient } from "../upstream/pool.ts";

/** What a report says. */
export interface ReportInput {
  /** The relay's name (EHLO name): Reporting-MTA, and the Message-ID's domain. */
  readonly reportingMta: string;
  /** The account that sent the original; the report goes out as it (providers insist). */
  readonly account: string;
  /** The original's envelope sender: the report's recipient. */
  readonly sender: string;
  /** The refused recipients. */
  readonly recipients: readonly RefusedRecipient[];
  /** The original message; its header section is attached, its body is not. */
  readonly original: Uint8Array;
  /** When the relay received the original. */
  readonly arrival: Date;
}

/** The attached header section is cut (at a line end) past this many bytes. */
const MAX_HEADERS = 64 * 1024;
/** Longest line written (RFC 5322 allows 998 characters). */
const MAX_LINE = 900;

/** Builds the report: a multipart/report message, CRLF line ends, ready to send. */
export function nonDeliveryReport(input: ReportInput): Uint8Array {
  const boundary = `=_report_${crypto.randomUUID()}`;
  const date = rfc5322Date(new Date());
  const failed = input.recipients.map((r) => clean(`<${r.recipient}>: ${formatReply(r.reply)}`));
  const fields = input.recipients.map((r) =>
    [
      `Final-Recipient: rfc822; ${clean(r.recipient)}`,
      "Action: failed",
      `Status: ${status(r.reply)}`,
      clean(`Diagnostic-Code: smtp; ${formatReply(r.reply)}`),
    ].join("\r\n")
  );
  const headers = headerSection(input.original);
  // Addresses (SMTPUTF8) or provider texts may carry 8-bit characters: say so where they are.
  const status8Bit = fields.some((f) => /[\u0080-\uffff]/.test(f));
  const eightBit = status8Bit || failed.some((f) => /[\u0080-\uffff]/.test(f)) ||
    headers.some((b) => b > 0x7f);
  const text = [
    `From: Mail Delivery System <${clean(input.account)}>`,
    `To: <${clean(input.sender)}>`,
    "Subject: Undelivered Mail Returned to Sender",
    `Date: ${date}`,
    `Message-ID: <${crypto.randomUUID()}@${clean(input.reportingMta)}>`,
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    ...(eightBit ? ["Content-Transfer-Encoding: 8bit"] : []),
    "",
    "This is a MIME-encapsulated message.",
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    `This is the SMTP relay ${clean(input.reportingMta)}.`,
    "",
    `Your message was handed to the provider of ${clean(input.account)}, which accepted it`,
    "for some recipients and refused the ones below. The relay does not retry them: send the",
    "message to them again once the cause is fixed.",
    "",
    ...failed,
    "",
    `--${boundary}`,
    "Content-Type: message/delivery-status",
    ...(status8Bit ? ["Content-Transfer-Encoding: 8bit"] : []),
    "",
    `Reporting-MTA: dns; ${clean(input.reportingMta)}`,
    `Arrival-Date: ${rfc5322Date(input.arrival)}`,
    "",
    fields.join("\r\n\r\n"),
    "",
    `--${boundary}`,
    "Content-Type: text/rfc822-headers",
    "Content-Transfer-Encoding: 8bit",
    "",
    "",
  ].join("\r\n");
  const tail = `\r\n--${boundary}--\r\n`;
  const encoder = new TextEncoder();
  const head = encoder.encode(text);
  const out = new Uint8Array(head.length + headers.length + tail.length);
  out.set(head, 0);
  out.set(headers, head.length);
  out.set(encoder.encode(tail), head.length + headers.length);
  return out;
}

/** The original's header section (without the blank line), cut at a line end if huge. */
function headerSection(message: Uint8Array): Uint8Array {
  // A message that starts with an empty line has no header section (all of it is body).
  if (message[0] === 0x0a || (message[0] === 0x0d && message[1] === 0x0a)) {
    return new Uint8Array();
  }
  // The first empty line ends the header section; only the first MAX_HEADERS are looked at.
  const scope = message.subarray(0, MAX_HEADERS + 1);
  for (let lf = scope.indexOf(0x0a); lf >= 0; lf = scope.indexOf(0x0a, lf + 1)) {
    const next = scope[lf + 1];
    if (next === 0x0a || (next === 0x0d && scope[lf + 2] === 0x0a)) {
      return scope.subarray(0, lf + 1);
    }
  }
  if (message.length <= MAX_HEADERS && message[message.length - 1] === 0x0a) return message;
  // No end found in reach: whole lines up to the limit.
  return scope.subarray(0, scope.lastIndexOf(0x0a, MAX_HEADERS - 1) + 1);
}

/** RFC 3463 status for a refusal: the provider's enhanced code, or its class. */
function status(r: Reply): string {
  return /^[45]\.\d{1,3}\.\d{1,3}$/.test(r.enhanced) ? r.enhanced : `${r.code >= 500 ? 5 : 4}.0.0`;
}

/** One header-safe line: no control characters, not longer than {@link MAX_LINE}. */
function clean(text: string): string {
  // deno-lint-ignore no-control-regex
  const line = text.replace(/[\x00-\x1f\x7f]+/g, " ");
  return line.length > MAX_LINE ? `${line.slice(0, MAX_LINE - 3)}...` : line;
}

/** `Thu, 26 Nov 2026 23:20:00 +0000` */
function rfc5322Date(d: Date): string {
  return d.toUTCString().replace("GMT", "+0000");
}
