import assert from "node:assert/strict";
import { rawMessage, startHarness } from "./harness.ts";

Deno.test("smoke", async () => {
  const h = await startHarness();
  try {
    const a = h.accounts[0];
    const raw = rawMessage(a.email, "rcpt@example.net", "hello\r\n");
    const info = await h.client().sendMail({
      envelope: { from: a.email, to: ["rcpt@example.net"] },
      raw: raw as unknown as string,
    });
    console.log(info.response);
    assert.equal(h.sandbox.received.length, 1);
    console.log(await h.metrics());
  } finally {
    await h.close();
  }
});
