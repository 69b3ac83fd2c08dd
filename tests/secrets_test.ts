/**
 * Issue 4, item 9: secrets hygiene. A full session set — good deliveries (PLAIN and
 * LOGIN), wrong passwords, unknown users, malformed AUTH, token endpoint failures
 * (HTTP 500, OAuth error bodies, timeouts), provider refusals (550 to DATA and to a
 * recipient, a dropped connection, 535 to the relay's token once and twice, so tokens
 * are renewed and refresh tokens rotate), `invalid_grant`, the AUTH throttle — with every
 * log record captured at the lowest level. Then no client password (plain or as sent in
 * AUTH PLAIN/LOGIN), refresh token (the configured one and every rotated one), access
 * token (every one the token endpoint issued), client secret or password hash may appear
 * in the logs (formatted JSON lines and the raw record properties), the /metrics text, the
 * /readyz, /healthz and /accounts bodies, or any SMTP reply a client received.
 *
 * Access tokens are collected twice, independently: from the token endpoint's responses
 * as the relay receives them (the relay runs in this process, so its `fetch` is the global
 * one and is wrapped here) and from the sandbox SMTP server's token checks (every token
 * the relay presented upstream). The test checks that the two agree.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { configure, jsonLinesFormatter, type LogRecord, reset } from "@logtape/logtape";
import type { NodemailerError, SMTPSentMessageInfo, Transporter } from "nodemailer";
import {
  type Harness,
  PASSWORD,
  rawMessage,
  startHarness,
  type TestAccount,
  until,
} from "./harness.ts";
import { RawSmtp } from "./smtp_client.ts";

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");

/**
 * The base64 text that `secret` becomes wherever it sits in a longer base64-encoded
 * value (AUTH PLAIN blobs, XOAUTH2 strings, Basic credentials): for each of the three
 * byte alignments, the characters that depend on the secret's bytes alone.
 */
function base64Cores(secret: string): string[] {
  const bytes = Buffer.from(secret, "utf8");
  const cores: string[] = [];
  for (let pad = 0; pad < 3; pad++) {
    const encoded = Buffer.concat([Buffer.alloc(pad, 0x20), bytes]).toString("base64");
    const from = pad === 0 ? 0 : 4; // the first group mixes padding and secret bytes
    const to = Math.floor((pad + bytes.length) / 3) * 4; // the last full group
    if (to - from >= 12) cores.push(encoded.slice(from, to));
  }
  return cores;
}

/** A secret and the forms it may take in text. */
class Secrets {
  readonly #forms = new Map<string, string>();

  /** Adds `value` (and its base64 forms) under `label`. */
  add(label: string, value: string | undefined): void {
    if (!value) return;
    assert.ok(value.length >= 8, `secret ${label} too short to search for`);
    this.#forms.set(value, label);
    this.#forms.set(b64(value), `${label} (base64)`);
    this.#forms.set(encodeURIComponent(value), `${label} (URL-encoded)`);
    for (const core of base64Cores(value)) this.#forms.set(core, `${label} (inside base64)`);
  }

  /** Adds a form verbatim (e.g. an AUTH PLAIN blob). */
  addForm(label: string, form: string): void {
    this.#forms.set(form, label);
  }

  get size(): number {
    return this.#forms.size;
  }

  /** Every secret form found in `text`, as "label in surface". */
  find(surface: string, text: string): string[] {
    const found: string[] = [];
    for (const [form, label] of this.#forms) {
      if (text.includes(form)) found.push(`${label} in ${surface}: …${context(text, form)}…`);
    }
    return found;
  }
}

function context(text: string, form: string): string {
  const at = text.indexOf(form);
  return text.slice(Math.max(0, at - 60), at + form.length + 20).replace(/\s+/g, " ");
}

