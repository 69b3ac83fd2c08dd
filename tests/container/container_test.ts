/**
 * The container image, built here from Debian packages (`container/build.sh`) and run with
 * podman in a pod: the relay in one container, the sandbox provider in another (it is
 * admitted on loopback only, and the pod's loopback is shared by its containers while the
 * host's is not), clients on the host through the pod's published ports, so they arrive
 * through NAT from the pod network's gateway, not from loopback. All traffic stays on this
 * machine: the published ports are bound to 127.0.0.1, the pod's bridge is local.
 *
 * One test, because the image is built once: what the image is (user, flags, volume,
 * healthcheck), what a NAT client gets (538 without TLS, 403 for /accounts), a message
 * through STARTTLS, /readyz, SIGHUP by `podman kill --signal HUP`, and `podman stop` while
 * a client is in the middle of DATA: the message gets its real reply, the relay exits 0.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { hashPassword } from "../../src/relay/password.ts";
import { freePort, makeAccounts, PASSWORD, type TestAccount } from "../harness.ts";
import { plain, RawSmtp, type Reply } from "../smtp_client.ts";
import { Attached, buildImage, podman, REPO } from "./podman.ts";

/**
 * One tag per checkout: a build moves its tag and removes the image it left (build.sh), so
 * two checkouts testing at once must not share one. Layers are shared all the same.
 */
const TAG = `localhost/smtp-oauth2-relay:test-${(await sha256(REPO)).slice(0, 12)}`;
const CA = await Deno.readTextFile(`${REPO}tests/fixtures/reload_ca.pem`);
/** The hardening docs/container.md recommends: the relay runs with all of it. */
const HARDENED = ["--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges"];
/** uid:gid of the image's relay user (Containerfile). */
const RELAY_UID = 10001;

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The config as an operator writes it: it imports `./src/config/mod.ts` like the example. */
function configText(accounts: TestAccount[], hash: string, smtpExtra = ""): string {
  return `import { defineConfig } from "./src/config/mod.ts";
export default defineConfig({
  smtp: { name: "relay.test", ${smtpExtra} },
  http: { host: "0.0.0.0" },
  tls: { certFile: "/etc/smtp-relay/tls/cert.pem", keyFile: "/etc/smtp-relay/tls/key.pem" },
  stateDir: "/var/lib/smtp-relay",
  shutdownTimeoutSeconds: 30,
  accounts: ${JSON.stringify(accounts)}.map((a) => ({
    email: a.email, provider: "sandbox", clientId: a.clientId, clientSecret: a.clientSecret,
    refreshToken: a.refreshToken, passwordHash: "${hash}",
  })),
});
`;
}

/** A message with CRLF line endings, ending with CRLF. */
function message(from: string, to: string, id: string): string {
  return `From: <${from}>\r\nTo: <${to}>\r\nSubject: through the container ${id}\r\n` +
    `Message-ID: <${id}@container.test>\r\n\r\nBody of ${id}.\r\nSecond line.\r\n`;
}

/** Connects through the published port, EHLO, STARTTLS (verified), EHLO, AUTH PLAIN. */
async function loggedIn(port: number, account: TestAccount): Promise<RawSmtp> {
  const { client, greeting } = await RawSmtp.connect(port);
  assert.match(greeting!.last, /^220 relay\.test /);
  assert.equal((await client.command("EHLO client.test")).code, 250);
  assert.equal((await client.command("STARTTLS")).last.slice(0, 3), "220");
  await client.startTls([CA], "localhost");
  assert.equal((await client.command("EHLO client.test")).code, 250);
  const auth = await client.command(`AUTH PLAIN ${plain(account.email, PASSWORD)}`);
  assert.match(auth.last, /^235 (2\.7\.0 )?Authentication successful$/);
  return client;
}

/** Sends one whole message in an open session; resolves to the reply to its end. */
async function transaction(client: RawSmtp, from: string, to: string, id: string) {
  assert.equal((await client.command(`MAIL FROM:<${from}>`)).code, 250);
  assert.equal((await client.command(`RCPT TO:<${to}>`)).code, 250);
  assert.equal((await client.command("DATA")).code, 354);
  assert.ok(await client.write(message(from, to, id) + ".\r\n"));
  return await client.reply(60_000);
}

/** A message the sandbox accepted, its bytes as latin1 text. */
interface Delivered {
  user: string;
  from: string;
  to: string[];
  data: string;
}

