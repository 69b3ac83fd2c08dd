/**
 * The sandbox provider with its HTTPS APIs, in a process of its own, for `bench/https.ts`
 * (driven over the control channel, `./control.ts`). Refresh tokens do not rotate; accepted
 * messages are counted (SMTP and each API) and dropped.
 *
 * Commands: `start {accounts}` → endpoints; `stats` → delivered counts per route.
 * @module
 */
import { type Sandbox, startSandbox } from "../src/sandbox/mod.ts";
import { serveControl } from "./control.ts";
import { benchAccount } from "./fixtures.ts";

let sandbox: Sandbox | undefined;
const delivered = { smtp: 0, graph: 0, gmail: 0 };
let drain: ReturnType<typeof setInterval> | undefined;

/** Counts and drops what the APIs accepted. */
function drainApi(): void {
  const api = sandbox?.api;
  if (!api) return;
  for (const m of api.received) delivered[m.api]++;
  api.received.length = 0;
}

await serveControl({
  async start(request) {
    if (sandbox) throw new Error("already started");
    sandbox = await startSandbox({
      rotateRefreshTokens: false,
      accessTokenTtlSeconds: 24 * 3600,
      onMessage: () => {
        delivered.smtp++;
        sandbox!.received.length = 0;
      },
    });
    for (let i = 0; i < Number(request.accounts ?? 0); i++) {
      sandbox.addAccount(benchAccount(i));
      // The load generator sends one message (From: the first account) as every account.
      sandbox.api!.allowSendAs(benchAccount(i).email, benchAccount(0).email);
    }
    drain = setInterval(drainApi, 100);
    return { tokenUrl: sandbox.tokenUrl, smtpPort: sandbox.smtpPort, apiUrl: sandbox.apiUrl };
  },
  stats() {
    drainApi();
    return { ...delivered };
  },
}, async () => {
  clearInterval(drain);
  await sandbox?.close();
});
