/**
 * The `ferry` command line: send, serve, fake. This file declares the commands
 * and their options (read as CliOptions.ts says: flag, else FERRY_* variable,
 * else the pipeline's default) and maps them onto the pipelines' options.
 * Whatever goes wrong ends as one line on stderr, in the chosen log format,
 * and an exit code.
 */
import * as CliConfig from "@effect/cli/CliConfig"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as Path from "@effect/platform/Path"
import * as Terminal from "@effect/platform/Terminal"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import { parseOnCommit } from "./client/Cleanup.js"
import { senderEndpoint } from "./client/Metrics.js"
import { defaultSendOptions, exitCodeOf, FAR_CONNECTIONS, NEAR_ROUND_TRIP_MS, send, type SendOptions, watchPolicy } from "./client/Client.js"
import { makeBoard, Progress, runBoard, runProgressReports, summary as rateSummary } from "./client/Progress.js"
import { encodeEvent, type FerryEvent, stamp } from "./domain/Events.js"
import { choice, envName, flag, optionalFile, setting, token, usageError } from "./CliOptions.js"
import { DatasetName } from "./domain/Dataset.js"
import {
  AddressListText,
  ByteSize,
  Count,
  DurationText,
  formatByteSize,
  formatBytes,
  fromText,
  ListenAddressText,
  Port,
  PositiveByteSize,
  PositiveCount,
  RateText,
  WholeNumber
} from "./domain/Units.js"
import { VERSION } from "./domain/Version.js"
import { type LogFormat, type LogOutput, LoggingLive, logExit, stderrOutput } from "./Logging.js"
import { ClientLive, ServerLive } from "./Layers.js"
import { serverEndpoint, type ServerPhase } from "./server/Metrics.js"
import { defaultServeOptions, frameLimit, largestSliceIn, serve } from "./server/Server.js"
import { Monitor, MonitorLive } from "./services/Monitor.js"
import { defaultStoreLimits } from "./services/PieceStore.js"
import { makeDataset, SampleMakerLive } from "./services/SampleMaker.js"
import { DEFAULT_LEASE_TIME } from "./services/store/Leases.js"
import { ThrottleLive } from "./services/Throttle.js"

/**
 * Exit codes: 1 when the job failed (for `send`: a dataset failed on its data), 2 when the command
 * line was wrong, 3 when `send` could not reach or keep a server, 4 when it found nothing to send,
 * 130 and 143 when stopped by SIGINT and SIGTERM (`serve` stops cleanly on either: 0).
 */
export const ExitCode = { Ok: 0, Failed: 1, Usage: 2, Unreachable: 3, NothingToSend: 4, Interrupted: 130, Terminated: 143 } as const

/** A failure already told to the user: only its exit code is left to give. */
class Reported extends Data.TaggedError("Reported")<{ readonly exitCode: number }> {}

/* Options every command takes */

const Text = Schema.String

const logging = {
  logFormat: setting("log-format", choice(["text", "json"]), "text|json", "Log lines on stderr as text, or as JSON objects (one per line).")
    .withDefault("text"),
  debug: flag("debug", "Detailed logs on stderr.")
}

interface LogFlags {
  readonly logFormat: LogFormat
  readonly debug: boolean
}

const loggingFor = (flags: LogFlags, output: LogOutput = stderrOutput) => LoggingLive({ format: flags.logFormat, debug: flags.debug }, output)

/** Says why a command failed, in one line; the exit code it stops with. */
const report = (cause: Cause.Cause<{ readonly message: string; readonly _tag: string }>, debug: boolean) => {
  if (Cause.isInterruptedOnly(cause)) return Effect.succeed(ExitCode.Interrupted)
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure) && failure.value instanceof Reported) return Effect.succeed(failure.value.exitCode)
  if (Option.isSome(failure)) {
    const exitCode = failure.value._tag === "UsageError" ? ExitCode.Usage : ExitCode.Failed
    return Effect.as(logExit(failure.value.message, exitCode), exitCode)
  }
  const defect = Cause.squash(cause)
  return Effect.as(
    logExit(`internal error: ${defect instanceof Error ? defect.message : String(defect)}`, ExitCode.Failed, debug ? cause : undefined),
    ExitCode.Failed
  )
}

