/**
 * src/permissions.ts: the exact permission set a config needs, one source at a time,
 * for the listeners (any address, smtps, HTTP), presets and custom providers, source
 * addresses, files and the variables the config read.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { env } from "../src/config/mod.ts";
import {
  AUTHORIZE_SOURCES,
  authorizeListener,
  CHECK_SOURCES,
  computePermissions,
  netEntry,
  permissionFlags,
  recordEnvReads,
  SERVE_SOURCES,
  statusPermissions,
  urlEntry,
} from "../src/permissions.ts";
import { HASH } from "./config/helpers.ts";

const CUSTOM = {
  type: "custom",
  tokenUrl: "https://idp.example.com/oauth2/token",
  scope: "smtp.send",
  smtpHost: "mail.example.com",
  smtpPort: 465,
  tls: "implicit",
};

function config() {
  return parseConfig({
    smtp: { host: "0.0.0.0", port: 587 },
    smtps: { port: 465 },
    tls: { certFile: "./tls/fullchain.pem", keyFile: "/etc/relay/privkey.pem" },
    http: { port: 9100 },
    stateDir: "/var/lib/relay",
    accounts: [
      {
        email: "a@example.com",
        provider: CUSTOM,
        clientId: "c",
        clientSecret: env("RELAY_PERM_TEST_SECRET"),
        refreshToken: "r",
        passwordHash: HASH,
        sourceAddress: "192.0.2.10",
      },
      { email: "b@example.com", provider: "google", clientId: "c", passwordHash: HASH },
      {
        email: "c@example.com",
        provider: { type: "microsoft", tenant: "example.com" },
        clientId: "c",
        passwordHash: HASH,
        sourceAddress: "2001:db8::1",
      },
      { email: "d@example.com", provider: "outlook", clientId: "c", passwordHash: HASH },
    ],
  });
}

Deno.test("serve: exactly the listeners, endpoints, source addresses, files and variables", async () => {
  Deno.env.set("RELAY_PERM_TEST_SECRET", "s3cret");
  try {
    const [parsed, envRead] = await recordEnvReads(() => Promise.resolve(config()));
    assert.deepEqual(envRead, ["RELAY_PERM_TEST_SECRET"]);
    const set = computePermissions(
      { config: parsed, configPath: "/etc/relay/accounts.ts", envRead, cwd: "/opt/relay" },
      SERVE_SOURCES,
    );
    assert.deepEqual(set, {
      net: [
        "0.0.0.0:465",
        "0.0.0.0:587",
        "127.0.0.1:9100",
        "192.0.2.10:0",
        "[2001:db8::1]:0",
        "idp.example.com:443",
        "login.microsoftonline.com:443",
        "mail.example.com:465",
        "oauth2.googleapis.com:443",
        "smtp-mail.outlook.com:587",
        "smtp.gmail.com:587",
        "smtp.office365.com:587",
      ],
      read: [
        "/etc/relay/accounts.ts",
        "/etc/relay/privkey.pem",
        "/opt/relay/tls/fullchain.pem",
        "/var/lib/relay",
      ],
      write: ["/var/lib/relay"],
      env: ["RELAY_ADMIN_TOKEN", "RELAY_PERM_TEST_SECRET"],
    });
    assert.ok(!JSON.stringify(set).includes("s3cret"), "no secret in the set");
    assert.ok(!set.net.some((e) => /:(2580|2587)$/.test(e)), "no sandbox port");
    assert.deepEqual(permissionFlags(set), [
      "--no-prompt",
      `--allow-net=${set.net.join(",")}`,
      `--allow-read=${set.read.join(",")}`,
      "--allow-write=/var/lib/relay",
      "--allow-env=RELAY_ADMIN_TOKEN,RELAY_PERM_TEST_SECRET",
    ]);
  } finally {
    Deno.env.delete("RELAY_PERM_TEST_SECRET");
  }
});

Deno.test("check: endpoints, source addresses, config, state and variables; no listener", () => {
  Deno.env.set("RELAY_PERM_TEST_SECRET", "s3cret");
  try {
    const set = computePermissions(
      { config: config(), configPath: "/c.ts", envRead: ["RELAY_X"], cwd: "/" },
      CHECK_SOURCES,
    );
    assert.deepEqual(set.read, ["/c.ts", "/var/lib/relay"]);
    assert.deepEqual(set.write, ["/var/lib/relay"]);
    assert.deepEqual(set.env, ["RELAY_X"]);
    assert.ok(!set.net.some((e) => e.startsWith("0.0.0.0") || e.endsWith(":9100")));
    assert.ok(set.net.includes("idp.example.com:443") && set.net.includes("192.0.2.10:0"));
  } finally {
    Deno.env.delete("RELAY_PERM_TEST_SECRET");
  }
});

Deno.test("entries: IPv6 in brackets, port 0 is the host alone, URL default ports", () => {
  assert.equal(netEntry("::", 25), "[::]:25");
  assert.equal(netEntry("127.0.0.1", 0), "127.0.0.1");
  assert.equal(urlEntry("http://127.0.0.1:2580/token"), "127.0.0.1:2580");
  assert.equal(urlEntry("https://[::1]/token"), "[::1]:443");
  assert.equal(urlEntry("http://localhost/token"), "localhost:80");
  assert.deepEqual(statusPermissions("http://127.0.0.1:9090"), {
    net: ["127.0.0.1:9090"],
    read: [],
    write: [],
    env: ["RELAY_ADMIN_TOKEN"],
  });
  assert.deepEqual(permissionFlags({ net: [], read: [], write: [], env: [] }), ["--no-prompt"]);
});

Deno.test("authorize: token and device endpoints, the SMTP check, its loopback listener", () => {
  const parsed = parseConfig({
    stateDir: "./state",
    accounts: [{
      email: "c@example.com",
      provider: { type: "microsoft", tenant: "example.com" },
      clientId: "c",
      passwordHash: HASH,
    }],
  });
  const input = { config: parsed, configPath: "/r/accounts.ts", envRead: [], cwd: "/r" };
  assert.deepEqual(computePermissions(input, [...AUTHORIZE_SOURCES, authorizeListener()]), {
    net: ["127.0.0.1", "login.microsoftonline.com:443", "smtp.office365.com:587"],
    read: ["/r/accounts.ts", "/r/state"],
    write: ["/r/state"],
    env: [],
  });
  assert.deepEqual(
    computePermissions(input, [authorizeListener(8765)]).net,
    ["127.0.0.1:8765"],
  );
});
