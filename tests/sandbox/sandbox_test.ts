/**
 * Real-socket tests of the sandbox provider: fetch against the token endpoint,
 * nodemailer (and the tests' raw client) against the SMTP server.
 *
 * deno test --allow-net=127.0.0.1,localhost --allow-read --allow-env tests/sandbox
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import {
  type Sandbox,
  SANDBOX_CA_PEM,
  SandboxSmtpServer,
  TokenEndpoint,
} from "../../src/sandbox/mod.ts";
import { CLIENT_ID, CLIENT_SECRET, FIRST_REFRESH, USER, withSandbox } from "../sandbox_helpers.ts";
import { never, until } from "../harness.ts";
import { RawSmtp } from "../smtp_client.ts";

interface TokenReply {
  status: number;
  body: Record<string, unknown>;
}

/** POSTs a form to the token endpoint and parses the JSON answer. */
async function postToken(
  sandbox: Sandbox,
  form: Record<string, string>,
  headers: Record<string, string> = {},
): Promise<TokenReply> {
  const response = await fetch(sandbox.tokenUrl, {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      ...headers,
    },
    body: new URLSearchParams(form),
  });
  return { status: response.status, body: await response.json() };
}

/** A refresh_token grant with credentials in the body. */
function refresh(
  sandbox: Sandbox,
  refreshToken: string,
  secret = CLIENT_SECRET,
): Promise<TokenReply> {
  return postToken(sandbox, {
    grant_type: "refresh_token",
    refresh_token: refreshToken,
    client_id: CLIENT_ID,
    client_secret: secret,
  });
}

/** A fresh access token for USER. */
async function accessToken(sandbox: Sandbox): Promise<string> {
  const current = sandbox.tokens.currentRefreshToken(USER)!;
  const { status, body } = await refresh(sandbox, current);
  assert.equal(status, 200);
  return String(body.access_token);
}

/** A nodemailer transport for USER with `token`, STARTTLS verified against the sandbox CA. */
function transport(
  sandbox: Sandbox,
  token: string,
  extra: Record<string, unknown> = {},
) {
  return nodemailer.createTransport({
    host: sandbox.smtpHost,
    port: sandbox.smtpPort,
    secure: false,
    requireTLS: true,
    tls: { ca: sandbox.ca },
    auth: { type: "OAuth2", user: USER, accessToken: token },
    ...extra,
  });
}

const RAW = "From: alice@example.test\r\n" +
  "To: bob@example.test\r\n" +
  "Subject: sandbox\r\n" +
  "Content-Type: text/plain; charset=utf-8\r\n" +
  "Content-Transfer-Encoding: 8bit\r\n" +
  "\r\n" +
  ".a line that starts with a dot\r\n" +
  "..two dots\r\n" +
  "\u00fcnic\u00f6de \u2713\r\n" +
  ".\r\n" +
  "last line\r\n";

/** Sends RAW from USER to `to`. */
function sendRaw(
  mailer: ReturnType<typeof transport>,
  to: string[] = ["bob@example.test"],
) {
  return mailer.sendMail({ envelope: { from: USER, to }, raw: RAW });
}

/** Runs `promise`, which must fail, and returns the error. */
async function failure(
  promise: Promise<unknown>,
): Promise<Error & Record<string, unknown>> {
  try {
    await promise;
  } catch (error) {
    return error as Error & Record<string, unknown>;
  }
  throw new assert.AssertionError({ message: "expected a failure" });
}

// ---------------------------------------------------------------- token endpoint

