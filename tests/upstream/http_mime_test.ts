/**
 * The header helpers the HTTPS transports rely on (src/upstream/mime.ts), and the size
 * decisions of the Graph and Gmail APIs, below the relay: address lists as mail clients
 * write them, envelope-vs-header plans, the Bcc line's base64 alignment.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  bccLine,
  envelopePlan,
  fromAddress,
  headerLength,
  headerRecipients,
  parseAddressList,
} from "../../src/upstream/mime.ts";
import { base64Of, Payload } from "../../src/upstream/http_transport.ts";
import { GRAPH_MAX_REQUEST_BYTES, graphApi } from "../../src/upstream/graph.ts";
import { GMAIL_MAX_MESSAGE_BYTES, gmailApi } from "../../src/upstream/gmail_api.ts";

const enc = (s: string) => new TextEncoder().encode(s);

Deno.test("parseAddressList: display names, quoted commas, comments, groups, bare addresses", () => {
  assert.deepEqual(
    parseAddressList(
      ' "Doe, John" <john@example.com>, jane@example.org (Jane), Team: a@x.test, b@x.test;, ' +
        "undisclosed-recipients:;, =?UTF-8?Q?Jos=C3=A9?= <jose@example.net>, not-an-address",
    ),
    ["john@example.com", "jane@example.org", "a@x.test", "b@x.test", "jose@example.net"],
  );
  assert.deepEqual(parseAddressList(' "odd <name>" <real@example.com>'), ["real@example.com"]);
  assert.deepEqual(parseAddressList(""), []);
});

Deno.test("headerRecipients: folded To/Cc/Bcc and Resent-* fields, not the body", () => {
  const raw = enc(
    "From: me@example.com\r\nTo: a@example.net,\r\n\tB <b@example.net>\r\nCC: c@example.net\r\n" +
      "Resent-To: d@example.net\r\nSubject: To: x@example.net\r\n\r\nTo: body@example.net\r\n",
  );
  assert.deepEqual(headerRecipients(raw), [
    "a@example.net",
    "b@example.net",
    "c@example.net",
    "d@example.net",
  ]);
  assert.equal(fromAddress(raw), "me@example.com");
  assert.equal(
    new TextDecoder().decode(raw.subarray(headerLength(raw))),
    "To: body@example.net\r\n",
  );
});

Deno.test("headerLength: up to the empty line, CRLF or bare LF; the whole message without one", () => {
  assert.equal(headerLength(enc("A: 1\r\nB: 2\r\n\r\nbody")), 14);
  assert.equal(headerLength(enc("A: 1\n\nbody")), 6);
  assert.equal(headerLength(enc("A: 1\r\n")), 6);
});

Deno.test("envelopePlan: header ⊆ envelope → the rest as Bcc (case-insensitive, once each); else the strangers", () => {
  const raw = enc("To: A@Example.net\r\nCc: b@example.net\r\n\r\nx\r\n");
  assert.deepEqual(envelopePlan(raw, ["a@example.net", "b@example.net"]), { ok: true, bcc: [] });
  assert.deepEqual(
    envelopePlan(raw, ["a@example.net", "b@example.net", "c@example.net", "C@example.net"]),
    { ok: true, bcc: ["c@example.net"] },
  );
  assert.deepEqual(envelopePlan(raw, ["a@example.net"]), {
    ok: false,
    strangers: ["b@example.net"],
  });
  // No header recipients at all: every envelope recipient goes as Bcc.
  assert.deepEqual(envelopePlan(enc("Subject: s\r\n\r\nx"), ["z@example.net"]), {
    ok: true,
    bcc: ["z@example.net"],
  });
});

Deno.test("bccLine: a multiple of 3 bytes in the message's own line ending, so base64 concatenates", () => {
  for (const addresses of [["a@x.test"], ["ab@x.test"], ["abc@x.test", "d@x.test"]]) {
    for (const eol of ["\r\n", "\n"]) {
      const raw = enc(`To: t@x.test${eol}${eol}body${eol}`);
      const line = bccLine(addresses, raw);
      assert.equal(line.length % 3, 0);
      const text = new TextDecoder().decode(line);
      if (eol === "\n") assert.ok(!text.includes("\r") && text.endsWith("\n"), text);
      else assert.ok(text.endsWith("\r\n"), text);
      const joined = Buffer.from(base64Of(line, raw), "base64");
      assert.deepEqual(new Uint8Array(joined), new Uint8Array([...line, ...raw]));
      const joinedUrl = Buffer.from(base64Of(line, raw, true), "base64url");
      assert.deepEqual(new Uint8Array(joinedUrl), new Uint8Array([...line, ...raw]));
      assert.deepEqual(
        headerRecipients(new Uint8Array([...line, ...raw])),
        [...addresses, "t@x.test"],
      );
    }
  }
  assert.equal(bccLine([], enc("x")).length, 0);
});

Deno.test("size limits are decided before sending: Graph 4 MiB of base64, Gmail 35 MB", () => {
  const graph = graphApi({
    kind: "graph",
    apiUrl: "https://graph.example",
    maxRequestBytes: GRAPH_MAX_REQUEST_BYTES,
    saveToSentItems: true,
  });
  assert.equal(graph.tooBig(3 * 1024 * 1024), undefined);
  assert.deepEqual(graph.tooBig(3 * 1024 * 1024 + 1), {
    code: 552,
    enhanced: "5.3.4",
    text: "Message too big for Microsoft Graph (its request limit: 4194304 bytes of base64, " +
      "3145728 bytes of message)",
  });
  const gmail = gmailApi({
    kind: "gmail-api",
    apiUrl: "https://gmail.example",
    maxMessageBytes: GMAIL_MAX_MESSAGE_BYTES,
    mediaAbove: 1024,
  });
  assert.equal(gmail.tooBig(GMAIL_MAX_MESSAGE_BYTES), undefined);
  assert.equal(
    gmail.tooBig(GMAIL_MAX_MESSAGE_BYTES + 1)?.text,
    "Message too big for the Gmail API (its limit: 36700160 bytes)",
  );
  // Raw below the threshold, media upload above it.
  const none = new Uint8Array(0);
  assert.equal(
    gmail.request("u@x.test", none, Payload.of(new Uint8Array(1024))).url,
    "https://gmail.example/gmail/v1/users/u%40x.test/messages/send",
  );
  assert.equal(
    gmail.request("u@x.test", none, Payload.of(new Uint8Array(1025))).url,
    "https://gmail.example/upload/gmail/v1/users/u%40x.test/messages/send?uploadType=media",
  );
});

Deno.test("Payload.header: the header block across chunks, past the first 64 KiB, or the whole message without a body", () => {
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  const message = "To: a@x.test\r\nCc: b@x.test\r\nSubject: s\r\n\r\nbody\r\n.line\r\n";
  const headerEnd = message.indexOf("\r\n\r\n") + 4;
  const whole = enc(message);
  // Every split into two chunks, including inside the empty line.
  for (let cut = 1; cut < whole.length; cut++) {
    const p = new Payload([whole.slice(0, cut), whole.slice(cut)]);
    assert.equal(text(p.header()), message.slice(0, headerEnd), `cut at ${cut}`);
    assert.equal(p.length, whole.length);
    assert.equal(text(p.bytes()), message);
  }
  // A header longer than the first joined 64 KiB: found in the whole message.
  const long = `X-Long: ${"a".repeat(70_000)}\r\nTo: c@x.test\r\n\r\nbody\r\n`;
  const chunks = Array.from({ length: 10 }, (_, i) => enc(long.slice(i * 8_000, (i + 1) * 8_000)));
  const lp = new Payload(chunks.filter((c) => c.length > 0));
  assert.equal(text(lp.header()), long.slice(0, long.indexOf("\r\n\r\n") + 4));
  assert.deepEqual(headerRecipients(lp.header()), ["c@x.test"]);
  // No empty line at all: the whole message is header, as headerLength says.
  const bare = "To: d@x.test\r\nSubject: none\r\n";
  const bp = new Payload([enc(bare.slice(0, 5)), enc(bare.slice(5))]);
  assert.equal(text(bp.header()), bare);
});

Deno.test("Gmail API uploads above mediaAbove are a Blob of the chunks with the Bcc line in front", async () => {
  const gmail = gmailApi({
    kind: "gmail-api",
    apiUrl: "https://gmail.example",
    maxMessageBytes: GMAIL_MAX_MESSAGE_BYTES,
    mediaAbove: 16,
  });
  const parts = [enc("To: a@x.test\r\n\r\n"), enc("body one\r\n"), enc("body two\r\n")];
  const prefix = bccLine(["b@x.test"], parts[0]);
  const request = gmail.request("u@x.test", prefix, new Payload(parts));
  assert.ok(request.body instanceof Blob);
  assert.equal(
    await (request.body as Blob).text(),
    new TextDecoder().decode(prefix) + "To: a@x.test\r\n\r\nbody one\r\nbody two\r\n",
  );
});
