/**
 * The server's gate: the connections in the handshake and past it, held by
 * one SubscriptionRef. Each connection takes a place when it comes in and
 * gives back exactly that place when its scope closes, wherever it got to.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as HashSet from "effect/HashSet"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"

export interface GateLimits {
  /** Connections past the handshake, at most. */
  readonly maxConnections: number
  /** Connections still in the handshake, at most: past it, the oldest is dropped. */
  readonly maxPending: number
}

/** A connection's place at the gate. */
export interface Ticket {
  /** Passes the handshake: false when the server is at its limit of connections. */
  readonly pass: Effect.Effect<boolean>
  /** Connections past the handshake now. */
  readonly ready: Effect.Effect<number>
}

/** Connections of one server, counted across links, and the signal to stop. */
export interface Gate {
  /**
   * A connection enters the handshake; past the limit of those, the oldest is dropped (its `drop`
   * runs). It leaves, wherever it got to, when the scope closes.
   */
  readonly enter: (drop: Effect.Effect<unknown>) => Effect.Effect<Ticket, never, Scope.Scope>
  /** Completes when the server starts stopping. */
  readonly stopping: Effect.Effect<void>
  readonly isStopping: Effect.Effect<boolean>
}

/** Connections open now, in the handshake or past it, over every server of the process. */
export const connectionsOpen = Metric.gauge("ferry_serve_connections_open", { description: "Connections open now, in the handshake or past it." })

/** One connection at the gate, known by its identity; `drop` ends its handshake to make room. */
class Place {
  constructor(readonly drop: Effect.Effect<unknown>) {}
}

/** Where every connection of a server is. The counts are the sizes: nothing is counted by hand. */
interface Places {
  /** In the handshake, oldest first. */
  readonly handshake: ReadonlyArray<Place>
  /** Past the handshake. */
  readonly ready: HashSet.HashSet<Place>
  /** Every connection not gone yet, wherever it got to (one dropped from the handshake stays until its scope closes). */
  readonly open: HashSet.HashSet<Place>
}

const noPlaces: Places = { handshake: [], ready: HashSet.empty(), open: HashSet.empty() }

/** A connection comes in; a full handshake lets its oldest go, answered to be dropped. */
const arrive = (places: Places, place: Place, maxPending: number): [Place | undefined, Places] => {
  const oldest = places.handshake.length >= maxPending ? places.handshake[0] : undefined
  const handshake = oldest === undefined ? places.handshake : places.handshake.slice(1)
  return [oldest, { handshake: [...handshake, place], ready: places.ready, open: HashSet.add(places.open, place) }]
}

/** A connection is through the handshake: it takes a place past it, if one is left. */
const pass = (places: Places, place: Place, maxConnections: number): [boolean, Places] => {
  const handshake = places.handshake.filter((p) => p !== place)
  return HashSet.size(places.ready) >= maxConnections
    ? [false, { ...places, handshake }]
    : [true, { ...places, handshake, ready: HashSet.add(places.ready, place) }]
}

/** A connection is gone: it gives back whatever it held. */
const leave = (places: Places, place: Place): Places => ({
  handshake: places.handshake.filter((p) => p !== place),
  ready: HashSet.remove(places.ready, place),
  open: HashSet.remove(places.open, place)
})

export const makeGate = (limits: GateLimits) =>
  Effect.gen(function*() {
    const places = yield* SubscriptionRef.make(noPlaces)
    const stopped = yield* Deferred.make<void>()
    const come = (drop: Effect.Effect<unknown>) =>
      Effect.gen(function*() {
        const place = new Place(drop)
        const oldest = yield* SubscriptionRef.modify(places, (now) => arrive(now, place, limits.maxPending))
        yield* Metric.increment(connectionsOpen)
        // A flood of connections that never finish the handshake must not lock others out.
        if (oldest !== undefined) yield* oldest.drop
        return place
      })
    const go = (place: Place) => Effect.zipRight(SubscriptionRef.update(places, (now) => leave(now, place)), Metric.incrementBy(connectionsOpen, -1))
    const gate: Gate = {
      enter: (drop) =>
        Effect.map(Effect.acquireRelease(come(drop), go), (place): Ticket => ({
          pass: SubscriptionRef.modify(places, (now) => pass(now, place, limits.maxConnections)),
          ready: Effect.map(SubscriptionRef.get(places), (now) => HashSet.size(now.ready))
        })),
      stopping: Deferred.await(stopped),
      isStopping: Deferred.isDone(stopped)
    }
    /** Asks every connection to stop, and waits until all are gone (at most `timeout`). */
    const stop = (timeout: Duration.DurationInput) =>
      Effect.zipRight(
        Deferred.succeed(stopped, undefined),
        // finalizers run uninterruptibly: the wait itself must be interruptible for its timeout to work
        places.changes.pipe(
          Stream.takeUntil((now) => HashSet.size(now.open) === 0),
          Stream.runDrain,
          Effect.interruptible,
          Effect.timeout(timeout),
          Effect.catchAll(() =>
            Effect.flatMap(SubscriptionRef.get(places), (now) => Effect.logWarning(`${HashSet.size(now.open)} connection(s) still open after ${Duration.format(timeout)}; closing them`))
          )
        )
      )
    return { gate, stop }
  })
