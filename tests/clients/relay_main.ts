/**
 * The relay as a child process for the client tests: it must listen on an address
 * outside 127.0.0.0/8 (the host end of a veth pair), which the test process itself may
 * not. Reads a config object (JSON, as `accounts.ts` would export it) from the file named
 * by its argument, logs JSON lines to stderr and prints its ports as one JSON line on
 * stdout. SIGTERM stops it.
 * @module
 */
import { parseConfig } from "../../src/config/load.ts";
import { startRelay } from "../../src/app.ts";
import { setupLogging } from "../../src/log.ts";

const config = parseConfig(JSON.parse(await Deno.readTextFile(Deno.args[0])));
await setupLogging("json", "info");
const relay = await startRelay(config);
console.log(JSON.stringify({ smtp: relay.smtp.port, http: relay.http.port }));
Deno.addSignalListener("SIGTERM", async () => {
  await relay.close();
  Deno.exit(0);
});