Deno.test(
  "token: refresh returns a Bearer token and rotates the refresh token",
  withSandbox(async (sandbox) => {
    const first = await refresh(sandbox, FIRST_REFRESH);
    assert.equal(first.status, 200);
    assert.equal(first.body.token_type, "Bearer");
    assert.equal(first.body.expires_in, 3600);
    assert.equal(first.body.scope, "https://mail.google.com/");
    const rotated = String(first.body.refresh_token);
    assert.notEqual(rotated, FIRST_REFRESH);
    assert.equal(sandbox.tokens.currentRefreshToken(USER), rotated);
    const token = String(first.body.access_token);
    assert.ok(sandbox.tokens.validateAccessToken(USER, token));
    assert.ok(sandbox.tokens.validateAccessToken(USER.toUpperCase(), token));
    assert.ok(!sandbox.tokens.validateAccessToken("bob@example.test", token));
    assert.ok(!sandbox.tokens.validateAccessToken(USER, token + "x"));

    const reused = await refresh(sandbox, FIRST_REFRESH);
    assert.equal(reused.status, 400);
    assert.equal(reused.body.error, "invalid_grant");

    const second = await refresh(sandbox, rotated);
    assert.equal(second.status, 200);
    assert.notEqual(second.body.refresh_token, rotated);
    assert.equal(sandbox.stats.token.refreshes, 2);
    assert.equal(sandbox.stats.token.refreshesByEmail.get(USER), 2);
    assert.equal(sandbox.stats.token.requests, 3);
  }),
);

Deno.test(
  "token: without rotation the refresh token stays valid and is not returned",
  withSandbox(async (sandbox) => {
    for (let i = 0; i < 2; i++) {
      const { status, body } = await refresh(sandbox, FIRST_REFRESH);
      assert.equal(status, 200);
      assert.equal(body.refresh_token, undefined);
    }
    assert.equal(sandbox.tokens.currentRefreshToken(USER), FIRST_REFRESH);
  }, { rotateRefreshTokens: false }),
);

Deno.test(
  "token: client authentication and RFC 6749 errors",
  withSandbox(async (sandbox) => {
    const basic = "Basic " +
      Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString("base64");
    const viaBasic = await postToken(sandbox, {
      grant_type: "refresh_token",
      refresh_token: FIRST_REFRESH,
    }, { authorization: basic });
    assert.equal(viaBasic.status, 200);

    const wrongSecret = await refresh(sandbox, "whatever", "nope");
    assert.equal(wrongSecret.status, 401);
    assert.equal(wrongSecret.body.error, "invalid_client");

    const unknownClient = await postToken(sandbox, {
      grant_type: "refresh_token",
      refresh_token: "whatever",
      client_id: "someone-else",
    });
    assert.equal(unknownClient.status, 401);
    assert.equal(unknownClient.body.error, "invalid_client");

    const unsupported = await postToken(sandbox, {
      grant_type: "password",
      client_id: CLIENT_ID,
    });
    assert.equal(unsupported.status, 400);
    assert.equal(unsupported.body.error, "unsupported_grant_type");

    const revokedToken = sandbox.tokens.currentRefreshToken(USER)!;
    sandbox.tokens.revoke(USER);
    assert.equal(sandbox.tokens.currentRefreshToken(USER), undefined);
    const revoked = await refresh(sandbox, revokedToken);
    assert.equal(revoked.status, 400);
    assert.equal(revoked.body.error, "invalid_grant");
    assert.equal(typeof revoked.body.error_description, "string");
  }),
);

Deno.test(
  "token: access tokens expire",
  withSandbox(async (sandbox) => {
    sandbox.tokens.accessTokenTtlSeconds = 0;
    const { body } = await refresh(sandbox, FIRST_REFRESH);
    assert.equal(body.expires_in, 0);
    assert.ok(
      !sandbox.tokens.validateAccessToken(USER, String(body.access_token)),
    );
  }),
);

Deno.test(
  "token faults: failNext answers N requests with the given status and body",
  withSandbox(async (sandbox) => {
    Object.assign(sandbox.tokenFaults, { failNext: 1, failStatus: 500 });
    const failed = await refresh(sandbox, FIRST_REFRESH);
    assert.equal(failed.status, 500);

    Object.assign(sandbox.tokenFaults, {
      failNext: 1,
      failStatus: 200,
      failBody: "{not json",
    });
    const response = await fetch(sandbox.tokenUrl, { method: "POST" });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "{not json");

    const ok = await refresh(sandbox, FIRST_REFRESH);
    assert.equal(ok.status, 200);
    assert.equal(sandbox.stats.token.requests, 3);
    assert.equal(sandbox.stats.token.refreshes, 1);
  }),
);

