/**
 * The connections to one server, kept up for as long as the sender runs:
 * connect (one connection near, several far), and when one breaks, connect
 * again with capped, jittered exponential backoff (`Effect.retry` with a
 * `Schedule`), bounded by a count and a time without progress. Its state is
 * a SubscriptionRef, so transfers wait for it to be up, and one line is
 * logged per change of state, not per attempt.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { isTransientRefusal } from "../domain/Codes.js"
import { PeerMismatch, TransportError } from "../domain/Errors.js"
import { publish } from "../services/Monitor.js"
import { type Address, formatAddress, type Transport } from "../services/Transport.js"
import { connect, type Connection, type ConnectionOptions, type LinkError } from "./Connection.js"

/* What a sender counts of its servers (README: Operating ferry). */

export const serversUp = Metric.gauge("ferry_send_servers_up", { description: "Servers whose connections are up now." })
export const reconnections = Metric.counter("ferry_send_reconnections_total", {
  description: "Times the connections to a server were set up again after being lost, by server (HOST:PORT).",
  incremental: true
})

/** Round trips below this are near: loopback, a LAN, the same region. */
export const NEAR_ROUND_TRIP_MS = 20
/** Connections opened by "auto" to a server farther away. */
export const FAR_CONNECTIONS = 4

/**
 * How many connections "auto" opens, from the round trip the first one measured (its TCP set-up
 * time). A connection carries at most its window per round trip: 8 MiB per 20 ms is 420 MB/s,
 * more than one machine here rebuilds, so near, one connection fills the link, and each extra one
 * only costs CPU on both ends (measured on loopback: a second connection costs the client about
 * 12% more CPU and makes four clients at once about 10% slower). Farther, 8 MiB per 50 ms is
 * 168 MB/s, so more connections keep the link busy. The threshold is loose on purpose: a busy
 * event loop can add a few milliseconds to the measurement.
 */
export const autoConnections = (roundTripMs: number): number => (roundTripMs < NEAR_ROUND_TRIP_MS ? 1 : FAR_CONNECTIONS)

export type UplinkState =
  | { readonly _tag: "Connecting" }
  | { readonly _tag: "Up"; readonly connections: ReadonlyArray<Connection> }
  | { readonly _tag: "Down"; readonly error: LinkError }
  /** Given up on: out of retries, or not a server we can talk to. */
  | { readonly _tag: "Gone"; readonly error: LinkError }

export interface ReconnectPolicy {
  /** Reconnections in a row without progress, at most. */
  readonly retries: number
  /** Time spent reconnecting without progress, at most. */
  readonly retryFor: Duration.DurationInput
  /** The longest wait between two attempts. */
  readonly cap: Duration.DurationInput
}

/** Exponential from 250 ms, capped, jittered, bounded by count and by time. */
export const reconnectSchedule = (policy: ReconnectPolicy) =>
  Schedule.exponential("250 millis").pipe(
    Schedule.union(Schedule.spaced(policy.cap)),
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(policy.retries)),
    Schedule.upTo(policy.retryFor)
  )

/** Failures a new connection may cure: the network or the server went away, or was busy. */
export const isTransient = (e: LinkError): boolean =>
  e._tag === "TransportError" || (e._tag === "ProtocolError" && isTransientRefusal(e.code))

export interface Uplink {
  readonly address: string
  readonly state: SubscriptionRef.SubscriptionRef<UplinkState>
  /** The live connections, waiting while the server is being reached; fails once it is given up on. */
  readonly connections: Effect.Effect<ReadonlyArray<Connection>, LinkError>
  /** A handle for a new dataset transfer (unique on this server's connections). */
  readonly nextHandle: () => number
  /** Datasets being sent to it now, for the choice of the least loaded. */
  readonly load: Ref.Ref<number>
  /** Pieces acknowledged by this server over the whole run. */
  readonly acked: () => number
}

interface SessionEnd {
  readonly error: LinkError
  readonly progressed: boolean
}

