/**
 * The interactive flows of src/tokens/authorize.ts against the sandbox over real sockets:
 * device code (pending, slow_down, denied, expired, aborted) and authorization code +
 * PKCE (the test plays the browser; state mismatch; pasted URL; timeout).
 */
import assert from "node:assert/strict";
import type { Sandbox } from "../../src/sandbox/mod.ts";
import {
  CLIENT_ID,
  CLIENT_SECRET,
  USER,
  withSandbox as withSharedSandbox,
} from "../sandbox_helpers.ts";
import {
  AuthorizeError,
  authorizeWithDeviceCode,
  authorizeWithPkce,
  type DevicePrompt,
} from "../../src/tokens/authorize.ts";
import type { Timing } from "../../src/tokens/clock.ts";
import type { OAuthClient } from "../../src/tokens/oauth.ts";

/** The sandbox with its device-code interval at 1 s (the flows' tests poll in real time). */
const withSandbox = (fn: (sandbox: Sandbox) => Promise<void>) =>
  withSharedSandbox(fn, { deviceIntervalSeconds: 1 });

function client(sandbox: Sandbox, secret = CLIENT_SECRET): OAuthClient {
  return { tokenUrl: sandbox.tokenUrl, clientId: CLIENT_ID, clientSecret: secret, scope: "s" };
}

/**
 * A clock that advances by what the code under test asks to sleep, while really
 * sleeping at most `realCapMs` (the sandbox enforces its 1 s interval in real time).
 */
function virtualTiming(realCapMs: number, onSleep?: (ms: number) => void) {
  const sleeps: number[] = [];
  let now = Date.now();
  const timing: Timing = {
    now: () => now,
    sleep: async (ms, signal) => {
      sleeps.push(ms);
      onSleep?.(ms);
      now += ms;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, Math.min(ms, realCapMs));
        signal?.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(signal.reason);
        }, { once: true });
      });
    },
  };
  return { timing, sleeps };
}

async function rejection(promise: Promise<unknown>): Promise<AuthorizeError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof AuthorizeError, `expected an AuthorizeError, got ${err}`);
    return err;
  }
  assert.fail("expected a rejection");
}

/** Nothing secret the sandbox issued or holds appears in `text`. */
function assertNoSecret(sandbox: Sandbox, text: string): void {
  const secrets = [CLIENT_SECRET, "refresh-0", sandbox.tokens.currentRefreshToken(USER) ?? "-"];
  for (const secret of secrets) assert.ok(!text.includes(secret), `secret in: ${text}`);
}

// ---------------------------------------------------------------- device code

Deno.test(
  "device code: polls every interval (request timestamps), pending until approved",
  withSandbox(async (sandbox) => {
    let prompt: DevicePrompt | undefined;
    const result = authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      onPrompt: (p) => {
        prompt = p;
        const approve = setInterval(() => {
          if (sandbox.deviceAuthorization(p.userCode)!.polls.length >= 2) {
            clearInterval(approve);
            sandbox.approveDevice(p.userCode, USER);
          }
        }, 20);
      },
    });
    const { refreshToken } = await result;
    assert.equal(refreshToken, sandbox.tokens.currentRefreshToken(USER));
    assert.equal(prompt!.verificationUri, `${new URL(sandbox.tokenUrl).origin}/device`);
    assert.equal(prompt!.expiresInSeconds, 900);
    const { polls } = sandbox.deviceAuthorization(prompt!.userCode)!;
    assert.equal(polls.length, 3);
    for (let i = 1; i < polls.length; i++) {
      assert.ok(polls[i] - polls[i - 1] >= 1000, `polls ${polls[i] - polls[i - 1]} ms apart`);
    }
    assert.equal(sandbox.stats.token.slowDowns, 0);
  }),
);

Deno.test(
  "device code: slow_down adds 5 s to the interval for good",
  withSandbox(async (sandbox) => {
    let userCode = "";
    const { timing, sleeps } = virtualTiming(1000, () => {
      // Approve once the client has polled twice (slow_down, then pending).
      if (userCode && sandbox.deviceAuthorization(userCode)!.polls.length === 2) {
        sandbox.approveDevice(userCode, USER);
      }
    });
    const { refreshToken } = await authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      timing,
      onPrompt: (p) => {
        userCode = p.userCode;
        sandbox.tokenFaults.slowDownNext = 1;
      },
    });
    assert.equal(refreshToken, sandbox.tokens.currentRefreshToken(USER));
    assert.deepEqual(sleeps, [1000, 6000, 6000]);
    assert.equal(sandbox.stats.token.slowDowns, 1);
    assert.equal(sandbox.deviceAuthorization(userCode)!.polls.length, 3);
  }),
);