/** Runs a command's program with its logging; any failure is reported, and leaves as its exit code. */
const run = <E extends { readonly message: string; readonly _tag: string }, R>(flags: LogFlags, program: Effect.Effect<void, E, R>, output?: LogOutput) =>
  program.pipe(
    Effect.catchAllCause((cause) => Effect.flatMap(report(cause, flags.debug), (exitCode) => Effect.fail(new Reported({ exitCode })))),
    Effect.provide(loggingFor(flags, output)),
    directOutput
  )

const handshakeTimeout = (serverSide: boolean) =>
  setting(
    "handshake-timeout",
    DurationText,
    "SECONDS",
    serverSide ? "Time a client has to finish the handshake (TLS included), in seconds or as \"500 millis\"." : "Time the server has to greet and accept us, in seconds or as \"500 millis\"."
  ).withDefault(Duration.decode(serverSide ? defaultServeOptions.handshakeTimeout : defaultSendOptions.handshakeTimeout))

const tokenOption = token("File holding the shared secret (one line).")

/**
 * The metrics endpoint, loaded only when asked for: the HTTP server it is built on (with the
 * WebSocket and multipart code that come with it) would add about 8 MB to every run's memory.
 * The bundle keeps it in a chunk of its own (scripts/bundle.mjs).
 */
const serveMetrics = (options: import("./services/MetricsEndpoint.js").MetricsEndpointOptions) =>
  Effect.flatMap(Effect.promise(() => import("./services/MetricsEndpoint.js")), (endpoint) => endpoint.serveMetrics(options))

const metricsOption = setting(
  "metrics",
  ListenAddressText,
  "HOST:PORT",
  "Serve Prometheus metrics at http://HOST:PORT/metrics and a health check at /healthz (port 0 picks a free port; default: off)."
).optional

/* ferry send */

const Connections = fromText(
  Schema.Union(Schema.Number, Schema.Literal("auto")),
  "auto or a whole number above 0",
  (text): number | "auto" | undefined => (text.trim() === "auto" ? "auto" : Schema.decodeOption(PositiveCount)(text).pipe(Option.getOrUndefined)),
  String
)

const OnCommitText = fromText(
  Schema.Union(Schema.TaggedStruct("Keep", {}), Schema.TaggedStruct("Delete", {}), Schema.TaggedStruct("Move", { to: Schema.String })),
  "keep, delete or move:DIR",
  parseOnCommit,
  (a) => (a._tag === "Move" ? `move:${a.to}` : a._tag.toLowerCase())
)

/** stdout: one line per dataset as it finishes, or every event as a JSON line. */
const resultLine = (event: FerryEvent): string | undefined => {
  switch (event.event) {
    case "committed":
      return event.alreadyCommitted
        ? `${event.dataset}: already committed on the server (${event.bytes} bytes, crc32 ${event.crc32}), nothing sent`
        : `${event.dataset}: committed ${event.bytes} bytes in ${event.pieces} pieces (${event.sent} sent), crc32 ${event.crc32}`
    case "failed":
      return `${event.dataset}: failed (${event.code}): ${event.message}`
    default:
      return undefined
  }
}

/**
 * Prints events as they happen while `program` runs: a line for each finished dataset, or every
 * event as JSON. Whatever is still queued when the program ends is printed before returning.
 */
const printingEvents = <A, E, R>(json: boolean, line: (event: FerryEvent) => string | undefined, program: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const monitor = yield* Monitor
    const events = yield* monitor.subscribe
    const print = (event: FerryEvent) => {
      const text = json ? encodeEvent(event) : line(event)
      return text === undefined ? Effect.void : Console.log(text)
    }
    return yield* Effect.scoped(
      Effect.gen(function*() {
        const printer = yield* events.pipe(Stream.runForEach(print), Effect.fork)
        return yield* program.pipe(
          // let the printer catch up with what the program published, then stop it
          Effect.ensuring(Effect.zipRight(Effect.yieldNow(), Effect.zipRight(Effect.sleep("20 millis"), Fiber.interrupt(printer))))
        )
      })
    )
  }).pipe(Effect.scoped)

