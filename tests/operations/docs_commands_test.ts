/**
 * Every command line documented in README.md and docs/*.md (see doc_commands.ts) runs as
 * written against the sandbox: `deno task …` through the real tasks of deno.json, with a
 * sandbox `accounts.ts` (its path put where the docs name one, or `--config` added), free
 * ports where the docs name fixed ones, and the sandbox account where they name a mailbox (`--account`, `--mailbox`).
 * A command that no rule below knows fails the test, and so does a rule whose command is no
 * longer documented: when the docs change, this file changes with them. Commands that cannot
 * run on this machine (root, systemd, the compiled binary) say why, and what proves them.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";
import nodemailer from "nodemailer";
import { type Sandbox, startSandbox } from "../../src/sandbox/mod.ts";
import { freePort, makeAccounts, PASSWORD, rawMessage, type TestAccount } from "../harness.ts";
import { configText } from "./relay_process.ts";
import { type DocCommand, documentedCommands, shellWords } from "./doc_commands.ts";

const ROOT = new URL("../../", import.meta.url);
const ROOT_DIR = fileURLToPath(ROOT);
const MAIN = fileURLToPath(new URL("src/main.ts", ROOT));
const LAUNCH = fileURLToPath(new URL("src/launch.ts", ROOT));
const DENO = Deno.execPath();

/** What the runners share: a sandbox, its account and an `accounts.ts` for it. */
interface World {
  readonly sandbox: Sandbox;
  readonly account: TestAccount;
  readonly dir: string;
  /** Absolute path of the sandbox `accounts.ts` (on free ports, state in `dir`). */
  readonly config: string;
  /** Environment of every command: this one's, without RELAY_*, plus the config's secrets. */
  readonly env: Record<string, string>;
}

/** How one documented command is handled. */
interface Rule {
  /** Matches the documented command line. */
  readonly pattern: RegExp;
  /** Runs it (as written, after {@link substitute}); absent for a command not run here. */
  readonly run?: (words: string[], w: World) => Promise<void>;
  /** Why it is not run here, and what proves it instead. */
  readonly notRun?: string;
  /** A rule that may match nothing (commands other guides may add). */
  readonly optional?: boolean;
}

/** The command's words with the sandbox's config, free ports and account put in. */
function substitute(words: string[], w: World, extra: { port?: number } = {}): string[] {
  const out = [...words];
  for (let i = 0; i < out.length - 1; i++) {
    if (out[i] === "--config") out[i + 1] = w.config;
    if (out[i] === "--port") out[i + 1] = String(extra.port ?? freePort());
    if (out[i] === "--account" || out[i] === "--mailbox") out[i + 1] = w.account.email;
  }
  return out;
}

/** `deno task NAME …` with `--config` added where the command takes one and has none. */
function taskArgs(words: string[], w: World): string[] {
  assert.equal(words[0], "deno");
  assert.equal(words[1], "task");
  const rest = substitute(words.slice(3), w);
  const sub = rest[0] && !rest[0].startsWith("-") ? rest[0] : "serve";
  if (rest.includes("--help")) {
    // As written: nothing is loaded.
  } else if (words[2] === "start" && sub === "status") {
    rest.push("--url", `http://127.0.0.1:${httpPort(w)}`);
  } else if (
    ["start", "authorize", "permissions", "compile"].includes(words[2]) &&
    !rest.includes("--config")
  ) {
    rest.push("--config", w.config);
  }
  return ["task", words[2], ...rest];
}

const ports = new Map<World, { smtp: number; http: number }>();
function httpPort(w: World): number {
  return ports.get(w)!.http;
}

/** A process with its stderr and stdout collected, and a way to wait for text in them. */
function spawn(args: string[], w: World, options: { stdin?: "piped" | "null" } = {}) {
  const child = new Deno.Command(DENO, {
    args,
    cwd: ROOT_DIR,
    env: w.env,
    clearEnv: true,
    stdin: options.stdin ?? "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const wake = new Set<() => void>();
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      for (const f of wake) f();
    }
  };
  const done = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then(async (s) => {
    await done;
    exited = true;
    for (const f of wake) f();
    return s;
  });
  return {
    child,
    status,
    get text() {
      return text;
    },
    /** True once it exited and its output ended. */
    get exited() {
      return exited;
    },
    /** Waits for `re` in the output; fails after 60 s or when the process ends first. */
    async waitFor(re: RegExp): Promise<RegExpMatchArray> {
      const deadline = Date.now() + 60_000;
      while (true) {
        const m = text.match(re);
        if (m) return m;
        if (exited || Date.now() > deadline) {
          throw new Error(`no ${re} in the output of deno ${args.join(" ")}:\n${text}`);
        }
        await new Promise<void>((ok) => {
          wake.add(ok);
          setTimeout(ok, 250);
        }).finally(() => wake.clear());
      }
    },
  };
}

