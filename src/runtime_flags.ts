/**
 * V8 flags and C-library settings the relay runs with (the launcher's child process and
 * the benchmark's relays): what they save is measured in `docs/memory.md`
 * (`deno task bench:memory-levers`, `deno task bench:pool-memory`,
 * `deno task bench --scenario memory`).
 *
 * `--max-semi-space-size=2` caps V8's young-generation semi-spaces at 2 MB: under a high
 * allocation rate, as the relay's message path has, V8 otherwise grows its new space to
 * 16 MB, with the flag it stays at 4 MB (`node:v8` new_space size; the test of this module),
 * and the old generation it promotes into grows less (heap total with 1,000 pooled
 * connections 89 → 52 MB, `bench:pool-memory`). The price: more, shorter scavenges, +4–6 %
 * CPU per message in the benchmark. The heap limit (`--max-old-space-size`) is left alone: a relay that hit
 * it would crash rather than refuse mail.
 *
 * `MALLOC_ARENA_MAX=2`: Deno allocates with glibc malloc (`nm -D $(which deno)`), which
 * gives every thread that allocates its own arena, up to 8 per core; the relay's runtime
 * has many (the Tokio worker and blocking-pool threads that resolve host names, read files
 * and run TLS handshakes, V8's GC helpers), and each arena keeps the memory it once held.
 * Two arenas hold the relay's RSS after warm-up and under load well below the default
 * (see docs/memory.md). glibc reads it once at process start, so it is set in the child's
 * environment; it replaces any value the launcher's own environment has.
 * @module
 */

/** The V8 flags, each as V8 spells it. */
export const RELAY_V8_FLAGS: readonly string[] = ["--max-semi-space-size=2"];

/**
 * Deno command-line arguments that give a `deno run` or `deno compile` of the relay its
 * V8 flags (Deno appends repeated `--v8-flags`, so these combine with others).
 */
export function runtimeFlags(): string[] {
  return RELAY_V8_FLAGS.length ? [`--v8-flags=${RELAY_V8_FLAGS.join(",")}`] : [];
}

/** Environment variables for the relay's process (glibc reads them at start). */
export const RELAY_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: "2" };

/** A copy of {@link RELAY_ENV}, for `Deno.Command`'s `env` (merged over the inherited one). */
export function runtimeEnv(): Record<string, string> {
  return { ...RELAY_ENV };
}