/** The first SIGINT or SIGTERM, as a value. A second one ends the process at once. */
const nextSignal = Effect.async<NodeJS.Signals>((resume) => {
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

const signalExit = (signal: NodeJS.Signals) => (signal === "SIGTERM" ? ExitCode.Terminated : ExitCode.Interrupted)

const sendCommand = Command.make(
  "send",
  {
    path: setting("path", Text, "DIR", "Folder holding NAME-NNNNNNN.gz pieces and NAME.done markers.").required,
    address: setting("address", AddressListText, "HOST:PORT[,HOST:PORT...]", "Server to send to; with several, datasets are spread over them and move to another when one goes away.").required,
    watch: flag("watch", "Keep watching --path and send every dataset whose marker appears, until stopped (SIGTERM or Ctrl-C)."),
    onCommit: setting("on-commit", OnCommitText, "keep|delete|move:DIR", "What to do with a dataset's files once the server has committed it.").withDefault({ _tag: "Keep" }),
    json: flag("json", "Events on stdout as JSON lines (see the README), instead of one line per dataset."),
    allowEmpty: flag("allow-empty", "A folder with no dataset is not an error (exit 0, not 4)."),
    connections: setting(
      "connections",
      Connections,
      "N|auto",
      `TCP connections to each server. auto: 1 when the first connection is set up within ${NEAR_ROUND_TRIP_MS} ms (loopback, a LAN, nearby), ${FAR_CONNECTIONS} when the server is farther.`
    ).withDefault(defaultSendOptions.connections),
    parallel: setting("parallel", PositiveCount, "N", "Datasets sent at the same time.").withDefault(defaultSendOptions.parallelDatasets),
    retries: setting("retries", Count, "N", "Reconnections in a row without progress before giving up on a server.").withDefault(defaultSendOptions.retries),
    retryFor: setting("retry-for", DurationText, "DURATION", "Time spent reconnecting without progress before giving up on a server, or waiting on a server that cannot take a dataset.")
      .withDefault(Duration.decode(defaultSendOptions.retryFor)),
    markerTimeout: setting("marker-timeout", DurationText, "DURATION", "A dataset whose marker has not appeared after this long fails (default: wait forever).").optional,
    bwlimit: setting("bwlimit", RateText, "RATE", "Most bytes per second all connections put on the wire, such as 50MiB/s (default: no limit).").optional,
    progressInterval: setting("progress-interval", DurationText, "DURATION", "Time between two progress lines (or progress events with --json) when stderr is not a terminal.")
      .withDefault(Duration.seconds(5)),
    token: tokenOption,
    tls: flag("tls", "Use TLS, verifying the server against the system's roots."),
    tlsCa: optionalFile("tls-ca", "Use TLS, verifying the server against this CA certificate (PEM)."),
    tlsServername: setting("tls-servername", Text, "NAME", "Name the server's certificate must carry (default: the host of --address).").optional,
    handshakeTimeout: handshakeTimeout(false),
    quiet: flag("quiet", "No progress display."),
    readers: setting("readers", PositiveCount, "N", "Threads reading piece files (default 2).").optional,
    metrics: metricsOption,
    ...logging
  },
  (flags) => {
    const tty = process.stderr.isTTY === true && !flags.quiet && flags.logFormat === "text"
    const board = makeBoard(stderrOutput.write, () => process.stderr.columns ?? 80)
    const output: LogOutput = tty ? { ...stderrOutput, beforeWrite: board.erase } : stderrOutput
    return run(
      flags,
      Effect.gen(function*() {
        const started = Date.now()
        const ca = Option.getOrUndefined(flags.tlsCa)
        const options: SendOptions = {
          ...defaultSendOptions,
          ...(flags.watch ? watchPolicy : {}),
          dir: flags.path,
          addresses: flags.address,
          connections: flags.connections,
          parallelDatasets: flags.parallel,
          retries: flags.watch ? watchPolicy.retries : flags.retries,
          retryFor: flags.watch ? watchPolicy.retryFor : flags.retryFor,
          token: flags.token,
          tls: flags.tls || ca !== undefined ? { ca, servername: Option.getOrUndefined(flags.tlsServername) } : undefined,
          handshakeTimeout: flags.handshakeTimeout,
          watch: flags.watch,
          markerTimeout: Option.getOrUndefined(flags.markerTimeout),
          onCommit: flags.onCommit
        }
        if (Option.isSome(flags.metrics)) yield* serveMetrics({ ...flags.metrics.value, ...(yield* senderEndpoint) })
        if (tty) yield* runBoard(board)
        else if (!flags.quiet) {
          yield* runProgressReports({
            every: flags.progressInterval,
            events: flags.json,
            // periodic progress lines are not log events: they would break a stream of JSON log lines
            ...(flags.json || flags.logFormat === "json" ? {} : { line: (text: string) => Effect.sync(() => stderrOutput.write(`${text}\n`)) })
          })
        }
        const outcome = yield* Effect.raceFirst(
          Effect.map(send(options), (summary) => ({ _tag: "Done" as const, summary })),
          Effect.map(nextSignal, (signal) => ({ _tag: "Stopped" as const, signal }))
        ).pipe((work) => printingEvents(flags.json, resultLine, work))
        const progress = yield* Progress
        const snapshot = yield* SubscriptionRef.get(progress.state)
        const committed = [...snapshot.values()].filter((p) => p.phase === "committed")
        const bytes = committed.reduce((n, p) => n + p.bytes - p.heldBytes, 0)
        if (outcome._tag === "Stopped") {
          const exitCode = signalExit(outcome.signal)
          yield* Effect.logWarning(`stopped by ${outcome.signal}: ${committed.length} dataset(s) committed; running the same command again sends only what is missing`)
          if (flags.json) yield* Console.log(encodeEvent(stamp({ event: "finished", committed: committed.length, failed: 0, exitCode })))
          return yield* Effect.fail(new Reported({ exitCode }))
        }
        const summary = outcome.summary
        const exitCode = exitCodeOf(summary, flags.allowEmpty)
        if (summary.found === 0 && summary.committed.length === 0) {
          const message = `${flags.path}: no dataset found (expected files named like abc-0000000.gz and abc.done)`
          if (exitCode !== ExitCode.Ok) return yield* Effect.zipRight(logExit(message, exitCode), Effect.fail(new Reported({ exitCode })))
          yield* Effect.logInfo(message)
        }
        yield* Effect.logInfo(`done: ${summary.committed.length} dataset(s) committed, ${summary.failed.length} failed, ${rateSummary(bytes, (Date.now() - started) / 1000)} sent`)
        if (flags.json) yield* Console.log(encodeEvent(stamp({ event: "finished", committed: summary.committed.length, failed: summary.failed.length, exitCode })))
        if (exitCode !== ExitCode.Ok) {
          const why = exitCode === ExitCode.Unreachable && summary.unreachable !== undefined
            ? summary.unreachable.message
            : summary.failed.length === 1 ? summary.failed[0]!.error.message : `${summary.failed.length} datasets failed (see above)`
          yield* logExit(why, exitCode)
          return yield* Effect.fail(new Reported({ exitCode }))
        }
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(
          ClientLive(Option.isSome(flags.readers) ? { readers: flags.readers.value } : {}),
          MonitorLive,
          Option.isSome(flags.bwlimit) ? ThrottleLive(flags.bwlimit.value) : Layer.empty
        ))
      ),
      output
    )
  }
).pipe(Command.withDescription("Send every dataset in a folder to ferry servers, waiting for markers that are not there yet; with --watch, keep sending as datasets appear."))

/* ferry serve */

/**
 * --max-frame, --max-slice and --connection-memory agree: by default a frame fits one piece of
 * the largest slice accepted; a --max-frame given smaller lowers the largest slice to what fits;
 * and a connection's memory holds at least one frame.
 */
const frames = Options.all({
  maxFrame: setting("max-frame", PositiveByteSize, "BYTES", `Largest frame accepted (64KiB until a client has passed the handshake). Default: ${formatByteSize(frameLimit(defaultServeOptions.maxFrame))}, enough for one piece of --max-slice; a smaller one lowers --max-slice to what fits.`)
    .optional,
  connectionMemory: setting("connection-memory", PositiveByteSize, "BYTES", "Frame bytes of one connection being verified and written at once.")
    .withDefault(defaultServeOptions.connectionMemory),
  memory: setting("memory", PositiveByteSize, "BYTES", `Frame bytes all connections together may hold; a connection waits for room, and when unfinished frames fill it the largest is dropped. Default: a quarter of RAM, at most 512MiB (here ${formatByteSize(defaultServeOptions.memory)}), and at least one frame.`)
    .optional,
  maxSlice: setting("max-slice", PositiveByteSize, "BYTES", "Largest slice (what one piece decompresses to).").withDefault(defaultStoreLimits.maxSliceSize)
}).pipe(
  Options.mapEffect((f) => {
    const maxFrame = Option.isSome(f.maxFrame) ? f.maxFrame.value : frameLimit(defaultServeOptions.maxFrame, f.maxSlice)
    const maxSlice = Option.isSome(f.maxFrame) ? Math.min(f.maxSlice, largestSliceIn(maxFrame)) : f.maxSlice
    const memory = Option.getOrElse(f.memory, () => Math.max(defaultServeOptions.memory, maxFrame))
    return maxFrame > f.connectionMemory
      ? Effect.fail(usageError(`--max-frame (${maxFrame}) cannot be larger than --connection-memory (${f.connectionMemory})`))
      : maxFrame > memory
      ? Effect.fail(usageError(`--memory (${memory}) must hold one frame of --max-frame (${maxFrame})`))
      : Effect.succeed({ connectionMemory: f.connectionMemory, maxFrame, maxSlice, memory })
  })
)

/** --tls-cert and --tls-key: both or neither. */
const serverTls = Options.all({
  cert: optionalFile("tls-cert", "TLS certificate (PEM); with --tls-key, clients must use TLS."),
  key: optionalFile("tls-key", "TLS private key (PEM).")
}).pipe(
  Options.mapEffect(({ cert, key }) =>
    Option.isSome(cert) && Option.isSome(key)
      ? Effect.succeed({ cert: cert.value, key: key.value })
      : Option.isSome(cert) || Option.isSome(key)
      ? Effect.fail(usageError("--tls-cert and --tls-key go together"))
      : Effect.succeed(undefined)
  )
)

/** stdout of `serve`: its address, and with --json every event. */
const serveLine = (event: FerryEvent): string | undefined => (event.event === "listening" ? `listening on ${event.address}` : undefined)

const serveCommand = Command.make(
  "serve",
  {
    port: setting("port", Port, "PORT", "TCP port to listen on (0 picks a free one).").required,
    dest: setting("dest", Text, "DIR", "Folder where rebuilt files and their .done markers appear.").required,
    host: setting("host", Text, "ADDR", "Address to listen on.").withDefault(defaultServeOptions.host),
    json: flag("json", "Events on stdout as JSON lines (see the README)."),
    token: tokenOption,
    tls: serverTls,
    frames,
    maxConnections: setting("max-connections", PositiveCount, "N", "Connections past the handshake, at most.").withDefault(defaultServeOptions.maxConnections),
    maxPending: setting("max-pending", PositiveCount, "N", "Connections still in the handshake, at most (past it, the oldest is dropped).").withDefault(defaultServeOptions.maxPending),
    maxHandles: setting("max-handles", PositiveCount, "N", "Datasets one connection may have open at once (past it, the connection is refused as TooManyHandles).")
      .withDefault(defaultServeOptions.maxHandles),
    maxDatasets: setting("max-datasets", PositiveCount, "N", "Datasets in progress at once.").withDefault(defaultStoreLimits.maxDatasets),
    maxDatasetSize: setting("max-dataset-size", ByteSize, "BYTES", "Largest original file accepted.").withDefault(defaultStoreLimits.maxDatasetSize),
    maxPieces: setting("max-pieces", PositiveCount, "N", "Most pieces in one dataset.").withDefault(defaultStoreLimits.maxPieces),
    handshakeTimeout: handshakeTimeout(true),
    idleTimeout: setting("idle-timeout", DurationText, "SECONDS", "Silence after which a connection is dropped, in seconds or as \"2 minutes\".")
      .withDefault(Duration.decode(defaultServeOptions.idleTimeout)),
    leaseTime: setting("lease-time", DurationText, "DURATION", "With several servers on one --dest: a dataset whose server has stopped renewing its lease this long may be taken over.")
      .withDefault(Duration.decode(DEFAULT_LEASE_TIME)),
    workers: setting("workers", PositiveCount, "N", "Gunzip threads (default: one per core).").optional,
    inflater: setting("inflater", choice(["isal", "zlib"]), "isal|zlib", "Gunzip with the ISA-L addon when it is built (about 1.6x faster), or always with zlib.").withDefault("isal"),
    drainTimeout: setting("drain-timeout", DurationText, "DURATION", "On SIGTERM or Ctrl-C, how long batches already received may take to finish writing.")
      .withDefault(Duration.decode(defaultServeOptions.drainTimeout)),
    metrics: metricsOption,
    ...logging
  },
  (flags) => {
    const limits = {
      maxDatasets: flags.maxDatasets,
      maxPieces: flags.maxPieces,
      maxDatasetSize: flags.maxDatasetSize,
      maxSliceSize: flags.frames.maxSlice
    }
    return run(
      flags,
      Effect.gen(function*() {
        const dest = (yield* Path.Path).resolve(flags.dest)
        const serving = Effect.gen(function*() {
          const phase = yield* Ref.make<ServerPhase>("starting")
          // the endpoint starts first and so stops last: it answers (503, stopping) while the server drains
          if (Option.isSome(flags.metrics)) yield* serveMetrics({ ...flags.metrics.value, ...(yield* serverEndpoint(phase)) })
          yield* serve({
            ...defaultServeOptions,
            host: flags.host,
            port: flags.port,
            maxFrame: flags.frames.maxFrame,
            connectionMemory: flags.frames.connectionMemory,
            memory: flags.frames.memory,
            maxHandles: flags.maxHandles,
            token: flags.token,
            tls: flags.tls,
            maxConnections: flags.maxConnections,
            maxPending: flags.maxPending,
            handshakeTimeout: flags.handshakeTimeout,
            idleTimeout: flags.idleTimeout,
            drainTimeout: flags.drainTimeout
          })
          yield* Ref.set(phase, "listening")
          // finalizers run last first: this one runs before the server's drain
          yield* Effect.addFinalizer(() => Ref.set(phase, "stopping"))
          return yield* Effect.never
        }).pipe(Effect.scoped)
        const signal = yield* Effect.raceFirst(serving, nextSignal).pipe((work) => printingEvents(flags.json, serveLine, work))
        yield* Effect.logInfo(`stopped by ${signal}; datasets in progress are kept in ${dest}/.ferry for their senders to resume`)
      }).pipe(
        Effect.provide(Layer.merge(
          ServerLive({
            dest: flags.dest,
            limits,
            leaseMs: Duration.toMillis(flags.leaseTime),
            ...(Option.isSome(flags.workers) ? { workers: flags.workers.value } : {}),
            ...(flags.inflater === "zlib" ? { nativeAddon: null } : {})
          }),
          MonitorLive
        ))
      )
    )
  }
).pipe(Command.withDescription("Receive datasets, gunzip them and rebuild the original files in --dest."))

/* ferry fake */

const NameText = fromText(Schema.String, "lowercase letters a-z, at most 64", (text) => (Schema.is(DatasetName)(text) ? text : undefined), String)

const fakeCommand = Command.make(
  "fake",
  {
    path: setting("path", Text, "DIR", "Folder to write the dataset into (created if needed).").required,
    name: setting("name", NameText, "NAME", "Dataset name, lowercase letters a-z.").withDefault("abc"),
    size: setting("size", ByteSize, "BYTES", "Size of the original file (bytes, or with a unit: 1.6GB, 64MiB).").withDefault(64 * 1024 ** 2),
    slice: setting("slice", PositiveByteSize, "BYTES", "Slice size: the uncompressed size of each piece.").withDefault(16 * 1024),
    seed: setting("seed", WholeNumber, "N", "Seed of the content: the same seed makes the same file.").withDefault(1),
    first: setting("first", Count, "N", "Number of the first piece.").withDefault(0),
    noMarker: flag("no-marker", "Do not write NAME.done (to try the wait for the marker)."),
    ...logging
  },
  (flags) =>
    run(
      flags,
      Effect.gen(function*() {
        const started = Date.now()
        const made = yield* makeDataset({ dir: flags.path, name: flags.name, size: flags.size, sliceSize: flags.slice, seed: flags.seed, firstNumber: flags.first, withoutMarker: flags.noMarker })
        const ratio = made.compressed > 0 ? (flags.size / made.compressed).toFixed(2) : "-"
        yield* Effect.logInfo(`made ${flags.name}: ${made.pieces} pieces of ${flags.slice} bytes, ${flags.size} bytes (${formatBytes(made.compressed)} gzipped, ${ratio}x) in ${flags.path} in ${((Date.now() - started) / 1000).toFixed(1)} s${flags.noMarker ? ", no marker" : ""}`)
        yield* Console.log(`sha256 ${made.sha256}  ${flags.name}`)
        yield* Console.log(`crc32 ${made.crc32.toString(16).padStart(8, "0")}  ${flags.name}`)
      }).pipe(
        Effect.provide(SampleMakerLive())
      )
    )
).pipe(Command.withDescription("Make a realistic sample dataset: gzip pieces, marker, and the sha256 of the original."))

/* ferry */

export const ferry = Command.make("ferry").pipe(
  Command.withDescription("Move chunked gzip datasets between machines and rebuild them."),
  Command.withSubcommands([sendCommand, serveCommand, fakeCommand])
)

const footer = HelpDoc.blocks([
  HelpDoc.h1("ENVIRONMENT"),
  HelpDoc.p(
    `Every option can also be set as FERRY_ and its name in capitals: --max-connections 512 is ${envName("max-connections")}=512, --debug is ${envName("debug")}=1. A flag wins over the environment, which wins over the default. FERRY_TOKEN holds the shared secret itself.`
  ),
  HelpDoc.h1("MORE"),
  HelpDoc.p("ferry COMMAND --help shows a command's options; ferry --version prints the version."),
  HelpDoc.p("Exit codes: 0 done, 1 the job failed, 2 the command line was wrong, 130 interrupted.")
])

const app = Command.run(ferry, { name: "ferry", version: VERSION, footer })

/* @effect/cli's own output (help, version, command-line errors), made what ferry promises */

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g

/** Paragraphs @effect/cli adds to every option; each option's own lines already say it, and precisely. */
const BOILERPLATE = new Set([
  "A user-defined piece of text.",
  "A true or false value.",
  "This option can be set from environment variables.",
  "This setting is optional."
])

/**
 * Help as ferry shows it: usage lines name the program (`ferry send ...`, not
 * `$ send ...`), no boilerplate, colour only when wanted.
 */
export const tidyHelp = (text: string, color: boolean): string => {
  const lines = text.split("\n").flatMap((line) => {
    const plain = line.replace(ANSI, "")
    if (BOILERPLATE.has(plain.trim())) return []
    if (plain.startsWith("$ ")) {
      const usage = plain.slice(2)
      return [usage === "ferry" || usage.startsWith("ferry ") ? usage : `ferry ${usage}`]
    }
    // a command's usage and description, padded into one line as wide as the longest usage: two lines instead
    const listed = /^(\s*)- (\S.*?\S) {2,}(\S.*)$/.exec(plain)
    if (listed !== null) return [`${listed[1]}- ferry ${listed[2]}`, `${listed[1]}  ${listed[3]}`]
    return [color ? line : plain]
  })
  return lines.join("\n").replace(/\n{3,}/g, "\n\n").replace(/\n+$/, "")
}

/** A command-line error as one line: @effect/cli words it as paragraphs, which become clauses. */
export const errorLine = (doc: HelpDoc.HelpDoc): string =>
  HelpDoc.toAnsiText(doc)
    .replace(ANSI, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .map((l) => l.replace(/^Expected to find option: '--([a-z-]+)'$/, (_, flag: string) => `missing --${flag} (or ${envName(flag)})`))
    .join("; ")

const Direct = Symbol.for("ferry/Cli/direct")

/** The console @effect/cli prints through, holding the one it replaces. */
interface CliConsole extends Console.Console {
  readonly [Direct]: Console.Console
}

/** Help tidied; errors left to `cli`, which prints each as one line (@effect/cli prints, then fails with it). */
const cliConsole = (direct: Console.Console, color: boolean): CliConsole => ({
  ...direct,
  [Direct]: direct,
  log: (...args) => direct.log(...args.map((a) => (typeof a === "string" ? tidyHelp(a, color) : a))),
  error: () => Effect.void
})

/** A command's own output goes to the console @effect/cli's was put over, untouched. */
const directOutput = <A, E, R>(program: Effect.Effect<A, E, R>) =>
  Effect.consoleWith((console) => (Direct in console ? Effect.withConsole(program, (console as CliConsole)[Direct]) : program))

/** The log format for a line printed before any command runs: --log-format read on its own, else FERRY_LOG_FORMAT. */
const earlyLogFormat = (args: ReadonlyArray<string>) =>
  Options.processCommandLine(logging.logFormat, args, CliConfig.defaultConfig).pipe(
    Effect.map(([, , format]) => format),
    Effect.orElseSucceed((): LogFormat => "text")
  )

/** The command line is wrong: one line, exit 2. */
const usageFailure = (args: ReadonlyArray<string>, message: string) =>
  Effect.flatMap(earlyLogFormat(args), (format) =>
    logExit(message, ExitCode.Usage).pipe(Effect.provide(loggingFor({ logFormat: format, debug: false })), Effect.as(ExitCode.Usage)))

/** The wizard asks its questions on a terminal: without one it would wait forever. */
const interactive = Effect.zipWith(
  Effect.flatMap(Terminal.Terminal, (t) => t.isTTY),
  Effect.sync(() => process.stdin.isTTY === true),
  (stdout, stdin) => stdout && stdin
)

/**
 * Runs ferry on `argv` (as process.argv: node, script, then the arguments) and
 * gives its exit code; every failure has been told on stderr by then.
 */
export const cli = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const args = argv.slice(2)
    if (args.includes("--wizard") && !(yield* interactive)) {
      return yield* usageFailure(args, "--wizard asks its questions on a terminal; give the options on the command line instead (ferry --help)")
    }
    // help in colour only on a terminal, and not when NO_COLOR is set (no-color.org)
    const noColor = yield* Effect.orElseSucceed(Config.string("NO_COLOR"), () => "")
    const color = (yield* Effect.flatMap(Terminal.Terminal, (t) => t.isTTY)) && noColor === ""
    const direct = yield* Effect.console
    return yield* app(argv).pipe(
      Effect.as(ExitCode.Ok),
      Effect.catchAll((e) => (e instanceof Reported ? Effect.succeed(e.exitCode) : usageFailure(args, errorLine(e.error)))),
      Effect.withConsole(cliConsole(direct, color)),
      Effect.provide(CliConfig.layer({ showBuiltIns: false })),
      Effect.catchAllDefect((defect) =>
        logExit(`internal error: ${defect instanceof Error ? defect.message : String(defect)}`, ExitCode.Failed).pipe(
          Effect.provide(loggingFor({ logFormat: "text", debug: false })),
          Effect.as(ExitCode.Failed)
        )
      )
    )
  })

/** The process's exit code once `cli` is done: its own, or 130 when interrupted (Ctrl-C). */
export const exitCode = (exit: Exit.Exit<unknown, unknown>): number =>
  Exit.isSuccess(exit)
    ? typeof exit.value === "number" ? exit.value : ExitCode.Ok
    : Cause.isInterruptedOnly(exit.cause)
    ? ExitCode.Interrupted
    : ExitCode.Failed
