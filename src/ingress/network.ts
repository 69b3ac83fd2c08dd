/**
 * Client addresses: CIDR lists (trusted networks, PROXY senders) and loopback checks.
 * @module
 */
import net from "node:net";

/** A parsed list of networks, matched with node:net's BlockList. */
export class NetworkList {
  readonly #list = new net.BlockList();
  readonly #empty: boolean;

  /** `cidrs` like `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32` (validated by the config). */
  constructor(cidrs: readonly string[]) {
    for (const cidr of cidrs) {
      const [address, bits] = cidr.split("/");
      const family = net.isIPv6(address) ? "ipv6" : "ipv4";
      const prefix = bits === undefined ? (family === "ipv6" ? 128 : 32) : Number(bits);
      this.#list.addSubnet(address, prefix, family);
    }
    this.#empty = cidrs.length === 0;
  }

  /** True when `address` (IPv4, IPv6 or IPv4-mapped IPv6) is in the list. */
  has(address: string | undefined): boolean {
    if (this.#empty || !address) return false;
    const plain = unmapped(address);
    return this.#list.check(plain, net.isIPv6(plain) ? "ipv6" : "ipv4");
  }
}

/** `::ffff:192.0.2.1` → `192.0.2.1`; anything else unchanged. */
export function unmapped(address: string): string {
  return address.startsWith("::ffff:") && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** True for 127.0.0.0/8 and ::1 (also IPv4-mapped). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const plain = unmapped(address);
  return plain === "::1" || plain.startsWith("127.");
}

/** True when `value` is an IP address or a CIDR with a valid prefix length. */
export function isCidr(value: string): boolean {
  const [address, bits, extra] = value.split("/");
  if (extra !== undefined) return false;
  const family = net.isIP(address);
  if (family === 0) return false;
  if (bits === undefined) return true;
  if (!/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 6 ? 128 : 32);
}

/** True when `value` is a plain IPv4 or IPv6 address. */
export function isIpAddress(value: string): boolean {
  return net.isIP(value) !== 0;
}
