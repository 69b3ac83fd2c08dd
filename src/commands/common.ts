/**
 * Helpers shared by the commands: usage errors, config loading with the
 * "exit 2, one line per problem" contract, and plain-text tables.
 * @module
 */
import { ConfigError, loadConfig, type LoadOptions, type RelayConfig } from "../config/load.ts";

/** A command-line mistake: printed as one line, exit status 2. */
export class UsageError extends Error {}

/** Exit status for usage errors and invalid configs. */
export const EXIT_USAGE = 2;

/** Parses a port flag value; throws {@link UsageError} naming the flag. */
export function parsePort(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) {
    throw new UsageError(`--${flag}: expected a port number 0-65535, got "${value}"`);
  }
  return n;
}

/**
 * Loads the config module; on a {@link ConfigError} prints one line per problem to
 * stderr and returns undefined (the caller exits with {@link EXIT_USAGE}).
 */
export async function loadConfigOrReport(
  path: string,
  options: LoadOptions = {},
): Promise<RelayConfig | undefined> {
  try {
    return await loadConfig(path, 0, options);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    reportConfigError(path, err);
    return undefined;
  }
}

/** Prints a config's problems to stderr: the file's own problem, or one line per field. */
export function reportConfigError(path: string, err: ConfigError): void {
  if (err.problems.length === 1 && err.problems[0].startsWith(`${path}: `)) {
    console.error(err.problems[0]); // the file itself: missing, unreadable, not a module
    return;
  }
  console.error(`${path}: invalid configuration`);
  for (const p of err.problems) console.error(`  ${p}`);
}

/** One row of a {@link renderTable} table, with lines to print under it. */
export interface TableRow {
  /** One cell per column. */
  readonly cells: readonly string[];
  /** Printed below the row, indented by four spaces (errors, hints). */
  readonly notes?: readonly string[];
}

/**
 * A plain-text table: a header line, then one line per row with its notes below it.
 * Columns are as wide as their widest cell and two spaces apart; lines carry no trailing
 * blanks.
 */
export function renderTable(header: readonly string[], rows: readonly TableRow[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r.cells[i].length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(header)];
  for (const row of rows) {
    out.push(line(row.cells));
    for (const note of row.notes ?? []) out.push(`    ${note}`);
  }
  return out.join("\n");
}
