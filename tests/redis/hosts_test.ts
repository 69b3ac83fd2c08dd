/**
 * The fleet on separate "hosts": redis-server, haproxy (docs/haproxy.cfg: send-proxy-v2,
 * /readyz checks), relay 1, relay 2 and the clients each in a network namespace of their
 * own, joined by a bridge on a private 10.2xx.y.0/24 made (and removed) by the test. The
 * sandbox provider stays in the test's namespace: each relay host reaches it through a
 * forwarder at the loopback ports its config names (the sandbox provider is loopback-only
 * by design), so its bytes really cross the LAN. The test process itself talks loopback
 * only (Redis and the relays' HTTP ports through forwarders on 127.0.0.1).
 *
 * One process per namespace (rather than relay 1 + haproxy on one "host") so that every
 * hop, Redis included, crosses hosts, and the client's, haproxy's and each relay's
 * addresses all differ: the PROXY v2 address a relay acts on can only be the client's.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { freePort, makeAccounts, PASSWORD, until } from "../harness.ts";
import { TestLan } from "../clients/netns.ts";
import { FleetRelay, LanRedis, redisConfig } from "./fleet.ts";

const DOC = new URL("../../docs/haproxy.cfg", import.meta.url);
const FORWARD = new URL("./tcp_forward.ts", import.meta.url).pathname;
const CLIENT = new URL("./hosts_client.ts", import.meta.url).pathname;

/** One line of hosts_client.ts. */
interface Attempt {
  subject: string;
  messageId: string;
  reply: string;
}

/** A started process and what it printed so far (stdout, by line). */
interface Proc {
  child: Deno.ChildProcess;
  lines: string[];
  done: Promise<void>;
}

function spawn(cmd: Deno.Command): Proc {
  const child = cmd.spawn();
  const lines: string[] = [];
  const done = (async () => {
    let rest = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
    if (rest) lines.push(rest);
  })();
  return { child, lines, done };
}

async function stop(p: Proc | undefined): Promise<void> {
  if (!p) return;
  try {
    p.child.kill("SIGKILL");
  } catch {
    // gone
  }
  await p.child.status;
  await p.done.catch(() => {});
}

/** Forwarders (`listen=target` pairs), in `lan`'s host `name` or in this namespace. */
async function forwarder(pairs: string[], lan?: TestLan, name?: string): Promise<Proc> {
  const hosts = [...new Set(pairs.flatMap((p) => p.split("=")).map((a) => a.replace(/:\d+$/, "")))];
  const args = ["run", `--allow-net=${hosts.join(",")}`, FORWARD, ...pairs];
  const options: Deno.CommandOptions = { stdin: "null", stdout: "piped", stderr: "inherit" };
  const p = spawn(
    lan && name
      ? lan.command(name, Deno.execPath(), args, options)
      : new Deno.Command(Deno.execPath(), { args, ...options }),
  );
  assert.ok(await until(() => p.lines.includes("ready"), 30_000), `forwarder ${pairs}`);
  return p;
}

/** docs/haproxy.cfg for the LAN: listen on `bind`, the relays at their LAN addresses. */
async function haproxyConfig(bind: string, relays: FleetRelay[]): Promise<string> {
  let text = await Deno.readTextFile(DOC);
  text = text.replace(/^ {4}bind :25$/m, `    bind ${bind}`);
  text = text.replace(/inter 2s fall 2 rise 2/, "inter 300ms fall 2 rise 2");
  assert.match(text, /default-server .*send-proxy-v2/);
  assert.match(text, /option httpchk GET \/readyz/);
  const servers = text.match(/^ {4}server relay\d .*$/gm) ?? [];
  assert.equal(servers.length, 2, "the doc lists two servers");
  servers.forEach((line, i) => {
    const host = relays[i].place!.lan.hosts[relays[i].place!.host].address;
    text = text.replace(
      line,
      `    server relay${i + 1} ${host}:${relays[i].ports.smtp} check port ${
        relays[i].ports.metrics
      }`,
    );
  });
  return text;
}

/** Sum of every series of `name` in a Prometheus text. */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return sum;
}

/** Message-IDs of what the sandbox received, with how often each came. */
function deliveredIds(received: { data: Uint8Array }[]): Map<string, number> {
  const ids = new Map<string, number>();
  for (const m of received) {
    const id = new TextDecoder().decode(m.data).match(/^Message-ID: <([^>]+)>/mi)?.[1] ?? "";
    ids.set(id, (ids.get(id) ?? 0) + 1);
  }
  return ids;
}