Deno.test(
  "token faults: delayMs delays every answer",
  withSandbox(async (sandbox) => {
    sandbox.tokenFaults.delayMs = 200;
    const started = performance.now();
    assert.equal((await refresh(sandbox, FIRST_REFRESH)).status, 200);
    assert.ok(performance.now() - started >= 190);
  }),
);

Deno.test(
  "token faults: hang never answers; client timeouts and close() still work",
  withSandbox(async (sandbox) => {
    sandbox.tokenFaults.hang = true;
    const timedOut = await failure(
      fetch(sandbox.tokenUrl, {
        method: "POST",
        signal: AbortSignal.timeout(200),
      }),
    );
    assert.equal(timedOut.name, "TimeoutError");

    let settled = false;
    const before = sandbox.stats.token.requests;
    const pending = fetch(sandbox.tokenUrl, { method: "POST" }).then(
      async (response) => {
        settled = true;
        return response.status + " " + (await response.text());
      },
      (error) => {
        settled = true;
        return String(error);
      },
    );
    // The request is in (counted before the hang), then no answer comes for 300 ms.
    assert.ok(await until(() => sandbox.stats.token.requests > before), "request not received");
    assert.ok(await never(() => settled, { forMs: 300 }), "a hanging request was answered");
    await sandbox.close(); // withSandbox closes again: close() is idempotent
    assert.match(await pending, /^503 /);
  }),
);

// ---------------------------------------------------------------- SMTP server

Deno.test(
  "smtp: a valid token delivers the exact bytes",
  withSandbox(async (sandbox) => {
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      const info = await sendRaw(mailer, [
        "bob@example.test",
        "carol@example.test",
      ]);
      assert.match(info.response, /^250 2\.0\.0 OK 1 - sandbox$/);
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 1);
    const [message] = sandbox.received;
    assert.equal(message.user, USER);
    assert.equal(message.from, USER);
    assert.deepEqual(message.to, ["bob@example.test", "carol@example.test"]);
    assert.deepEqual(message.data, new TextEncoder().encode(RAW));
    assert.equal(sandbox.stats.smtp.authSuccesses, 1);
    assert.equal(sandbox.stats.smtp.connections, 1);
  }),
);

Deno.test(
  "smtp: a wrong token gets 334 then 535 5.7.8 (nodemailer tries twice)",
  withSandbox(async (sandbox) => {
    const mailer = transport(sandbox, "not-a-token");
    try {
      const error = await failure(sendRaw(mailer));
      assert.equal(error.code, "EAUTH");
      assert.equal(
        error.response,
        "535 5.7.8 Username and Password not accepted",
      );
      assert.equal(error.responseCode, 535);
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 0);
    assert.equal(sandbox.stats.smtp.authFailures, 2);
  }),
);

Deno.test(
  "smtp: EHLO features; AUTH before STARTTLS and MAIL before AUTH get 530",
  withSandbox(async (sandbox) => {
    const { client, greeting } = await RawSmtp.connect(sandbox.smtpPort);
    try {
      assert.match(greeting!.lines[0], /^220 sandbox\.localhost ESMTP/);
      const ehlo = await client.command("EHLO client.test");
      for (
        const feature of [
          "PIPELINING",
          "8BITMIME",
          "SMTPUTF8",
          "STARTTLS",
          "AUTH XOAUTH2",
          "SIZE 52428800",
        ]
      ) {
        const line = new RegExp(`^250[ -]${feature}$`);
        assert.ok(ehlo.lines.some((l) => line.test(l)), `${feature} in ${ehlo.lines.join(" | ")}`);
      }
      const token = Buffer.from(
        `user=${USER}\x01auth=Bearer ${await accessToken(sandbox)}\x01\x01`,
      ).toString("base64");
      assert.deepEqual(
        (await client.command(`AUTH XOAUTH2 ${token}`)).lines,
        ["530 5.7.0 Must issue a STARTTLS command first"],
      );
      assert.deepEqual(
        (await client.command(`MAIL FROM:<${USER}>`)).lines,
        ["530 5.7.0 Authentication Required"],
      );
    } finally {
      await client.close();
    }
    assert.equal(sandbox.stats.smtp.authFailures, 1);
    assert.equal(sandbox.stats.smtp.authSuccesses, 0);
  }),
);

