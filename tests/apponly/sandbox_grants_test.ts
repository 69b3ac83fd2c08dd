/**
 * The sandbox token endpoint's app-only grants over real HTTP: Google's JWT bearer grant
 * (signature, `aud`, `iat`/`exp` with clock skew, `sub` in a delegated domain,
 * delegation) and Microsoft's client credentials grant (client secret, client assertion
 * with the certificate's `x5t`), driven by the relay's own credential classes where the
 * request is well formed and by hand-made assertions where it is not.
 */
import assert from "node:assert/strict";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { generateServiceAccountKey, JWT_BEARER } from "../../src/sandbox/app_only.ts";
import { importSigningKey, signJwt } from "../../src/tokens/jwt.ts";
import {
  parseServiceAccountKey,
  ServiceAccountCredential,
} from "../../src/tokens/service_account.ts";
import { ClientCredentialsCredential } from "../../src/tokens/client_credentials.ts";
import { TokenError } from "../../src/tokens/oauth.ts";
import { certificateThumbprint } from "../../src/tokens/jwt.ts";
import { makeCertificate } from "./helpers.ts";

const SA = "relay@project.iam.gserviceaccount.test";
const SCOPE = "https://sandbox.localhost/smtp";
const now = () => Math.floor(Date.now() / 1000);

/** Posts a form to the token endpoint; status and JSON body. */
async function post(url: string, form: Record<string, string>) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(form),
  });
  return { status: r.status, body: await r.json() };
}

Deno.test("sandbox JWT bearer grant: signature, audience, times, subject and delegation", async () => {
  const sandbox = await startSandbox();
  try {
    const good = await generateServiceAccountKey(SA, sandbox.tokenUrl);
    const other = await generateServiceAccountKey(SA, sandbox.tokenUrl);
    const sa = sandbox.tokens.appOnly.addServiceAccount({
      clientEmail: SA,
      publicKeyPem: good.publicKeyPem,
      domains: ["fleet.example"],
    });
    const key = parseServiceAccountKey(good.keyFile);
    // The relay's credential: one token for the mailbox.
    const credential = new ServiceAccountCredential(key, sandbox.tokenUrl, SCOPE);
    const grant = await credential.grantFor("Alice@fleet.example")(10_000, Date.now);
    assert.ok(sandbox.tokens.validateAccessToken("alice@fleet.example", grant.accessToken));
    assert.equal(sandbox.tokens.validateAccessToken("bob@fleet.example", grant.accessToken), false);
    assert.ok(grant.expiresAt > Date.now() + 3_000_000);

    const signing = await importSigningKey(key.privateKey);
    const otherSigning = await importSigningKey(parseServiceAccountKey(other.keyFile).privateKey);
    const claims = (over: Record<string, unknown> = {}) => ({
      iss: SA,
      sub: "alice@fleet.example",
      scope: SCOPE,
      aud: sandbox.tokenUrl,
      iat: now(),
      exp: now() + 3600,
      ...over,
    });
    const attempt = async (c: Record<string, unknown>, k = signing) =>
      await post(sandbox.tokenUrl, { grant_type: JWT_BEARER, assertion: await signJwt(c, k) });
    const cases: [string, Record<string, unknown>, CryptoKey, number, string, RegExp][] = [
      [
        "expired",
        { iat: now() - 7200, exp: now() - 3600 },
        signing,
        400,
        "invalid_grant",
        /expired/,
      ],
      [
        "future-dated",
        { iat: now() + 600, exp: now() + 4200 },
        signing,
        400,
        "invalid_grant",
        /future/,
      ],
      ["over an hour", { exp: now() + 7200 }, signing, 400, "invalid_grant", /lifetime/],
      ["wrong key", {}, otherSigning, 400, "invalid_grant", /^Invalid JWT Signature\.$/],
      [
        "wrong audience",
        { aud: "https://oauth2.googleapis.com/token" },
        signing,
        400,
        "invalid_grant",
        /aud/,
      ],
      [
        "outside the domain",
        { sub: "eve@elsewhere.example" },
        signing,
        400,
        "invalid_grant",
        /Invalid email/,
      ],
      ["unknown issuer", { iss: "x@y.iam.test" }, signing, 400, "invalid_grant", /issuer/],
      ["no scope", { scope: "" }, signing, 400, "invalid_scope", /scope/],
    ];
    for (const [name, over, k, status, error, description] of cases) {
      const r = await attempt(claims(over), k);
      assert.equal(r.status, status, name);
      assert.equal(r.body.error, error, name);
      assert.match(r.body.error_description, description, name);
      assert.equal(r.body.access_token, undefined, name);
    }
    // Within the clock skew (30 s ahead, just expired 30 s ago) still passes.
    assert.equal((await attempt(claims({ iat: now() + 30, exp: now() + 3630 }))).status, 200);
    assert.equal((await attempt(claims({ iat: now() - 3630, exp: now() - 30 }))).status, 200);
    // Not a JWT at all.
    const garbage = await post(sandbox.tokenUrl, { grant_type: JWT_BEARER, assertion: "x.y" });
    assert.deepEqual([garbage.status, garbage.body.error], [400, "invalid_grant"]);

    // No domain-wide delegation: unauthorized_client, through the relay's credential.
    sa.domains = [];
    await assert.rejects(
      credential.grantFor("alice@fleet.example")(10_000, Date.now),
      (e) =>
        e instanceof TokenError && e.oauthError === "unauthorized_client" &&
        e.kind === "permanent",
    );
    const stats = sandbox.tokens.appOnly.stats;
    assert.equal(stats.grants, 3); // the credential's and the two within the skew
    assert.equal(stats.grantsBySubject.get("alice@fleet.example"), 3);
    assert.equal(stats.refusals, cases.length + 2);
  } finally {
    await sandbox.close();
  }
});