/**
 * SIGKILLs `pid` and everything below it (`deno task` and the launcher do not pass SIGKILL
 * on, and a child left running would hold the pipes open).
 */
function killTree(pid: number): void {
  const children = new Map<number, number[]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e.name)]);
    } catch {
      // gone meanwhile
    }
  }
  const all: number[] = [];
  const walk = (p: number) => {
    all.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  for (const p of all) {
    try {
      Deno.kill(p, "SIGKILL");
    } catch {
      // exited
    }
  }
}

/** Runs to completion; returns the status and the output. */
async function runToEnd(args: string[], w: World, stdin?: string) {
  const p = spawn(args, w, { stdin: stdin === undefined ? "null" : "piped" });
  if (stdin !== undefined) {
    const writer = p.child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const status = await p.status;
  return { code: status.code, text: p.text };
}

/** Sends one message through a relay on `port` (AUTH PLAIN from loopback), returns the reply. */
async function relayOne(port: number, w: World): Promise<string> {
  const client = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    ignoreTLS: true,
    auth: { user: w.account.email, pass: PASSWORD },
  });
  try {
    const info = await client.sendMail({
      envelope: { from: w.account.email, to: ["r@example.net"] },
      raw: Buffer.from(rawMessage(w.account.email, "r@example.net", "documented\r\n")),
    });
    return info.response;
  } finally {
    client.close();
  }
}

/** True once nothing listens on `port` any more. */
async function closed(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return false;
  } catch {
    return true;
  }
}

/**
 * Starts `deno <args>` (a relay), relays one message through it, runs `during` while it
 * serves, then stops it with SIGTERM: exit 0 and its port closed.
 */
async function serveAndStop(
  args: string[],
  w: World,
  during?: (p: ReturnType<typeof spawn>) => Promise<void>,
) {
  const p = spawn(args, w);
  try {
    const [, port] = await p.waitFor(/"smtp":"[^"]*:(\d+)"/);
    const before = w.sandbox.received.length;
    assert.match(await relayOne(Number(port), w), /^250 2\.0\.0 OK/);
    assert.equal(w.sandbox.received.length, before + 1);
    await during?.(p);
    p.child.kill("SIGTERM");
    const status = await p.status;
    assert.equal(status.code, 0, p.text);
    assert.ok(await closed(Number(port)), "the relay still listens after SIGTERM");
    assert.ok(!/NotCapable|\n\s+at /.test(p.text), p.text);
  } finally {
    if (!p.exited) killTree(p.child.pid); // only while it is ours: its pid is not reused yet
    await p.status;
  }
}

/** `deno task start …`: serve (with a message), `check`, `status`. */
async function runStart(words: string[], w: World): Promise<void> {
  const args = taskArgs(words, w);
  const sub = args[2] && !args[2].startsWith("-") ? args[2] : "serve";
  if (args.includes("--help")) {
    const r = await runToEnd(args, w);
    assert.equal(r.code, 0, r.text);
    assert.match(
      r.text,
      sub === "serve" ? /main\.ts \[serve\] / : new RegExp(`usage: main\\.ts ${sub} `),
    );
    return;
  }
  if (sub === "serve") return await serveAndStop(args, w);
  if (sub === "check") {
    const r = await runToEnd(args, w);
    assert.equal(r.code, 0, r.text);
    if (args.includes("--json")) {
      const rows = JSON.parse(r.text.slice(r.text.indexOf("[")));
      assert.equal(rows[0].account, w.account.email);
      assert.equal(rows[0].token, "ok");
      return;
    }
    const smtp = args.includes("--smtp") ? "ok" : "skipped";
    assert.match(r.text, new RegExp(`^${w.account.email}\\s+sandbox\\s+ok\\s+${smtp}`, "m"));
    return;
  }
  if (sub === "status") {
    // A relay on the config's ports to ask.
    return await serveAndStop(taskArgs(["deno", "task", "start"], w), w, async () => {
      const r = await runToEnd(args, w);
      assert.equal(r.code, 0, r.text);
      assert.match(r.text, new RegExp(`^${w.account.email}\\s+sandbox\\s+ok\\s+`, "m"));
    });
  }
  throw new Error(`no runner for deno ${args.join(" ")}`);
}