Deno.test(
  "smtp: nodemailer without STARTTLS cannot authenticate",
  withSandbox(async (sandbox) => {
    const mailer = transport(sandbox, await accessToken(sandbox), {
      requireTLS: false,
      ignoreTLS: true,
    });
    try {
      const error = await failure(sendRaw(mailer));
      assert.equal(
        error.response,
        "530 5.7.0 Must issue a STARTTLS command first",
      );
    } finally {
      mailer.close();
    }
  }),
);

Deno.test(
  "smtp: a client that does not trust the sandbox CA fails, the server carries on",
  withSandbox(async (sandbox) => {
    const token = await accessToken(sandbox);
    const untrusting = transport(sandbox, token, { tls: {} });
    const trusting = transport(sandbox, token);
    try {
      const error = await failure(sendRaw(untrusting));
      assert.match(error.message, /unable to verify the first certificate/);
      await sendRaw(trusting);
    } finally {
      untrusting.close();
      trusting.close();
    }
    assert.equal(sandbox.received.length, 1);
    assert.ok(sandbox.stats.smtp.errors >= 1);
  }),
);

Deno.test(
  "smtp: the size limit is enforced with 552 5.3.4",
  async () => {
    const tokens = await TokenEndpoint.start();
    const smtp = await SandboxSmtpServer.start({ tokens, size: 1000 });
    tokens.addAccount({ email: USER, clientId: CLIENT_ID, refreshToken: "r" });
    try {
      const response = await fetch(tokens.url, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: "r",
          client_id: CLIENT_ID,
        }),
      });
      const { access_token } = await response.json();
      const mailer = nodemailer.createTransport({
        host: "localhost",
        port: smtp.port,
        requireTLS: true,
        tls: { ca: SANDBOX_CA_PEM },
        auth: { type: "OAuth2", user: USER, accessToken: access_token },
      });
      try {
        const error = await failure(
          mailer.sendMail({
            envelope: { from: USER, to: ["bob@example.test"] },
            raw: "Subject: big\r\n\r\n" + "x".repeat(2000) + "\r\n",
          }),
        );
        assert.equal(error.responseCode, 552);
        assert.match(String(error.response), /^552 5\.3\.4 /);
      } finally {
        mailer.close();
      }
      assert.equal(smtp.received.length, 0);
    } finally {
      await smtp.close();
      await tokens.close();
    }
  },
);

// ---------------------------------------------------------------- SMTP faults

Deno.test(
  "smtp faults: rejectAuthNext refuses valid tokens N times",
  withSandbox(async (sandbox) => {
    sandbox.smtpFaults.rejectAuthNext = 2; // nodemailer retries once after 334
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      const error = await failure(sendRaw(mailer));
      assert.equal(
        error.response,
        "535 5.7.8 Username and Password not accepted",
      );
      assert.equal(sandbox.smtpFaults.rejectAuthNext, 0);
      await sendRaw(mailer);
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 1);
    assert.equal(sandbox.stats.smtp.authFailures, 2);
    assert.equal(sandbox.stats.smtp.authSuccesses, 1);
  }),
);

