/**
 * Logging set-up (LogTape): readable lines on a terminal, JSON lines otherwise.
 * Modules log through `getLogger([...])`; nothing here knows what they log.
 * @module
 */
import {
  ansiColorFormatter,
  configure,
  jsonLinesFormatter,
  type LogLevel,
  type LogRecord,
  reset,
  type Sink,
  type TextFormatter,
} from "@logtape/logtape";

/** `auto`: pretty on a terminal, JSON lines when stderr is a file or pipe. */
export type LogFormat = "auto" | "pretty" | "json";

/**
 * Configures the root logger; call once at start-up. Logs go to stderr. `fields` are added
 * to every record's properties (a worker's number under `--workers`).
 */
export async function setupLogging(
  format: LogFormat,
  level: LogLevel = "info",
  fields: Record<string, unknown> = {},
): Promise<void> {
  const pretty = format === "pretty" || (format === "auto" && Deno.stderr.isTerminal());
  const sink = stderrSink(pretty ? ansiColorFormatter : jsonLinesFormatter);
  await configure({
    reset: true,
    sinks: {
      stderr: Object.keys(fields).length === 0
        ? sink
        : (record: LogRecord) =>
          sink({ ...record, properties: { ...record.properties, ...fields } }),
    },
    loggers: [
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
      { category: ["relay"], lowestLevel: level, sinks: ["stderr"] },
    ],
  });
}

/** Flushes and removes the logging configuration (shutdown, tests). */
export async function stopLogging(): Promise<void> {
  await reset();
}

/** Writes each formatted record to stderr synchronously, so no line is lost at exit. */
function stderrSink(format: TextFormatter): Sink {
  const encoder = new TextEncoder();
  return (record: LogRecord) => {
    let bytes = encoder.encode(format(record));
    while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
  };
}