export const makeUplink = (
  address: Address,
  count: number | "auto",
  options: ConnectionOptions,
  policy: ReconnectPolicy,
  /** The only server of a run that ends when it is given up on: the run's last line says why, once. */
  alone = false
): Effect.Effect<Uplink, never, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const name = formatAddress(address)
    const state = yield* SubscriptionRef.make<UplinkState>({ _tag: "Connecting" })
    let handles = 0
    let ackedBefore = 0
    let current: ReadonlyArray<Connection> = []
    /** The last state change told in the log, so that each is told once. */
    let lastLogged: "up" | "down" | undefined
    let wasUp = false
    const ackedNow = () => current.reduce((n, c) => n + c.acked(), 0)

    /** Dials the first connection, then the others it calls for; carries on with those the server accepts. */
    const connectAll = Effect.gen(function*() {
      const first = yield* connect(address, options)
      const wanted = count === "auto" ? autoConnections(first.roundTrip) : Math.max(1, count)
      const others = yield* Effect.forEach(Array.from({ length: wanted - 1 }), () => Effect.either(connect(address, options)), { concurrency: "unbounded" })
      const refused = others.filter(Either.isLeft)
      if (refused.length > 0) {
        yield* Effect.logDebug(`${name}: ${wanted - refused.length} of ${wanted} connections accepted (${refused[0]!.left.message}); carrying on with those`)
      }
      yield* Effect.logDebug(`${wanted - refused.length} connection(s) to ${name}${count === "auto" ? ` (auto: round trip ${first.roundTrip.toFixed(2)} ms)` : ""}`)
      return [first, ...others.filter(Either.isRight).map((r) => r.right)]
    })

    /** One spell of being connected: up until a connection breaks. */
    const session = Effect.scoped(
      Effect.gen(function*() {
        const connections = yield* connectAll
        current = connections
        // one line per change of state: the first connection is not news, a reconnection is
        if (lastLogged === "down") yield* Effect.logInfo(`connected to ${name} again`)
        else yield* Effect.logDebug(`connected to ${name}`)
        if (wasUp) yield* Metric.increment(Metric.tagged(reconnections, "server", name))
        // up for as long as this spell lasts, however it ends
        yield* Effect.acquireRelease(Metric.increment(serversUp), () => Metric.incrementBy(serversUp, -1))
        lastLogged = "up"
        wasUp = true
        yield* publish({ event: "link", server: name, state: "up", message: "connected" })
        yield* SubscriptionRef.set(state, { _tag: "Up", connections })
        // up until the first connection breaks (raceAll takes the first success: hence the flips);
        // from that moment no new transfer may take these connections, even while they close
        const broken = yield* Effect.raceAll(connections.map((c) => Effect.flip(c.lost)))
        yield* SubscriptionRef.set(state, { _tag: "Down", error: broken })
        return yield* Effect.fail(broken)
      })
    ).pipe(
      Effect.mapError((error): SessionEnd => {
        const progressed = ackedNow() > 0
        ackedBefore += ackedNow()
        current = []
        return { error, progressed }
      }),
      Effect.tapError((end) => SubscriptionRef.set(state, { _tag: "Down", error: end.error })),
      Effect.tapError((end) =>
        Effect.gen(function*() {
          if (!isTransient(end.error) || lastLogged === "down") return
          lastLogged = "down"
          yield* Effect.logWarning(
            end.progressed || wasUp
              ? `${end.error.message}; reconnecting`
              : `${end.error.message}; trying again ${Duration.isFinite(Duration.decode(policy.retryFor)) ? `for up to ${Duration.format(policy.retryFor)} (--retry-for)` : "without end (--watch)"}`
          )
          yield* publish({ event: "link", server: name, state: "down", message: end.error.message })
        })
      )
    )

    const schedule = reconnectSchedule(policy)
    // retries without progress count against the budget; a spell that made progress starts it afresh
    const run = session.pipe(
      Effect.retry({ schedule, while: (end) => !end.progressed && isTransient(end.error) }),
      Effect.retry({ schedule: Schedule.spaced("250 millis"), while: (end) => end.progressed && isTransient(end.error) }),
      Effect.catchAll((end) =>
        Effect.gen(function*() {
          const error = end.error._tag === "PeerMismatch" || !isTransient(end.error)
            ? end.error
            : new TransportError({ address: name, reason: `${end.error.reason} (gave up after ${policy.retries} retries or ${Duration.format(policy.retryFor)})` })
          yield* (alone ? Effect.logDebug : Effect.logWarning)(`giving up: ${error.message}`)
          yield* publish({ event: "link", server: name, state: "down", message: error.message })
          yield* SubscriptionRef.set(state, { _tag: "Gone", error })
        })
      )
    )
    yield* Effect.forkScoped(run)

    return {
      address: name,
      state,
      load: yield* Ref.make(0),
      nextHandle: () => ++handles,
      acked: () => ackedBefore + ackedNow(),
      connections: state.changes.pipe(
        Stream.filter((s) => s._tag === "Up" || s._tag === "Gone"),
        Stream.take(1),
        Stream.runHead,
        Effect.flatMap((s) =>
          s._tag === "Some" && s.value._tag === "Up"
            ? Effect.succeed(s.value.connections)
            : Effect.fail(s._tag === "Some" && s.value._tag === "Gone" ? s.value.error : new PeerMismatch({ peer: name, reason: "no connection" }))
        )
      )
    } satisfies Uplink
  })
