/**
 * What `ferry serve --metrics` shows: the metrics the server's code declares
 * beside what it measures (Server, Connection, PieceStore, WorkerPool,
 * Transport), the destination's free space read when scraped, and the
 * server's health: listening, and its destination writable (a probe write
 * in `.ferry/`, one at a time).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { Destination } from "../services/Destination.js"
import type { AnyMetric, MetricsEndpointOptions } from "../node/MetricsEndpoint.js"
import {
  batchesWritten,
  batchSeconds,
  datasetsCommitted,
  datasetsInProgress,
  datasetsOpened,
  piecesVerified,
  writtenBytes
} from "../services/store/Metrics.js"
import { checkDestination } from "../services/store/StateFolder.js"
import { handshakesFailed } from "../services/Transport.js"
import { connectionsAccepted, receivedBytes } from "./Counters.js"
import { connectionsOpen } from "./Gate.js"

export const destinationFreeBytes = Metric.gauge("ferry_serve_destination_free_bytes", {
  description: "Bytes free for ferry on the destination's filesystem (statfs), read when scraped."
})

/** The server's metrics without labels: shown at zero from the start. Those with labels appear with their first value. */
export const serverMetrics: ReadonlyArray<AnyMetric> = [
  receivedBytes,
  writtenBytes,
  piecesVerified,
  batchesWritten,
  batchSeconds,
  datasetsOpened,
  datasetsCommitted,
  datasetsInProgress,
  connectionsOpen,
  connectionsAccepted,
  handshakesFailed,
  destinationFreeBytes
]

/** Where the server is in its life, for its health. */
export type ServerPhase = "starting" | "listening" | "stopping"

/** The endpoint's view of a server with this destination, in this phase. */
export const serverEndpoint = (phase: Ref.Ref<ServerPhase>): Effect.Effect<Omit<MetricsEndpointOptions, "host" | "port">, never, Destination> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const probing = yield* Effect.makeSemaphore(1)
    const health = Effect.gen(function*() {
      const now = yield* Ref.get(phase)
      if (now !== "listening") return Option.some(now === "starting" ? "not listening yet" : "stopping")
      const probe = yield* probing.withPermits(1)(Effect.either(Effect.provideService(checkDestination, Destination, dest)))
      return Either.isLeft(probe) ? Option.some(probe.left.message) : Option.none()
    })
    return {
      metrics: serverMetrics,
      refresh: Effect.flatMap(dest.available, (bytes) => Metric.set(destinationFreeBytes, Number.isFinite(bytes) ? bytes : Number.NaN)),
      health
    }
  })
