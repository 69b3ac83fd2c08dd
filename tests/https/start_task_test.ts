/**
 * The HTTPS path under locked-down flags (the real binary, a relay process): the start
 * task derives the set from the config, and for a Graph account that set has its API's
 * host:port (here the sandbox's `localhost:PORT`, standing in for
 * `graph.microsoft.com:443`) and no SMTP host. Run by hand with the same set minus the API
 * host, the relay answers 451 4.4.1 (never a false 250).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import nodemailer from "nodemailer";
import { startSandbox } from "../../src/sandbox/mod.ts";
import { configText } from "../operations/relay_process.ts";
import { freePort, makeAccounts, PASSWORD, startTaskArgs, until } from "../harness.ts";
import { message } from "./helpers.ts";

Deno.test("start task: the derived set has the API host and a Graph account relays; without the host it answers 451 4.4.1", async () => {
  // Two relays one after the other, each with a fresh state directory: no rotation.
  const sandbox = await startSandbox({ rotateRefreshTokens: false });
  const accounts = makeAccounts(1);
  sandbox.addAccount(accounts[0]);
  const apiPort = new URL(sandbox.apiUrl).port;
  const config = await configText(sandbox, accounts, {
    accountExtra: `transport: { type: "graph", apiUrl: "${sandbox.apiUrl}" },`,
  });
  const run = async (withHost: boolean) => {
    const dir = await Deno.makeTempDir({ prefix: "relay-https-task-" });
    await Deno.writeTextFile(`${dir}/accounts.ts`, config);
    const ports = {
      smtp: freePort(),
      metrics: freePort(),
      sandboxToken: Number(new URL(sandbox.tokenUrl).port),
      sandboxSmtp: sandbox.smtpPort,
    };
    const taskArgs = await startTaskArgs(ports);
    const printed = await new Deno.Command(Deno.execPath(), {
      args: [
        ...taskArgs.filter((w) =>
          w !== "--port" && w !== "--metrics-port" &&
          w !== String(ports.smtp) && w !== String(ports.metrics)
        ),
        "permissions",
        "--format",
        "json",
        "--port",
        String(ports.smtp),
        "--metrics-port",
        String(ports.metrics),
      ],
      cwd: dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(printed.code, 0, new TextDecoder().decode(printed.stderr));
    const set = JSON.parse(new TextDecoder().decode(printed.stdout));
    assert.ok(set.net.includes(`localhost:${apiPort}`), set.net.join(","));
    assert.ok(!set.net.includes(`localhost:${sandbox.smtpPort}`), set.net.join(","));
    const main = new URL("../../src/main.ts", import.meta.url).pathname;
    const args = withHost ? taskArgs : [
      "run",
      "--no-prompt",
      `--allow-net=${set.net.filter((n: string) => n !== `localhost:${apiPort}`).join(",")}`,
      `--allow-read=${set.read.join(",")}`,
      `--allow-write=${set.write.join(",")}`,
      `--allow-env=${set.env.join(",")}`,
      main,
      "--port",
      String(ports.smtp),
      "--metrics-port",
      String(ports.metrics),
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args: [...args, "--log-format", "json"],
      cwd: dir,
      clearEnv: true,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let log = "";
    const reading = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) log += chunk;
    })();
    try {
      assert.ok(await until(() => log.includes("SMTP on"), 20_000), log);
      const client = nodemailer.createTransport({
        host: "127.0.0.1",
        port: ports.smtp,
        ignoreTLS: true,
        auth: { user: accounts[0].email, pass: PASSWORD },
      });
      try {
        const info = await client.sendMail({
          envelope: { from: accounts[0].email, to: ["a@example.net"] },
          raw: Buffer.from(message([`From: ${accounts[0].email}`, "To: a@example.net"])),
        });
        return info.response;
      } catch (err) {
        return (err as { response?: string }).response ?? String(err);
      } finally {
        client.close();
      }
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await reading;
      await Deno.remove(dir, { recursive: true });
    }
  };
  try {
    assert.match(
      await run(true),
      /^250 2\.0\.0 OK, upstream said: 250 2\.0\.0 202 Accepted by Microsoft Graph$/,
    );
    assert.equal(sandbox.api!.received.length, 1);
    assert.match(
      await run(false),
      /^451 4\.4\.1 Provider unreachable, try again later: Microsoft Graph: /,
    );
    assert.equal(sandbox.api!.received.length, 1);
  } finally {
    await sandbox.close();
  }
});
