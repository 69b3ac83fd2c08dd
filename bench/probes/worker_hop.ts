/**
 * What a hand-off between two threads costs a Deno process here: a 2 KB message to a Web
 * Worker and a small reply back, at a fixed rate and flat out. The CPU per round trip is
 * what splitting the relay over threads (ingress on one, accounts on another) would add
 * to every message. Figures for bench/README.md ("what limits it", target 3).
 *
 *     deno task bench:worker-hop
 * @module
 */
import process from "node:process";

if (
  !("Deno" in globalThis) || typeof (globalThis as { WorkerGlobalScope?: unknown })
      .WorkerGlobalScope !== "undefined"
) {
  // Inside the worker: answer every message.
  const scope = self as unknown as Worker;
  scope.onmessage = (e: MessageEvent<{ id: number }>) => {
    scope.postMessage({ id: e.data.id, code: 250 });
  };
} else {
  const worker = new Worker(import.meta.url, { type: "module" });
  const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));
  /** `hop` false: the same paced loop without the worker (its own timer wake-ups). */
  const run = async (rate: number, n: number, hop = true) => {
    const sent = new Map<number, number>();
    const latency: number[] = [];
    worker.onmessage = (e: MessageEvent<{ id: number }>) => {
      latency.push(performance.now() - sent.get(e.data.id)!);
      sent.delete(e.data.id);
    };
    await sleep(100);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      if (rate > 0) {
        const wait = t0 + (i * 1000) / rate - performance.now();
        if (wait > 1) await sleep(wait);
      } else if (i % 100 === 99) await sleep(0);
      if (!hop) continue;
      sent.set(i, performance.now());
      const bytes = new Uint8Array(2048);
      worker.postMessage({ id: i, bytes }, [bytes.buffer]);
    }
    while (sent.size > 0) await sleep(5);
    const cpu = process.cpuUsage(cpu0);
    const perRound = (cpu.user + cpu.system) / n;
    if (!hop) {
      console.log(`${rate} loop turns/s without the worker: ${perRound.toFixed(0)} µs per turn`);
      return;
    }
    latency.sort((a, b) => a - b);
    const at = (q: number) => latency[Math.min(n - 1, Math.floor(n * q))].toFixed(2);
    console.log(
      `${rate > 0 ? `${rate} round trips/s` : "flat out"}: process CPU ` +
        `${perRound.toFixed(0)} µs per round trip, ` +
        `latency p50 ${at(0.5)} ms, p99 ${at(0.99)} ms (${n} round trips)`,
    );
  };
  console.log(
    `Deno ${Deno.version.deno}; main thread <-> Web Worker, 2 KB out, a small reply back`,
  );
  for (const [rate, n] of [[300, 1_500], [1000, 5_000]]) {
    await run(rate, n, false);
    await run(rate, n);
  }
  await run(0, 50_000);
  worker.terminate();
}
