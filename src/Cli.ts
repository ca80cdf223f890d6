/**
 * The `ferry` command line: send, serve, fake. Each command checks its flags,
 * provides the live layers, runs the pipeline, and turns any failure into one
 * line on stderr and a non-zero exit code.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { defaultSendOptions, FAR_CONNECTIONS, NEAR_ROUND_TRIP_MS, send } from "./client/Client.js"
import { DatasetName, formatMarker, markerFileName } from "./domain/Dataset.js"
import { UsageError } from "./domain/Errors.js"
import { formatBytes, parseAddress, parseBytes } from "./domain/Units.js"
import { VERSION } from "./domain/Version.js"
import { LoggingLive } from "./Logging.js"
import { defaultServeOptions, serve, type ServeOptions } from "./server/Server.js"
import { DiskSpaceLive } from "./services/DiskSpace.js"
import { parseToken } from "./domain/Auth.js"
import { DatasetScannerLive } from "./services/DatasetScanner.js"
import { GunzipPoolLive } from "./services/GunzipPool.js"
import { PieceReaderLive } from "./services/PieceReader.js"
import { defaultStoreLimits, PieceStoreLayer } from "./services/PieceStore.js"
import { SampleMaker, SampleMakerLive } from "./services/SampleMaker.js"
import { TcpTransport } from "./services/Transport.js"
import * as Schema from "effect/Schema"

/** Exit codes: 1 when the job failed, 2 when the command line was wrong. */
export const ExitCode = { Failed: 1, Usage: 2, Interrupted: 130 } as const

const debug = Options.boolean("debug").pipe(Options.withDescription("Detailed logs on stderr."))

const positive = (flag: string, value: number) =>
  Number.isSafeInteger(value) && value > 0
    ? Effect.succeed(value)
    : Effect.fail(new UsageError({ reason: `--${flag} must be a whole number above 0, not ${value}` }))

const bytesFlag = (flag: string, text: string) => {
  const n = parseBytes(text)
  return n === undefined
    ? Effect.fail(new UsageError({ reason: `--${flag} must be a size in bytes such as 16384 or 16KiB, not ${JSON.stringify(text)}` }))
    : Effect.succeed(n)
}

const secondsFlag = (flag: string, value: number) =>
  Number.isFinite(value) && value > 0
    ? Effect.succeed(Duration.millis(Math.round(value * 1000)))
    : Effect.fail(new UsageError({ reason: `--${flag} must be a number of seconds above 0, not ${value}` }))

/** Reads a PEM or token file given on the command line; a missing one is a usage error. */
const readFlagFile = (flag: string, file: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.readFile(file).pipe(
      Effect.map((bytes) => Buffer.from(bytes)),
      Effect.mapError((e) => new UsageError({ reason: `--${flag} ${file}: ${e._tag === "SystemError" && e.reason === "NotFound" ? "no such file" : e.message}` }))
    ))

/** The shared secret: --token-file wins over FERRY_TOKEN; neither means no authentication. */
const tokenFrom = (file: Option.Option<string>) =>
  Effect.gen(function*() {
    const text = Option.isSome(file)
      ? (yield* readFlagFile("token-file", file.value)).toString("utf8")
      : process.env["FERRY_TOKEN"]
    if (text === undefined) return undefined
    const parsed = parseToken(text)
    if ("problem" in parsed) {
      return yield* Effect.fail(new UsageError({ reason: `${Option.isSome(file) ? `--token-file ${file.value}` : "FERRY_TOKEN"}: ${parsed.problem}` }))
    }
    return parsed.token
  })

const tokenFile = Options.text("token-file").pipe(
  Options.optional,
  Options.withDescription("File holding the shared secret (one line); FERRY_TOKEN in the environment does the same.")
)
const handshakeTimeout = Options.float("handshake-timeout").pipe(Options.withDefault(10), Options.withDescription("Seconds the handshake may take."))

