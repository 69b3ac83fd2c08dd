/**
 * docs/replies.md, line by line: every row that names `replies_test` is provoked here
 * (real sockets: a client from its own 127.0.0.0/8 address → the relay → the sandbox
 * provider) and must get exactly the documented reply, count once under the documented
 * reason (`smtp_relay_ingress_refusals_total`, or `smtp_relay_messages_total` for
 * messages) and leave one info log line with the client's address, the command and the
 * reply. Rows that name another test must be asserted there. Every documented reason is a
 * reason the listener has, and every reason is documented. Also: what reaches the provider
 * for bare LF / bare CR, byte for byte.
 */
import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import { type Harness, metricValue, PASSWORD, startHarness } from "../harness.ts";
import { plain, RawSmtp } from "../smtp_client.ts";
import { CapturedLogs } from "../tokens/helpers.ts";
import { SourceClient, withIngress } from "./fake_backend.ts";
import { reply } from "../../src/smtp/reply.ts";
import { REFUSAL_REASONS } from "../../src/ingress/replies.ts";

const DOC = new URL("../../docs/replies.md", import.meta.url);
const ROOT = new URL("../../", import.meta.url);
const USER = "user0@example.com";
const MAX_SIZE = 2_000;
const MAX_RCPT = 3;

/** One row of a table in docs/replies.md. */
interface Row {
  situation: string;
  /** The reply's pattern (`…` any text, `N` a number), or undefined when the cell has none. */
  reply?: RegExp;
  /** The literal reply cell's first code span. */
  literal?: string;
  /** Reason (first table) or undefined (second table: messages). */
  reason?: string;
  testedIn: string;
  table: "listener" | "message";
}

/** The two reply tables of the document. */
function rows(text: string): Row[] {
  const out: Row[] = [];
  let table: Row["table"] | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("## Refusals by the relay's listener")) table = "listener";
    else if (line.startsWith("## Replies to a message")) table = "message";
    else if (line.startsWith("## ")) table = undefined;
    if (!table || !line.startsWith("|") || /^\|\s*-/.test(line)) continue;
    const cells = line.split("|").slice(1, -1).map((c) => c.trim());
    if (cells[0] === "situation") continue;
    const literal = /`([^`]+)`/.exec(cells[1])?.[1];
    const reason = table === "listener" ? /`([a-z_]+)`/.exec(cells[2])?.[1] : undefined;
    out.push({
      situation: cells[0],
      literal,
      reply: literal ? pattern(literal) : undefined,
      reason,
      testedIn: cells[cells.length - 1].replaceAll("`", ""),
      table,
    });
  }
  return out;
}

/** `…` → any text, a standalone `N` → digits; everything else literal. */
function pattern(literal: string): RegExp {
  const parts = literal.split(/(…|\bN\b)/);
  const source = parts.map((p) =>
    p === "…" ? ".*" : p === "N" ? "\\d+" : p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  ).join("");
  return new RegExp(`^${source}$`);
}

/** A scenario's outcome: the reply line and how often the row's reason was counted. */
interface Outcome {
  line: string;
  ip: string;
  times?: number;
}

let nextIp = 10;
/** A client from a 127.0.0.0/8 address of its own (limits per IP do not mix). */
async function client(h: Harness): Promise<{ c: SourceClient; ip: string }> {
  const ip = `127.0.${Math.floor(nextIp / 250)}.${(nextIp++ % 250) + 2}`;
  const { client: c } = await SourceClient.connect(h.relay.smtp.port, ip);
  return { c, ip };
}

