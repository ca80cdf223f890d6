/** ferry's log lines: plain on stderr, with times and levels under --debug. */
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"

const text = (message: unknown): string =>
  Array.isArray(message) ? message.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ") : String(message)

const toStderr = (line: string) => void process.stderr.write(line)

export const ferryLogger = (debug: boolean, write: (line: string) => void = toStderr) =>
  Logger.make(({ date, logLevel, message }) => {
    const level = logLevel.label
    if (debug) write(`${date.toISOString().slice(11, 23)} ${level.padEnd(5)} ${text(message)}\n`)
    else write(`ferry: ${logLevel._tag === "Warning" ? "warning: " : logLevel._tag === "Error" ? "error: " : ""}${text(message)}\n`)
  })

/** Replaces Effect's default logger; Debug and Trace lines only with --debug. */
export const LoggingLive = (debug: boolean) =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, ferryLogger(debug)),
    Logger.minimumLogLevel(debug ? LogLevel.Debug : LogLevel.Info)
  )
