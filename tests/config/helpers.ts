/** Shared by the config tests: a placeholder hash and the problem lines of a refused config. */
import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../src/config/load.ts";

/** Syntactically valid; no password hashes to it, none is needed here. */
export const HASH = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo";

/** The problem lines parseConfig reports for `input` (fails if it accepts it). */
export function problems(input: unknown): readonly string[] {
  try {
    parseConfig(input);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  assert.fail("the config was accepted");
}
