/**
 * src/runtime_flags.ts: Deno accepts the relay's V8 flags, and they take effect. A child
 * process allocates short-lived objects at a high rate (as the message path does) and
 * reports the largest young generation V8 gave it: with the flags it stays within the 2 MB
 * semi-space cap, without them V8 grows it past that. The environment (glibc's arena cap)
 * reaches a child started with it.
 */
import assert from "node:assert/strict";
import { RELAY_ENV, RELAY_V8_FLAGS, runtimeEnv, runtimeFlags } from "../src/runtime_flags.ts";

const CHURN = `
import v8 from "node:v8";
let max = 0;
let keep = [];
for (let i = 0; i < 400000; i++) {
  keep.push({ a: i, b: "x" + i, c: new Array(8).fill(i) });
  if (keep.length > 2000) keep = [];
  if (i % 1000 === 0) {
    const s = v8.getHeapSpaceStatistics().find((x) => x.space_name === "new_space");
    max = Math.max(max, s.space_size);
  }
}
console.log(max);
`;

/** Largest young-generation size (bytes) a churning child reached with `flags`. */
async function youngGeneration(flags: string[]): Promise<number> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", ...flags, CHURN],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, err);
  assert.equal(err, "", "no complaint about the flags");
  return Number(new TextDecoder().decode(out.stdout).trim());
}

Deno.test("runtimeFlags: one --v8-flags argument with every flag", () => {
  assert.deepEqual(runtimeFlags(), [`--v8-flags=${RELAY_V8_FLAGS.join(",")}`]);
  assert.ok(RELAY_V8_FLAGS.includes("--max-semi-space-size=2"));
});

Deno.test("runtimeFlags: the young generation stays within the 2 MB semi-space cap", async () => {
  const MB = 1024 * 1024;
  const capped = await youngGeneration(runtimeFlags());
  const free = await youngGeneration([]);
  assert.ok(capped > 0 && capped <= 4 * MB, `with the flags: ${capped} bytes`);
  assert.ok(free > 4 * MB, `without them V8 grows it further: ${free} bytes`);
});

Deno.test("runtimeEnv: glibc's arena cap, seen by a child started with it", async () => {
  assert.deepEqual(RELAY_ENV, { MALLOC_ARENA_MAX: "2" });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "console.log(Deno.env.get('MALLOC_ARENA_MAX'))"],
    env: runtimeEnv(),
    stdout: "piped",
  }).output();
  assert.equal(out.code, 0);
  assert.equal(new TextDecoder().decode(out.stdout), "2\n");
});
