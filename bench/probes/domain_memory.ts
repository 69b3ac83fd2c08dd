/**
 * Heap cost of a domain entry's mailboxes (app-only credential): 10,000 logins looked up
 * make no state; N mailboxes in use each hold a token and a pool with one open upstream
 * connection (the sandbox's side of it is in this process too); dropping them as idle
 * gives the memory back. One process, sandbox included.
 *
 *     deno run --v8-flags=--expose-gc --allow-net=127.0.0.1,localhost --allow-read \
 *       --allow-write --allow-env bench/probes/domain_memory.ts [N=500]
 * @module
 */
import { parseConfig } from "../../src/config/load.ts";
import { DomainRuntime } from "../../src/domain_runtime.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { hashPassword } from "../../src/relay/password.ts";

const gc = (globalThis as unknown as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");
const heap = () => {
  gc();
  gc();
  return Deno.memoryUsage().heapUsed;
};
const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`;
const n = Math.max(50, Number(Deno.args[0] ?? 500));
const sandbox = await startSandbox();
const g = await generateServiceAccountKey("sa@p.iam.test", sandbox.tokenUrl);
sandbox.tokens.appOnly.addServiceAccount({
  clientEmail: "sa@p.iam.test",
  publicKeyPem: g.publicKeyPem,
  domains: ["fleet.example"],
});
const stateDir = await Deno.makeTempDir();
const config = parseConfig({
  stateDir,
  domains: [{
    domain: "fleet.example",
    provider: { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort },
    credential: { type: "serviceAccount", key: g.keyFile },
    passwordHash: await hashPassword("x"),
    idleSeconds: 3600,
  }],
});
const domain = new DomainRuntime(config, config.domains[0], {
  tokenStore: new FileTokenStore(stateDir),
  onRefresh: () => {},
});
const raw = new TextEncoder().encode("Subject: x\r\n\r\nx\r\n");
const h0 = heap();
for (let i = 0; i < 10_000; i++) domain.account(`m${i}@fleet.example`);
const h1 = heap();
console.log(`10000 logins looked up: ${domain.liveMailboxes} live, heap +${kib(h1 - h0)}`);
for (let i = 0; i < n; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => {
    const m = `m${i + j}@fleet.example`;
    return domain.account(m)!.deliver({ from: m, to: ["r@example.net"], raw });
  }));
}
const h2 = heap();
console.log(
  `${n} mailboxes in use (${sandbox.smtp.openConnections} connections, ` +
    `${sandbox.received.length} delivered): heap +${kib(h2 - h1)}, ` +
    `${((h2 - h1) / n / 1024).toFixed(1)} KiB each`,
);
const dropped = domain.dropIdle(Date.now() + 3_600_001);
sandbox.received.length = 0;
await new Promise((ok) => setTimeout(ok, 3000));
const h3 = heap();
console.log(
  `${dropped} dropped: ${domain.liveMailboxes} live, ${sandbox.smtp.openConnections} ` +
    `connections, heap +${kib(h3 - h1)} over before use`,
);
await domain.stop();
await sandbox.close();
await Deno.remove(stateDir, { recursive: true });
