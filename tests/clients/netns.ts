/**
 * A client network for the client tests: a network namespace of its own joined to this
 * host by a veth pair with private addresses (10.2xx.y.1 here, 10.2xx.y.2 in the
 * namespace, a /30 no route of this host uses). Clients run inside it with
 * {@link ClientNetwork.command}; the relay listens on {@link ClientNetwork.hostAddress}, so
 * it sees a client that is neither loopback nor (unless configured) trusted, and test
 * traffic goes to no other address. Names are unique per run; {@link ClientNetwork.close}
 * removes both by name. Needs root (the tests run as root here and in CI).
 * @module
 */

async function ip(args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

async function routes(): Promise<string> {
  const out = await new Deno.Command("ip", { args: ["-4", "route"], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout);
}

/** A namespace with one veth link to this host. */
export class ClientNetwork {
  /** Namespace name. */
  readonly name: string;
  /** This host's end of the link: the relay listens here. */
  readonly hostAddress: string;
  /** The namespace's address: what the relay sees as the client. */
  readonly clientAddress: string;
  /** The /30 of the link. */
  readonly subnet: string;
  readonly #hostLink: string;

  private constructor(id: string, prefix: string) {
    this.name = `relay-test-${id}`;
    this.#hostLink = `rt${id}h`;
    this.hostAddress = `${prefix}.1`;
    this.clientAddress = `${prefix}.2`;
    this.subnet = `${prefix}.0/30`;
  }

  /** Creates the namespace and the link (removed again if any step fails). */
  static async create(): Promise<ClientNetwork> {
    const id = crypto.randomUUID().slice(0, 8);
    const used = await routes();
    let prefix = "";
    for (let i = 0; i < 50 && !prefix; i++) {
      const second = 200 + Math.floor(Math.random() * 50);
      const third = Math.floor(Math.random() * 256);
      const p = `10.${second}.${third}`;
      // Not a network this host already routes (a /16 or wider also covers it).
      if (!used.includes(`10.${second}.`) && !/^10\.0\.0\.0\/8 /m.test(used)) prefix = p;
    }
    if (!prefix) throw new Error("no free 10.2xx.y.0/30 for the client network");
    const n = new ClientNetwork(id, prefix);
    const nsLink = `rt${id}c`;
    try {
      await ip(["netns", "add", n.name]);
      await ip(["link", "add", n.#hostLink, "type", "veth", "peer", "name", nsLink]);
      await ip(["link", "set", nsLink, "netns", n.name]);
      await ip(["addr", "add", `${n.hostAddress}/30`, "dev", n.#hostLink]);
      await ip(["link", "set", n.#hostLink, "up"]);
      await ip(["-n", n.name, "addr", "add", `${n.clientAddress}/30`, "dev", nsLink]);
      await ip(["-n", n.name, "link", "set", nsLink, "up"]);
      await ip(["-n", n.name, "link", "set", "lo", "up"]);
    } catch (err) {
      await n.close();
      throw err;
    }
    return n;
  }

  /** `program args…` run inside the namespace (via `ip netns exec`). */
  command(program: string, args: string[], options: Deno.CommandOptions = {}): Deno.Command {
    return new Deno.Command("ip", {
      ...options,
      args: ["netns", "exec", this.name, program, ...args],
    });
  }

  /** Removes the link and the namespace (each by its name; missing ones are fine). */
  async close(): Promise<void> {
    await ip(["link", "del", this.#hostLink]).catch(() => {});
    await ip(["netns", "del", this.name]).catch(() => {});
  }
}