Deno.test("sandbox client credentials: secret, certificate assertion (x5t), scope", async () => {
  const sandbox = await startSandbox();
  const cert = await makeCertificate();
  const stranger = await makeCertificate();
  try {
    const app = sandbox.tokens.appOnly.addApp({
      clientId: "app-1",
      clientSecret: "s3cret-value-1",
      certificates: [cert.certPem],
      mailboxes: new Set(["a@fleet.example"]),
    });
    const scope = "https://sandbox.localhost/.default";
    const x5t = certificateThumbprint(cert.certPem).x5t;
    const viaSecret = new ClientCredentialsCredential(
      "app-1",
      { secret: "s3cret-value-1" },
      sandbox.tokenUrl,
      scope,
    );
    const viaCert = new ClientCredentialsCredential(
      "app-1",
      { privateKey: cert.keyPem, x5t },
      sandbox.tokenUrl,
      scope,
    );
    for (const c of [viaSecret, viaCert]) {
      const g = await c.grantFor("a@fleet.example")(10_000, Date.now);
      // The token is the app's: good for a permitted mailbox, 535 5.7.3 for another.
      assert.equal(sandbox.tokens.mailboxVerdict("a@fleet.example", g.accessToken), undefined);
      assert.equal(
        sandbox.tokens.mailboxVerdict("b@fleet.example", g.accessToken),
        "535 5.7.3 Authentication unsuccessful",
      );
    }
    const refused = async (c: ClientCredentialsCredential, error: string, aad: RegExp) =>
      await assert.rejects(c.grantFor("a@fleet.example")(10_000, Date.now), (e) => {
        assert.ok(e instanceof TokenError);
        assert.equal(e.oauthError, error);
        assert.match(e.message, aad);
        assert.equal(e.kind, "permanent");
        return true;
      });
    await refused(
      new ClientCredentialsCredential("app-1", { secret: "wrong-secret" }, sandbox.tokenUrl, scope),
      "invalid_client",
      /AADSTS7000215/,
    );
    // A certificate not registered with the app, and a registered x5t with the wrong key.
    await refused(
      new ClientCredentialsCredential(
        "app-1",
        {
          privateKey: stranger.keyPem,
          x5t: certificateThumbprint(stranger.certPem).x5t,
        },
        sandbox.tokenUrl,
        scope,
      ),
      "invalid_client",
      /AADSTS700027: The certificate/,
    );
    await refused(
      new ClientCredentialsCredential(
        "app-1",
        { privateKey: stranger.keyPem, x5t },
        sandbox.tokenUrl,
        scope,
      ),
      "invalid_client",
      /AADSTS700027: Client assertion failed signature/,
    );
    await refused(
      new ClientCredentialsCredential(
        "app-1",
        { secret: "s3cret-value-1" },
        sandbox.tokenUrl,
        "https://sandbox.localhost/smtp",
      ),
      "invalid_scope",
      /AADSTS1002012/,
    );
    await refused(
      new ClientCredentialsCredential(
        "app-2",
        { secret: "s3cret-value-1" },
        sandbox.tokenUrl,
        scope,
      ),
      "unauthorized_client",
      /AADSTS700016/,
    );
    // Hand-made assertions: expired, future-dated, wrong audience.
    const key = await importSigningKey(cert.keyPem);
    const assertion = async (over: Record<string, unknown>) =>
      await post(sandbox.tokenUrl, {
        grant_type: "client_credentials",
        client_id: "app-1",
        scope,
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        client_assertion: await signJwt(
          {
            iss: "app-1",
            sub: "app-1",
            aud: sandbox.tokenUrl,
            jti: crypto.randomUUID(),
            iat: now(),
            nbf: now(),
            exp: now() + 600,
            ...over,
          },
          key,
          { x5t },
        ),
      });
    for (
      const [over, aad] of [
        [{ iat: now() - 7200, nbf: now() - 7200, exp: now() - 3600 }, /AADSTS700024/],
        [{ iat: now() + 600, nbf: now() + 600, exp: now() + 1200 }, /AADSTS700024/],
        [{ aud: "https://login.microsoftonline.com/t/oauth2/v2.0/token" }, /audience/],
        [{ iss: "app-2" }, /iss and sub/],
      ] as const
    ) {
      const r = await assertion(over);
      assert.equal(r.status, 401);
      assert.equal(r.body.error, "invalid_client");
      assert.match(r.body.error_description, aad);
    }
    assert.equal((await assertion({})).status, 200);
    // Admin consent withdrawn: the token endpoint still answers, SMTP says 535 5.7.3.
    app.consented = false;
    const g = await viaSecret.grantFor("a@fleet.example")(10_000, Date.now);
    assert.equal(
      sandbox.tokens.mailboxVerdict("a@fleet.example", g.accessToken),
      "535 5.7.3 Authentication unsuccessful",
    );
  } finally {
    await sandbox.close();
    await Deno.remove(cert.dir, { recursive: true });
    await Deno.remove(stranger.dir, { recursive: true });
  }
});
