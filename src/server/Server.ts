/**
 * The receiving side: listens, admits connections through a gate (Gate.ts:
 * limits on connections in and past the handshake), serves each one (Connection.ts),
 * and on shutdown stops taking frames, lets the batches already taken
 * finish writing, and closes every connection with a word to its client.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as os from "node:os"
import { MAX_CONTROL_FRAME, piecesFrameBytes } from "../domain/Frame.js"
import type { TransportError } from "../domain/Errors.js"
import { FrameBudget } from "../node/FrameBudget.js"
import { Credentials } from "../services/Credentials.js"
import { publish } from "../services/Monitor.js"
import { defaultStoreLimits, PieceStore } from "../services/PieceStore.js"
import { type Address, formatAddress } from "../domain/Units.js"
import { type TlsServer, Transport } from "../services/Transport.js"
import { HANDSHAKE_FRAME, serveConnection } from "./Connection.js"
import { makeGate } from "./Gate.js"

export { connectionsOpen, type Gate, type Ticket } from "./Gate.js"

export interface ServeOptions {
  readonly host: string
  readonly port: number
  /** Largest frame accepted; raised to fit one piece of the largest slice accepted (see `frameLimit`). */
  readonly maxFrame: number
  /** A client that has not finished the handshake by then is dropped. */
  readonly handshakeTimeout: Duration.DurationInput
  /** A connection that sends nothing for this long is dropped (clients ping within it). */
  readonly idleTimeout: Duration.DurationInput
  /** Piece batches of one connection being verified and written at once. */
  readonly batchesInFlight: number
  /** Shared secret clients must prove they know; undefined: no authentication. */
  readonly token: string | undefined
  /** undefined: plain TCP. */
  readonly tls: TlsServer | undefined
  /** Connections past the handshake, at most. */
  readonly maxConnections: number
  /** Connections still in the handshake, at most: past it, the oldest is dropped. */
  readonly maxPending: number
  /** Bytes of frames one connection may hold in memory (read ahead plus being written). */
  readonly connectionMemory: number
  /** Bytes of frames all connections together may hold (raised to one frame of `maxFrame` if below). */
  readonly memory: number
  /** Datasets one connection may have open at once. */
  readonly maxHandles: number
  /** On shutdown, how long batches already received may take to finish writing. */
  readonly drainTimeout: Duration.DurationInput
  /** Why the server stops, read when it does (the CLI's: the signal), for the stopping and stopped events. */
  readonly stopReason?: Effect.Effect<string>
}

/** Frame memory of a server by default: a quarter of the machine's RAM, at most 512 MiB. */
export function defaultMemory(): number {
  return Math.min(512 * 1024 * 1024, Math.floor(os.totalmem() / 4))
}

export const defaultServeOptions: ServeOptions = {
  host: "0.0.0.0",
  port: 0,
  maxFrame: 16 * 1024 * 1024,
  handshakeTimeout: "10 seconds",
  idleTimeout: "120 seconds",
  batchesInFlight: 4,
  token: undefined,
  tls: undefined,
  maxConnections: 256,
  maxPending: 64,
  connectionMemory: 128 * 1024 * 1024,
  memory: defaultMemory(),
  maxHandles: 64,
  drainTimeout: "10 seconds"
}

/**
 * The largest frame a server must accept: the one asked for, or one piece of the largest slice
 * it accepts (stored by gzip without compression, plus its headers), whichever is larger, so that
 * every slice the server accepts can be sent with default flags.
 */
export const frameLimit = (maxFrame: number, maxSliceSize: number = defaultStoreLimits.maxSliceSize): number =>
  Math.max(maxFrame, piecesFrameBytes(1, Math.ceil(maxSliceSize * 1.001) + 4096))

/** The largest slice one piece of which always fits in a frame of `maxFrame` bytes (the inverse of `frameLimit`). */
export const largestSliceIn = (maxFrame: number): number => Math.max(1, Math.floor((maxFrame - piecesFrameBytes(1, 4096)) / 1.001))

const isLoopback = (host: string) => host === "localhost" || host.startsWith("127.") || host === "::1"

/**
 * Starts listening; serves until the scope closes, then stops gracefully: no new frame is taken,
 * batches already taken finish writing (at most `drainTimeout`), every client is told, and the
 * datasets' state is left on disk for a resume. Answers the bound address.
 */
export const serve = (options: ServeOptions): Effect.Effect<Address, TransportError, Transport | PieceStore | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const store = yield* PieceStore
    const { gate, stop } = yield* makeGate(options)
    // one budget for the frames of every connection: a server's memory does not grow with its clients
    const budget = new FrameBudget(Math.max(options.memory, options.maxFrame))
    const credentials = yield* Effect.serviceOption(Credentials)
    const tls = options.tls
    // a reload's certificate, key and client CA, for the connections accepted after it
    const tlsChanges = tls === undefined || Option.isNone(credentials) ? undefined : credentials.value.changes.pipe(
      Stream.map((now): TlsServer => ({
        cert: now.cert ?? tls.cert,
        key: now.key ?? tls.key,
        clientCa: tls.clientCa === undefined ? undefined : now.ca ?? tls.clientCa
      }))
    )
    const address = yield* transport.listen(
      {
        host: options.host,
        port: options.port,
        maxFrame: Math.min(HANDSHAKE_FRAME, options.maxFrame),
        readAhead: Math.min(2 * 1024 * 1024, Math.floor(options.connectionMemory / 4)),
        maxControl: MAX_CONTROL_FRAME,
        budget,
        tls: options.tls,
        tlsChanges,
        handshakeTimeout: options.handshakeTimeout
      },
      (link) => serveConnection(store, link, options, gate)
    )
    // runs before the listener's own finalizer, which cuts every socket
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        // the line that says it stopped is the CLI's, once it has
        yield* Effect.logDebug("stopping: finishing the batches in flight, then closing every connection")
        const reason = yield* (options.stopReason ?? Effect.succeed("interrupted"))
        yield* publish({ event: "stopping", reason })
        yield* stop(options.drainTimeout)
        yield* publish({ event: "stopped", reason })
      })
    )
    const shown = formatAddress(address)
    const secured = options.tls === undefined ? "" : options.tls.clientCa === undefined ? " (TLS)" : " (TLS, client certificates required)"
    yield* Effect.logInfo(`serving on ${shown}${secured}, writing to ${store.dest}`)
    yield* publish({ event: "listening", address: shown, tls: options.tls !== undefined, dest: store.dest })
    if (options.token === undefined && !isLoopback(options.host)) {
      yield* Effect.logWarning(
        `listening on ${options.host} without a token: anyone who can reach port ${address.port} can write datasets into ${store.dest}; set --token-file or FERRY_TOKEN`
      )
    }
    return address
  })