async function loggedIn(h: Harness): Promise<{ c: SourceClient; ip: string }> {
  const x = await client(h);
  assert.equal((await x.c.command("EHLO client.test")).code, 250);
  assert.equal((await x.c.command(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code, 235);
  return x;
}

/** Runs one command on a fresh logged-in session (after `setup` commands) and returns its reply. */
async function afterLogin(h: Harness, setup: string[], command: string): Promise<Outcome> {
  const { c, ip } = await loggedIn(h);
  try {
    for (const s of setup) assert.ok((await c.command(s)).code < 400, s);
    return { line: (await c.command(command)).last, ip };
  } finally {
    c.close();
  }
}

async function fresh(h: Harness, setup: string[], command: string): Promise<Outcome> {
  const { c, ip } = await client(h);
  try {
    for (const s of setup) await c.command(s);
    return { line: (await c.command(command)).last, ip };
  } finally {
    c.close();
  }
}

const MAIL = `MAIL FROM:<${USER}>`;
const RCPT = "RCPT TO:<someone@example.net>";

/** How each row naming replies_test is provoked (keys: the rows' situations). */
const SCENARIOS: Record<string, (h: Harness, slow: () => Promise<Harness>) => Promise<Outcome>> = {
  "unknown user or wrong password": (h) =>
    fresh(h, ["EHLO client.test"], `AUTH PLAIN ${plain(USER, "wrong")}`),
  "AUTH with a mechanism other than PLAIN and LOGIN": (h) =>
    fresh(h, ["EHLO client.test"], "AUTH CRAM-MD5"),
  "AUTH from an IP with too many failed AUTHs (`authFailuresBeforeDisconnect`)": async (h) => {
    const { c, ip } = await client(h);
    try {
      await c.command("EHLO client.test");
      for (let i = 0; i < 3; i++) {
        // A different name each time: no account lock, only the IP's failures add up.
        const name = `guess-${i}@example.org`;
        assert.equal((await c.command(`AUTH PLAIN ${plain(name, "bad")}`)).code, 535);
      }
      return { line: (await c.command(`AUTH PLAIN ${plain("guess@example.org", "x")}`)).last, ip };
    } finally {
      c.close();
    }
  },
  "AUTH as a name locked after too many failures (`authFailuresBeforeAccountLock`)": async (h) => {
    const name = "locked-name@example.org";
    for (let i = 0; i < 3; i++) {
      const r = await fresh(h, ["EHLO client.test"], `AUTH PLAIN ${plain(name, `x${i}`)}`);
      assert.match(r.line, /^535 /);
    }
    return await fresh(h, ["EHLO client.test"], `AUTH PLAIN ${plain(name, "x")}`);
  },
  "a second AUTH in a session": (h) => afterLogin(h, [], `AUTH PLAIN ${plain(USER, PASSWORD)}`),
  "MAIL before AUTH (not on a trusted network)": (h) => fresh(h, ["EHLO client.test"], MAIL),
  "too many commands before AUTH (`maxUnauthenticatedCommands`)": async (h) => {
    const { c, ip } = await client(h);
    try {
      await c.command("EHLO client.test");
      for (let i = 0; i < 3; i++) assert.equal((await c.command("NOOP")).code, 250);
      return { line: (await c.command("NOOP")).last, ip };
    } finally {
      c.close();
    }
  },
  "MAIL FROM not the account, an alias, or (trusted networks) a mapped sender": (h) =>
    afterLogin(h, [], "MAIL FROM:<someone-else@example.org>"),
  "MAIL FROM that is not an address": (h) => afterLogin(h, [], "MAIL FROM:<a@b@c>"),
  "MAIL FROM with `SIZE=` over `maxMessageSize`": (h) =>
    afterLogin(h, [], `${MAIL} SIZE=${MAX_SIZE + 1}`),
  "MAIL FROM with a malformed `SIZE=`": (h) => afterLogin(h, [], `${MAIL} SIZE=12ab`),
  "a second MAIL in a transaction": (h) => afterLogin(h, [MAIL], MAIL),
  "RCPT before MAIL": (h) => afterLogin(h, [], RCPT),
  "DATA before RCPT": (h) => afterLogin(h, [MAIL], "DATA"),
  "MAIL, RCPT, DATA or AUTH before EHLO/HELO": (h) => fresh(h, [], MAIL),
  "recipient with a quoted local part, with or without a space": async (h) => {
    const a = await afterLogin(h, [MAIL], 'RCPT TO:<"john doe"@example.net>');
    const b = await afterLogin(h, [MAIL], 'RCPT TO:<"john"@example.net>');
    assert.equal(b.line, a.line);
    return { ...a, times: 2 };
  },
  "recipient with `%`": (h) => afterLogin(h, [MAIL], "RCPT TO:<a%b@example.net>"),
  "recipient with `!`": (h) => afterLogin(h, [MAIL], "RCPT TO:<host!user@example.net>"),
  "recipient that is not `local@domain`": (h) => afterLogin(h, [MAIL], "RCPT TO:<postmaster>"),
  "recipient whose domain is not a host name": (h) =>
    afterLogin(h, [MAIL], "RCPT TO:<a@localhost>"),
  "recipient that is not an address at all": (h) =>
    afterLogin(h, [MAIL], "RCPT TO:<a b@example.net>"),
  "recipient beyond `maxRecipients`": (h) =>
    afterLogin(
      h,
      [MAIL, ...Array.from({ length: MAX_RCPT }, (_, i) => `RCPT TO:<r${i}@example.net>`)],
      "RCPT TO:<one-more@example.net>",
    ),
  "message over `maxMessageSize` (the whole message is read, then refused)": async (h) => {
    const { c, ip } = await loggedIn(h);
    try {
      await c.command(MAIL);
      await c.command(RCPT);
      assert.equal((await c.command("DATA")).code, 354);
      c.send(`Subject: big\r\n\r\n${"x".repeat(MAX_SIZE + 100)}\r\n.`);
      return { line: (await c.reply()).last, ip };
    } finally {
      c.close();
    }
  },
  "an unknown command": (h) => fresh(h, [], "FROBNICATE"),
  "the 10th unknown command in a session": async (h) => {
    const { c, ip } = await loggedIn(h);
    try {
      for (let i = 0; i < 9; i++) assert.equal((await c.command(`BOGUS${i}`)).code, 500);
      return { line: (await c.command("BOGUS")).last, ip, times: 10 };
    } finally {
      c.close();
    }
  },
  "a command with bad arguments": (h) => fresh(h, [], "EHLO"),
  "a command line over `maxCommandLength`": (h) => fresh(h, [], `EHLO ${"x".repeat(600)}`),
  "more connections from one IP than `maxConnectionsPerIp`": async (h) => {
    const first = await client(h);
    const ip = first.ip;
    const second = await SourceClient.connect(h.relay.smtp.port, ip);
    const third = await SourceClient.connect(h.relay.smtp.port, ip);
    first.c.close();
    second.client.close();
    third.client.close();
    return { line: third.greeting.last, ip };
  },
  "no command for `idleTimeoutSeconds`": async (_h, slow) => {
    const h = await slow();
    const { c, ip } = await client(h);
    try {
      await c.command("EHLO client.test");
      return { line: (await c.reply(20_000)).last, ip };
    } finally {
      c.close();
    }
  },
  "session longer than `sessionTimeoutSeconds`": async (_h, slow) => {
    const h = await slow();
    const { c, ip } = await loggedIn(h);
    try {
      // Busy (never idle) until the session's time is up.
      for (let i = 0; i < 100; i++) {
        const r = await c.command("NOOP");
        if (r.code !== 250) return { line: r.last, ip };
        await new Promise((ok) => setTimeout(ok, 300));
      }
      throw new Error("no session time limit");
    } finally {
      c.close();
    }
  },
  "delivered": (h) => data(h, "Subject: ok\r\n\r\nHello.\r\n"),
  "provider refused the message": (h) => {
    h.sandbox.smtp.faults.rejectData = "554 5.7.1 Message refused by the sandbox's policy";
    h.sandbox.smtp.faults.rejectDataCount = 1;
    return data(h, "Subject: refused\r\n\r\nNo.\r\n");
  },
};

/** One message in a logged-in session; the reply to its end. */
async function data(h: Harness, message: string): Promise<Outcome> {
  const { c, ip } = await loggedIn(h);
  try {
    await c.command(MAIL);
    await c.command(RCPT);
    assert.equal((await c.command("DATA")).code, 354);
    c.send(`${message}.`);
    return { line: (await c.reply(30_000)).last, ip };
  } finally {
    c.close();
  }
}

/** What a message row counts as in smtp_relay_messages_total. */
const MESSAGE_RESULT: Record<string, string> = {
  "delivered": "delivered",
  "provider refused the message": "rejected",
};

const HARNESS_LIMITS = {
  authFailuresBeforeTarpit: 100,
  authFailuresBeforeDisconnect: 3,
  authFailuresBeforeAccountLock: 3,
  tarpitStepMs: 0,
  maxUnauthenticatedCommands: 5,
  maxCommandLength: 512,
  maxConnectionsPerIp: 2,
};

Deno.test("docs/replies.md: every row is what clients get, counted under its reason and logged once at info", async () => {
  const doc = rows(await Deno.readTextFile(DOC));
  assert.ok(doc.length > 40, `only ${doc.length} rows read`);
  // Reasons: the table's and the code's are the same set (besides the two in the prose).
  const documented = new Set(doc.filter((r) => r.reason).map((r) => r.reason!));
  const prose = ["other", "recipient"];
  assert.deepEqual(
    [...documented, ...prose].sort(),
    [...REFUSAL_REASONS].sort(),
    "docs/replies.md and REFUSAL_REASONS name different reasons",
  );
  for (const r of doc) {
    if (r.testedIn === "replies_test") {
      assert.ok(SCENARIOS[r.situation], `no scenario for the documented row "${r.situation}"`);
    } else {
      // Another test asserts this reply: its file must contain the reply's fixed text.
      const text = await Deno.readTextFile(new URL(r.testedIn, ROOT));
      // Its longest fixed piece of text (after the codes, between placeholders).
      const fixed = (r.literal ?? "").replace(/^\d{3} [245]\.\d+\.\d+ /, "")
        .split(/…|\bN\b/).map((p) => p.trim()).sort((a, b) => b.length - a.length)[0]
        ?.slice(0, 30);
      assert.ok(fixed, `${r.situation}: no fixed text in ${r.literal}`);
      const escaped = fixed.replace(/[.()]/g, "\\$&");
      assert.ok(
        text.includes(fixed) || text.includes(escaped),
        `${r.testedIn} does not assert "${fixed}" (${r.situation})`,
      );
    }
  }
  for (const situation of Object.keys(SCENARIOS)) {
    assert.ok(doc.some((r) => r.situation === situation), `"${situation}" is not documented`);
  }

  const logs = await CapturedLogs.start();
  const h = await startHarness({
    config: {
      smtp: { port: 0, maxMessageSize: MAX_SIZE, maxRecipients: MAX_RCPT },
      limits: HARNESS_LIMITS,
    },
  });
  let slowHarness: Harness | undefined;
  const slow = async () =>
    slowHarness ??= await startHarness({
      config: {
        limits: { ...HARNESS_LIMITS, idleTimeoutSeconds: 1, sessionTimeoutSeconds: 3 },
      },
    });
  const problems: string[] = [];
  try {
    for (const row of doc.filter((r) => r.testedIn === "replies_test")) {
      const target = row.situation.startsWith("no command") || row.situation.startsWith("session")
        ? await slow()
        : h;
      const series = row.reason
        ? `smtp_relay_ingress_refusals_total{reason="${row.reason}"}`
        : `smtp_relay_messages_total{result="${MESSAGE_RESULT[row.situation]}"}`;
      const before = metricValue(await target.metrics(), series);
      const out = await SCENARIOS[row.situation](h, slow);
      const expected = row.reply ?? /^554 5\.7\.1 Message refused by the sandbox's policy$/;
      if (!expected.test(out.line)) {
        problems.push(`${row.situation}: documented ${expected}, got "${out.line}"`);
        continue;
      }
      // Counted once (the reply is written before the counter moves; allow it a moment).
      let after = before;
      for (let i = 0; i < 50 && after < before + (out.times ?? 1); i++) {
        after = metricValue(await target.metrics(), series);
        if (after < before + (out.times ?? 1)) await new Promise((ok) => setTimeout(ok, 50));
      }
      if (after - before !== (out.times ?? 1)) {
        problems.push(`${row.situation}: ${series} moved by ${after - before}`);
      }
      if (out.line.startsWith("2")) continue;
      const line = logs.records.find((r: LogRecord) =>
        r.level === "info" && r.properties.ip === out.ip && r.properties.reply === out.line &&
        r.properties.reason === (row.reason ?? "message")
      );
      if (!line) problems.push(`${row.situation}: no info line for ${out.ip} "${out.line}"`);
    }
    assert.deepEqual(problems, []);
    // A failed AUTH names the configured account it tried; nothing else of it is logged.
    const failed = logs.records.find((r) =>
      r.properties.reason === "auth" &&
      r.properties.reply === "535 5.7.8 Authentication credentials invalid" &&
      r.properties.account === USER
    );
    assert.ok(failed, "the failed AUTH as a configured account does not name it");
    // The line as docs/replies.md shows it.
    const shown = logs.lines.map((l) => JSON.parse(l).message as string)
      .filter((m) => m.includes("relay hack"));
    assert.equal(shown.length, 1);
    assert.match(
      shown[0],
      /^refused "RCPT" "<a%b@example\.net>" from "127\.[\d.]+" as "user0@example\.com": "550 5\.1\.3 The % relay hack is not accepted"$/,
    );
    // No refusal fell through to "other", and no line carries a password.
    assert.equal(
      metricValue(await h.metrics(), 'smtp_relay_ingress_refusals_total{reason="other"}'),
      0,
    );
    assert.ok(!logs.text.includes(PASSWORD));
  } finally {
    await slowHarness?.close();
    await h.close();
    await logs.stop();
  }
});

Deno.test("logged: a client that vanishes mid-DATA, after RCPT or before its reply, one info line each", async () => {
  const logs = await CapturedLogs.start();
  const h = await startHarness();
  try {
    const a = await loggedIn(h);
    await a.c.command(MAIL);
    await a.c.command(RCPT);
    assert.equal((await a.c.command("DATA")).code, 354);
    a.c.send("Subject: cut\r\n\r\nhalf a mess");
    await new Promise((ok) => setTimeout(ok, 200));
    a.c.close();
    const b = await loggedIn(h);
    await b.c.command(MAIL);
    await b.c.command(RCPT);
    b.c.close();
    const aborted = (ip: string) =>
      logs.records.filter((r) =>
        r.level === "info" && r.properties.ip === ip && /left/.test(String(r.message))
      );
    const deadline = Date.now() + 10_000;
    while ((aborted(a.ip).length === 0 || aborted(b.ip).length === 0) && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 50));
    }
    const la = aborted(a.ip);
    assert.equal(la.length, 1, logs.text);
    assert.match(
      la[0].message.join(""),
      /left during DATA after .* transaction aborted, message not delivered/,
    );
    assert.equal(la[0].properties.account, USER);
    const lb = aborted(b.ip);
    assert.equal(lb.length, 1, logs.text);
    assert.match(
      lb[0].message.join(""),
      /left after .*RCPT.* with .*1.* recipients and no message/,
    );
    // Neither counts as a refusal or a local error, and nothing reached the provider.
    assert.equal(h.sandbox.received.length, 0);

    // A client that leaves after its whole message, before the reply: the relay finishes
    // the delivery (the provider gets it) and says so.
    h.sandbox.smtp.faults.replyDelayMs = 1_000;
    const d = await loggedIn(h);
    await d.c.command(MAIL);
    await d.c.command(RCPT);
    assert.equal((await d.c.command("DATA")).code, 354);
    d.c.send("Subject: whole\r\n\r\nAll of it.\r\n.");
    await new Promise((ok) => setTimeout(ok, 300));
    d.c.close();
    const until = Date.now() + 20_000;
    while ((aborted(d.ip).length === 0 || h.sandbox.received.length === 0) && Date.now() < until) {
      await new Promise((ok) => setTimeout(ok, 50));
    }
    const ld = aborted(d.ip);
    assert.equal(ld.length, 1, logs.text);
    assert.match(ld[0].message.join(""), /left before the reply to its message/);
    assert.equal(h.sandbox.received.length, 1);
    assert.equal(
      metricValue(await h.metrics(), 'smtp_relay_ingress_refusals_total{reason="local_error"}'),
      0,
    );
  } finally {
    await h.close();
    await logs.stop();
  }
});

