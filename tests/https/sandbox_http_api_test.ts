/**
 * The sandbox's HTTPS APIs on their own, through real HTTPS requests: token, scope and
 * mailbox checks, recipients from the header, decoded bytes, faults.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { type Sandbox, SANDBOX_CA_PEM, startSandbox } from "../../src/sandbox/mod.ts";

const GRAPH_SCOPE = "https://graph.microsoft.com/Mail.Send offline_access";
const GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.send";
const ACCOUNT = {
  email: "box@example.com",
  clientId: "client-1",
  clientSecret: "secret-1",
  refreshToken: "refresh-1",
};

async function withApi(fn: (s: Sandbox, http: Deno.HttpClient) => Promise<void>) {
  const sandbox = await startSandbox({ rotateRefreshTokens: false, accounts: [ACCOUNT] });
  const http = Deno.createHttpClient({ caCerts: [SANDBOX_CA_PEM] });
  try {
    await fn(sandbox, http);
  } finally {
    http.close();
    await sandbox.close();
  }
}

async function token(s: Sandbox, scope: string): Promise<string> {
  const r = await fetch(s.tokenUrl, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: ACCOUNT.refreshToken,
      client_id: ACCOUNT.clientId,
      client_secret: ACCOUNT.clientSecret,
      scope,
    }),
  });
  return (await r.json()).access_token;
}

const MIME = new TextEncoder().encode(
  'From: <box@example.com>\r\nTo: A <a@example.net>, "B, b" <B@Example.net>\r\n' +
    "Cc: undisclosed-recipients:;\r\nBcc: c@example.net\r\nSubject: x\r\n\r\nbody\xe9\r\n",
);

Deno.test("sandbox Graph: 202 with the right token; the decoded MIME and header recipients kept", async () => {
  await withApi(async (s, client) => {
    const t = await token(s, GRAPH_SCOPE);
    const r = await fetch(`${s.apiUrl}/v1.0/users/box%40example.com/sendMail`, {
      client,
      method: "POST",
      headers: { authorization: `Bearer ${t}`, "content-type": "text/plain" },
      body: Buffer.from(MIME).toString("base64"),
    });
    assert.deepEqual(r.status, 202);
    await r.body?.cancel();
    assert.deepEqual(s.api!.received.length, 1);
    const m = s.api!.received[0];
    assert.deepEqual(m.mime, MIME);
    assert.deepEqual(m.recipients, ["a@example.net", "b@example.net", "c@example.net"]);
    assert.deepEqual([m.mailbox, m.sentAs, m.upload], [
      "box@example.com",
      "box@example.com",
      "base64",
    ]);
  });
});

Deno.test("sandbox Graph: 401 without a valid token, 403 with the wrong scope or mailbox, 403 ErrorSendAsDenied", async () => {
  await withApi(async (s, client) => {
    const send = async (t: string, box = "box@example.com", mime = MIME) => {
      const r = await fetch(`${s.apiUrl}/v1.0/users/${box}/sendMail`, {
        client,
        method: "POST",
        headers: { authorization: `Bearer ${t}`, "content-type": "text/plain" },
        body: Buffer.from(mime).toString("base64"),
      });
      return [r.status, (await r.json()).error.code];
    };
    assert.deepEqual(await send("forged"), [401, "InvalidAuthenticationToken"]);
    assert.deepEqual(await send(await token(s, GMAIL_SCOPE)), [403, "ErrorAccessDenied"]);
    const t = await token(s, GRAPH_SCOPE);
    assert.deepEqual(await send(t, "other@example.com"), [403, "ErrorAccessDenied"]);
    const spoof = new TextEncoder().encode(
      "From: ceo@example.com\r\nTo: a@example.net\r\n\r\nx\r\n",
    );
    assert.deepEqual(await send(t, "box@example.com", spoof), [403, "ErrorSendAsDenied"]);
    s.api!.allowSendAs("box@example.com", "ceo@example.com");
    const ok = await fetch(`${s.apiUrl}/v1.0/me/sendMail`, {
      client,
      method: "POST",
      headers: { authorization: `Bearer ${t}`, "content-type": "text/plain" },
      body: Buffer.from(spoof).toString("base64"),
    });
    assert.deepEqual(ok.status, 202);
    assert.deepEqual(s.api!.received.map((m) => m.sentAs), ["ceo@example.com"]);
  });
});

Deno.test("sandbox Gmail: raw and media upload keep the same bytes; scope mail.google.com also works", async () => {
  await withApi(async (s, client) => {
    const t = await token(s, "https://mail.google.com/");
    const raw = await fetch(`${s.apiUrl}/gmail/v1/users/me/messages/send`, {
      client,
      method: "POST",
      headers: { authorization: `Bearer ${t}`, "content-type": "application/json" },
      body: JSON.stringify({ raw: Buffer.from(MIME).toString("base64url") }),
    });
    assert.deepEqual(raw.status, 200);
    assert.deepEqual((await raw.json()).labelIds, ["SENT"]);
    const media = await fetch(
      `${s.apiUrl}/upload/gmail/v1/users/box%40example.com/messages/send?uploadType=media`,
      {
        client,
        method: "POST",
        headers: { authorization: `Bearer ${t}`, "content-type": "message/rfc822" },
        body: MIME,
      },
    );
    assert.deepEqual(media.status, 200);
    await media.body?.cancel();
    assert.deepEqual(s.api!.received.map((m) => [m.upload, m.mime]), [["raw", MIME], [
      "media",
      MIME,
    ]]);
    const wrong = await fetch(`${s.apiUrl}/gmail/v1/users/me/messages/send`, {
      client,
      method: "POST",
      headers: {
        authorization: `Bearer ${await token(s, GRAPH_SCOPE)}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ raw: "" }),
    });
    assert.deepEqual([wrong.status, (await wrong.json()).error.status], [403, "PERMISSION_DENIED"]);
  });
});

Deno.test("sandbox faults: 429 with Retry-After, then normal again; 413 over the size limit", async () => {
  await withApi(async (s, client) => {
    const t = await token(s, GRAPH_SCOPE);
    Object.assign(s.api!.faults, { failNext: 1, failStatus: 429, retryAfter: "7" });
    const send = () =>
      fetch(`${s.apiUrl}/v1.0/me/sendMail`, {
        client,
        method: "POST",
        headers: { authorization: `Bearer ${t}`, "content-type": "text/plain" },
        body: Buffer.from(MIME).toString("base64"),
      });
    const r1 = await send();
    assert.deepEqual([r1.status, r1.headers.get("retry-after")], [429, "7"]);
    assert.deepEqual((await r1.json()).error.code, "ApplicationThrottled");
    const r2 = await send();
    assert.deepEqual(r2.status, 202);
    await r2.body?.cancel();
    s.api!.graphMaxRequestBytes = 16;
    const r3 = await send();
    assert.deepEqual([r3.status, (await r3.json()).error.code], [
      413,
      "ErrorRequestEntityTooLarge",
    ]);
    assert.deepEqual(s.api!.received.length, 1);
  });
});
