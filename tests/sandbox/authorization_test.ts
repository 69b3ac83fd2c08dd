/**
 * The sandbox's authorization endpoints over real sockets, driven with plain fetch:
 * device authorization + device_code grant (RFC 8628) and authorization code + PKCE.
 *
 * deno test --allow-net=127.0.0.1 tests/sandbox/authorization_test.ts
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Sandbox } from "../../src/sandbox/mod.ts";
import { CLIENT_ID, CLIENT_SECRET, USER, withSandbox } from "../sandbox_helpers.ts";

const DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";

/** The sandbox asks device-code clients to poll every second (its default is longer). */
const POLL_EVERY_SECOND = { deviceIntervalSeconds: 1 };

/** POSTs a form with the client's credentials in the body; parses the JSON answer. */
async function post(url: string, form: Record<string, string>, secret = CLIENT_SECRET) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: CLIENT_ID, client_secret: secret, ...form }),
  });
  return { status: response.status, body: await response.json() };
}

function poll(sandbox: Sandbox, deviceCode: string) {
  return post(sandbox.tokenUrl, { grant_type: DEVICE_GRANT, device_code: deviceCode });
}

async function startDevice(sandbox: Sandbox) {
  const { status, body } = await post(sandbox.deviceCodeUrl, { scope: "s" });
  assert.equal(status, 200);
  return body as {
    device_code: string;
    user_code: string;
    verification_uri: string;
    verification_uri_complete: string;
    expires_in: number;
    interval: number;
  };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

Deno.test(
  "sandbox device code: pending, slow_down when too fast, then tokens once approved",
  withSandbox(async (sandbox) => {
    const device = await startDevice(sandbox);
    assert.match(device.user_code, /^[A-Z]{4}-[A-Z]{4}$/);
    assert.equal(device.verification_uri, `${new URL(sandbox.tokenUrl).origin}/device`);
    assert.equal(device.interval, 1);
    assert.equal(device.expires_in, 900);

    assert.equal((await poll(sandbox, device.device_code)).body.error, "authorization_pending");
    assert.equal((await poll(sandbox, device.device_code)).body.error, "slow_down");
    await sleep(1000);
    assert.equal((await poll(sandbox, device.device_code)).body.error, "authorization_pending");
    sandbox.tokenFaults.slowDownNext = 1;
    await sleep(1000);
    assert.equal((await poll(sandbox, device.device_code)).body.error, "slow_down");
    assert.equal(sandbox.tokenFaults.slowDownNext, 0);

    assert.throws(() => sandbox.approveDevice(device.user_code, "nobody@example.test"));
    sandbox.approveDevice(device.user_code, USER);
    await sleep(1000);
    const granted = await poll(sandbox, device.device_code);
    assert.equal(granted.status, 200);
    assert.equal(granted.body.refresh_token, sandbox.tokens.currentRefreshToken(USER));
    assert.equal(granted.body.token_type, "Bearer");
    assert.ok(sandbox.tokens.validateAccessToken(USER, granted.body.access_token));

    const info = sandbox.deviceAuthorization(device.user_code)!;
    assert.equal(info.status, "done");
    assert.equal(info.polls.length, 5);
    assert.equal(sandbox.stats.token.slowDowns, 2);
    assert.equal(sandbox.stats.token.authorizations, 1);
    // Used: the device code is gone; the old refresh token was replaced.
    await sleep(1000);
    assert.equal((await poll(sandbox, device.device_code)).body.error, "invalid_grant");
    const old = await post(sandbox.tokenUrl, {
      grant_type: "refresh_token",
      refresh_token: "refresh-0",
    });
    assert.equal(old.body.error, "invalid_grant");
  }, POLL_EVERY_SECOND),
);

Deno.test(
  "sandbox device code: access_denied, expired_token, other client, wrong secret",
  withSandbox(async (sandbox) => {
    const denied = await startDevice(sandbox);
    sandbox.denyDevice(denied.user_code);
    assert.equal((await poll(sandbox, denied.device_code)).body.error, "access_denied");

    sandbox.tokens.deviceCodeTtlSeconds = 1;
    const expiring = await startDevice(sandbox);
    await sleep(1100);
    assert.equal((await poll(sandbox, expiring.device_code)).body.error, "expired_token");
    assert.throws(() => sandbox.approveDevice(expiring.user_code, USER), /no pending/);

    assert.equal((await poll(sandbox, "made-up")).body.error, "invalid_grant");
    const wrong = await post(sandbox.deviceCodeUrl, {}, "wrong-secret");
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error, "invalid_client");
  }, POLL_EVERY_SECOND),
);