/** The messages the sandbox runner reported so far. */
function reported(sandbox: Attached): Delivered[] {
  return sandbox.json("out").flatMap((line) => {
    const m = line.message as Delivered | undefined;
    return m ? [{ ...m, data: Buffer.from(m.data, "base64").toString("latin1") }] : [];
  });
}

/**
 * The messages the sandbox accepted, once it reported `count` (its report travels through
 * podman's attach pipe, so it may follow the relay's 250 by a moment). Fails at once if it
 * reported more: a message delivered twice or unexpectedly.
 */
async function delivered(sandbox: Attached, count: number): Promise<Delivered[]> {
  await sandbox.waitUntil(() => reported(sandbox).length >= count, `${count} messages`, 15_000);
  const got = reported(sandbox);
  assert.equal(got.length, count);
  return got;
}

Deno.test("container image: built from Debian packages, relays through a published port, reloads on HUP, drains on stop", async (t) => {
  const started = Date.now();
  const image = await buildImage(TAG);
  const built = Date.now();
  const run = crypto.randomUUID().slice(0, 8);
  const pod = `relay-test-${run}`;
  const volume = `${pod}-state`;
  const relayName = `${pod}-relay`;
  const smtpPort = freePort();
  const httpPort = freePort();
  const dir = await Deno.makeTempDir({ prefix: "relay-container-" });
  const accounts = makeAccounts(2);
  const hash = await hashPassword(PASSWORD);
  // Clients through a published port arrive from the pod network's gateway (NAT): the
  // address a load balancer on this host is seen from, so the one in proxyFrom.
  const gateway = (await podman([
    "network",
    "inspect",
    "podman",
    "--format",
    "{{range .Subnets}}{{.Gateway}}{{end}}",
  ])).stdout.trim();
  let sandbox: Attached | undefined;
  let relay: Attached | undefined;
  let relay2: Attached | undefined;
  try {
    await t.step("the image: non-root user, healthcheck, stop signal, no -A", async () => {
      const [info] = JSON.parse((await podman(["image", "inspect", image])).stdout);
      assert.equal(info.Config.User, "relay:relay");
      assert.deepEqual(info.Config.Volumes, { "/var/lib/smtp-relay": {} });
      assert.equal(info.Config.StopSignal, "SIGTERM");
      assert.deepEqual(info.Healthcheck.Test, ["CMD", "/app/container/healthcheck.sh"]);
      assert.deepEqual(info.Config.Entrypoint, ["/app/container/entrypoint.sh"]);
      // Every module is in the image: it loads them all with no network at all.
      const offline = await podman(["run", "--rm", "--network", "none", image, "--help"]);
      assert.match(offline.stdout, /main\.ts \[serve\]/);
      // The healthcheck is not vacuous: with nothing listening it fails.
      const unhealthy = await podman([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/app/container/healthcheck.sh",
        image,
      ], { allowFail: true });
      assert.equal(unhealthy.code, 1, unhealthy.stderr);
    });

    // The config directory as an operator mounts it (read-only): accounts.ts and tls/.
    await Deno.mkdir(`${dir}/tls`);
    await Deno.chmod(dir, 0o755);
    await Deno.chmod(`${dir}/tls`, 0o755);
    await Deno.writeTextFile(`${dir}/accounts.ts`, configText([accounts[0]], hash));
    await Deno.chmod(`${dir}/accounts.ts`, 0o644);
    await Deno.copyFile(`${REPO}tests/fixtures/reload_cert.pem`, `${dir}/tls/cert.pem`);
    await Deno.chmod(`${dir}/tls/cert.pem`, 0o644);
    await Deno.copyFile(`${REPO}tests/fixtures/reload_key.pem`, `${dir}/tls/key.pem`);
    await Deno.chown(`${dir}/tls/key.pem`, RELAY_UID, RELAY_UID);
    await Deno.chmod(`${dir}/tls/key.pem`, 0o400);

    await podman([
      "pod",
      "create",
      "--name",
      pod,
      "-p",
      `127.0.0.1:${smtpPort}:2525`,
      "-p",
      `127.0.0.1:${httpPort}:9090`,
    ]);
    await podman(["volume", "create", volume]);

    await t.step("the sandbox provider in a second container of the pod", async () => {
      sandbox = new Attached([
        "run",
        "--rm",
        "-i",
        "--pod",
        pod,
        "--name",
        `${pod}-sandbox`,
        "-v",
        `${REPO}tests/container/sandbox_runner.ts:/app/tests/container/sandbox_runner.ts:ro`,
        "--entrypoint",
        "/usr/local/bin/deno",
        image,
        "run",
        "--frozen",
        "--cached-only",
        "--config",
        "/app/deno.json",
        "--allow-net=127.0.0.1",
        "/app/tests/container/sandbox_runner.ts",
      ], { stdin: true });
      await sandbox.waitUntil(() => sandbox!.json("out").find((l) => l.ready), "ready", 60_000);
      for (const a of accounts) {
        await sandbox.send(JSON.stringify({ account: a }));
      }
      await sandbox.waitUntil(
        () => sandbox!.json("out").filter((l) => l.ok === "account").length === 2,
        "accounts registered",
        10_000,
      );
    });

    await t.step("the relay starts as user relay under its own flags", async () => {
      relay = new Attached([
        "run",
        "--pod",
        pod,
        "--name",
        relayName,
        ...HARDENED,
        "--stop-timeout",
        "60",
        "-v",
        `${dir}:/etc/smtp-relay:ro`,
        "-v",
        `${volume}:/var/lib/smtp-relay`,
        image,
        "serve",
        "--log-format",
        "json",
      ]);
      await relay.waitUntil(() => relay!.err.includes("SMTP on"), "SMTP on", 60_000);
      const argv = (await podman(["exec", relayName, "cat", "/proc/1/cmdline"])).stdout
        .split("\0").filter((a) => a);
      assert.equal(argv[0], "/usr/local/bin/deno");
      assert.ok(!argv.some((a) => a === "-A" || a === "--allow-all"), argv.join(" "));
      const net = argv.find((a) => a.startsWith("--allow-net="))!.split("=")[1].split(",");
      // Derived from the config (a sandbox account): its listeners and the sandbox, no preset.
      assert.ok(net.includes("0.0.0.0:2525") && net.includes("0.0.0.0:9090"), net.join());
      assert.ok(!net.includes("smtp.gmail.com:587"), net.join());
      assert.ok(
        argv.includes(
          "--allow-read=/etc/smtp-relay/accounts.ts,/etc/smtp-relay/tls/cert.pem," +
            "/etc/smtp-relay/tls/key.pem,/var/lib/smtp-relay",
        ),
        argv.join(" "),
      );
      assert.ok(argv.includes("--allow-write=/var/lib/smtp-relay"), argv.join(" "));
      // The relay's memory settings, as `deno task start` gives them (src/runtime_flags.ts).
      assert.ok(argv.includes("--v8-flags=--max-semi-space-size=2"), argv.join(" "));
      const environ = (await podman(["exec", relayName, "cat", "/proc/1/environ"])).stdout;
      assert.ok(environ.split("\0").includes("MALLOC_ARENA_MAX=2"), "MALLOC_ARENA_MAX");
      // Exactly the variables it needs: the admin token (the config reads none here).
      assert.ok(argv.includes("--allow-env=RELAY_ADMIN_TOKEN"), argv.join(" "));
      assert.deepEqual(argv.slice(-8), [
        "/app/src/main.ts",
        "serve",
        "--log-format",
        "json",
        "--config",
        "/etc/smtp-relay/accounts.ts",
        "--host",
        "0.0.0.0",
      ]);
      const id = (await podman(["exec", relayName, "id", "-u"])).stdout.trim();
      assert.equal(id, String(RELAY_UID));
      const state = await podman(["exec", relayName, "stat", "-c", "%a %U", "/var/lib/smtp-relay"]);
      assert.equal(state.stdout.trim(), "700 relay");
      const touch = await podman(["exec", relayName, "touch", "/etc/smtp-relay/x"], {
        allowFail: true,
      });
      assert.notEqual(touch.code, 0, "the config directory is mounted read-only");
    });

    await t.step("healthcheck and /readyz through the published port", async () => {
      const health = await podman(["healthcheck", "run", relayName], { allowFail: true });
      assert.equal(health.code, 0, health.stderr + health.stdout);
      const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
      assert.equal(ready.status, 200);
      const body = await ready.json();
      assert.equal(body.ready, true);
      assert.equal(body.accounts.total, 1);
      // Through NAT the client is not loopback: /accounts wants RELAY_ADMIN_TOKEN then.
      const list = await fetch(`http://127.0.0.1:${httpPort}/accounts`);
      assert.equal(list.status, 403);
      await list.body?.cancel();
      // Inside the container the commands run under the same flags; status is a loopback
      // client there. check refreshes the token (stored by compare-and-set in the volume).
      const status = await podman(["exec", relayName, "/app/container/entrypoint.sh", "status"]);
      assert.ok(status.stdout.includes(accounts[0].email), status.stdout);
      const check = await podman(["exec", relayName, "/app/container/entrypoint.sh", "check"]);
      assert.ok(check.stdout.includes(accounts[0].email), check.stdout);
      assert.ok(!check.stdout.includes(accounts[0].refreshToken));
    });

    await t.step("a NAT client: plaintext AUTH refused, STARTTLS + AUTH relays", async () => {
      const { client } = await RawSmtp.connect(smtpPort);
      assert.equal((await client.command("EHLO client.test")).code, 250);
      const refused = await client.command(`AUTH PLAIN ${plain(accounts[0].email, PASSWORD)}`);
      assert.match(refused.last, /^538 5\.7\.11 /);
      await client.close();

      const tls = await loggedIn(smtpPort, accounts[0]);
      const reply = await transaction(tls, accounts[0].email, "friend@example.net", "first");
      assert.match(reply.last, /^250 2\.0\.0 OK, upstream said: 250 /);
      assert.equal((await tls.command("QUIT")).code, 221);
      await tls.close();
      const got = await delivered(sandbox!, 1);
      assert.equal(got[0].user, accounts[0].email);
      assert.equal(got[0].from, accounts[0].email);
      assert.deepEqual(got[0].to, ["friend@example.net"]);
      assert.equal(got[0].data, message(accounts[0].email, "friend@example.net", "first"));
      // The rotated refresh token went to the volume, 0600, the relay user's.
      const file = `/var/lib/smtp-relay/tokens/${encodeURIComponent(accounts[0].email)}.json`;
      const token = await podman(["exec", relayName, "stat", "-c", "%a %U", file]);
      assert.equal(token.stdout.trim(), "600 relay");
    });

    await t.step("SIGHUP through podman kill reloads accounts.ts", async () => {
      const from = relay!.err.length;
      await Deno.writeTextFile(`${dir}/accounts.ts.tmp`, configText(accounts, hash));
      await Deno.chmod(`${dir}/accounts.ts.tmp`, 0o644);
      await Deno.rename(`${dir}/accounts.ts.tmp`, `${dir}/accounts.ts`);
      await podman(["kill", "--signal", "HUP", relayName]);
      await relay!.waitUntil(
        () => relay!.err.slice(from).includes("configuration reloaded: 1 added, 0 removed"),
        "reload log line",
        30_000,
      );
      const ready = await (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).json();
      assert.equal(ready.accounts.total, 2);
      const client = await loggedIn(smtpPort, accounts[1]);
      const reply = await transaction(client, accounts[1].email, "second@example.net", "second");
      assert.match(reply.last, /^250 2\.0\.0 OK, upstream said: 250 /);
      await client.close();
      const got = await delivered(sandbox!, 2);
      assert.equal(got[1].user, accounts[1].email);
      assert.equal(got[1].data, message(accounts[1].email, "second@example.net", "second"));
    });

    await t.step("podman stop in the middle of DATA: the real reply, then exit 0", async () => {
      // The provider answers slowly, so the message is still upstream well after SIGTERM.
      await sandbox!.send(JSON.stringify({ replyDelayMs: 1500 }));
      await sandbox!.waitUntil(
        () => sandbox!.json("out").find((l) => l.ok === "replyDelayMs"),
        "delay set",
        10_000,
      );
      const client = await loggedIn(smtpPort, accounts[0]);
      const from = accounts[0].email;
      const to = "late@example.net";
      assert.equal((await client.command(`MAIL FROM:<${from}>`)).code, 250);
      assert.equal((await client.command(`RCPT TO:<${to}>`)).code, 250);
      assert.equal((await client.command("DATA")).code, 354);
      const text = message(from, to, "during-stop");
      const half = text.indexOf("Body of") + 4; // in the middle of a line
      assert.ok(await client.write(text.slice(0, half)));
      const logFrom = relay!.err.length;
      const stopping = podman(["stop", "--time", "60", relayName]);
      await relay!.waitUntil(
        () => relay!.err.slice(logFrom).includes("draining (up to 30 s)"),
        "draining (up to 30 s)",
        30_000,
      );
      assert.ok(await client.write(text.slice(half) + ".\r\n"));
      const reply = await client.reply(60_000);
      assert.match(reply.last, /^250 2\.0\.0 OK, upstream said: 250 /);
      const bye = await client.next(30_000);
      assert.equal((bye as Reply).last, "421 4.3.2 Service shutting down, try again later");
      assert.ok(await client.closedByServer(10_000));
      await client.close();
      await stopping;
      const status = await relay!.exited();
      assert.equal(status.code, 0, relay!.err.slice(-2000));
      const code = await podman(["inspect", "--format", "{{.State.ExitCode}}", relayName]);
      assert.equal(code.stdout.trim(), "0");
      assert.ok(relay!.err.slice(logFrom).includes("stopped"), relay!.err.slice(-2000));
      const got = await delivered(sandbox!, 3);
      assert.equal(got[2].data, text);
    });

    await t.step(
      "a new container on the same volume, behind a load balancer (PROXY v1)",
      async () => {
        // Clients through a published port arrive from the pod network's gateway (NAT), so a
        // load balancer on this host is seen there: the address for proxyFrom. Every client of
        // the listener must then come through it (a PROXY header is required from that address).
        await Deno.writeTextFile(
          `${dir}/accounts.ts`,
          configText(
            accounts,
            hash,
            `proxyFrom: ["${gateway}"], trustedNetworks: ["203.0.113.0/24"]`,
          ),
        );
        await sandbox!.send(JSON.stringify({ replyDelayMs: 0 }));
        relay2 = new Attached([
          "run",
          "--pod",
          pod,
          "--name",
          `${relayName}2`,
          ...HARDENED,
          "-v",
          `${dir}:/etc/smtp-relay:ro`,
          "-v",
          `${volume}:/var/lib/smtp-relay`,
          image,
          "serve",
          "--log-format",
          "json",
        ]);
        await relay2.waitUntil(() => relay2!.err.includes("SMTP on"), "SMTP on", 60_000);
        // The set follows the config: its listeners, nothing it does not name.
        const argv = (await podman(["exec", `${relayName}2`, "cat", "/proc/1/cmdline"])).stdout;
        assert.match(argv, /\0--allow-net=0\.0\.0\.0:2525,/);
        assert.doesNotMatch(argv, /mail\.example\.com/);
        const from = accounts[0].email;
        // The balancer says the client is 198.51.100.9: not trusted, AUTH required.
        const { client: outside } = await RawSmtp.connect(smtpPort, { proxy: "198.51.100.9" });
        assert.equal((await outside.command("EHLO outside.test")).code, 250);
        assert.match((await outside.command(`MAIL FROM:<${from}>`)).last, /^530 5\.7\.0 /);
        await outside.close();
        // It says 203.0.113.7, on the trusted network: no AUTH, the account by MAIL FROM. The
        // refresh token in accounts.ts was rotated away by the first container: only the one
        // it stored in the volume works.
        const { client } = await RawSmtp.connect(smtpPort, { proxy: "203.0.113.7" });
        assert.equal((await client.command("EHLO printer.test")).code, 250);
        const reply = await transaction(client, from, "proxied@example.net", "proxied");
        assert.match(reply.last, /^250 2\.0\.0 OK, upstream said: 250 /);
        assert.equal((await client.command("QUIT")).code, 221);
        await client.close();
        const got = await delivered(sandbox!, 4);
        assert.equal(got[3].data, message(from, "proxied@example.net", "proxied"));
        await podman(["stop", "--time", "60", `${relayName}2`]);
        assert.equal((await relay2.exited()).code, 0, relay2.err.slice(-2000));
      },
    );

    await t.step("no secret in the relay's log", () => {
      for (const a of accounts) {
        for (const secret of [a.refreshToken, a.clientSecret, PASSWORD]) {
          assert.ok(!relay!.err.includes(secret) && !relay2!.err.includes(secret), "a secret");
        }
      }
      assert.ok(!relay!.err.includes("PRIVATE KEY") && !relay2!.err.includes("PRIVATE KEY"));
    });
    console.log(
      `container test: image build ${((built - started) / 1000).toFixed(1)} s, ` +
        `run ${((Date.now() - built) / 1000).toFixed(1)} s`,
    );
  } finally {
    await podman(["pod", "rm", "--force", "--time", "0", pod], { allowFail: true });
    await sandbox?.close();
    await relay?.close();
    await relay2?.close();
    await podman(["volume", "rm", "--force", volume], { allowFail: true });
    await Deno.remove(dir, { recursive: true });
  }
});