/** Runs a command's program: one line and an exit code for any failure. */
const run = <E extends { readonly message: string; readonly _tag: string }>(isDebug: boolean, program: Effect.Effect<void, E>) =>
  program.pipe(
    Effect.catchAllCause((cause) =>
      Effect.gen(function*() {
        if (Cause.isInterruptedOnly(cause)) {
          process.exitCode = ExitCode.Interrupted
          return
        }
        const failure = Cause.failureOption(cause)
        if (Option.isSome(failure)) {
          yield* Console.error(`ferry: ${failure.value.message}`)
          process.exitCode = failure.value._tag === "UsageError" ? ExitCode.Usage : ExitCode.Failed
        } else {
          const defect = Cause.squash(cause)
          yield* Console.error(`ferry: internal error: ${defect instanceof Error ? defect.message : String(defect)}`)
          if (isDebug) yield* Console.error(Cause.pretty(cause))
          process.exitCode = ExitCode.Failed
        }
      })
    ),
    Effect.provide(LoggingLive(isDebug))
  )

/* ferry send */

const sendCommand = Command.make(
  "send",
  {
    path: Options.text("path").pipe(Options.withDescription("Folder holding NAME-NNNNNNN.gz pieces and NAME.done markers.")),
    address: Options.text("address").pipe(Options.withDescription("Server to send to, as HOST:PORT.")),
    connections: Options.integer("connections").pipe(
      Options.optional,
      Options.withDescription(`TCP connections to open (default: 1 when the first connection is set up within ${NEAR_ROUND_TRIP_MS} ms, as on loopback, a LAN or nearby; ${FAR_CONNECTIONS} when the server is farther).`)
    ),
    quiet: Options.boolean("quiet").pipe(Options.withDescription("No progress display.")),
    retries: Options.integer("retries").pipe(Options.withDefault(defaultSendOptions.retries), Options.withDescription("Reconnections in a row without progress before giving up.")),
    tokenFile,
    tls: Options.boolean("tls").pipe(Options.withDescription("Use TLS, verifying the server against the system's roots.")),
    tlsCa: Options.text("tls-ca").pipe(Options.optional, Options.withDescription("Use TLS, verifying the server against this CA certificate (PEM).")),
    tlsServername: Options.text("tls-servername").pipe(Options.optional, Options.withDescription("Name the server's certificate must carry (default: the host of --address).")),
    handshakeTimeout,
    debug
  },
  (flags) =>
    run(
      flags.debug,
      Effect.gen(function*() {
        const address = parseAddress(flags.address)
        if (address === undefined) return yield* Effect.fail(new UsageError({ reason: `--address must be HOST:PORT, not ${JSON.stringify(flags.address)}` }))
        const connections = Option.isSome(flags.connections) ? yield* positive("connections", flags.connections.value) : "auto"
        if (!Number.isSafeInteger(flags.retries) || flags.retries < 0) return yield* Effect.fail(new UsageError({ reason: `--retries must be 0 or more, not ${flags.retries}` }))
        const token = yield* tokenFrom(flags.tokenFile)
        const ca = Option.isSome(flags.tlsCa) ? yield* readFlagFile("tls-ca", flags.tlsCa.value) : undefined
        const tls = flags.tls || ca !== undefined ? { ca, servername: Option.getOrUndefined(flags.tlsServername) } : undefined
        const started = Date.now()
        const reports = yield* send({
          ...defaultSendOptions,
          dir: flags.path,
          address,
          connections,
          retries: flags.retries,
          token,
          tls,
          handshakeTimeout: yield* secondsFlag("handshake-timeout", flags.handshakeTimeout),
          progress: flags.quiet ? "none" : process.stderr.isTTY ? "tty" : "lines"
        }).pipe(Effect.scoped)
        let bytes = 0
        for (const r of reports) {
          if (r.alreadyCommitted) yield* Console.log(`${r.dataset}: already committed on the server (${r.size} bytes), nothing sent`)
          else {
            bytes += r.size
            yield* Console.log(`${r.dataset}: committed ${r.size} bytes in ${r.pieces} pieces (${r.sent} sent), crc32 ${r.crc32}`)
          }
        }
        const seconds = (Date.now() - started) / 1000
        yield* Effect.logInfo(`done: ${reports.length} dataset(s), ${formatBytes(bytes)} in ${seconds.toFixed(1)} s (${formatBytes(bytes / Math.max(seconds, 1e-3))}/s)`)
      }).pipe(
        Effect.provide(Layer.mergeAll(TcpTransport, PieceReaderLive(), DatasetScannerLive(), NodeContext.layer))
      )
    )
).pipe(Command.withDescription("Send every dataset in a folder to a ferry server, waiting for markers that are not there yet."))

/* ferry serve */

