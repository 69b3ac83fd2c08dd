/**
 * Postfix as the sending MTA (relayhost + SASL, TLS or not) inside a rig's client network:
 * a private instance with its own config directory (`postfix -c DIR`), queue and data
 * directories under the rig's directory, logging to its own file (`maillog_file`). It
 * never touches /etc/postfix or the system's queue; its master runs in the namespace, so
 * its SMTP client can reach the relay only at the rig's address. Mail is submitted with
 * its `sendmail -C DIR`, as a local program would.
 * @module
 */
import { inside, type Rig } from "./rig.ts";
import { PASSWORD } from "../harness.ts";

/** `none`: no TLS at all; `encrypt`: STARTTLS required (Postfix's relayhost advice). */
export type PostfixTls = "none" | "encrypt";

const MASTER_CF = `# service type private unpriv chroot wakeup maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
scache    unix  -       -       n       -       1       scache
anvil     unix  -       -       n       -       1       anvil
postlog   unix-dgram n  -       n       -       1       postlogd
`;

/** A private Postfix instance in the rig's namespace. */
export class PostfixClient {
  readonly #rig: Rig;
  readonly #dir: string;

  private constructor(rig: Rig, dir: string) {
    this.#rig = rig;
    this.#dir = dir;
  }

  /** The main.cf of the documented relayhost set-up, pointed at the rig's relay. */
  static mainCf(rig: Rig, dir: string, tls: PostfixTls): string {
    return `compatibility_level = 3.6
queue_directory = ${dir}/queue
data_directory = ${dir}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = ${dir}/maillog
maillog_file_prefixes = ${dir}
myhostname = client.test
mydomain = client.test
myorigin = client.test
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
smtp_host_lookup = native
disable_dns_lookups = yes
biff = no
# --- the relay as relayhost, with SASL (docs/clients.md) ---
relayhost = [${rig.net.hostAddress}]:${rig.port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:${dir}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = ${tls}
smtp_tls_CAfile = ${rig.caFile}
smtp_tls_loglevel = 1
`;
  }

  /** Writes the instance's files and starts its master inside the namespace. */
  static async start(rig: Rig, options: { tls: PostfixTls }): Promise<PostfixClient> {
    const dir = `${rig.dir}/postfix-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.mkdir(`${dir}/queue`, { recursive: true });
    await Deno.mkdir(`${dir}/data`, { recursive: true });
    await Deno.writeTextFile(`${dir}/main.cf`, PostfixClient.mainCf(rig, dir, options.tls));
    await Deno.writeTextFile(`${dir}/master.cf`, MASTER_CF);
    await Deno.writeTextFile(
      `${dir}/sasl_passwd`,
      `[${rig.net.hostAddress}]:${rig.port} ${rig.account.email}:${PASSWORD}\n`,
      { mode: 0o600 },
    );
    // postfix-script creates the queue's subdirectories with their owners and modes.
    const chown = await new Deno.Command("chown", { args: ["postfix", `${dir}/data`] }).output();
    if (!chown.success) throw new Error("chown postfix failed: is the postfix user there?");
    const p = new PostfixClient(rig, dir);
    const r = await inside(rig, "postfix", ["-c", dir, "start"]);
    if (r.code !== 0) {
      await p.close();
      throw new Error(`postfix -c ${dir} start failed (${r.code}):\n${r.out}\n${await p.log()}`);
    }
    return p;
  }

  /** Submits a message with Postfix's sendmail (as a local program would). */
  async send(from: string, to: string, message: string): Promise<void> {
    const r = await inside(this.#rig, "sendmail", ["-C", this.#dir, "-f", from, to], message);
    if (r.code !== 0) throw new Error(`sendmail failed (${r.code}): ${r.out}`);
  }

  /** Postfix's log so far. */
  async log(): Promise<string> {
    try {
      return await Deno.readTextFile(`${this.#dir}/maillog`);
    } catch {
      return "";
    }
  }

  /** Waits (up to `timeoutMs`) for a log line matching `re`; returns it. */
  async waitForLog(re: RegExp, timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const line = (await this.log()).split("\n").find((l) => re.test(l));
      if (line) return line;
      await new Promise((ok) => setTimeout(ok, 200));
    }
    throw new Error(`no ${re} in Postfix's log:\n${await this.log()}`);
  }

  /** Stops this instance (`postfix -c DIR stop`, its own master only). */
  async close(): Promise<void> {
    await inside(this.#rig, "postfix", ["-c", this.#dir, "stop"]);
  }
}