/** Everything in a log record, deeply: errors with stack and cause, bytes, maps. */
function dump(value: unknown, seen = new Set<unknown>(), depth = 0): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === "string") return value;
  if (typeof value !== "object" && typeof value !== "function") return String(value);
  if (seen.has(value) || depth > 12) return "[seen]";
  seen.add(value);
  const parts: string[] = [];
  if (value instanceof Error) parts.push(value.name, value.message, value.stack ?? "");
  if (value instanceof Uint8Array) return Buffer.from(value).toString("latin1");
  if (value instanceof Map) {
    for (const [k, v] of value) parts.push(dump(k, seen, depth + 1), dump(v, seen, depth + 1));
    return parts.join(" ");
  }
  if (typeof value === "function") return String(value.name);
  for (const key of Reflect.ownKeys(value)) {
    let v: unknown;
    try {
      v = (value as Record<PropertyKey, unknown>)[key];
    } catch {
      continue;
    }
    parts.push(`${String(key)}=${dump(v, seen, depth + 1)}`);
  }
  if (value instanceof Error && value.cause !== undefined) parts.push(dump(value.cause, seen));
  return parts.join(" ");
}

/** Secret-carrying fields of token endpoint traffic, as the relay sent and received them. */
class TokenTraffic {
  readonly accessTokens = new Set<string>();
  readonly refreshTokens = new Set<string>();
  readonly clientSecretsSent = new Set<string>();
  responses = 0;
  readonly #fetch = globalThis.fetch;

  /** Wraps the global fetch; every call still goes through unchanged. */
  install(): void {
    const real = this.#fetch;
    globalThis.fetch = async (input: string | URL | Request, init?: RequestInit) => {
      const body = init?.body;
      const params = body instanceof URLSearchParams
        ? body
        : typeof body === "string"
        ? new URLSearchParams(body)
        : undefined;
      const rt = params?.get("refresh_token");
      if (rt) this.refreshTokens.add(rt);
      const cs = params?.get("client_secret");
      if (cs) this.clientSecretsSent.add(cs);
      const response = await real(input, init);
      if (params?.get("grant_type")) {
        this.responses++;
        try {
          const json = JSON.parse(await response.clone().text());
          if (typeof json.access_token === "string") this.accessTokens.add(json.access_token);
          if (typeof json.refresh_token === "string") this.refreshTokens.add(json.refresh_token);
        } catch {
          // not JSON (an injected HTTP 500 page): nothing to collect
        }
      }
      return response;
    };
  }

  uninstall(): void {
    globalThis.fetch = this.#fetch;
  }
}

/** Every log record, formatted (JSON lines) and dumped raw. */
class LogCapture {
  readonly lines: string[] = [];
  readonly raw: string[] = [];
  readonly records: LogRecord[] = [];

  async install(): Promise<void> {
    await configure({
      reset: true,
      sinks: {
        capture: (record: LogRecord) => {
          this.records.push(record);
          this.lines.push(jsonLinesFormatter(record));
          this.raw.push(dump({
            category: record.category,
            message: record.message,
            rawMessage: record.rawMessage,
            properties: record.properties,
          }));
        },
      },
      // The root logger at the lowest level: every category, LogTape's own included.
      loggers: [{ category: [], lowestLevel: "trace", sinks: ["capture"] }],
    });
  }

  /** True if some record's message (rendered) matches. */
  has(pattern: RegExp): boolean {
    return this.records.some((r) => pattern.test(r.message.map((m) => dump(m)).join("")));
  }
}

