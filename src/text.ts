/**
 * Text helpers shared by the layers that put provider text into logs and replies.
 * @module
 */

/**
 * `text` as one line (runs of whitespace, newlines included, become one space; the ends
 * are trimmed), at most `max` characters: a longer line is cut and ends in `...`.
 */
export function clip(text: string, max = 200): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > max ? `${line.slice(0, Math.max(0, max - 3))}...` : line;
}
