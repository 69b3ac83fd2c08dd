/**
 * Recipient address policy: forms that old MTAs treat as routing instructions are
 * refused, so no client can use the relay to reach a third party by trickery.
 * @module
 */

/**
 * Why a RCPT address is refused, or undefined if it is acceptable: source routes
 * (`@a,@b:user@c`), the `%` hack, UUCP `!` paths, quoted local parts, and anything
 * that is not exactly one `local@domain`.
 */
export function recipientProblem(address: string): string | undefined {
  if (address.startsWith("@") || address.includes(":")) return "Source routes are not accepted";
  if (address.includes('"') || address.includes("\\")) return "Quoted local parts are not accepted";
  if (address.includes("%")) return "The % relay hack is not accepted";
  if (address.includes("!")) return "UUCP bang paths are not accepted";
  const at = address.lastIndexOf("@");
  if (at <= 0 || at === address.length - 1 || address.indexOf("@") !== at) {
    return "Recipient must be one address of the form local@domain";
  }
  const domain = address.slice(at + 1);
  if (!/^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,}$/.test(domain)) {
    return "Recipient domain is not a valid host name";
  }
  return undefined;
}
