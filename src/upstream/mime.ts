/**
 * The few things the HTTPS transports need from a message's header (RFC 5322): where the
 * header ends, the unfolded value of a field, the addresses in an address list, and how
 * the header recipients compare with the SMTP envelope ({@link envelopePlan}). The
 * message bytes are never changed here; a transport may put one `Bcc:` line in front of
 * them ({@link bccLine}).
 * @module
 */

/** Header fields whose addresses Graph and the Gmail API deliver to. */
export const RECIPIENT_FIELDS = ["to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"];

/**
 * Length of the header block, up to and including the empty line that ends it (CRLF CRLF
 * or LF LF); the whole message when it has no body.
 */
export function headerLength(raw: Uint8Array): number {
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== 0x0a) continue;
    if (raw[i + 1] === 0x0a) return i + 2;
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) return i + 3;
  }
  return raw.length;
}

/**
 * The unfolded values of every field named `name` (case-insensitive), in order. Header
 * bytes are read as UTF-8 (RFC 6532); invalid bytes become U+FFFD, never an address.
 */
export function headerValues(raw: Uint8Array, name: string): string[] {
  return headerFields(raw).filter((f) => f.name === name.toLowerCase()).map((f) => f.value);
}

/** Every header field as lower-cased name and unfolded value, in order. */
export function headerFields(raw: Uint8Array): { name: string; value: string }[] {
  const text = new TextDecoder().decode(raw.subarray(0, headerLength(raw)));
  const fields: { name: string; value: string }[] = [];
  for (const line of text.split(/\r?\n/)) {
    if (line === "") break;
    if ((line[0] === " " || line[0] === "\t") && fields.length > 0) {
      fields[fields.length - 1].value += line;
      continue;
    }
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    fields.push({ name: line.slice(0, colon).trim().toLowerCase(), value: line.slice(colon + 1) });
  }
  return fields;
}

/**
 * The addresses (`local@domain`) of an RFC 5322 address list: display names, comments,
 * quoted strings, angle brackets and groups (`undisclosed-recipients:;`) are understood;
 * an item with no `@` is skipped.
 */
export function parseAddressList(value: string): string[] {
  const out: string[] = [];
  let current = "";
  let angle: string | undefined;
  let inAngle = false;
  const flush = () => {
    const candidate = (angle ?? current).trim();
    if (candidate.includes("@")) out.push(candidate);
    current = "";
    angle = undefined;
  };
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '"') {
      // Quoted string: a display name, or the quoted local part of an address.
      let q = '"';
      for (i++; i < value.length && value[i] !== '"'; i++) {
        if (value[i] === "\\" && i + 1 < value.length) i++;
        q += value[i];
      }
      q += '"';
      if (inAngle) angle += q;
      else current += q;
    } else if (c === "(") {
      // Comment, possibly nested: skipped.
      let depth = 1;
      for (i++; i < value.length && depth > 0; i++) {
        if (value[i] === "\\") i++;
        else if (value[i] === "(") depth++;
        else if (value[i] === ")") depth--;
      }
      i--;
    } else if (c === "<" && !inAngle) {
      inAngle = true;
      angle = "";
    } else if (c === ">" && inAngle) {
      inAngle = false;
    } else if (inAngle) {
      angle += c;
    } else if (c === ":") {
      current = ""; // a group's display name
    } else if (c === "," || c === ";") {
      flush();
    } else {
      current += c;
    }
  }
  flush();
  return out;
}

/** The address as compared: domain lower-cased, and the local part too (as providers do). */
export function addressKey(address: string): string {
  return address.trim().toLowerCase();
}

/** Every address in the recipient fields ({@link RECIPIENT_FIELDS}), as written. */
export function headerRecipients(raw: Uint8Array): string[] {
  return headerFields(raw)
    .filter((f) => RECIPIENT_FIELDS.includes(f.name))
    .flatMap((f) => parseAddressList(f.value));
}

/** The first address of the `From:` field, if any. */
export function fromAddress(raw: Uint8Array): string | undefined {
  const from = headerValues(raw, "from")[0];
  return from === undefined ? undefined : parseAddressList(from)[0];
}

/** How a message can reach exactly its envelope recipients through a header-driven API. */
export type EnvelopePlan =
  | {
    readonly ok: true;
    /** Envelope recipients no header field names: they go in a `Bcc:` line. */
    readonly bcc: readonly string[];
  }
  | {
    readonly ok: false;
    /** Addresses the header names that are not envelope recipients. */
    readonly strangers: readonly string[];
  };

/**
 * Compares the header recipients with the envelope's. Every header recipient must be an
 * envelope recipient (else the API would deliver to someone the client did not ask for:
 * `ok: false` with those addresses); envelope recipients the header does not name come
 * back as `bcc`.
 */
export function envelopePlan(raw: Uint8Array, envelope: readonly string[]): EnvelopePlan {
  const wanted = new Set(envelope.map(addressKey));
  const named = new Set<string>();
  const strangers: string[] = [];
  for (const address of headerRecipients(raw)) {
    const key = addressKey(address);
    if (named.has(key)) continue;
    named.add(key);
    if (!wanted.has(key)) strangers.push(address);
  }
  if (strangers.length > 0) return { ok: false, strangers };
  const bcc: string[] = [];
  const added = new Set<string>();
  for (const address of envelope) {
    const key = addressKey(address);
    if (named.has(key) || added.has(key)) continue;
    added.add(key);
    bcc.push(address);
  }
  return { ok: true, bcc };
}

/**
 * A `Bcc:` header line for `addresses` in the message's own line ending, padded with
 * spaces before the line end to a multiple of 3 bytes: its base64 then ends on a group
 * boundary, so base64(line) + base64(message) is the base64 of both, with no copy of the
 * message. Empty for no addresses.
 */
export function bccLine(addresses: readonly string[], raw: Uint8Array): Uint8Array {
  if (addresses.length === 0) return new Uint8Array(0);
  const eol = headerUsesLf(raw) ? "\n" : "\r\n";
  const base = new TextEncoder().encode(
    `Bcc: ${addresses.map((a) => `<${a}>`).join(`,${eol} `)}`,
  );
  const pad = (3 - ((base.length + eol.length) % 3)) % 3;
  const line = new Uint8Array(base.length + pad + eol.length);
  line.set(base);
  line.fill(0x20, base.length, base.length + pad);
  line.set(new TextEncoder().encode(eol), base.length + pad);
  return line;
}

/** True when the header's first line ends in a bare LF. */
function headerUsesLf(raw: Uint8Array): boolean {
  const lf = raw.indexOf(0x0a);
  return lf === 0 || (lf > 0 && raw[lf - 1] !== 0x0d);
}
