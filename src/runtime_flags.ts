/**
 * V8 flags the relay runs with (the launcher's child command line, `deno compile`, the
 * benchmark's relays): the memory they save is measured in `bench/README.md` ("Memory")
 * with `deno task bench:memory-levers` and `deno task bench --scenario memory`.
 *
 * `--max-semi-space-size=2` caps each of V8's two young-generation semi-spaces at 2 MB (its
 * default grows them to 16 MB each under a high allocation rate, as the relay's message
 * path has): the young generation is then at most ~6 MB instead of ~48 MB of RSS, at the
 * price of more, shorter scavenges (each copies the live young objects only, few on the
 * message path). The heap limit (`--max-old-space-size`) is left alone: a relay that hit
 * it would crash rather than refuse mail.
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
