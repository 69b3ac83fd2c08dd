/** The `transport` field of an account: defaults, scopes, and errors that name the field. */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { HASH, problems } from "../config/helpers.ts";

function config(account: Record<string, unknown>) {
  return {
    accounts: [{
      email: "box@example.com",
      provider: { type: "microsoft", tenant: "example.com" },
      clientId: "client",
      refreshToken: "refresh",
      passwordHash: HASH,
      ...account,
    }],
  };
}

Deno.test("transport: smtp by default; graph and gmail-api resolve their API, scope and limits", () => {
  const smtp = parseConfig(config({})).accounts[0];
  assert.deepEqual(smtp.transport, { kind: "smtp" });
  assert.equal(smtp.provider.scope, "https://outlook.office.com/SMTP.Send offline_access");
  assert.equal(smtp.maxConnections, 3);
  const graph = parseConfig(config({ transport: "graph" })).accounts[0];
  assert.deepEqual(graph.transport, {
    kind: "graph",
    apiUrl: "https://graph.microsoft.com",
    maxRequestBytes: 4194304,
    saveToSentItems: true,
  });
  assert.equal(graph.provider.scope, "https://graph.microsoft.com/Mail.Send offline_access");
  assert.equal(graph.maxConnections, 4);
  const gmail = parseConfig(config({
    provider: "google",
    transport: { type: "gmail-api", mediaUploadAbove: 2048 },
  })).accounts[0];
  assert.deepEqual(gmail.transport, {
    kind: "gmail-api",
    apiUrl: "https://gmail.googleapis.com",
    maxMessageBytes: 36700160,
    mediaAbove: 2048,
  });
  // Google's SMTP scope also sends through the API: no new authorization to switch.
  assert.equal(gmail.provider.scope, "https://mail.google.com/");
});

Deno.test("transport: each mistake names its field", () => {
  assert.deepEqual(problems(config({ transport: "http" })), [
    "accounts[0].transport.type: expected 'smtp', 'graph', 'gmail-api' or { type: 'graph' | 'gmail-api', ... }",
  ]);
  assert.deepEqual(problems(config({ transport: "gmail-api" })), [
    "accounts[0].transport: expected the google provider for 'gmail-api', got 'microsoft'",
  ]);
  assert.deepEqual(problems(config({ provider: "google", transport: "graph" })), [
    "accounts[0].transport: expected a Microsoft provider for 'graph' (microsoft, outlook), got 'google'",
  ]);
  assert.deepEqual(problems(config({ transport: "graph", maxConnections: 5 })), [
    "accounts[0].maxConnections: expected at most 4: Graph allows 4 concurrent requests per mailbox",
  ]);
  assert.deepEqual(problems(config({ transport: { type: "graph", saveToSentItems: false } })), [
    "accounts[0].transport.saveToSentItems: expected true: Graph's MIME sendMail always saves a copy in Sent Items",
  ]);
  assert.deepEqual(
    problems(config({ transport: { type: "graph", apiUrl: "http://graph.example" } })),
    [
      "accounts[0].transport.apiUrl: expected an https:// URL",
    ],
  );
  assert.deepEqual(problems(config({ transport: { type: "graph", colour: "blue" } })), [
    "accounts[0].transport.colour: unknown field",
  ]);
  assert.deepEqual(
    problems(config({
      provider: { type: "sandbox" },
      transport: { type: "graph", apiUrl: "https://graph.example.com" },
    })),
    [
      'accounts[0].transport.apiUrl: the sandbox provider only runs on loopback (localhost, 127.0.0.0/8, ::1), got "graph.example.com"',
    ],
  );
});
