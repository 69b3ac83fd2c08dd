/**
 * Summarises a V8 `.cpuprofile` (written by `deno run --cpu-prof`): self time per function
 * and per module (npm package, Deno runtime extension, project directory).
 * @module
 */

/** Self time of one function (or module). */
export interface Cost {
  /** Function name with its location, or a module name. */
  readonly name: string;
  /** Self time, ms. */
  readonly selfMs: number;
  /** Share of all sampled time (idle excluded), percent. */
  readonly pct: number;
}

/** The summary of one profile. */
export interface ProfileSummary {
  /** The profile file. */
  readonly file: string;
  /** Sampled time excluding idle, ms. */
  readonly busyMs: number;
  /** Sampled idle time, ms. */
  readonly idleMs: number;
  /** Functions by self time, largest first. */
  readonly topFrames: readonly Cost[];
  /** Modules by self time, largest first. */
  readonly topModules: readonly Cost[];
  /**
   * Modules by inclusive time: samples with the module anywhere on the stack (so socket
   * writes made for smtp-server count for smtp-server). Shares overlap.
   */
  readonly inclusiveModules: readonly Cost[];
}

interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }[];
  samples: number[];
  timeDeltas: number[];
}

/** Where a script URL belongs: npm package, runtime extension or project directory. */
export function moduleOf(url: string): string {
  if (!url) return "(native/vm)";
  const npm = url.match(/registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\//) ??
    url.match(/node_modules\/(?:\.deno\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\//);
  if (npm) return `npm:${npm[1]}`;
  const ext = url.match(/^ext:([^/]+)/);
  if (ext) return `ext:${ext[1]}`;
  if (url.startsWith("node:")) return url;
  const project = url.match(/\/(src|bench|tests)\/(?:([^/]+)\/)?/);
  if (project) {
    return project[2] && !project[2].includes(".") ? `${project[1]}/${project[2]}` : project[1];
  }
  return url;
}

function shortUrl(url: string): string {
  const npm = url.match(/registry\.npmjs\.org\/(.*)$/);
  if (npm) return npm[1];
  const project = url.match(/\/((?:src|bench|tests)\/.*)$/);
  return project ? project[1] : url;
}

/** Reads and summarises one profile file. */
export async function summarizeProfile(file: string, top = 20): Promise<ProfileSummary> {
  const profile = JSON.parse(await Deno.readTextFile(file)) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const frames = new Map<string, number>();
  const modules = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const stackModules = new Map<number, Set<string>>();
  const modulesOnStack = (id: number): Set<string> => {
    let set = stackModules.get(id);
    if (set) return set;
    const node = byId.get(id);
    const up = parent.get(id);
    set = new Set(up === undefined ? [] : modulesOnStack(up));
    if (node?.callFrame.url) set.add(moduleOf(node.callFrame.url));
    stackModules.set(id, set);
    return set;
  };
  let busy = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]);
    // timeDeltas[i + 1] is the time until the next sample, spent where sample i was taken.
    const us = profile.timeDeltas[i + 1] ?? 0;
    if (!node || us <= 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === "(idle)") {
      idle += us;
      continue;
    }
    busy += us;
    const name = url
      ? `${functionName || "(anonymous)"} ${shortUrl(url)}:${lineNumber + 1}`
      : functionName || "(anonymous)";
    frames.set(name, (frames.get(name) ?? 0) + us);
    const mod = url ? moduleOf(url) : functionName || "(native/vm)";
    modules.set(mod, (modules.get(mod) ?? 0) + us);
    for (const m of modulesOnStack(node.id)) inclusive.set(m, (inclusive.get(m) ?? 0) + us);
  }
  const rank = (m: Map<string, number>): Cost[] =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, us]) => ({
      name,
      selfMs: us / 1000,
      pct: busy > 0 ? (100 * us) / busy : 0,
    }));
  return {
    file,
    busyMs: busy / 1000,
    idleMs: idle / 1000,
    topFrames: rank(frames),
    topModules: rank(modules),
    inclusiveModules: rank(inclusive),
  };
}

/** The newest `.cpuprofile` in `dir`, or undefined. */
export async function newestProfile(dir: string): Promise<string | undefined> {
  let best: { path: string; mtime: number } | undefined;
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isFile || !entry.name.endsWith(".cpuprofile")) continue;
      const path = `${dir}/${entry.name}`;
      const mtime = (await Deno.stat(path)).mtime?.getTime() ?? 0;
      if (!best || mtime > best.mtime) best = { path, mtime };
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return best?.path;
}