Deno.test("what reaches the provider: bare LF and bare CR become CRLF, every other byte unchanged", async () => {
  const h = await startHarness();
  try {
    const { client: c } = await RawSmtp.connect(h.relay.smtp.port);
    await c.command("EHLO client.test");
    assert.equal((await c.command(`AUTH PLAIN ${plain(USER, PASSWORD)}`)).code, 235);
    const send = async (body: Uint8Array) => {
      await c.command(MAIL);
      await c.command(RCPT);
      assert.equal((await c.command("DATA")).code, 354);
      await c.write(body);
      await c.write(".\r\n");
      assert.match((await c.reply()).last, /^250 /);
    };
    const enc = new TextEncoder();
    await send(enc.encode("Subject: endings\r\n\r\nbare LF\nbare CR\rboth\r\r\nend\r\n"));
    assert.equal(
      new TextDecoder().decode(h.sandbox.received[0].data),
      "Subject: endings\r\n\r\nbare LF\r\nbare CR\r\nboth\r\n\r\nend\r\n",
    );
    // CRLF throughout, 8-bit bytes and a dot-stuffed line: byte for byte (after unstuffing).
    const eight = new Uint8Array([
      ...enc.encode("Subject: bytes\r\n\r\n"),
      0xe9,
      0xff,
      0x80,
      0x09,
      0x20,
      ...enc.encode("\r\n..dot\r\n"),
    ]);
    await send(eight);
    const expected = new Uint8Array([
      ...enc.encode("Subject: bytes\r\n\r\n"),
      0xe9,
      0xff,
      0x80,
      0x09,
      0x20,
      ...enc.encode("\r\n.dot\r\n"),
    ]);
    assert.deepEqual(h.sandbox.received[1].data, expected);
    await c.close();
  } finally {
    await h.close();
  }
});

Deno.test("reasons the relay gives only on a backend's word: recipient and local_error, against a fake backend", async () => {
  await withIngress(async (ingress, backend, observer) => {
    const port = ingress.addresses[0].port;
    const { client: c } = await SourceClient.connect(port, "127.0.0.2");
    try {
      await c.command("EHLO client.test");
      assert.equal((await c.command(`AUTH PLAIN ${plain("a@example.com", "pw")}`)).code, 235);
      assert.equal((await c.command("MAIL FROM:<a@example.com>")).code, 250);
      backend.script.rcpt = reply(550, "5.1.1", "No such user here");
      assert.equal((await c.command(RCPT)).last, "550 5.1.1 No such user here");
      assert.equal(observer.count("recipient"), 1);
      backend.script.rcpt = "throw";
      const r = await c.command(RCPT);
      assert.equal(r.last, "451 4.3.0 Local error in processing, try again later");
      assert.equal(observer.count("local_error"), 1);
      assert.deepEqual(observer.refusals, ["recipient", "local_error"]);
    } finally {
      c.close();
    }
  });
});
