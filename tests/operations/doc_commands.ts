/**
 * The command lines documented in README.md and docs/*.md: every line of a shell code
 * block (indented, or fenced as sh/bash/shell/console or without a language) whose first
 * word is a program an operator runs. Output and config examples in the same blocks start
 * with other words and are not commands.
 * @module
 */

/** Programs whose lines in code blocks are commands. */
export const PROGRAMS = new Set([
  "deno",
  "npm",
  "swaks",
  "msmtp",
  "sendmail",
  "postfix",
  "postconf",
  "postmap",
  "openssl",
  "promtool",
  "curl",
  "install",
  "useradd",
  "git",
  "cd",
  "cp",
  "systemctl",
  "journalctl",
  "sudo",
  "kill",
  "relay",
  "./smtp-oauth2-relay",
  "/usr/local/bin/deno",
  "/opt/smtp-oauth2-relay/smtp-oauth2-relay",
]);

/** One documented command line. */
export interface DocCommand {
  /** File it is documented in, relative to the repository. */
  readonly file: string;
  /** Line number (1-based) where it starts. */
  readonly line: number;
  /** The command, continuation lines joined, trailing `# comment` removed. */
  readonly command: string;
}

const SHELL_FENCES = new Set(["", "sh", "bash", "shell", "console"]);

/** The commands in one markdown text. */
export function extractCommands(file: string, markdown: string): DocCommand[] {
  const lines = markdown.split("\n");
  const out: DocCommand[] = [];
  let fence: string | undefined; // language of the open fenced block
  let previousBlank = true;
  let inIndented = false;
  let pending: { line: number; text: string } | undefined;
  const take = (n: number, raw: string) => {
    const text = stripComment(raw.trim());
    if (pending) {
      pending.text += " " + text.replace(/\\$/, "").trim();
    } else if (text) {
      pending = { line: n, text: text.replace(/\\$/, "").trim() };
    }
    if (!text.endsWith("\\")) {
      const first = pending?.text.split(/\s+/)[0] ?? "";
      if (pending && PROGRAMS.has(first)) {
        out.push({ file, line: pending.line, command: pending.text });
      }
      pending = undefined;
    }
  };
  lines.forEach((raw, i) => {
    const fenceMatch = /^\s*```(\S*)/.exec(raw);
    if (fenceMatch) {
      fence = fence === undefined ? fenceMatch[1] : undefined;
      previousBlank = false;
      return;
    }
    if (fence !== undefined) {
      if (SHELL_FENCES.has(fence)) take(i + 1, raw);
      return;
    }
    const blank = raw.trim() === "";
    const indented = /^( {4,}|\t)/.test(raw) && !blank;
    if (indented && (previousBlank || inIndented)) {
      inIndented = true;
      take(i + 1, raw);
    } else if (!blank) {
      inIndented = false;
    }
    previousBlank = blank;
  });
  return out;
}

/** `cmd   # what it does` → `cmd` (a `#` inside quotes is kept). */
function stripComment(line: string): string {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]))) {
      return line.slice(0, i).trimEnd();
    }
  }
  return line;
}

/** Splits a command line into words: single and double quotes group, nothing expands. */
export function shellWords(command: string): string[] {
  const words: string[] = [];
  let word = "";
  let quote: string | undefined;
  let started = false;
  for (const c of command) {
    if (quote) {
      if (c === quote) quote = undefined;
      else word += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      started = true;
    } else if (/\s/.test(c)) {
      if (started) words.push(word);
      word = "";
      started = false;
    } else {
      word += c;
      started = true;
    }
  }
  if (started) words.push(word);
  return words;
}

/** README.md and every docs/*.md, with their commands. */
export async function documentedCommands(root: URL): Promise<DocCommand[]> {
  const files = ["README.md"];
  for await (const e of Deno.readDir(new URL("docs/", root))) {
    if (e.isFile && e.name.endsWith(".md")) files.push(`docs/${e.name}`);
  }
  files.sort();
  const out: DocCommand[] = [];
  for (const f of files) out.push(...extractCommands(f, await Deno.readTextFile(new URL(f, root))));
  return out;
}