const serveCommand = Command.make(
  "serve",
  {
    port: Options.integer("port").pipe(Options.withDescription("TCP port to listen on (0 picks a free one).")),
    dest: Options.text("dest").pipe(Options.withDescription("Folder where rebuilt files and their .done markers appear.")),
    host: Options.text("host").pipe(Options.withDefault(defaultServeOptions.host), Options.withDescription("Address to listen on.")),
    maxFrame: Options.text("max-frame").pipe(Options.withDefault("16MiB"), Options.withDescription("Largest frame accepted, in bytes.")),
    tokenFile,
    tlsCert: Options.text("tls-cert").pipe(Options.optional, Options.withDescription("TLS certificate (PEM); with --tls-key, clients must use TLS.")),
    tlsKey: Options.text("tls-key").pipe(Options.optional, Options.withDescription("TLS private key (PEM).")),
    maxConnections: Options.integer("max-connections").pipe(Options.withDefault(defaultServeOptions.maxConnections), Options.withDescription("Connections past the handshake, at most.")),
    maxPending: Options.integer("max-pending").pipe(Options.withDefault(defaultServeOptions.maxPending), Options.withDescription("Connections still in the handshake, at most (the oldest is dropped).")),
    maxDatasets: Options.integer("max-datasets").pipe(Options.withDefault(defaultStoreLimits.maxDatasets), Options.withDescription("Datasets in progress at once.")),
    maxDatasetSize: Options.text("max-dataset-size").pipe(Options.withDefault("16TiB"), Options.withDescription("Largest original file accepted.")),
    maxPieces: Options.integer("max-pieces").pipe(Options.withDefault(defaultStoreLimits.maxPieces), Options.withDescription("Most pieces in one dataset.")),
    maxSlice: Options.text("max-slice").pipe(Options.withDefault("64MiB"), Options.withDescription("Largest slice (what one piece decompresses to).")),
    connectionMemory: Options.text("connection-memory").pipe(Options.withDefault("128MiB"), Options.withDescription("Memory one connection's frames may hold.")),
    handshakeTimeout,
    idleTimeout: Options.float("idle-timeout").pipe(Options.withDefault(120), Options.withDescription("Seconds of silence before a connection is dropped.")),
    debug
  },
  (flags) =>
    run(
      flags.debug,
      Effect.gen(function*() {
        if (!Number.isSafeInteger(flags.port) || flags.port < 0 || flags.port > 65535) {
          return yield* Effect.fail(new UsageError({ reason: `--port must be 0 to 65535, not ${flags.port}` }))
        }
        const maxFrame = yield* bytesFlag("max-frame", flags.maxFrame)
        const connectionMemory = yield* bytesFlag("connection-memory", flags.connectionMemory)
        if (maxFrame > connectionMemory) {
          return yield* Effect.fail(new UsageError({ reason: `--max-frame (${maxFrame}) cannot be larger than --connection-memory (${connectionMemory})` }))
        }
        const limits = {
          maxDatasets: yield* positive("max-datasets", flags.maxDatasets),
          maxPieces: yield* positive("max-pieces", flags.maxPieces),
          maxDatasetSize: yield* bytesFlag("max-dataset-size", flags.maxDatasetSize),
          maxSliceSize: yield* bytesFlag("max-slice", flags.maxSlice)
        }
        const token = yield* tokenFrom(flags.tokenFile)
        if (Option.isSome(flags.tlsCert) !== Option.isSome(flags.tlsKey)) {
          return yield* Effect.fail(new UsageError({ reason: "--tls-cert and --tls-key go together" }))
        }
        const tls = Option.isSome(flags.tlsCert) && Option.isSome(flags.tlsKey)
          ? { cert: yield* readFlagFile("tls-cert", flags.tlsCert.value), key: yield* readFlagFile("tls-key", flags.tlsKey.value) }
          : undefined
        const options: ServeOptions = {
          ...defaultServeOptions,
          host: flags.host,
          port: flags.port,
          maxFrame,
          connectionMemory,
          token,
          tls,
          maxConnections: yield* positive("max-connections", flags.maxConnections),
          maxPending: yield* positive("max-pending", flags.maxPending),
          handshakeTimeout: yield* secondsFlag("handshake-timeout", flags.handshakeTimeout),
          idleTimeout: yield* secondsFlag("idle-timeout", flags.idleTimeout)
        }
        const path = yield* Path.Path
        const dest = path.resolve(flags.dest)
        yield* Effect.gen(function*() {
          const address = yield* serve(options)
          yield* Console.log(`listening on ${address.host}:${address.port}`)
          return yield* Effect.never
        }).pipe(
          Effect.scoped,
          Effect.provide(Layer.mergeAll(TcpTransport, PieceStoreLayer(dest, limits).pipe(Layer.provide(Layer.mergeAll(GunzipPoolLive(), DiskSpaceLive))))),
          Effect.provide(NodeContext.layer)
        )
      }).pipe(Effect.provide(NodeContext.layer))
    )
).pipe(Command.withDescription("Receive datasets, gunzip them and rebuild the original files in --dest."))

