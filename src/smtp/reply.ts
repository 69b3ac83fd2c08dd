/**
 * SMTP replies as plain data, shared by every layer of the message path.
 *
 * A {@link Reply} is what the relay tells its client; the ingress only formats it.
 * @module
 */

/** One SMTP reply: a three-digit code, an RFC 3463 enhanced status code and a text. */
export interface Reply {
  /** Basic reply code, e.g. 250, 451, 550. */
  readonly code: number;
  /** Enhanced status code, e.g. "2.0.0", "4.4.1", "5.1.1". */
  readonly enhanced: string;
  /** Human-readable text, one line, no control characters. */
  readonly text: string;
}

const REPLY_LINE = /^([2-5]\d\d)[ -](?:([2-5]\.\d{1,3}\.\d{1,3}) )?(.*)$/s;

/** Builds a reply, stripping control characters from the text. */
export function reply(code: number, enhanced: string, text: string): Reply {
  return { code, enhanced, text: oneLine(text) };
}

/** The enhanced code that stands for a basic code's class when a server gave none. */
export function classEnhanced(code: number): string {
  return `${Math.floor(code / 100)}.0.0`;
}

/**
 * Parses a server response such as `550 5.1.1 No such user` (possibly several lines:
 * the texts are joined with a space). Returns undefined when no reply code is found.
 */
export function parseReply(response: string): Reply | undefined {
  const lines = response.split(/\r?\n/).filter((l) => l.length > 0);
  const first = lines[0]?.match(REPLY_LINE);
  if (!first) return undefined;
  const code = Number(first[1]);
  const enhanced = first[2] ?? classEnhanced(code);
  const texts = lines.map((line) => {
    const m = line.match(REPLY_LINE);
    if (!m) return line;
    return m[3];
  });
  return reply(code, enhanced, texts.join(" ").trim());
}

/** Formats a reply as it appears on the wire, without the trailing CRLF. */
export function formatReply(r: Reply): string {
  return `${r.code} ${r.enhanced} ${r.text}`;
}

/** True for 2xx replies. */
export function isPositive(r: Reply): boolean {
  return r.code >= 200 && r.code < 300;
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]+/g;

function oneLine(text: string): string {
  return text.replace(CONTROL, " ").trim();
}
