/**
 * docs/haproxy.cfg with the real haproxy in front of two relay processes sharing state
 * through Redis: under load one relay is SIGKILLed; clients retry what got no 250 (as an
 * MTA does) and get through haproxy to the other. Nothing acknowledged is lost.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { freePort, makeAccounts, until } from "../harness.ts";
import { RedisServer } from "./redis_server.ts";
import { deliveredCount, FleetRelay, redisConfig, send } from "./fleet.ts";

const DOC = new URL("../../docs/haproxy.cfg", import.meta.url);

/** docs/haproxy.cfg for `relays` on loopback: listen port, servers, faster checks. */
async function haproxyConfig(port: number, relays: FleetRelay[]): Promise<string> {
  let text = await Deno.readTextFile(DOC);
  text = text.replace(/^ {4}bind :25$/m, `    bind 127.0.0.1:${port}`);
  text = text.replace(/inter 2s fall 2 rise 2/, "inter 300ms fall 2 rise 2");
  const servers = text.match(/^ {4}server relay\d .*$/gm) ?? [];
  assert.equal(servers.length, 2, "the doc lists two servers");
  servers.forEach((line, i) => {
    text = text.replace(
      line,
      `    server relay${i + 1} 127.0.0.1:${relays[i].ports.smtp} check port ${
        relays[i].ports.metrics
      }`,
    );
  });
  return text;
}

Deno.test("haproxy (docs/haproxy.cfg) in front of two relays: one SIGKILLed under load, clients get through to the other, nothing acknowledged is lost", async () => {
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const redis = await RedisServer.start();
  const relays: FleetRelay[] = [];
  let haproxy: Deno.ChildProcess | undefined;
  const dir = await Deno.makeTempDir({ prefix: "relay-haproxy-" });
  try {
    const config = await redisConfig(sandbox, [account], {
      top: `smtp: { proxyFrom: ["127.0.0.1"] },`,
    });
    relays.push(...await Promise.all([0, 1].map(() => FleetRelay.start(sandbox, redis, config))));
    for (const r of relays) await r.waitFor("is reachable: shared state in use");
    const port = freePort();
    await Deno.writeTextFile(`${dir}/haproxy.cfg`, await haproxyConfig(port, relays));
    haproxy = new Deno.Command("haproxy", {
      args: ["-db", "-f", `${dir}/haproxy.cfg`],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let probe = "";
    assert.ok(
      await until(async () => /^250 /.test(probe = await send(port, account, "probe")), 15_000),
      `through haproxy: ${probe}`,
    );

    const acked = new Set<string>();
    let failures = 0;
    let n = 0;
    let stop = false;
    const client = async () => {
      while (!stop) {
        const subject = `ha-${n++}`;
        // Retried until acknowledged, as an MTA would.
        for (let attempt = 0; attempt < 20; attempt++) {
          const reply = await send(port, account, subject);
          if (reply.startsWith("250 ")) {
            acked.add(subject);
            break;
          }
          failures++;
          await new Promise((ok) => setTimeout(ok, 200));
        }
      }
    };
    const clients = Array.from({ length: 6 }, () => client());
    assert.ok(await until(() => acked.size >= 30, 60_000));
    await relays[0].kill();
    const atKill = acked.size;
    assert.ok(await until(() => acked.size >= atKill + 30, 60_000), "the other relay takes over");
    stop = true;
    await Promise.all(clients);
    for (const subject of acked) {
      assert.ok(deliveredCount(sandbox, subject) >= 1, `${subject} acknowledged, not delivered`);
    }
    // Every delivery was acknowledged (perhaps after a retry): nothing was sent unasked.
    const delivered = new Set(
      sandbox.received.map((m) => new TextDecoder().decode(m.data).match(/^Subject: (\S+)/m)?.[1]),
    );
    delivered.delete("probe");
    for (const s of delivered) assert.ok(s && acked.has(s), `${s} delivered, never acknowledged`);
    console.log(
      `haproxy: ${acked.size} acknowledged, ${sandbox.received.length - 1} delivered, ` +
        `${failures} failed attempts retried`,
    );
  } finally {
    try {
      haproxy?.kill("SIGKILL");
    } catch {
      // gone
    }
    await haproxy?.status;
    await Promise.all(relays.map((r) => r.close()));
    await redis.close();
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