Deno.test(
  "device code: access_denied and invalid_client are clear, secret-free errors",
  withSandbox(async (sandbox) => {
    const denied = await rejection(authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      onPrompt: (p) => sandbox.denyDevice(p.userCode),
    }));
    assert.equal(denied.code, "access_denied");
    assert.match(denied.message, /denied \(access_denied\)/);
    assertNoSecret(sandbox, denied.message);

    const badClient = await rejection(authorizeWithDeviceCode({
      client: client(sandbox, "wrong-secret"),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      onPrompt: () => assert.fail("no prompt without a device code"),
    }));
    assert.equal(badClient.code, "invalid_client");
    assert.match(badClient.message, /rejected the client id or secret/);
    assert.ok(!badClient.message.includes("wrong-secret"));
    assert.equal(sandbox.tokens.currentRefreshToken(USER), "refresh-0");
  }),
);

Deno.test(
  "device code: stops at expiry by its own clock, and maps the server's expired_token",
  withSandbox(async (sandbox) => {
    sandbox.tokens.deviceCodeTtlSeconds = 2;
    // The client's own deadline: after 2 virtual seconds it gives up, one poll made.
    const own = virtualTiming(1000);
    let userCode = "";
    const byClock = await rejection(authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      timing: own.timing,
      onPrompt: (p) => userCode = p.userCode,
    }));
    assert.equal(byClock.code, "expired_token");
    assert.deepEqual(own.sleeps, [1000, 1000]);
    assert.equal(sandbox.deviceAuthorization(userCode)!.polls.length, 1);

    // A client clock that lags: the server says expired_token.
    sandbox.tokens.deviceCodeTtlSeconds = 1;
    const lagging: Timing = {
      now: () => 0,
      sleep: (ms) => new Promise((ok) => setTimeout(ok, ms + 100)),
    };
    const byServer = await rejection(authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      timing: lagging,
      onPrompt: () => {},
    }));
    assert.equal(byServer.code, "expired_token");
    assert.match(byServer.message, /expired before the sign-in was completed/);
  }),
);

Deno.test(
  "device code: an abort ends polling at once",
  withSandbox(async (sandbox) => {
    const controller = new AbortController();
    const started = Date.now();
    const error = await rejection(authorizeWithDeviceCode({
      client: client(sandbox),
      deviceCodeUrl: sandbox.deviceCodeUrl,
      signal: controller.signal,
      onPrompt: () => setTimeout(() => controller.abort(), 100),
    }));
    assert.equal(error.code, "aborted");
    assert.ok(Date.now() - started < 900, "did not wait for the next poll");
  }),
);

// ---------------------------------------------------------------- PKCE

interface Browser {
  url: string;
  redirectUri: string;
}

/** Starts the PKCE flow; resolves `browser` with what it printed. */
function startPkce(
  sandbox: Sandbox,
  extra: Partial<Parameters<typeof authorizeWithPkce>[0]> = {},
) {
  const printed = Promise.withResolvers<Browser>();
  const result = authorizeWithPkce({
    client: client(sandbox),
    authorizeUrl: sandbox.authorizeUrl,
    issuer: new URL(sandbox.tokenUrl).origin,
    loginHint: USER,
    onAuthorizationUrl: (url, redirectUri) => printed.resolve({ url, redirectUri }),
    ...extra,
  });
  result.catch(() => {}); // inspected by the test
  return { printed: printed.promise, result };
}

/** An async iterable the test pushes lines into. */
function lineQueue() {
  const waiting: ((r: IteratorResult<string>) => void)[] = [];
  const queued: string[] = [];
  let returned = false;
  const iterable: AsyncIterable<string> = {
    [Symbol.asyncIterator]: () => ({
      next: () => {
        if (queued.length) return Promise.resolve({ value: queued.shift()!, done: false });
        if (returned) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => waiting.push(resolve));
      },
      return: () => {
        returned = true;
        for (const resolve of waiting.splice(0)) resolve({ value: undefined, done: true });
        return Promise.resolve({ value: undefined, done: true });
      },
    }),
  };
  const push = (line: string) => {
    const resolve = waiting.shift();
    if (resolve) resolve({ value: line, done: false });
    else queued.push(line);
  };
  return { iterable, push, wasReturned: () => returned };
}

