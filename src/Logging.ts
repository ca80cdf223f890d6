/**
 * ferry's log lines: one event per line on stderr. Text by default, short
 * (`ferry: warning: ...`) or, under --debug, with a UTC timestamp and level;
 * JSON with `--log-format json`, every log annotation (`dataset`, `peer`,
 * `code`...) a field of its own.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Schema from "effect/Schema"

export const LogFormat = Schema.Literal("text", "json")
export type LogFormat = typeof LogFormat.Type

export interface LogStyle {
  readonly format: LogFormat
  /** Debug lines too; text lines get a timestamp and a level. */
  readonly debug: boolean
}

/** Where lines go (on a terminal, the CLI prints them above its progress board). */
export interface LogOutput {
  readonly write: (line: string) => void
}

export const stderrOutput: LogOutput = { write: (line) => void process.stderr.write(line) }

/** The annotation on the line that says why ferry stops: the exit code it stops with. */
export const EXIT_CODE = "exit"

/** What the logger sees of one event. */
export interface LogEvent {
  readonly date: Date
  readonly logLevel: LogLevel.LogLevel
  readonly message: unknown
  readonly annotations: Iterable<readonly [string, unknown]>
  readonly cause: Cause.Cause<unknown>
}

const messageText = (message: unknown): string =>
  (Array.isArray(message) ? message : [message]).map((m) => (typeof m === "string" ? m : jsonText(m))).join(" ")

const jsonText = (value: unknown): string => {
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/** A value JSON.stringify can take as it is; anything else (a bigint, a cycle) as its string. */
const jsonValue = (value: unknown): unknown => {
  try {
    return JSON.stringify(value) === undefined ? String(value) : value
  } catch {
    return String(value)
  }
}

const textPrefix = (event: LogEvent, annotations: ReadonlyMap<string, unknown>): string => {
  switch (event.logLevel._tag) {
    case "Warning":
      return "warning: "
    case "Error":
    case "Fatal":
      // the line ferry stops on reads like any other failure: just what went wrong
      return annotations.has(EXIT_CODE) ? "" : "error: "
    default:
      return ""
  }
}

/** One event as one line, without the newline (a --debug text line may add the cause's lines). */
export const formatEvent = (style: LogStyle, event: LogEvent): string => {
  const annotations = new Map(event.annotations)
  const message = messageText(event.message)
  const time = event.date.toISOString()
  const failed = !Cause.isEmpty(event.cause)
  if (style.format === "json") {
    const line: Record<string, unknown> = { time, level: event.logLevel.label, message }
    for (const [key, value] of annotations) if (!(key in line)) line[key] = jsonValue(value)
    if (failed) line["cause"] = Cause.pretty(event.cause)
    return JSON.stringify(line)
  }
  if (!style.debug) return `ferry: ${textPrefix(event, annotations)}${message}`
  const fields = [...annotations].map(([key, value]) => ` ${key}=${typeof value === "string" && /^\S+$/.test(value) ? value : jsonText(value)}`)
  return `${time} ${event.logLevel.label.padEnd(5)} ${message}${fields.join("")}${failed ? `\n${Cause.pretty(event.cause)}` : ""}`
}

export const ferryLogger = (style: LogStyle, output: LogOutput = stderrOutput) =>
  Logger.make((options) => {
    const line = formatEvent(style, { ...options, annotations: HashMap.toEntries(options.annotations) })
    output.write(`${line}\n`)
  })

/** Replaces Effect's default logger; Debug and Trace lines only with --debug. */
export const LoggingLive = (style: LogStyle, output: LogOutput = stderrOutput) =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, ferryLogger(style, output)),
    Logger.minimumLogLevel(style.debug ? LogLevel.Debug : LogLevel.Info)
  )

/** Logs the line that says why ferry stops, annotated with the exit code; the cause only under --debug. */
export const logExit = (message: string, exitCode: number, cause?: Cause.Cause<unknown>) =>
  (cause === undefined ? Effect.logError(message) : Effect.logError(message, cause)).pipe(
    Effect.annotateLogs(EXIT_CODE, exitCode)
  )
