/**
 * A writer process for the cross-process compare-and-set test (store_test.ts): waits
 * until its peer is ready too, then stores `rounds` values by load + compare-and-set,
 * retrying with the current version after each loss, and prints what was acknowledged.
 *
 * Usage: deno run --allow-read=DIR --allow-write=DIR cas_worker.ts DIR NAME PEER ROUNDS
 */
import { join } from "node:path";
import { FileTokenStore } from "../../src/tokens/store.ts";

/** The account both writers write. */
export const CAS_ACCOUNT = "race@example.com";

/** What a worker prints (one JSON line). */
export interface WorkerReport {
  /** Versions acknowledged to this worker, with the token stored at each. */
  readonly acked: [number, string][];
  /** Compare-and-sets that lost to the other writer. */
  readonly losses: number;
}

if (import.meta.main) {
  const [dir, name, peer, rounds] = Deno.args;
  await Deno.writeTextFile(join(dir, `ready-${name}`), "");
  while (true) {
    try {
      await Deno.stat(join(dir, `ready-${peer}`));
      break;
    } catch {
      await new Promise((ok) => setTimeout(ok, 2));
    }
  }
  const store = new FileTokenStore(dir);
  const acked: [number, string][] = [];
  let losses = 0;
  let current = await store.load(CAS_ACCOUNT);
  for (let i = 0; i < Number(rounds); i++) {
    const token = `${name}-${i}`;
    while (true) {
      const r = await store.compareAndSet(CAS_ACCOUNT, current?.version ?? "absent", {
        refreshToken: token,
        configFingerprint: "f",
        updatedAt: new Date().toISOString(),
      });
      if (r.ok) {
        acked.push([r.version, token]);
        current = {
          value: { refreshToken: token, configFingerprint: "f", updatedAt: "" },
          version: r.version,
        };
        break;
      }
      losses++;
      current = r.current;
    }
  }
  const report: WorkerReport = { acked, losses };
  console.log(JSON.stringify(report));
}
