/** What every ferry command shares: logging options, running a command to its exit code, events on stdout, signals. */
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { defaultSendOptions } from "../client/Client.js"
import { encodeEvent, type FerryEvent } from "../domain/Events.js"
import * as Options from "@effect/cli/Options"
import { choice, flag, type GivenFile, type GivenToken, optionalFile, setting, token, usageError } from "../CliOptions.js"
import { CredentialsLive } from "../services/Credentials.js"
import {
  DurationText,
  ListenAddressText,
} from "../domain/Units.js"
import { type LogFormat, type LogOutput, LoggingLive, logExit, stderrOutput } from "../Logging.js"
import { defaultServeOptions } from "../server/Server.js"
import { Monitor } from "../services/Monitor.js"
import { ExitCode } from "../domain/ExitCode.js"
import { directOutput } from "./help.js"

/** A failure already told to the user: only its exit code is left to give. */
export class Reported extends Data.TaggedError("Reported")<{ readonly exitCode: number }> {}

/* Options every command takes */

export const Text = Schema.String

export const logging = {
  logFormat: setting("log-format", choice(["text", "json"]), "text|json", "Log lines on stderr as text, or as JSON objects (one per line).")
    .withDefault("text"),
  debug: flag("debug", "Detailed logs on stderr.")
}

export interface LogFlags {
  readonly logFormat: LogFormat
  readonly debug: boolean
}

export const loggingFor = (flags: LogFlags, output: LogOutput = stderrOutput) => LoggingLive({ format: flags.logFormat, debug: flags.debug }, output)

/** Says why a command failed, in one line; the exit code it stops with. */
export const report = (cause: Cause.Cause<{ readonly message: string; readonly _tag: string }>, debug: boolean) => {
  if (Cause.isInterruptedOnly(cause)) return Effect.succeed(ExitCode.Interrupted)
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure) && failure.value instanceof Reported) return Effect.succeed(failure.value.exitCode)
  if (Option.isSome(failure)) {
    return Effect.as(logExit(failure.value.message, ExitCode.Failed), ExitCode.Failed)
  }
  const defect = Cause.squash(cause)
  return Effect.as(
    logExit(`internal error: ${defect instanceof Error ? defect.message : String(defect)}`, ExitCode.Failed, debug ? cause : undefined),
    ExitCode.Failed
  )
}

/** Runs a command's program with its logging; any failure is reported, and leaves as its exit code. */
export const run = <E extends { readonly message: string; readonly _tag: string }, R>(flags: LogFlags, program: Effect.Effect<void, E, R>, output?: LogOutput) =>
  program.pipe(
    Effect.catchAllCause((cause) => Effect.flatMap(report(cause, flags.debug), (exitCode) => Effect.fail(new Reported({ exitCode })))),
    Effect.provide(loggingFor(flags, output)),
    directOutput
  )

export const handshakeTimeout = (serverSide: boolean) =>
  setting(
    "handshake-timeout",
    DurationText,
    "SECONDS",
    serverSide ? "Time a client has to finish the handshake (TLS included), in seconds or as \"500 millis\"." : "Time the server has to greet and accept us, in seconds or as \"500 millis\"."
  ).withDefault(Duration.decode(serverSide ? defaultServeOptions.handshakeTimeout : defaultSendOptions.handshakeTimeout))

export const tokenOption = token("File holding the shared secret (one line).")

/**
 * The metrics endpoint, loaded only when asked for: the HTTP server it is built on (with the
 * WebSocket and multipart code that come with it) would add about 8 MB to every run's memory.
 * The bundle keeps it in a chunk of its own (scripts/bundle.mjs).
 */
export const serveMetrics = (options: import("../node/MetricsEndpoint.js").MetricsEndpointOptions) =>
  Effect.flatMap(Effect.promise(() => import("../node/MetricsEndpoint.js")), (endpoint) => endpoint.serveMetrics(options))

export const metricsOption = setting(
  "metrics",
  ListenAddressText,
  "HOST:PORT",
  "Serve Prometheus metrics at http://HOST:PORT/metrics and a health check at /healthz (port 0 picks a free port; default: off)."
).optional

