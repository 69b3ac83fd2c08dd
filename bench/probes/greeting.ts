/**
 * The early-talker pause in numbers: time from connect to the 220 greeting, and the
 * one-message-per-connection rate it allows a single session, for a loopback client
 * (greeted at once), a trusted-network client (greeted at once) and an untrusted one
 * (smtp-server's 100 ms pause kept). One relay, one run; client addresses are set with
 * PROXY headers. Medians over `--connections` sequential connections per kind.
 *
 *     deno task bench:greeting [--connections 200]
 * @module
 */
import { parseArgs } from "node:util";
import { parseConfig } from "../../src/config/load.ts";
import { startRelay } from "../../src/app.ts";
import { hashPassword } from "../../src/relay/password.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { connections: { type: "string", default: "200" } },
});
const n = Math.max(10, Math.min(5_000, Number(values.connections) || 200));
const stateDir = await Deno.makeTempDir({ prefix: "bench-greeting-" });
const relay = await startRelay(parseConfig({
  smtp: { port: 0, proxyFrom: ["127.0.0.1"], trustedNetworks: ["10.0.0.0/8"] },
  http: { port: 0 },
  stateDir,
  accounts: [{
    email: "bench@example.com",
    provider: "sandbox",
    clientId: "bench",
    refreshToken: "unused",
    passwordHash: await hashPassword("unused"),
  }],
}));

async function greetingMs(source: string): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.smtp.port });
  const started = performance.now();
  await conn.write(new TextEncoder().encode(`PROXY TCP4 ${source} 127.0.0.1 40000 25\r\n`));
  const buf = new Uint8Array(512);
  let text = "";
  while (!text.includes("\r\n")) {
    const got = await conn.read(buf);
    if (got === null) break;
    text += new TextDecoder().decode(buf.subarray(0, got));
  }
  const ms = performance.now() - started;
  await conn.write(new TextEncoder().encode("QUIT\r\n"));
  conn.close();
  if (!text.startsWith("220 ")) throw new Error(`no greeting: ${text}`);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: [string, number][] = [];
for (
  const [kind, source] of [
    ["loopback", "127.0.0.1"],
    ["trusted network", "10.1.2.3"],
    ["untrusted", "203.0.113.7"],
  ] as const
) {
  const times: number[] = [];
  for (let i = 0; i < n; i++) times.push(await greetingMs(source));
  rows.push([kind, median(times)]);
}
await relay.close();
await Deno.remove(stateDir, { recursive: true });

const cpu = `${Deno.build.os}/${Deno.build.arch}, ${navigator.hardwareConcurrency} cores`;
console.log(`Greeting delay, ${n} sequential connections per kind (${cpu}), medians:\n`);
console.log("| client          | connect → 220 | max connections/s per session |");
console.log("| --------------- | ------------- | ----------------------------- |");
for (const [kind, ms] of rows) {
  console.log(
    `| ${kind.padEnd(15)} | ${ms.toFixed(2).padStart(10)} ms | ${
      Math.floor(1000 / ms).toLocaleString("en").padStart(29)
    } |`,
  );
}
const untrusted = rows[2][1];
console.log(`\nuntrusted / loopback: ${(untrusted / rows[0][1]).toFixed(0)}× slower to greet`);