/** `deno task authorize --account …`: the device code flow, approved at the sandbox. */
async function runAuthorize(words: string[], w: World): Promise<void> {
  const args = taskArgs(words, w);
  if (args.includes("--help")) {
    const r = await runToEnd(args, w);
    assert.equal(r.code, 0, r.text);
    assert.match(r.text, /usage: main\.ts authorize /);
    return;
  }
  const p = spawn(args, w);
  const [, code] = await p.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/);
  w.sandbox.approveDevice(code, w.account.email);
  const status = await p.status;
  assert.equal(status.code, 0, p.text);
  assert.ok(!p.text.includes(w.account.refreshToken), "no token printed");
}

/** `deno task compile …`: the compile line (--print) and its flags, run with `deno run`. */
async function runCompile(words: string[], w: World): Promise<void> {
  const args = taskArgs(words, w);
  if (!args.includes("--print")) args.push("--print");
  const r = await runToEnd(args, w);
  assert.equal(r.code, 0, r.text);
  const line = r.text.trim().split("\n").at(-1)!;
  const compile = shellWords(line);
  assert.deepEqual(compile.slice(0, 3), ["deno", "compile", "--no-prompt"]);
  assert.deepEqual(compile.slice(-3), ["--output", "smtp-oauth2-relay", MAIN]);
  const flags = compile.slice(2, -3).filter((f) => !f.startsWith("--include="));
  assert.ok(flags.includes("--v8-flags=--max-semi-space-size=2"), line);
  assert.ok(compile.some((f) => /^--include=.*\/src\/workers_entry\.ts$/.test(f)), line);
  assert.ok(
    flags.every((f) =>
      f === "--no-prompt" || /^--allow-(net|read|write|env)=/.test(f) || f.startsWith("--v8-flags=")
    ),
  );
  // The binary cannot be built here (deno compile downloads denort); the same flags under
  // `deno run` must serve the config the binary is built for.
  await serveAndStop(["run", ...flags, MAIN, "--config", w.config], w);
}

/** `deno task permissions …`: one line of flags for the config. */
async function runPermissions(words: string[], w: World): Promise<void> {
  const r = await runToEnd(taskArgs(words, w), w);
  assert.equal(r.code, 0, r.text);
  const line = r.text.trim().split("\n").at(-1)!;
  assert.match(
    line,
    /^--no-prompt --allow-net=\S+ --allow-read=\S+ --allow-write=\S+ --allow-env=\S+$/,
  );
  assert.ok(line.includes(`--allow-read=${w.config},`), line);
}

/** `deno task hash-password`: the hash of the password on stdin. */
async function runHashPassword(words: string[], w: World): Promise<void> {
  const r = await runToEnd(taskArgs(words, w), w, "a documented password\n");
  assert.equal(r.code, 0, r.text);
  assert.match(r.text, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/m);
}

/** `deno task demo`: STARTTLS, the printed swaks line run as printed, a line per message. */
async function runDemo(words: string[], w: World): Promise<void> {
  const args = [
    ...taskArgs(words, w).filter((a) => a !== "--config" && a !== w.config),
    "--port",
    String(freePort()),
    "--metrics-port",
    String(freePort()),
    "--token-port",
    String(freePort()),
    "--sandbox-smtp-port",
    String(freePort()),
  ];
  const p = spawn(args, w);
  try {
    await p.waitFor(/Ctrl-C stops it/);
    assert.match(p.text, /client got: 250 2\.0\.0 OK/);
    assert.match(p.text, /sandbox received #1: from <demo@sandbox\.localhost>/);
    const [swaksLine] = await p.waitFor(/^ *swaks .*$/m);
    const swaks = shellWords(swaksLine.trim());
    assert.ok(swaks.includes("--tls") && swaks.includes("--tls-verify"), swaksLine);
    const out = await new Deno.Command(swaks[0], { args: swaks.slice(1), stdout: "piped" })
      .output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, text);
    assert.match(text, /-> STARTTLS\n<- +220 [\s\S]*~> AUTH LOGIN[\s\S]*<~ +250 2\.0\.0 OK/);
    await p.waitFor(
      /sandbox received #2: from <demo@sandbox\.localhost> to <someone@example\.net>/,
    );
    p.child.kill("SIGINT");
    const status = await p.status;
    assert.equal(status.code, 0, p.text);
  } finally {
    if (!p.exited) killTree(p.child.pid); // only while it is ours: its pid is not reused yet
    await p.status;
  }
}