Deno.test(
  "smtp faults: rejectRecipients answers RCPT TO per address",
  withSandbox(async (sandbox) => {
    sandbox.smtpFaults.rejectRecipients.set(
      "ghost@example.test",
      "550 5.1.1 No such user",
    );
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      const partial = await sendRaw(mailer, [
        "ghost@example.test",
        "bob@example.test",
      ]);
      assert.deepEqual(partial.rejected, ["ghost@example.test"]);
      assert.equal(
        partial.rejectedErrors?.[0].response,
        "550 5.1.1 No such user",
      );
      const error = await failure(sendRaw(mailer, ["Ghost@example.test"]));
      assert.equal(error.code, "EENVELOPE");
      assert.equal(error.responseCode, 550);
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 1);
    assert.deepEqual(sandbox.received[0].to, ["bob@example.test"]);
  }),
);

Deno.test(
  "smtp faults: rejectData for the next N messages, or always",
  withSandbox(async (sandbox) => {
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      sandbox.smtpFaults.rejectData = "451 4.3.0 Mail server temporarily rejected message";
      sandbox.smtpFaults.rejectDataCount = 1;
      const transient = await failure(sendRaw(mailer));
      assert.equal(transient.code, "EMESSAGE");
      assert.equal(
        transient.response,
        "451 4.3.0 Mail server temporarily rejected message",
      );
      await sendRaw(mailer);

      sandbox.smtpFaults.rejectData = "550 5.7.1 Message rejected";
      sandbox.smtpFaults.rejectDataCount = Infinity;
      for (let i = 0; i < 2; i++) {
        const permanent = await failure(sendRaw(mailer));
        assert.equal(permanent.response, "550 5.7.1 Message rejected");
      }
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 1);
  }),
);

Deno.test(
  "smtp faults: dropDataNext cuts the connection during DATA",
  withSandbox(async (sandbox) => {
    sandbox.smtpFaults.dropDataNext = 1;
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      const error = await failure(sendRaw(mailer));
      assert.equal(error.code, "ECONNECTION");
      assert.equal(sandbox.received.length, 0);
      await sendRaw(mailer);
    } finally {
      mailer.close();
    }
    assert.equal(sandbox.received.length, 1);
    assert.equal(sandbox.stats.smtp.connections, 2);
  }),
);

Deno.test(
  "smtp faults: replyDelayMs delays MAIL, RCPT and the end of DATA",
  withSandbox(async (sandbox) => {
    const mailer = transport(sandbox, await accessToken(sandbox));
    try {
      sandbox.smtpFaults.replyDelayMs = 100;
      const started = performance.now();
      await sendRaw(mailer, ["bob@example.test", "carol@example.test"]);
      const elapsed = performance.now() - started;
      // MAIL + 2 RCPT + end of DATA; smtp-server answers commands one by one.
      assert.ok(elapsed >= 390, `took ${elapsed} ms`);
    } finally {
      mailer.close();
    }
  }),
);

Deno.test(
  "smtp faults: maxConnectionsPerUser answers AUTH with 432 4.3.2",
  withSandbox(async (sandbox) => {
    sandbox.smtpFaults.maxConnectionsPerUser = 1;
    const token = await accessToken(sandbox);
    const first = transport(sandbox, token, { pool: true, maxConnections: 1 });
    const second = transport(sandbox, token);
    try {
      await sendRaw(first); // the pooled connection stays open
      const error = await failure(sendRaw(second));
      assert.equal(
        error.response,
        "432 4.3.2 Concurrent connections limit exceeded",
      );
    } finally {
      first.close();
      second.close();
    }
    assert.equal(sandbox.received.length, 1);
  }),
);

Deno.test(
  "sandbox: close() drops open SMTP sessions with 421",
  withSandbox(async (sandbox) => {
    const { client } = await RawSmtp.connect(sandbox.smtpPort);
    await client.command("EHLO client.test");
    assert.equal(sandbox.smtp.openConnections, 1);
    await sandbox.close();
    assert.equal(sandbox.smtp.openConnections, 0);
    await client.close();
  }),
);
