/** A reload that switches an account's transport: the next message takes the new route. */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { freePort, sandboxConfig, startHarness } from "../harness.ts";
import { message, sendRaw } from "./helpers.ts";

Deno.test("reload: smtp → graph → smtp for one account; each message goes the configured way", async () => {
  const apiPort = freePort();
  const h = await startHarness({ sandbox: { apiPort } });
  try {
    const me = h.accounts[0].email;
    const send = () => sendRaw(h, message([`From: ${me}`, "To: a@example.net"]), ["a@example.net"]);
    const configFor = async (transport?: Record<string, unknown>) =>
      parseConfig(
        await sandboxConfig(h.sandbox, h.accounts, h.stateDir, {}, () =>
          transport ? { transport } : {}),
      );
    assert.match(await send(), /^250 .*upstream said: 250 /);
    assert.equal(h.sandbox.received.length, 1);
    assert.deepEqual(
      await h.relay.reload(
        await configFor({ type: "graph", apiUrl: `https://localhost:${apiPort}` }),
      ),
      [],
    );
    assert.match(
      await send(),
      /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 202 Accepted by Microsoft Graph$/,
    );
    assert.equal(h.sandbox.api!.received.length, 1);
    assert.equal(h.sandbox.received.length, 1);
    assert.deepEqual(await h.relay.reload(await configFor()), []);
    assert.match(await send(), /^250 /);
    assert.equal(h.sandbox.received.length, 2);
    assert.equal(h.sandbox.api!.received.length, 1);
  } finally {
    await h.close();
  }
});