Deno.test("hosts: redis, haproxy, two relays and the clients on five network namespaces: spread, one refresh, cap 3, PROXY v2 address, a relay SIGKILLed under load", async (t) => {
  const lan = await TestLan.create(["redis", "haproxy", "relay1", "relay2", "clients"]);
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const procs: Proc[] = [];
  const relays: FleetRelay[] = [];
  let redis: LanRedis | undefined;
  const dir = await Deno.makeTempDir({ prefix: "relay-hosts-" });
  const { hosts } = lan;
  const haproxyPort = freePort();
  const client = (args: string[], stdin: "null" | "piped" = "null") => {
    const target = `${hosts.haproxy.address}:${haproxyPort}`;
    return spawn(lan.command(
      "clients",
      Deno.execPath(),
      [
        "run",
        `--allow-net=${target}`,
        "--allow-env",
        "--allow-read",
        CLIENT,
        args[0],
        target,
        ...args.slice(1),
      ],
      { stdin, stdout: "piped", stderr: "inherit" },
    ));
  };
  try {
    const tokenPort = Number(new URL(sandbox.tokenUrl).port);
    const smtpPort = sandbox.smtpPort;
    redis = await LanRedis.start(lan, "redis");
    // This namespace: the sandbox on the LAN, Redis on loopback for the test's checks.
    procs.push(
      await forwarder([
        `${lan.hostAddress}:${tokenPort}=127.0.0.1:${tokenPort}`,
        `${lan.hostAddress}:${smtpPort}=127.0.0.1:${smtpPort}`,
        `127.0.0.1:${redis.port}=${redis.host}:${redis.port}`,
      ]),
    );
    assert.ok(
      await until(
        async () => (await redis!.command(["PING"]).catch(() => "")) === "+PONG\r\n",
        15_000,
      ),
      "redis-server on its host answers",
    );
    for (const name of ["relay1", "relay2"]) {
      // The sandbox at the loopback ports the config names (localhost: also ::1).
      procs.push(
        await forwarder(
          ["127.0.0.1", "[::1]"].flatMap((lo) =>
            [tokenPort, smtpPort].map((p) => `${lo}:${p}=${lan.hostAddress}:${p}`)
          ),
          lan,
          name,
        ),
      );
      const address = hosts[name].address;
      const config = await redisConfig(sandbox, [account], {
        top: `smtp: { host: "${address}", proxyFrom: ["${hosts.haproxy.address}"] },
          http: { host: "${address}" },`.replace(
          "proxyFrom:",
          // Plain AUTH from the LAN (no client certificate set up here): allowed explicitly.
          "allowPlaintextAuth: true, proxyFrom:",
        ),
        accountExtra: "maxConnections: 3,",
      });
      relays.push(await FleetRelay.start(sandbox, redis, config, { lan, host: name }));
    }
    for (const r of relays) await r.waitFor("is reachable: shared state in use", 30_000);
    // The test reaches each relay's HTTP port on loopback at the same number.
    procs.push(
      await forwarder(
        relays.map((r, i) =>
          `127.0.0.1:${r.ports.metrics}=${hosts[`relay${i + 1}`].address}:${r.ports.metrics}`
        ),
      ),
    );
    for (const r of relays) assert.equal((await r.http("/readyz")).status, 200);

    await t.step(
      "each relay runs with its derived permission set, which names the Redis host on the LAN",
      async () => {
        assert.match(redis!.host, /^10\.\d+\.\d+\.\d+$/);
        for (const r of relays) {
          const argv = await r.relayCommandLine();
          assert.ok(argv.length > 0, "the launcher's child is running");
          assert.ok(!argv.includes("-A") && !argv.includes("--allow-all"), argv.join(" "));
          const net = argv.find((a) => a.startsWith("--allow-net="));
          assert.ok(net, argv.join(" "));
          const entries = net.slice("--allow-net=".length).split(",");
          assert.ok(entries.includes(`${redis!.host}:${redis!.port}`), net);
          assert.ok(argv.includes("--no-prompt"), argv.join(" "));
        }
      },
    );

    await Deno.writeTextFile(
      `${dir}/haproxy.cfg`,
      await haproxyConfig(`${hosts.haproxy.address}:${haproxyPort}`, relays),
    );
    procs.push(spawn(lan.command("haproxy", "haproxy", ["-db", "-f", `${dir}/haproxy.cfg`], {
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    })));
    // Up once a login goes through (a login does not touch the token: the account stays cold).
    let probe = "";
    assert.ok(
      await until(async () => {
        const p = client(["auth", account.email, PASSWORD]);
        await p.done;
        await p.child.status;
        probe = p.lines.join("\n");
        return probe.includes('"235 ');
      }, 30_000),
      `a login through haproxy: ${probe}`,
    );

    await t.step(
      "50 cold messages at once through haproxy: all 250, spread over both relays, exactly one refresh, never a 4th connection",
      async () => {
        const p = client(["burst", account.email, PASSWORD, "50", "cold"]);
        await p.done;
        assert.ok((await p.child.status).success);
        const attempts = p.lines.map((l) => JSON.parse(l) as Attempt);
        assert.equal(attempts.length, 50);
        assert.deepEqual(attempts.filter((a) => !a.reply.startsWith("250 ")), []);
        assert.equal(sandbox.received.length, 50);
        assert.equal(sandbox.stats.token.refreshesByEmail.get(account.email.toLowerCase()), 1);
        assert.equal(sandbox.stats.token.refreshes, 1);
        const handled = await Promise.all(
          relays.map(async (r) =>
            metricSum((await r.http("/metrics")).body, "smtp_relay_messages_total")
          ),
        );
        assert.equal(handled[0] + handled[1], 50, `per relay ${handled}`);
        assert.ok(handled[0] > 0 && handled[1] > 0, `per relay ${handled}`);
        assert.ok(sandbox.smtp.stats.peakOpen <= 3, `peak ${sandbox.smtp.stats.peakOpen}`);
        console.log(
          `hosts: 50 cold messages, per relay ${handled}, peak ${sandbox.smtp.stats.peakOpen}`,
        );
      },
    );

    await t.step(
      "the relay acts on the client's address from the PROXY v2 header, not haproxy's",
      async () => {
        const p = client(["auth", account.email, "wrong-password"]);
        await p.done;
        assert.match(p.lines.join("\n"), /"535 5\.7\.8 /);
        const key = `relay:auth:ip:{${hosts.clients.address}}`;
        assert.equal(await redis!.command(["ZCARD", key]), ":1\r\n");
        const keys = await redis!.command(["KEYS", "relay:auth:ip:*"]);
        assert.ok(keys.includes(hosts.clients.address), keys);
        assert.ok(!keys.includes(`{${hosts.haproxy.address}}`), keys);
        assert.ok(!keys.includes(`{${lan.hostAddress}}`), keys);
      },
    );

    await t.step(
      "relay 1 SIGKILLed under load: clients get through haproxy to relay 2; each 250 delivered once, each 4xx not delivered",
      async () => {
        const before = sandbox.received.length;
        const load = client(["load", account.email, PASSWORD, "6", "ha"], "piped");
        const attempts = () => load.lines.map((l) => JSON.parse(l) as Attempt);
        const acked = () => attempts().filter((a) => a.reply.startsWith("250 ")).length;
        assert.ok(await until(() => acked() >= 30, 120_000), `acked ${acked()}`);
        const relay2Before = metricSum(
          (await relays[1].http("/metrics")).body,
          "smtp_relay_messages_total",
        );
        await relays[0].kill();
        const atKill = acked();
        assert.ok(await until(() => acked() >= atKill + 30, 120_000), "relay 2 takes over");
        await load.child.stdin.close();
        assert.ok((await load.child.status).success);
        await load.done;
        const relay2After = metricSum(
          (await relays[1].http("/metrics")).body,
          "smtp_relay_messages_total",
        );
        assert.ok(relay2After >= relay2Before + 30, `relay 2: ${relay2Before} → ${relay2After}`);

        const all = attempts();
        const delivered = deliveredIds(sandbox.received.slice(before));
        const byId = new Map(all.map((a) => [a.messageId, a]));
        let noReply = 0;
        let noReplyDelivered = 0;
        for (const a of all) {
          const n = delivered.get(a.messageId) ?? 0;
          if (a.reply.startsWith("250 ")) {
            assert.equal(n, 1, `${a.messageId}: 250, delivered ${n}×`);
          } else if (/^4\d\d /.test(a.reply)) {
            assert.equal(n, 0, `${a.messageId}: ${a.reply}, delivered`);
          } else {
            assert.match(a.reply, /^no reply: /, `${a.messageId}: ${a.reply}`);
            noReply++;
            if (n > 0) noReplyDelivered++;
          }
        }
        // Nothing came to the sandbox that no client sent (or that got a refusal).
        for (const [id] of delivered) assert.ok(byId.has(id), `${id} delivered, never sent`);
        // Every message was acknowledged in the end (the clients retried until 250).
        const subjects = new Set(all.map((a) => a.subject));
        const ackedSubjects = new Set(
          all.filter((a) => a.reply.startsWith("250 ")).map((a) => a.subject),
        );
        assert.equal(ackedSubjects.size, subjects.size);
        assert.ok(sandbox.smtp.stats.peakOpen <= 3, `peak ${sandbox.smtp.stats.peakOpen}`);
        console.log(
          `hosts: ${ackedSubjects.size} messages acknowledged, ${all.length} attempts, ` +
            `${
              all.filter((a) => /^4\d\d /.test(a.reply)).length
            } 4xx, ${noReply} cut without a reply ` +
            `(${noReplyDelivered} of them delivered: the relay died between the provider's 250 and its own), peak ${sandbox.smtp.stats.peakOpen}`,
        );
      },
    );
  } finally {
    for (const p of procs.reverse()) await stop(p);
    await Promise.all(relays.map((r) => r.close()));
    await redis?.close();
    await sandbox.close();
    await lan.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
