/**
 * PROXY protocol v2 (HAProxy's send-proxy-v2) from a listed proxy: the client's address
 * comes from the binary header (here: decides trusted-network sending without AUTH), v1
 * lines still work, and a v2 header from an address that is not listed is not honoured.
 */
import assert from "node:assert/strict";
import {
  Command,
  IPv4Address,
  IPv4ProxyAddress,
  TransportProtocol,
  V2ProxyProtocol,
} from "proxy-protocol-js";
import { startHarness } from "../harness.ts";
import { bytesOf, RawSmtp } from "../smtp_client.ts";

function v2Header(source: [number, number, number, number]): Uint8Array {
  return new V2ProxyProtocol(
    Command.PROXY,
    TransportProtocol.STREAM,
    new IPv4ProxyAddress(
      IPv4Address.createFrom(source),
      40000,
      IPv4Address.createFrom([127, 0, 0, 1]),
      25,
    ),
  ).build();
}

async function mailWithoutAuth(port: number, header: Uint8Array, from: string): Promise<string> {
  const c = await RawSmtp.open(port);
  try {
    await c.write(header);
    assert.equal((await c.reply()).code, 220);
    assert.equal((await c.command("EHLO client.test")).code, 250);
    return (await c.command(`MAIL FROM:<${from}>`)).last;
  } finally {
    await c.close();
  }
}

Deno.test("PROXY v2 from a listed proxy: the header's source address counts, v1 still works", async () => {
  const h = await startHarness({
    config: { smtp: { port: 0, proxyFrom: ["127.0.0.1"], trustedNetworks: ["203.0.113.0/24"] } },
  });
  try {
    const port = h.relay.smtp.port;
    const from = h.accounts[0].email;
    assert.match(await mailWithoutAuth(port, v2Header([203, 0, 113, 7]), from), /^250 /);
    assert.match(
      await mailWithoutAuth(port, v2Header([198, 51, 100, 1]), from),
      /^530 5\.7\.0 /,
    );
    // v1 lines still go to smtp-server's own reader.
    const { client: v1 } = await RawSmtp.connect(port, { proxy: "203.0.113.9" });
    try {
      assert.equal((await v1.command("EHLO c")).code, 250);
      assert.match((await v1.command(`MAIL FROM:<${from}>`)).last, /^250 /);
    } finally {
      await v1.close();
    }
  } finally {
    await h.close();
  }
});

Deno.test("PROXY v2 from an address that is not listed: no header is expected, the bytes are a bad command", async () => {
  const h = await startHarness({
    config: { smtp: { port: 0, proxyFrom: ["127.0.0.9"], trustedNetworks: ["203.0.113.0/24"] } },
  });
  try {
    const c = await RawSmtp.open(h.relay.smtp.port);
    try {
      assert.equal((await c.reply()).code, 220);
      await c.write(v2Header([203, 0, 113, 7]));
      await c.write(bytesOf("\r\nMAIL FROM:<" + h.accounts[0].email + ">\r\n"));
      let last = "";
      while (!last.startsWith("5") && !last.startsWith("421")) {
        const r = await c.next(10_000);
        if (r === "closed" || r === "timeout") break;
        last = r.last;
      }
      assert.ok(!last.startsWith("250"), last);
    } finally {
      await c.close();
    }
  } finally {
    await h.close();
  }
});
