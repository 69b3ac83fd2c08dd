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

/** One namespace of a {@link TestLan}: a "host" with one address on the LAN. */
export interface LanHost {
  /** Namespace name. */
  readonly ns: string;
  /** Its address on the LAN (10.x.y.z). */
  readonly address: string;
}

/**
 * A private LAN of "hosts" for the multi-host tests: a bridge in this namespace (with
 * {@link TestLan.hostAddress}, so the test process reaches every host and runs the
 * clients and the sandbox) and one network namespace per named host, each joined to the
 * bridge by a veth pair, all in one 10.2xx.y.0/24 no route of this host uses. Names are
 * unique per run; {@link TestLan.close} removes the links, the bridge and the namespaces
 * by name. Needs root.
 */
export class TestLan {
  /** This namespace's address on the LAN (the bridge's). */
  readonly hostAddress: string;
  /** The /24. */
  readonly subnet: string;
  /** The hosts by the names given to {@link create}. */
  readonly hosts: Record<string, LanHost> = {};
  readonly #id: string;
  readonly #links: string[] = [];

  private constructor(id: string, prefix: string) {
    this.#id = id;
    this.hostAddress = `${prefix}.1`;
    this.subnet = `${prefix}.0/24`;
  }

  get #bridge(): string {
    return `rt${this.#id}br`;
  }

  /** Creates the bridge and one namespace per name (`.2`, `.3`, … in order). */
  static async create(names: string[]): Promise<TestLan> {
    const id = crypto.randomUUID().slice(0, 8);
    const prefix = await freePrefix();
    const lan = new TestLan(id, prefix);
    try {
      await ip(["link", "add", lan.#bridge, "type", "bridge"]);
      lan.#links.push(lan.#bridge);
      await ip(["addr", "add", `${lan.hostAddress}/24`, "dev", lan.#bridge]);
      await ip(["link", "set", lan.#bridge, "up"]);
      for (const [i, name] of names.entries()) {
        const host: LanHost = { ns: `relay-test-${id}-${name}`, address: `${prefix}.${i + 2}` };
        const outer = `rt${id}h${i}`;
        const inner = `rt${id}n${i}`;
        await ip(["netns", "add", host.ns]);
        lan.hosts[name] = host;
        await ip(["link", "add", outer, "type", "veth", "peer", "name", inner]);
        lan.#links.push(outer);
        await ip(["link", "set", inner, "netns", host.ns]);
        await ip(["link", "set", outer, "master", lan.#bridge]);
        await ip(["link", "set", outer, "up"]);
        await ip(["-n", host.ns, "addr", "add", `${host.address}/24`, "dev", inner]);
        await ip(["-n", host.ns, "link", "set", inner, "up"]);
        await ip(["-n", host.ns, "link", "set", "lo", "up"]);
      }
    } catch (err) {
      await lan.close();
      throw err;
    }
    return lan;
  }

  /** `program args…` run inside host `name`'s namespace (via `ip netns exec`). */
  command(name: string, program: string, args: string[], options: Deno.CommandOptions = {}) {
    return new Deno.Command("ip", {
      ...options,
      args: ["netns", "exec", this.hosts[name].ns, program, ...args],
    });
  }

  /** Removes the links, the bridge and the namespaces (by name; missing ones are fine). */
  async close(): Promise<void> {
    for (const link of this.#links.reverse()) await ip(["link", "del", link]).catch(() => {});
    for (const host of Object.values(this.hosts)) {
      await ip(["netns", "del", host.ns]).catch(() => {});
    }
  }
}

/** A 10.2xx.y prefix whose /24 (or a wider 10.x network) this host does not route. */
async function freePrefix(): Promise<string> {
  const used = await routes();
  if (/^10\.0\.0\.0\/8 /m.test(used)) throw new Error("10.0.0.0/8 is routed here");
  for (let i = 0; i < 50; i++) {
    const second = 200 + Math.floor(Math.random() * 50);
    const third = Math.floor(Math.random() * 256);
    if (!used.includes(`10.${second}.`)) return `10.${second}.${third}`;
  }
  throw new Error("no free 10.2xx.y.0/24 for the test LAN");
}