/**
 * Prints events as they happen while `program` runs: a line for each finished dataset, or every
 * event as JSON. Whatever is still queued when the program ends is printed before returning.
 */
export const printingEvents = <A, E, R>(
  json: boolean,
  line: (event: FerryEvent) => string | undefined,
  program: Effect.Effect<A, E, R>,
  out: (text: string) => Effect.Effect<void> = Console.log
) =>
  Effect.gen(function*() {
    const monitor = yield* Monitor
    const events = yield* monitor.subscribe
    const print = (event: FerryEvent) => {
      const text = json ? encodeEvent(event) : line(event)
      return text === undefined ? Effect.void : out(text)
    }
    // an event taken is always printed: only the wait for the next one can be interrupted
    const printNext = Effect.uninterruptibleMask((restore) => Effect.flatMap(restore(Queue.take(events)), print))
    const printer = yield* Effect.fork(Effect.forever(printNext))
    return yield* program.pipe(
      // once the program is done, the printer stops and what it has not taken yet is printed here;
      // the subscription closes with the scope
      Effect.ensuring(Effect.zipRight(Fiber.interrupt(printer), Effect.flatMap(Queue.takeAll(events), (rest) => Effect.forEach(rest, print, { discard: true }))))
    )
  }).pipe(Effect.scoped)

/** The first SIGINT or SIGTERM, as a value. A second one ends the process at once. */
export const nextSignal = Effect.async<NodeJS.Signals>((resume) => {
  const hard = (signal: NodeJS.Signals) => process.exit(signal === "SIGTERM" ? ExitCode.Terminated : ExitCode.Interrupted)
  const on = (signal: NodeJS.Signals) => {
    process.off("SIGINT", on)
    process.off("SIGTERM", on)
    process.once("SIGINT", hard)
    process.once("SIGTERM", hard)
    resume(Effect.succeed(signal))
  }
  process.on("SIGINT", on)
  process.on("SIGTERM", on)
  return Effect.sync(() => {
    process.off("SIGINT", on)
    process.off("SIGTERM", on)
  })
})

export const signalExit = (signal: NodeJS.Signals) => (signal === "SIGTERM" ? ExitCode.Terminated : ExitCode.Interrupted)

/** --tls-cert and --tls-key: both or neither. */
export const certificatePair = (cert: string, key: string) =>
  Options.all({ cert: optionalFile("tls-cert", cert), key: optionalFile("tls-key", key) }).pipe(
    Options.mapEffect(({ cert, key }) =>
      Option.isSome(cert) && Option.isSome(key)
        ? Effect.succeed({ cert: cert.value, key: key.value })
        : Option.isSome(cert) || Option.isSome(key)
        ? Effect.fail(usageError("--tls-cert and --tls-key go together"))
        : Effect.succeed(undefined)
    )
  )

/** What a command read its token and TLS material from, for the Credentials it reloads on SIGHUP. */
export interface GivenCredentials {
  readonly token: GivenToken | undefined
  readonly pair: { readonly cert: GivenFile; readonly key: GivenFile } | undefined
  readonly ca: GivenFile | undefined
}

const fileOf = (given: GivenFile | undefined) => (given === undefined ? undefined : { flag: given.flag, path: given.path })

export const credentialsLayer = (given: GivenCredentials) =>
  CredentialsLive(
    { token: given.token?.file, cert: fileOf(given.pair?.cert), key: fileOf(given.pair?.key), ca: fileOf(given.ca) },
    { token: given.token?.token, cert: given.pair?.cert.bytes, key: given.pair?.key.bytes, ca: given.ca?.bytes }
  )

/**
 * Runs `reload` on each SIGHUP until the scope closes. The listener itself is what keeps a SIGHUP
 * from ending the process (Node's default); SIGHUPs that come during a reload make one more.
 */
export const reloadOnHangup = (reload: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const hangups = yield* Queue.sliding<void>(1)
    const on = () => void Queue.unsafeOffer(hangups, undefined)
    yield* Effect.acquireRelease(Effect.sync(() => process.on("SIGHUP", on)), () => Effect.sync(() => process.off("SIGHUP", on)))
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Queue.take(hangups), reload)))
  })