Deno.test(
  "pkce: the browser follows the redirect into the loopback listener",
  withSandbox(async (sandbox) => {
    const paste = lineQueue();
    const { printed, result } = startPkce(sandbox, { pastedUrls: paste.iterable });
    const { url, redirectUri } = await printed;
    assert.match(redirectUri, /^http:\/\/127\.0\.0\.1:\d+$/);
    const query = new URL(url).searchParams;
    assert.equal(query.get("redirect_uri"), redirectUri);
    assert.equal(query.get("code_challenge_method"), "S256");
    assert.equal(query.get("login_hint"), USER);
    assert.ok(query.get("state"));

    const page = await fetch(url); // 302 from the sandbox, then the listener
    assert.equal(page.status, 200);
    assert.match(await page.text(), /^Authorized/);
    assert.ok(page.url.startsWith(`${redirectUri}/?`));
    const { refreshToken } = await result;
    assert.equal(refreshToken, sandbox.tokens.currentRefreshToken(USER));
    assert.ok(paste.wasReturned(), "the paste source was told to stop");
    // The listener is gone.
    await assert.rejects(fetch(`${redirectUri}/?code=x&state=y`));
  }),
);

Deno.test(
  "pkce: a redirect with another state is rejected, nothing is redeemed",
  withSandbox(async (sandbox) => {
    const { printed, result } = startPkce(sandbox);
    const { url } = await printed;
    const forged = new URL(url);
    forged.searchParams.set("state", "forged-state");
    const page = await fetch(forged);
    assert.equal(page.status, 400);
    assert.match(await page.text(), /state does not match/);
    const error = await rejection(result);
    assert.equal(error.code, "state_mismatch");
    assert.match(error.message, /nothing was stored/);
    assert.equal(sandbox.stats.token.authorizations, 0);
    assert.equal(sandbox.tokens.currentRefreshToken(USER), "refresh-0");
  }),
);

Deno.test(
  "pkce: a pasted redirected URL works without the listener (headless host)",
  withSandbox(async (sandbox) => {
    const paste = lineQueue();
    const ignored: string[] = [];
    const { printed, result } = startPkce(sandbox, {
      pastedUrls: paste.iterable,
      onPasteIgnored: (reason) => ignored.push(reason),
    });
    const { url, redirectUri } = await printed;
    const response = await fetch(url, { redirect: "manual" });
    assert.equal(response.status, 302);
    const location = response.headers.get("location")!;
    assert.ok(location.startsWith(`${redirectUri}?`) || location.startsWith(`${redirectUri}/?`));
    paste.push("");
    paste.push("no idea what to paste");
    paste.push(`  ${location}  `);
    const { refreshToken } = await result;
    assert.equal(refreshToken, sandbox.tokens.currentRefreshToken(USER));
    assert.equal(ignored.length, 1);
    assert.match(ignored[0], /not a redirected URL/);
    // A browser arriving late gets an answer at once (the listener was shut down).
    await assert.rejects(fetch(`${redirectUri}/?code=late&state=x`));
  }),
);

Deno.test(
  "pkce: denied, unknown account, wrong issuer, timeout",
  withSandbox(async (sandbox) => {
    sandbox.tokens.denyAuthorizations = true;
    const denied = startPkce(sandbox);
    const deniedPage = await fetch((await denied.printed).url);
    assert.equal(deniedPage.status, 400);
    await deniedPage.body?.cancel();
    assert.equal((await rejection(denied.result)).code, "access_denied");
    sandbox.tokens.denyAuthorizations = false;

    const stranger = startPkce(sandbox, { loginHint: "nobody@example.test" });
    await (await fetch((await stranger.printed).url)).body?.cancel();
    assert.equal((await rejection(stranger.result)).code, "access_denied");

    const mixUp = startPkce(sandbox, { issuer: "https://accounts.google.com" });
    await (await fetch((await mixUp.printed).url)).body?.cancel();
    const mixUpError = await rejection(mixUp.result);
    assert.equal(mixUpError.code, "invalid_response");
    assert.match(mixUpError.message, /iss/);

    const slow = startPkce(sandbox, { timeoutMs: 100 });
    await slow.printed;
    assert.equal((await rejection(slow.result)).code, "timeout");
    assert.equal(sandbox.stats.token.authorizations, 0);
  }),
);