Deno.test("no password, token, client secret or password hash in logs, metrics, health or replies", async () => {
  const logs = new LogCapture();
  await logs.install();
  const traffic = new TokenTraffic();
  traffic.install();
  let h: Harness | undefined;
  try {
    h = await startHarness({
      accounts: 2,
      config: {
        // No failure hold: each token failure below is a fresh refresh.
        tokens: { attempts: 2, retryBaseMs: 10, timeoutMs: 1_000, failureHoldSeconds: 0 },
        // Loopback exempt from the AUTH-failure limits: the failures below are all checked.
        limits: {
          tarpitStepMs: 0,
          authFailuresBeforeDisconnect: 25,
          authFailureExempt: ["127.0.0.0/8"],
        },
        metrics: { perAccount: true },
      },
    });
    const harness = h;
    const [a0, a1] = h.accounts;
    const sandbox = h.sandbox;

    // Every access token the relay presents upstream, as the provider's SMTP server sees it.
    const presented = new Set<string>();
    const validate = sandbox.tokens.validateAccessToken.bind(sandbox.tokens);
    sandbox.tokens.validateAccessToken = (email: string, token: string) => {
      presented.add(token);
      return validate(email, token);
    };
    // Every refresh token the provider considers current, after each step.
    const refreshTokens = new Set<string>([a0.refreshToken, a1.refreshToken]);
    const snapshot = () => {
      for (const a of [a0, a1]) {
        const t = sandbox.tokens.currentRefreshToken(a.email);
        if (t) refreshTokens.add(t);
      }
    };

    const replies: string[] = [];
    const wrong = [`wrong-${crypto.randomUUID()}`, `typo-${crypto.randomUUID()}`];
    const unknownPassword = `unknown-${crypto.randomUUID()}`;
    const ghost: TestAccount = { ...a0, email: "ghost@example.com", password: unknownPassword };
    const nobody: TestAccount = { ...a0, email: "nobody@example.com" }; // with the real password

    const send = async (
      client: Transporter<SMTPSentMessageInfo>,
      from: TestAccount,
      to = ["rcpt@example.net"],
    ): Promise<string> => {
      try {
        const info = await client.sendMail({
          envelope: { from: from.email, to },
          raw: Buffer.from(rawMessage(from.email, to[0], "secrets test\r\n")),
        });
        replies.push(info.response, ...(info.rejectedErrors ?? []).map((e) => dump(e)));
        return info.response;
      } catch (err) {
        const e = err as NodemailerError;
        replies.push(e.response ?? "", e.message, dump(e));
        return e.response ?? e.message;
      } finally {
        snapshot();
      }
    };
    const client = (account: TestAccount, method: "PLAIN" | "LOGIN", password?: string) =>
      harness.client(account, { method, password });
    /** A raw session: every line sent, every reply line kept. */
    const raw = async (lines: string[]): Promise<string[]> => {
      const s = await RawSmtp.open(harness.relay.smtp.port);
      try {
        await s.write(lines.map((l) => `${l}\r\n`).join(""));
        await s.waitClosed(15_000);
      } finally {
        await s.close();
      }
      const got = s.replies.flatMap((r) => r.lines);
      replies.push(...got, ...s.malformed);
      return got;
    };
    const expect = (got: string, pattern: RegExp) => assert.match(got, pattern);

    // Token endpoint failures while account 1 is cold (no token yet).
    sandbox.tokenFaults.failNext = 2;
    expect(await send(client(a1, "PLAIN"), a1), /^451 4\.4\.3 .*HTTP 500/);
    sandbox.tokenFaults.failNext = 2;
    sandbox.tokenFaults.failStatus = 400;
    sandbox.tokenFaults.failBody = '{"error":"invalid_request","error_description":"try later"}';
    expect(await send(client(a1, "LOGIN"), a1), /^451 4\.4\.3 .*invalid_request/);
    sandbox.resetFaults();
    sandbox.tokenFaults.hang = true; // no answer: the relay gives up after tokens.timeoutMs
    expect(await send(client(a1, "PLAIN"), a1), /^451 4\.4\.3 .*no answer within 1000 ms/);
    sandbox.resetFaults();

    // Good deliveries, both mechanisms, both accounts.
    for (
      const [a, method] of [[a0, "PLAIN"], [a0, "LOGIN"], [a1, "PLAIN"], [a1, "LOGIN"]] as const
    ) {
      expect(await send(client(a, method), a), /^250 2\.0\.0 OK, upstream said: 250 /);
    }

    // Wrong passwords and unknown users.
    expect(await send(client(a0, "PLAIN", wrong[0]), a0), /^535 5\.7\.8 /);
    expect(await send(client(a1, "LOGIN", wrong[1]), a1), /^535 5\.7\.8 /);
    expect(await send(client(nobody, "PLAIN"), nobody), /^535 5\.7\.8 /);
    expect(await send(client(ghost, "LOGIN"), ghost), /^535 5\.7\.8 /);

    // Raw AUTH: initial response and continuation forms, right and wrong, malformed.
    const plain0 = b64(`\0${a0.email}\0${PASSWORD}`);
    const rawLogins = [
      ["EHLO client.test", `AUTH PLAIN ${plain0}`, "QUIT"],
      ["EHLO client.test", "AUTH PLAIN", plain0, "QUIT"],
      ["EHLO client.test", "AUTH LOGIN", b64(a1.email), b64(PASSWORD), "QUIT"],
      ["EHLO client.test", `AUTH LOGIN ${b64(a1.email)}`, b64(wrong[0]), "QUIT"],
      ["EHLO client.test", `AUTH PLAIN ${b64(`${a0.email}\0${a0.email}\0${wrong[1]}`)}`, "QUIT"],
      ["EHLO client.test", `AUTH PLAIN ${plain0.slice(0, 20)}!${plain0.slice(20)}`, "QUIT"],
      ["EHLO client.test", `AUTH PLAIN ${b64(PASSWORD)}`, "QUIT"],
      ["EHLO client.test", `AUTH PLAIN ${plain0} ${plain0}`, "QUIT"],
      [
        "EHLO client.test",
        `AUTH XOAUTH2 ${b64(`user=${a0.email}\x01auth=Bearer x\x01\x01`)}`,
        "QUIT",
      ],
    ];
    for (const lines of rawLogins) await raw(lines);
    // A client that leaves in the middle of DATA (logged at debug level).
    const leaver = await RawSmtp.open(harness.relay.smtp.port);
    try {
      await leaver.write(
        `EHLO client.test\r\nAUTH PLAIN ${plain0}\r\nMAIL FROM:<${a0.email}>\r\n` +
          "RCPT TO:<rcpt@example.net>\r\nDATA\r\n",
      );
      assert.ok(await leaver.waitReplies(6, 5_000));
      assert.equal(leaver.replies.at(-1)?.code, 354);
      await leaver.write("Subject: half a message\r\n\r\npartial");
    } finally {
      await leaver.close();
    }
    replies.push(...leaver.replies.flatMap((r) => r.lines));

    // Provider refusals: to the message, to one recipient of two, a dropped connection.
    sandbox.smtpFaults.rejectData = "550 5.7.1 Message rejected by policy";
    sandbox.smtpFaults.rejectDataCount = 1;
    expect(await send(client(a0, "PLAIN"), a0), /^550 5\.7\.1 /);
    sandbox.smtpFaults.rejectRecipients.set("gone@example.net", "550 5.1.1 No such user");
    expect(
      await send(client(a0, "PLAIN"), a0, ["rcpt@example.net", "gone@example.net"]),
      /^250 2\.0\.0 Delivered to 1 of 2 recipients/,
    );
    // The sender's non-delivery report goes out after the reply: let it land before the
    // next fault is armed (it would take that fault instead of the next message).
    assert.ok(
      await until(() => sandbox.received.some((m) => m.from === "")),
      "non-delivery report sent",
    );
    // A dropped connection makes the next message open (and AUTH) a new one.
    sandbox.smtpFaults.dropDataNext = 1;
    expect(await send(client(a0, "PLAIN"), a0), /^451 4\.4\.1 /);
    // The provider refuses the token once: renewed (a refresh, a rotation), then delivered.
    sandbox.smtpFaults.rejectAuthNext = 1;
    expect(await send(client(a0, "PLAIN"), a0), /^250 2\.0\.0 OK/);
    // Twice: 454, nothing delivered.
    sandbox.smtpFaults.dropDataNext = 1;
    expect(await send(client(a0, "LOGIN"), a0), /^451 4\.4\.1 /);
    sandbox.smtpFaults.rejectAuthNext = 2;
    expect(await send(client(a0, "PLAIN"), a0), /^454 4\.7\.0 Provider refused the relay's token/);
    expect(await send(client(a0, "PLAIN"), a0), /^250 2\.0\.0 OK/);

    // invalid_grant: account 1's refresh token is revoked; the next renewal parks it.
    sandbox.smtpFaults.dropDataNext = 1;
    expect(await send(client(a1, "PLAIN"), a1), /^451 4\.4\.1 /);
    snapshot();
    sandbox.tokens.revoke(a1.email);
    sandbox.smtpFaults.rejectAuthNext = 1;
    expect(
      await send(client(a1, "PLAIN"), a1),
      /^454 4\.7\.0 Account needs re-authorization by the relay operator \(invalid_grant/,
    );
    expect(await send(client(a1, "LOGIN"), a1), /^454 4\.7\.0 Account needs re-authorization/);

    // Operator surfaces while one account needs re-authorization.
    const http = async (path: string) => {
      const r = await fetch(`http://127.0.0.1:${harness.relay.http.port}${path}`);
      return `${r.status} ${await r.text()}`;
    };
    const surfaces: [string, string][] = [
      ["/metrics", await http("/metrics")],
      ["/readyz", await http("/readyz")],
      ["/healthz", await http("/healthz")],
      ["/accounts", await http("/accounts")],
    ];
    assert.match(surfaces[1][1], /"needsReauth":1/);

    // Last: a run of failures from loopback (tarpitted per account, never locked out).
    for (let i = 0; i < 30; i++) {
      expect(await send(client(a0, "PLAIN", wrong[i % 2]), a0), /^535 5\.7\.8 /);
    }
    surfaces.push(["/metrics (end)", await http("/metrics")]);
    snapshot();

    // ---- the secrets and where they must not be ----------------------------------
    const secrets = new Secrets();
    for (const [i, pw] of [PASSWORD, ...wrong, unknownPassword].entries()) {
      secrets.add(`password ${i}`, pw);
      for (const user of [a0.email, a1.email, ghost.email, nobody.email]) {
        secrets.addForm(`AUTH PLAIN blob of password ${i}`, b64(`\0${user}\0${pw}`));
        secrets.addForm(`AUTH PLAIN blob of password ${i}`, b64(`${user}\0${user}\0${pw}`));
      }
    }
    for (const t of [...refreshTokens, ...traffic.refreshTokens]) secrets.add("refresh token", t);
    for (const t of [...traffic.accessTokens, ...presented]) {
      secrets.add("access token", t);
      for (const a of [a0, a1]) {
        secrets.addForm("XOAUTH2 string", b64(`user=${a.email}\x01auth=Bearer ${t}\x01\x01`));
      }
    }
    for (const a of [a0, a1]) secrets.add(`client secret of ${a.email}`, a.clientSecret);
    for (const account of h.config.accounts) {
      const hash = account.passwordHash;
      secrets.add("password hash", hash);
      for (const part of hash.split("$").slice(4)) secrets.add("password hash part", part);
    }

    // The run did what it claims: tokens were issued, renewed, rotated, revoked.
    assert.ok(traffic.accessTokens.size >= 4, `access tokens issued: ${traffic.accessTokens.size}`);
    assert.equal(traffic.accessTokens.size, sandbox.stats.token.refreshes);
    for (const t of presented) {
      assert.ok(traffic.accessTokens.has(t), "a token was presented that no response carried");
    }
    assert.ok(presented.size >= 3, `access tokens presented upstream: ${presented.size}`);
    assert.ok(refreshTokens.size >= 5, `refresh tokens seen: ${refreshTokens.size}`);
    for (const t of refreshTokens) {
      if (t !== a1.refreshToken && t !== a0.refreshToken) {
        assert.ok(traffic.refreshTokens.has(t), "a rotated token the relay never received");
      }
    }
    assert.deepEqual(
      [...traffic.clientSecretsSent].sort(),
      [a0.clientSecret, a1.clientSecret].sort(),
    );
    assert.ok(sandbox.stats.smtp.authFailures >= 4, "provider AUTH refusals");
    assert.equal(sandbox.received.length, 8); // 7 messages and 1 non-delivery report

    // And the logs saw the failures (at debug level), so their silence about secrets counts.
    for (
      const p of [
        /token refreshed for/,
        /token refresh failed for .* after 2 attempts: HTTP 500/,
        /no answer within 1000 ms/,
        /needs re-authorization \(invalid_grant/,
        /authentication failed for an unknown user from 127\.0\.0\.1/,
        /authentication failed for user0@example\.com from 127\.0\.0\.1/,
        /^delivered user0@example\.com/,
        /^rejected user0@example\.com/,
        /^partial user0@example\.com/,
        /^upstream_auth user0@example\.com/,
        /^unreachable user0@example\.com/,
        /^token_error user1@example\.com/,
        /client connection error/,
      ]
    ) assert.ok(logs.has(p), `no log record matches ${p}`);
    assert.ok(logs.records.some((r) => r.level === "debug"), "debug records were captured");

    const leaks = [
      ...logs.lines.flatMap((l, i) => secrets.find(`log line ${i}`, l)),
      ...logs.raw.flatMap((l, i) => secrets.find(`log record ${i} (raw)`, l)),
      ...surfaces.flatMap(([name, text]) => secrets.find(name, text)),
      ...replies.flatMap((r, i) => secrets.find(`SMTP reply ${i}`, r)),
    ];
    assert.deepEqual(leaks, []);

    // The search itself works (a planted secret is found in every form).
    const probe = [...traffic.accessTokens][0];
    assert.equal(secrets.find("probe", `x ${probe} y`).length, 1);
    assert.ok(
      secrets.find("probe", b64(`user=${a0.email}\x01auth=Bearer ${probe}\x01\x01`)).length,
    );
    assert.ok(secrets.find("probe", `AUTH PLAIN ${plain0}`).length);
    console.log(
      `secrets: ${secrets.size} secret forms searched in ${logs.lines.length} log records, ` +
        `${surfaces.length} HTTP bodies and ${replies.length} SMTP replies; ` +
        `${traffic.accessTokens.size} access tokens, ${refreshTokens.size} refresh tokens`,
    );
  } finally {
    traffic.uninstall();
    await h?.close();
    await reset();
  }
});

/**
 * A client that puts the password where the username goes (swapped fields in a printer's
 * form, a LOGIN client answering the prompts in the wrong order) gets 535 — and the
 * password must not reach the logs through the failed-login line either.
 */
Deno.test("a password sent as the username is not logged", async () => {
  const logs = new LogCapture();
  await logs.install();
  let h: Harness | undefined;
  try {
    h = await startHarness();
    const a = h.accounts[0];
    const session = async (lines: string[]) => {
      const s = await RawSmtp.open(h!.relay.smtp.port);
      try {
        await s.write(lines.map((l) => `${l}\r\n`).join(""));
        assert.ok(await s.waitClosed(15_000));
      } finally {
        await s.close();
      }
      return s.replies.map((r) => r.code);
    };
    // LOGIN, prompts answered in the wrong order.
    const login = ["EHLO client.test", "AUTH LOGIN", b64(PASSWORD), b64(a.email), "QUIT"];
    assert.deepEqual(await session(login), [220, 250, 334, 334, 535, 221]);
    // PLAIN with the fields swapped.
    const plain = `AUTH PLAIN ${b64(`\0${PASSWORD}\0${a.email}`)}`;
    assert.deepEqual(await session(["EHLO client.test", plain, "QUIT"]), [220, 250, 535, 221]);
    assert.ok(logs.has(/authentication failed for/), "the failed logins were logged");
    const secrets = new Secrets();
    secrets.add("password", PASSWORD);
    const leaks = [
      ...logs.lines.flatMap((l, i) => secrets.find(`log line ${i}`, l)),
      ...logs.raw.flatMap((l, i) => secrets.find(`log record ${i} (raw)`, l)),
    ];
    assert.deepEqual(leaks, []);
  } finally {
    await h?.close();
    await reset();
  }
});