/* ferry fake */

const fakeCommand = Command.make(
  "fake",
  {
    path: Options.text("path").pipe(Options.withDescription("Folder to write the dataset into (created if needed).")),
    name: Options.text("name").pipe(Options.withDefault("abc"), Options.withDescription("Dataset name, [a-z]+.")),
    size: Options.text("size").pipe(Options.withDefault("64MiB"), Options.withDescription("Size of the original file (bytes, or with a unit: 1.6GB, 64MiB).")),
    slice: Options.text("slice").pipe(Options.withDefault("16KiB"), Options.withDescription("Slice size: the uncompressed size of each piece.")),
    seed: Options.integer("seed").pipe(Options.withDefault(1), Options.withDescription("Seed of the content: the same seed makes the same file.")),
    first: Options.integer("first").pipe(Options.withDefault(0), Options.withDescription("Number of the first piece.")),
    noMarker: Options.boolean("no-marker").pipe(Options.withDescription("Do not write NAME.done (to try the wait for the marker).")),
    debug
  },
  (flags) =>
    run(
      flags.debug,
      Effect.gen(function*() {
        if (Schema.decodeUnknownOption(DatasetName)(flags.name)._tag === "None") {
          return yield* Effect.fail(new UsageError({ reason: `--name must be lowercase letters a-z, at most 64, not ${JSON.stringify(flags.name)}` }))
        }
        const size = yield* bytesFlag("size", flags.size)
        const sliceSize = yield* bytesFlag("slice", flags.slice)
        if (sliceSize < 1) return yield* Effect.fail(new UsageError({ reason: "--slice must be at least 1 byte" }))
        if (!Number.isSafeInteger(flags.first) || flags.first < 0) return yield* Effect.fail(new UsageError({ reason: "--first must be 0 or more" }))
        const maker = yield* SampleMaker
        const fs = yield* FileSystem.FileSystem
        const path = yield* Path.Path
        const started = Date.now()
        const made = yield* maker.make({ dir: flags.path, name: flags.name, size, sliceSize, seed: flags.seed, firstNumber: flags.first, level: 1 })
        if (!flags.noMarker) {
          // written last and atomically: a watching client must never read half a marker
          const tmp = path.join(flags.path, `.${markerFileName(flags.name)}.tmp`)
          yield* fs.writeFileString(tmp, formatMarker(size))
          yield* fs.rename(tmp, path.join(flags.path, markerFileName(flags.name)))
        }
        const ratio = made.compressed > 0 ? (size / made.compressed).toFixed(2) : "-"
        yield* Effect.logInfo(`made ${flags.name}: ${made.pieces} pieces of ${sliceSize} bytes, ${size} bytes (${formatBytes(made.compressed)} gzipped, ${ratio}x) in ${flags.path} in ${((Date.now() - started) / 1000).toFixed(1)} s${flags.noMarker ? ", no marker" : ""}`)
        yield* Console.log(`sha256 ${made.sha256}  ${flags.name}`)
        yield* Console.log(`crc32 ${made.crc32.toString(16).padStart(8, "0")}  ${flags.name}`)
      }).pipe(
        Effect.mapError((e) => (e._tag === "SystemError" || e._tag === "BadArgument" ? new UsageError({ reason: e.message }) : e)),
        Effect.provide(SampleMakerLive()),
        Effect.provide(NodeContext.layer)
      )
    )
).pipe(Command.withDescription("Make a realistic sample dataset: gzip pieces, marker, and the sha256 of the original."))

export const ferry = Command.make("ferry").pipe(
  Command.withDescription("Move chunked gzip datasets between machines and rebuild them."),
  Command.withSubcommands([sendCommand, serveCommand, fakeCommand])
)

export const cli = Command.run(ferry, { name: "ferry", version: VERSION })