/** A `deno task` line: by task. */
async function runTask(words: string[], w: World): Promise<void> {
  switch (words[2]) {
    case "start":
      return await runStart(words, w);
    case "authorize":
      return await runAuthorize(words, w);
    case "compile":
      return await runCompile(words, w);
    case "permissions":
      return await runPermissions(words, w);
    case "hash-password":
      return await runHashPassword(words, w);
    case "demo":
      return await runDemo(words, w);
  }
  throw new Error(`no runner for task ${words[2]}`);
}

const SYSTEM =
  "changes the system as root (users, /etc, /opt, /usr/local); the unit's ExecStart, which " +
  "these steps prepare, is run by the test 'the systemd unit's ExecStart serves, reloads and stops'";

/** Every documented command matches one of these (first match wins). */
const RULES: Rule[] = [
  {
    pattern: /^npm install -g deno@(\S+)$/,
    run: (words) => {
      assert.equal(words[3], `deno@${Deno.version.deno}`, "the documented Deno is the one here");
      return Promise.resolve();
    },
  },
  {
    pattern: /^deno task (test|check)$/,
    notRun: "run by .ci/run (check, then this very suite); running it here would recurse",
  },
  {
    pattern: /^deno task start --workers\b/,
    notRun: "needs Redis (state.redis), which the sandbox config here does not use; " +
      "tests/redis/workers_test.ts runs --workers 2 through the start task with a real redis-server",
  },
  {
    pattern: /^deno task (start|authorize|compile|permissions|hash-password|demo)\b/,
    run: runTask,
  },
  {
    pattern: /^relay (authorize|start)\b/,
    // The systemd-run helper of operations.md runs `deno task "$@"` as the service user.
    run: (words, w) => runTask(["deno", "task", ...words.slice(1)], w),
  },
  {
    pattern: /^deno check accounts\.ts$/,
    run: async (_words, w) => {
      const r = await runToEnd(["check", w.config], w);
      assert.equal(r.code, 0, r.text);
    },
  },
  {
    pattern: /^deno eval 'console\.log\(Deno\.execPath\(\)\)'$/,
    run: async (words, w) => {
      const r = await runToEnd(words.slice(1), w);
      assert.equal(r.code, 0, r.text);
      assert.equal(r.text.trim(), DENO);
    },
  },
  {
    pattern: /^\/usr\/local\/bin\/deno --version$/,
    run: async (_words, w) => {
      // The real binary of this machine in place of /usr/local/bin/deno (not installed here).
      const r = await runToEnd(["--version"], w);
      assert.match(r.text, new RegExp(`^deno ${Deno.version.deno.replaceAll(".", "\\.")} `));
    },
  },
  {
    pattern:
      /^sudo -u smtp-relay DENO_DIR=\S+ \/usr\/local\/bin\/deno install --frozen --entrypoint src\/main\.ts$/,
    run: async (words, w) => {
      // As this user with this machine's DENO_DIR: --frozen fails if deno.lock is not enough.
      const r = await runToEnd(words.slice(words.indexOf("install")), w);
      assert.equal(r.code, 0, r.text);
    },
  },
  {
    pattern: /^(\.\/smtp-oauth2-relay|\/opt\/smtp-oauth2-relay\/smtp-oauth2-relay)\b/,
    notRun: "the compiled binary cannot be built here (deno compile downloads denort from " +
      "Deno's servers, unreachable); the compile runner runs its exact flags with deno run",
  },
  { pattern: /^(install|useradd|git clone|cd) /, notRun: SYSTEM },
  {
    pattern: /^(cp docs\/smtp-oauth2-relay\.service|systemctl|journalctl) /,
    notRun: "systemd is not running here; the test 'the systemd unit's ExecStart serves, " +
      "reloads and stops' runs the unit's ExecStart and sends its reload and stop signals",
  },
  {
    pattern: /^(swaks|msmtp|sendmail|postfix|postconf|postmap|openssl|curl|promtool|kill) /,
    notRun: "client and tooling examples of the guides: proven by the client tests, not here",
    optional: true,
  },
];

