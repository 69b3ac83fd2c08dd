/**
 * What the relay's upstream pools cost, apart from the ingress: N accounts' {@link UpstreamPool}s
 * (nodemailer transport, permits) created with no connection, then one message each (STARTTLS
 * + XOAUTH2 to the sandbox provider, in another process), leaving one idle pooled connection
 * per account; then the pools' idle connections quit. Per step: RSS, V8 heap used/total and
 * external, after a full GC; per account and per pooled connection, the difference. One
 * process per variant (the relay's V8 flags, or none).
 *
 *     deno task bench:pool-memory               # 1,000 accounts
 *     deno task bench:pool-memory --count 300 --v8=--optimize-for-size
 * @module
 */
import { parseArgs } from "node:util";
import { Child, denoBinary } from "../child.ts";
import { BENCH_RECIPIENT, benchAccount } from "../fixtures.ts";
import { RELAY_V8_FLAGS } from "../../src/runtime_flags.ts";

const MB = 1024 * 1024;

interface Figures {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
}

/** Child: the pools, against the sandbox at `smtpPort`/`tokenUrl`; prints JSON figures. */
async function pools(smtpPort: number, tokenUrl: string, n: number): Promise<void> {
  const { UpstreamPool } = await import("../../src/upstream/pool.ts");
  const { MessageBody } = await import("../../src/smtp/body.ts");
  const { SANDBOX_CA_PEM } = await import("../../src/sandbox/tls.ts");
  const gc = (globalThis as { gc?: () => void }).gc!;
  const at = async (): Promise<Figures> => {
    gc();
    gc();
    await new Promise((ok) => setTimeout(ok, 500));
    const m = Deno.memoryUsage();
    return {
      rss: m.rss / MB,
      heapUsed: m.heapUsed / MB,
      heapTotal: m.heapTotal / MB,
      external: m.external / MB,
    };
  };
  const token = async (i: number) => {
    const a = benchAccount(i);
    const r = await fetch(tokenUrl, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: a.refreshToken,
        client_id: a.clientId,
        client_secret: a.clientSecret,
      }),
    });
    const j = await r.json();
    return { token: String(j.access_token), useUntil: Date.now() + 3_600_000 };
  };
  const start = await at();
  const list = Array.from({ length: n }, (_, i) =>
    new UpstreamPool({
      user: benchAccount(i).email,
      host: "localhost",
      port: smtpPort,
      tls: "starttls",
      ca: SANDBOX_CA_PEM,
      ehloName: "relay.bench",
      maxConnections: 3,
      messagesPerConnection: 1000,
      connectTimeoutMs: 30_000,
      socketTimeoutMs: 60_000,
      idleTimeoutMs: 600_000,
    }, () => token(i)));
  const created = await at();
  const body = new TextEncoder().encode(
    `From: <${benchAccount(0).email}>\r\nTo: <${BENCH_RECIPIENT}>\r\nSubject: x\r\n\r\nx\r\n`,
  );
  let sent = 0;
  for (let i = 0; i < n; i += 100) {
    const results = await Promise.all(
      list.slice(i, i + 100).map((p, j) =>
        p.send({
          from: benchAccount(i + j).email,
          to: [BENCH_RECIPIENT],
          body: MessageBody.of(body),
        })
      ),
    );
    sent += results.filter((r) => r.kind === "sent").length;
  }
  const open = list.reduce((a, p) => a + p.openConnections, 0);
  const connected = await at();
  for (const p of list) p.quitIdle();
  for (let i = 0; i < 200 && list.some((p) => p.openConnections > 0); i++) {
    await new Promise((ok) => setTimeout(ok, 50));
  }
  const quit = await at();
  for (const p of list) p.close();
  console.log(JSON.stringify({ start, created, connected, quit, sent, open }));
}

function spawnPools(port: number, tokenUrl: string, n: number, v8: readonly string[]) {
  return new Deno.Command(denoBinary(), {
    args: [
      "run",
      "--allow-net=127.0.0.1,localhost",
      "--allow-read",
      "--allow-env",
      "--allow-sys",
      `--v8-flags=${["--expose-gc", ...v8].join(",")}`,
      import.meta.filename!,
      "--pools",
      String(port),
      tokenUrl,
      String(n),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
}

if (Deno.args[0] === "--pools") {
  await pools(Number(Deno.args[1]), Deno.args[2], Number(Deno.args[3]));
  Deno.exit(0);
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string", default: "1000" },
      v8: { type: "string", multiple: true },
    },
  });
  const n = Number(values.count);
  const sandbox = Child.spawn("sandbox", [
    "run",
    "--allow-net=127.0.0.1,localhost",
    "bench/https_sandbox_process.ts",
  ], "null");
  try {
    const info = await sandbox.request<{ tokenUrl: string; smtpPort: number }>(
      "start",
      { accounts: n },
      60_000,
    );
    const f = (x: number) => x.toFixed(1);
    const k = (mb: number) => `${(mb * 1024 / n).toFixed(1)} KiB`;
    const show = (x: Figures) =>
      `RSS ${f(x.rss)}, heap ${f(x.heapUsed)}/${f(x.heapTotal)}, external ${f(x.external)}`;
    console.log(`Deno ${Deno.version.deno}; ${n} accounts' upstream pools; MB after a full GC`);
    // Each --v8 (comma-separated V8 flags) is one more variant.
    const extra = (values.v8 ?? []).map((v) => v.split(","));
    for (const v8 of [[], RELAY_V8_FLAGS, ...extra]) {
      const out = await spawnPools(info.smtpPort, info.tokenUrl, n, v8);
      const text = new TextDecoder().decode(out.stdout).trim();
      if (!out.success || !text) {
        console.log(`${v8.join(" ") || "default"}: failed (status ${out.code})`);
        continue;
      }
      const r = JSON.parse(text) as Record<string, Figures> & { sent: number; open: number };
      console.log(`V8 flags: ${v8.join(" ") || "(none)"}`);
      console.log(`  imports only:              ${show(r.start)}`);
      console.log(
        `  ${n} pools, no connection:  ${show(r.created)}; per account ` +
          `${k(r.created.rss - r.start.rss)} RSS, ${k(r.created.heapUsed - r.start.heapUsed)} heap`,
      );
      console.log(
        `  ${r.open} idle connections (${r.sent} sent): ${show(r.connected)}; per connection ` +
          `${k(r.connected.rss - r.created.rss)} RSS, ` +
          `${k(r.connected.heapUsed - r.created.heapUsed)} heap`,
      );
      console.log(`  after QUIT on all of them: ${show(r.quit)}`);
    }
  } finally {
    await sandbox.stop();
  }
}
