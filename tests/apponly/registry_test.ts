/**
 * The registry's lookups of domain mailboxes (no network: nothing is fetched or connected
 * until a mailbox sends): a configured account wins over its domain's entry, the domain
 * entry answers for its other mailboxes, and its connection cap applies to them.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../../src/config/load.ts";
import { AccountRegistry } from "../../src/registry.ts";
import { LocalQuotas } from "../../src/quota/quotas.ts";
import { FileStateStore } from "../../src/state/store.ts";
import { isQuotaSnapshot } from "../../src/quota/quota.ts";
import { FileTokenStore } from "../../src/tokens/store.ts";
import { HASH } from "../config/helpers.ts";

Deno.test("registry: an account wins over its domain entry; the entry serves the domain's others", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "relay-apponly-registry-" });
  const provider = { type: "sandbox", tokenUrl: "http://127.0.0.1:9/token", smtpPort: 9 };
  const registry = new AccountRegistry(
    { tokenStore: new FileTokenStore(stateDir), onRefresh: () => {} },
    new LocalQuotas(new FileStateStore(stateDir, "quota", isQuotaSnapshot)),
  );
  try {
    registry.apply(parseConfig({
      stateDir,
      accounts: [{
        email: "alice@fleet.example",
        provider,
        clientId: "c",
        refreshToken: "refresh-token-1",
        passwordHash: HASH,
        maxConnections: 1,
      }],
      domains: [{
        domain: "fleet.example",
        provider,
        credential: { type: "clientSecret", clientId: "app", clientSecret: "s3cret-123" },
        passwordHash: HASH,
        maxConnections: 4,
      }],
    }));
    assert.equal(registry.resolve("Alice@Fleet.Example"), undefined); // the account's own
    const bob = registry.resolve(" Bob@Fleet.Example ");
    assert.equal(bob?.email, "bob@fleet.example");
    assert.equal(bob?.passwordHash, HASH);
    assert.deepEqual(bob?.aliases, []);
    assert.equal(registry.resolve("bob@other.example"), undefined);
    assert.equal(registry.maxConnections("alice@fleet.example"), 1);
    assert.equal(registry.maxConnections("BOB@fleet.example"), 4);
    assert.equal(registry.maxConnections("bob@other.example"), 1);
    assert.equal(registry.domains[0].liveMailboxes, 0); // lookups make no state
    assert.deepEqual(registry.tokenStates(), [
      { state: "unknown", unsaved: false },
      { state: "unknown", unsaved: false },
    ]);
  } finally {
    registry.close();
    await Deno.remove(stateDir, { recursive: true });
  }
});