function ruleFor(c: DocCommand): Rule | undefined {
  return RULES.find((r) => r.pattern.test(c.command));
}

Deno.test("every documented command has a rule here, and every rule a documented command", async () => {
  const commands = await documentedCommands(ROOT);
  assert.ok(commands.length > 10, "found the documented commands");
  const unknown = commands.filter((c) => !ruleFor(c));
  assert.deepEqual(
    unknown.map((c) => `${c.file}:${c.line}: ${c.command}`),
    [],
    "documented commands this test does not know: run them in a rule above",
  );
  const stale = RULES.filter((r) =>
    !r.optional && !commands.some((c) => r.pattern.test(c.command))
  );
  assert.deepEqual(
    stale.map((r) => String(r.pattern)),
    [],
    "rules for commands no longer documented",
  );
});

Deno.test("every documented command runs as written against the sandbox", async (t) => {
  const sandbox = await startSandbox();
  sandbox.tokens.deviceIntervalSeconds = 1;
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "relay-docs-" }));
  const smtp = freePort();
  const http = freePort();
  const config = `${dir}/accounts.ts`;
  const text = (await configText(sandbox, [account], {
    top: `smtp: { port: ${smtp} }, http: { port: ${http} }, stateDir: "${dir}/state",`,
  })).replace("clientSecret: a.clientSecret", 'clientSecret: env("RELAY_DOCS_CLIENT_SECRET")')
    .replace("refreshToken: a.refreshToken", 'refreshToken: env("RELAY_DOCS_REFRESH_TOKEN")')
    .replace("import { defineConfig }", "import { defineConfig, env }");
  await Deno.writeTextFile(config, text);
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("RELAY_")),
  );
  const w: World = {
    sandbox,
    account,
    dir,
    config,
    env: {
      ...env,
      NO_COLOR: "1",
      RELAY_DOCS_CLIENT_SECRET: account.clientSecret,
      RELAY_DOCS_REFRESH_TOKEN: account.refreshToken,
    },
  };
  ports.set(w, { smtp, http });
  try {
    for (const c of await documentedCommands(ROOT)) {
      const rule = ruleFor(c);
      if (!rule?.run) continue; // the first test lists the reasons
      await t.step(`${c.file}:${c.line}: ${c.command}`, async () => {
        await rule.run!(shellWords(c.command), w);
      });
    }
  } finally {
    ports.delete(w);
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the systemd unit's ExecStart serves, reloads and stops", async () => {
  const unit = await Deno.readTextFile(new URL("docs/smtp-oauth2-relay.service", ROOT));
  const exec = /^ExecStart=(.*)$/m.exec(unit)![1];
  const words = shellWords(exec);
  assert.equal(words[0], "/usr/local/bin/deno");
  assert.equal(/^WorkingDirectory=(.*)$/m.exec(unit)![1], "/opt/smtp-oauth2-relay");
  assert.equal(/^ExecReload=(.*)$/m.exec(unit)![1], "/bin/kill -HUP $MAINPID");
  assert.equal(/^KillSignal=(.*)$/m.exec(unit)![1], "SIGTERM");
  // The real binary for /usr/local/bin/deno, this checkout for /opt/smtp-oauth2-relay.
  const sandbox = await startSandbox();
  const [account] = makeAccounts(1);
  sandbox.addAccount(account);
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "relay-unit-" }));
  const config = `${dir}/accounts.ts`;
  await Deno.writeTextFile(
    config,
    await configText(sandbox, [account], {
      top:
        `smtp: { port: ${freePort()} }, http: { port: ${freePort()} }, stateDir: "${dir}/state",`,
    }),
  );
  const w: World = { sandbox, account, dir, config, env: { ...Deno.env.toObject() } };
  const args = words.slice(1).map((a) =>
    a === "src/launch.ts" ? LAUNCH : a === "/opt/smtp-oauth2-relay/accounts.ts" ? config : a
  );
  assert.ok(args.includes(LAUNCH) && args.includes(config), exec);
  try {
    await serveAndStop(args, w, async (p) => {
      // ExecReload: SIGHUP to $MAINPID, the launcher; it reaches the relay.
      p.child.kill("SIGHUP");
      await p.waitFor(/configuration reloaded/);
    });
  } finally {
    await sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
});
