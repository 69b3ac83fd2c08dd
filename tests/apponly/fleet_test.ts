/**
 * Many mailboxes of one domain: one token each and one token request each, however many
 * callers ask at once (the token manager's single flight per mailbox), against the
 * sandbox token endpoint over HTTP; and through real sockets, concurrent messages of many
 * mailboxes through the relay.
 */
import assert from "node:assert/strict";
import { accountTokens } from "../../src/accounts.ts";
import { parseConfig } from "../../src/config/load.ts";
import { appCredential, mailboxAccount } from "../../src/domain_runtime.ts";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey } from "../../src/sandbox/app_only.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import { DOMAIN, passwordHash, SA_EMAIL, startDomainHarness } from "./helpers.ts";

Deno.test("500 mailboxes, 3 callers each at once: one grant and one token per mailbox", async () => {
  const sandbox = await startSandbox();
  const stateDir = await Deno.makeTempDir({ prefix: "relay-fleet-" });
  try {
    const generated = await generateServiceAccountKey(SA_EMAIL, sandbox.tokenUrl);
    sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: SA_EMAIL,
      publicKeyPem: generated.publicKeyPem,
      domains: [DOMAIN],
    });
    const config = parseConfig({
      stateDir,
      domains: [{
        domain: DOMAIN,
        provider: { type: "sandbox", tokenUrl: sandbox.tokenUrl, smtpPort: 1 },
        credential: { type: "serviceAccount", key: generated.keyFile },
        passwordHash: await passwordHash(),
      }],
    });
    const domain = config.domains[0];
    const credential = appCredential(domain);
    const store = new FileTokenStore(stateDir);
    const mailboxes = Array.from({ length: 500 }, (_, i) => `m${i}@${DOMAIN}`);
    const sources = mailboxes.map((m) =>
      accountTokens(
        config,
        mailboxAccount(domain, m, domain.passwordHash!),
        store,
        undefined,
        undefined,
        credential.grantFor(m),
      )
    );
    const tokens = await Promise.all(
      sources.map((s) => Promise.all([s.get(), s.get(), s.get()])),
    );
    const stats = sandbox.tokens.appOnly.stats;
    assert.equal(stats.grants, 500);
    assert.equal(stats.refusals, 0);
    assert.equal(stats.grantsBySubject.size, 500);
    assert.ok([...stats.grantsBySubject.values()].every((n) => n === 1));
    for (const [i, [a, b, c]] of tokens.entries()) {
      assert.equal(a.token, b.token);
      assert.equal(a.token, c.token);
      assert.ok(sandbox.tokens.validateAccessToken(mailboxes[i], a.token));
      assert.equal(sandbox.tokens.validateAccessToken(mailboxes[(i + 1) % 500], a.token), false);
    }
    assert.equal(new Set(tokens.map(([a]) => a.token)).size, 500);
    // Nothing was written for them: app-only mailboxes have no refresh token to keep.
    const written = [];
    for await (const e of Deno.readDir(stateDir)) written.push(e.name);
    assert.deepEqual(written, []);
    for (const s of sources) s.close();
  } finally {
    await sandbox.close();
    await Deno.remove(stateDir, { recursive: true });
  }
});

Deno.test("20 mailboxes, 2 messages each at once, through the relay: 40 delivered, 20 grants", async () => {
  const h = await startDomainHarness();
  try {
    const mailboxes = Array.from({ length: 20 }, (_, i) => `u${i}@${DOMAIN}`);
    const replies = await Promise.all(mailboxes.flatMap((m) => [h.send(m), h.send(m)]));
    for (const r of replies) assert.match(r, /^250 2\.0\.0 OK, upstream said: 250 /);
    assert.equal(h.sandbox.received.length, 40);
    const stats = h.sandbox.tokens.appOnly.stats;
    assert.equal(stats.grants, 20);
    assert.deepEqual(
      [...stats.grantsBySubject.keys()].sort(),
      [...mailboxes].sort(),
    );
    for (const m of mailboxes) {
      assert.equal(h.sandbox.received.filter((r) => r.user === m).length, 2, m);
    }
  } finally {
    await h.close();
  }
});
