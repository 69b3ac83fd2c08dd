/**
 * `status`: asks a running relay for `/accounts` and prints it as a table (or JSON).
 * Uses the bearer token in `RELAY_ADMIN_TOKEN` when it is set.
 * @module
 */
import { parseArgs } from "node:util";
import type { AccountStatus } from "../accounts.ts";
import { adminToken } from "../app.ts";
import { DEFAULTS } from "../config/defaults.ts";
import { renderTable, UsageError } from "./common.ts";

/** Usage line of this command. */
export const STATUS_USAGE = "status [--url http://127.0.0.1:9090] [--json]";

/**
 * Prints the relay's account status; 0 when every account is ok (or unused so far) with
 * its refresh token saved, 1 otherwise.
 */
export async function statusCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      url: { type: "string", default: `http://${DEFAULTS.httpHost}:${DEFAULTS.httpPort}` },
      json: { type: "boolean", default: false },
    },
  });
  let url: URL;
  try {
    url = new URL("/accounts", values.url);
  } catch {
    throw new UsageError(
      `--url: expected a URL such as http://127.0.0.1:9090, got "${values.url}"`,
    );
  }
  const token = adminToken();
  let response: Response;
  try {
    response = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    console.error(`error: cannot reach ${url.origin}: ${err instanceof Error ? err.message : err}`);
    return 1;
  }
  if (!response.ok) {
    console.error(`error: ${url} answered ${response.status}: ${(await response.text()).trim()}`);
    return 1;
  }
  const accounts = await response.json() as AccountStatus[];
  console.log(values.json ? JSON.stringify(accounts, null, 2) : statusTable(accounts));
  const healthy = (a: AccountStatus) =>
    (a.token === "ok" || a.token === "unknown") && a.tokenUnsaved === undefined;
  return accounts.every(healthy) ? 0 : 1;
}

/**
 * One row per account; below it, the last error, an unsaved refresh token and what to
 * do, when there are any.
 */
export function statusTable(accounts: readonly AccountStatus[]): string {
  const limit = (used: number, max: number) => max > 0 ? `${used}/${max}` : `${used}`;
  const header = ["ACCOUNT", "PROVIDER", "TOKEN", "CONNS", "MSGS/24H", "RCPTS/24H", "MSGS/MIN"];
  return renderTable(
    header,
    accounts.map((a) => ({
      cells: [
        a.account,
        a.provider,
        a.tokenUnsaved ? `${a.token}, unsaved` : a.token,
        connectionsCell(a.connections),
        ...(a.quota.unavailable ? ["?", "?", "?"] : [
          limit(a.quota.messagesToday, a.quota.limits.messagesPerDay),
          limit(a.quota.recipientsToday, a.quota.limits.recipientsPerDay),
          limit(a.quota.lastMinute, a.quota.limits.messagesPerMinute),
        ]),
      ],
      notes: [
        ...fleetNotes(a),
        ...(a.lastError ? [`last error: ${a.lastError}`] : []),
        ...(a.tokenUnsaved ? [unsavedNote(a.tokenUnsaved)] : []),
        ...(a.action ? [`to do: ${a.action}`] : []),
      ],
    })),
  );
}

/** The note on a refresh token that is in memory only. */
function unsavedNote(u: NonNullable<AccountStatus["tokenUnsaved"]>): string {
  const next = u.nextAttempt ? `, next try ${u.nextAttempt}` : "";
  return `refresh token NOT SAVED to ${u.path ?? "the state directory"} (${u.error}: ` +
    `${u.message}) since ${u.since}, ${u.attempts} attempts${next}; a restart now loses it: ` +
    "make the directory writable (or free space)";
}

/** `open/max` here; with shared state, also every instance's total: `1/3 (all 3)`. */
function connectionsCell(c: AccountStatus["connections"]): string {
  const here = `${c.open}/${c.max}`;
  if (!c.fleet) return here;
  const all = Object.values(c.fleet).reduce((sum, n) => sum + n, 0);
  return `${here} (all ${all})`;
}

/** With shared state: which instance holds how many connections; quota counts unknown. */
function fleetNotes(a: AccountStatus): string[] {
  const notes: string[] = [];
  const fleet = Object.entries(a.connections.fleet ?? {});
  if (fleet.length > 0) {
    notes.push(`connections by instance: ${fleet.map(([i, n]) => `${i} ${n}`).join(", ")}`);
  }
  if (a.quota.unavailable) notes.push("quota use unknown: the shared state (Redis) is unavailable");
  return notes;
}
