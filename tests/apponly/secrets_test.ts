/**
 * App-only secrets never leave the relay except to the token endpoint: no private key
 * (service account or certificate), client secret, signed assertion, access token or
 * client password in any log record (captured at the lowest level), in /metrics,
 * /accounts, /readyz, or in any reply a client got — through good deliveries, refused
 * credentials (wrong secret, no delegation) and refused mailboxes (535 5.7.3).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { configure, jsonLinesFormatter, type LogRecord, reset } from "@logtape/logtape";
import { PASSWORD } from "../harness.ts";
import { APP_SECRET, type CredentialKind, DOMAIN, startDomainHarness } from "./helpers.ts";

/** Forms a secret may take in text: as is, base64, URL-encoded; PEM keys line by line. */
function forms(secret: string): string[] {
  if (secret.includes("-----BEGIN")) {
    return secret.split("\n").filter((l) => l.length >= 40 && !l.startsWith("-----"));
  }
  return [secret, Buffer.from(secret).toString("base64"), encodeURIComponent(secret)];
}

Deno.test("no key, secret, assertion, token or password in logs, metrics, status or replies", async () => {
  const logs: string[] = [];
  await configure({
    reset: true,
    sinks: {
      capture: (r: LogRecord) => {
        logs.push(jsonLinesFormatter(r));
        logs.push(
          JSON.stringify(
            r.properties,
            (_k, v) => v instanceof Error ? `${v.name}: ${v.message} ${v.stack}` : v,
          ),
        );
      },
    },
    loggers: [{ category: [], lowestLevel: "trace", sinks: ["capture"] }],
  });
  const real = globalThis.fetch;
  const secrets = new Set<string>([PASSWORD, APP_SECRET]);
  // Everything the relay sent to and got from the token endpoint that is a credential.
  globalThis.fetch = async (input: string | URL | Request, init?: RequestInit) => {
    const body = init?.body instanceof URLSearchParams ? init.body : undefined;
    for (const name of ["assertion", "client_assertion", "client_secret"]) {
      const v = body?.get(name);
      if (v) secrets.add(v);
    }
    const response = await real(input, init);
    try {
      const json = JSON.parse(await response.clone().text());
      if (typeof json.access_token === "string") secrets.add(json.access_token);
    } catch {
      // not JSON
    }
    return response;
  };
  const surfaces: [string, string][] = [];
  try {
    for (const kind of ["serviceAccount", "clientSecret", "certificate"] as CredentialKind[]) {
      const h = await startDomainHarness({ kind, permitted: [`a@${DOMAIN}`] });
      try {
        if (h.keyFile) secrets.add(JSON.parse(h.keyFile).private_key);
        if (h.certificate) secrets.add(h.certificate.keyPem);
        const replies = [await h.send(`a@${DOMAIN}`), await h.send(`b@${DOMAIN}`)];
        // The credential breaks: wrong secret / no delegation / certificate withdrawn.
        if (h.serviceAccount) h.serviceAccount.domains = [];
        if (h.app) {
          h.app.clientSecret = "another-secret-entirely";
          h.app.certificates = [];
        }
        replies.push(await h.send(`c@${DOMAIN}`), await h.send(`a@${DOMAIN}`, { password: "x" }));
        const base = `http://127.0.0.1:${h.relay.http.port}`;
        surfaces.push(
          [`${kind} replies`, replies.join("\n")],
          [`${kind} /metrics`, await h.metrics()],
          [`${kind} /accounts`, await (await real(`${base}/accounts`)).text()],
          [`${kind} /readyz`, await (await real(`${base}/readyz`)).text()],
        );
        assert.match(replies[0], /^250 /, kind);
        assert.match(replies[2], /^454 4\.7\.0 /, kind);
      } finally {
        await h.close();
      }
    }
  } finally {
    globalThis.fetch = real;
    await reset();
  }
  surfaces.push(["logs", logs.join("\n")]);
  assert.ok(logs.length > 10);
  assert.ok(secrets.size >= 10, `only ${secrets.size} secrets collected`);
  const found: string[] = [];
  for (const secret of secrets) {
    for (const form of forms(secret)) {
      for (const [surface, text] of surfaces) {
        if (text.includes(form)) found.push(`${form.slice(0, 12)}… in ${surface}`);
      }
    }
  }
  assert.deepEqual(found, []);
});
