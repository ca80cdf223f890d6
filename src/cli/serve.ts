/** `ferry serve`: its options, and the run, handed to the server pipeline (server/Server.ts). */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Path from "@effect/platform/Path"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { type FerryEvent } from "../domain/Events.js"
import type { ValidationError } from "@effect/cli/ValidationError"
import { choice, flag, type GivenFile, optionalFile, setting, usageError } from "../CliOptions.js"
import {
  ByteSize,
  DurationText,
  formatByteSize,
  Port,
  PositiveByteSize,
  PositiveCount,
} from "../domain/Units.js"
import { ServerLive } from "../Layers.js"
import { serverEndpoint, type ServerPhase } from "../server/Metrics.js"
import { defaultServeOptions, frameLimit, largestSliceIn, serve } from "../server/Server.js"
import { MonitorLive } from "../services/Monitor.js"
import { defaultStoreLimits } from "../services/PieceStore.js"
import { DEFAULT_LEASE_TIME } from "../services/store/Leases.js"
import { Credentials, caProblem } from "../services/Credentials.js"
import {
  certificatePair,
  credentialsLayer,
  handshakeTimeout,
  logging,
  metricsOption,
  nextSignal,
  printingEvents,
  reloadOnHangup,
  run,
  serveMetrics,
  Text,
  tokenOption
} from "./common.js"

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

/** --tls-cert and --tls-key, both or neither; --tls-client-ca only with them. */
const serverTls = Options.all({
  pair: certificatePair("TLS certificate (PEM); with --tls-key, clients must use TLS.", "TLS private key (PEM)."),
  clientCa: optionalFile("tls-client-ca", "Accept only clients showing a certificate signed by this CA (PEM); needs --tls-cert and --tls-key.")
}).pipe(
  Options.mapEffect(({ clientCa, pair }): Effect.Effect<{ readonly pair: typeof pair; readonly clientCa: GivenFile | undefined }, ValidationError> => {
    if (Option.isNone(clientCa)) return Effect.succeed({ pair, clientCa: undefined })
    if (pair === undefined) return Effect.fail(usageError("--tls-client-ca needs --tls-cert and --tls-key"))
    const problem = caProblem(clientCa.value.bytes)
    return problem === undefined ? Effect.succeed({ pair, clientCa: clientCa.value }) : Effect.fail(usageError(`${clientCa.value.flag} ${clientCa.value.path}: ${problem}`))
  })
)

/** stdout of `serve`: its address, and with --json every event. */
const serveLine = (event: FerryEvent): string | undefined => (event.event === "listening" ? `listening on ${event.address}` : undefined)

export const serveCommand = Command.make(
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
        // SIGHUP: the token, certificate, key and client CA are read again, for the connections that come after
        yield* reloadOnHangup((yield* Credentials).reload)
        // why the server stops, for its stopping and stopped events: the signal
        const stopReason = yield* Ref.make("interrupted")
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
            token: flags.token?.token,
            tls: flags.tls.pair === undefined ? undefined : { cert: flags.tls.pair.cert.bytes, key: flags.tls.pair.key.bytes, clientCa: flags.tls.clientCa?.bytes },
            maxConnections: flags.maxConnections,
            maxPending: flags.maxPending,
            handshakeTimeout: flags.handshakeTimeout,
            idleTimeout: flags.idleTimeout,
            drainTimeout: flags.drainTimeout,
            stopReason: Ref.get(stopReason)
          })
          yield* Ref.set(phase, "listening")
          // finalizers run last first: this one runs before the server's drain
          yield* Effect.addFinalizer(() => Ref.set(phase, "stopping"))
          return yield* Effect.never
        }).pipe(Effect.scoped)
        const signal = yield* Effect.raceFirst(serving, Effect.tap(nextSignal, (s) => Ref.set(stopReason, s))).pipe((work) => printingEvents(flags.json, serveLine, work))
        yield* Effect.logInfo(`stopped by ${signal}; datasets in progress are kept in ${dest}/.ferry for their senders to resume`)
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(
          credentialsLayer({ token: flags.token, pair: flags.tls.pair, ca: flags.tls.clientCa }),
          ServerLive({
            dest: flags.dest,
            limits,
            leaseMs: Duration.toMillis(flags.leaseTime),
            maxConnections: flags.maxConnections,
            ...(Option.isSome(flags.workers) ? { workers: flags.workers.value } : {}),
            ...(flags.inflater === "zlib" ? { nativeAddon: null } : {})
          }),
          MonitorLive
        ))
      )
    )
  }
).pipe(Command.withDescription("Receive datasets, gunzip them and rebuild the original files in --dest."))