Deno.test(
  "sandbox device code: a person approves by opening verification_uri_complete",
  withSandbox(async (sandbox) => {
    const device = await startDevice(sandbox);
    const page = await fetch(device.verification_uri_complete);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /approved for alice@example\.test/);
    assert.equal(sandbox.deviceAuthorization(device.user_code)!.status, "approved");
    const unknown = await fetch(`${device.verification_uri}?user_code=NOPE-NOPE`);
    assert.equal(unknown.status, 400);
    await unknown.body?.cancel();
  }, POLL_EVERY_SECOND),
);

/** PKCE S256 pair. */
function pkce() {
  const verifier = crypto.randomUUID() + crypto.randomUUID();
  return { verifier, challenge: createHash("sha256").update(verifier).digest("base64url") };
}

function authorizeUrl(sandbox: Sandbox, params: Record<string, string>): string {
  const url = new URL(sandbox.authorizeUrl);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url.href;
}

Deno.test(
  "sandbox authorize: 302 to the loopback redirect with code, state, iss; PKCE checked",
  withSandbox(async (sandbox) => {
    const { verifier, challenge } = pkce();
    const redirectUri = "http://127.0.0.1:9/";
    const base = {
      response_type: "code",
      client_id: CLIENT_ID,
      redirect_uri: redirectUri,
      scope: "s",
      state: "st-1",
      code_challenge: challenge,
      code_challenge_method: "S256",
      login_hint: USER,
    };
    const response = await fetch(authorizeUrl(sandbox, base), { redirect: "manual" });
    assert.equal(response.status, 302);
    const location = new URL(response.headers.get("location")!);
    assert.equal(`${location.origin}${location.pathname}`, "http://127.0.0.1:9/");
    assert.equal(location.searchParams.get("state"), "st-1");
    assert.equal(location.searchParams.get("iss"), new URL(sandbox.tokenUrl).origin);
    const code = location.searchParams.get("code")!;

    const exchange = (form: Record<string, string>) =>
      post(sandbox.tokenUrl, {
        grant_type: "authorization_code",
        code,
        redirect_uri: redirectUri,
        code_verifier: verifier,
        ...form,
      });
    // A wrong verifier burns the code (single use) without issuing anything.
    assert.equal((await exchange({ code_verifier: "x".repeat(43) })).body.error, "invalid_grant");
    assert.equal((await exchange({})).body.error, "invalid_grant");
    assert.equal(sandbox.stats.token.authorizations, 0);

    const again = await fetch(authorizeUrl(sandbox, base), { redirect: "manual" });
    const code2 = new URL(again.headers.get("location")!).searchParams.get("code")!;
    const mismatch = await post(sandbox.tokenUrl, {
      grant_type: "authorization_code",
      code: code2,
      redirect_uri: "http://127.0.0.1:10/",
      code_verifier: verifier,
    });
    assert.match(mismatch.body.error_description, /redirect_uri/);

    const third = await fetch(authorizeUrl(sandbox, base), { redirect: "manual" });
    const code3 = new URL(third.headers.get("location")!).searchParams.get("code")!;
    const granted = await exchange({ code: code3 });
    assert.equal(granted.status, 200);
    assert.equal(granted.body.refresh_token, sandbox.tokens.currentRefreshToken(USER));
  }, POLL_EVERY_SECOND),
);

Deno.test(
  "sandbox authorize: errors are shown (bad client/redirect) or redirected (denied, no PKCE)",
  withSandbox(async (sandbox) => {
    const { challenge } = pkce();
    const base = {
      response_type: "code",
      client_id: CLIENT_ID,
      redirect_uri: "http://localhost:9/cb",
      state: "s",
      code_challenge: challenge,
      code_challenge_method: "S256",
    };
    const shown = async (params: Record<string, string>) => {
      const r = await fetch(authorizeUrl(sandbox, { ...base, ...params }), { redirect: "manual" });
      await r.body?.cancel();
      return r.status;
    };
    const redirected = async (params: Record<string, string>) => {
      const r = await fetch(authorizeUrl(sandbox, { ...base, ...params }), { redirect: "manual" });
      assert.equal(r.status, 302);
      return new URL(r.headers.get("location")!).searchParams.get("error");
    };
    assert.equal(await shown({ client_id: "unknown" }), 400);
    assert.equal(await shown({ redirect_uri: "https://evil.example/cb" }), 400);
    assert.equal(await shown({ redirect_uri: "http://127.0.0.1.evil.example/cb" }), 400);
    // No login_hint and no authorizeAs: nobody to approve for.
    assert.equal(await redirected({}), "access_denied");
    sandbox.tokens.authorizeAs = USER;
    assert.equal(await redirected({ code_challenge_method: "plain" }), "invalid_request");
    assert.equal(await redirected({ response_type: "token" }), "unsupported_response_type");
    sandbox.tokens.denyAuthorizations = true;
    assert.equal(await redirected({}), "access_denied");
    sandbox.tokens.denyAuthorizations = false;
    assert.equal(await redirected({}), null);
  }, POLL_EVERY_SECOND),
);
