/**
 * The sandbox provider in a process of its own, driven over the control channel
 * (`./control.ts`). Started by `bench/main.ts`; not meant to be run by hand.
 *
 * Refresh tokens do not rotate here, so the load generator (direct baseline) and the relay
 * can both refresh the same account. Accepted messages are counted and then dropped
 * (`received` is emptied on every message), so a long run does not keep bodies in memory.
 *
 * Commands: `start {accounts}` → endpoints and CA; `delay {ms}` sets the per-reply delay;
 * `stats` → delivered count and bytes plus the SMTP server's counters.
 * @module
 */
import { type Sandbox, startSandbox } from "../src/sandbox/mod.ts";
import { serveControl } from "./control.ts";
import { benchAccount } from "./fixtures.ts";

let sandbox: Sandbox | undefined;
let delivered = 0;
let deliveredBytes = 0;
let accounts = 0;

function running(): Sandbox {
  if (!sandbox) throw new Error("sandbox not started");
  return sandbox;
}

await serveControl({
  async start(request) {
    if (sandbox) throw new Error("already started");
    sandbox = await startSandbox({
      rotateRefreshTokens: false,
      accessTokenTtlSeconds: 24 * 3600,
      onMessage: (message) => {
        delivered++;
        deliveredBytes += message.data.byteLength;
        running().received.length = 0;
      },
    });
    const want = Number(request.accounts ?? 0);
    for (; accounts < want; accounts++) sandbox.addAccount(benchAccount(accounts));
    return {
      tokenUrl: sandbox.tokenUrl,
      smtpHost: sandbox.smtpHost,
      smtpPort: sandbox.smtpPort,
      ca: sandbox.ca,
    };
  },
  delay(request) {
    running().smtpFaults.replyDelayMs = Number(request.ms ?? 0);
    return null;
  },
  stats() {
    const s = running();
    return {
      delivered,
      deliveredBytes,
      openConnections: s.smtp.openConnections,
      ...s.stats.smtp,
      tokenRequests: s.stats.token.requests,
    };
  },
}, async () => {
  await sandbox?.close();
});
