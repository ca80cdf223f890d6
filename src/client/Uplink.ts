/**
 * The connections to one server, kept up for as long as the sender runs:
 * connect (one connection near, several far), and when one breaks, connect
 * again with capped, jittered exponential backoff (`Effect.retry` with a
 * `Schedule`), bounded by a count and a time without progress. Its state is
 * a SubscriptionRef, so transfers wait for it to be up, and one line is
 * logged per change of state, not per attempt.
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { isTransientRefusal } from "../domain/Codes.js"
import { MAX_AUTO_CONNECTIONS, nextGrowthStep, probeInterval } from "../domain/Growth.js"
import { PeerMismatch, TransportError } from "../domain/Errors.js"
import { type Address, formatAddress, formatBytes } from "../domain/Units.js"
import { publish } from "../services/Monitor.js"
import type { Transport } from "../services/Transport.js"
import { type Acknowledged, connect, type Connection, type ConnectionOptions, type HandshakeSteps, type LinkError } from "./Connection.js"
import { dialAhead } from "./DialAhead.js"

/* What a sender counts of its servers (README: Operating ferry). */

export const serversUp = Metric.gauge("ferry_send_servers_up", { description: "Servers whose connections are up now." })
export const reconnections = Metric.counter("ferry_send_reconnections_total", {
  description: "Times the connections to a server were set up again after being lost, by server (HOST:PORT).",
  incremental: true
})

/** Round trips below this are near: loopback, a LAN, the same region. */
export const NEAR_ROUND_TRIP_MS = 20
/**
 * The others are dialed ahead (client/DialAhead.ts) when the greeting measures at least this many
 * times the near threshold (50 ms by default): a greeting measured while the sender starts up can
 * be late by a few milliseconds, and dialing ahead pays off on long links only.
 */
export const DIAL_AHEAD_FACTOR = 2.5
/** The longest the first connection's hello waits for the folder's count. */
const HOLD_HELLO = "2 seconds"
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
export const autoConnections = (roundTripMs: number, nearMs = NEAR_ROUND_TRIP_MS): number => (roundTripMs < nearMs ? 1 : FAR_CONNECTIONS)

export type UplinkState =
  | { readonly _tag: "Connecting" }
  /** Settled: every connection of the first dialing is up or refused (more may join while "auto" grows). */
  | { readonly _tag: "Up"; readonly connections: ReadonlyArray<Connection>; readonly settled: boolean }
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
  /** The same once every connection of the first dialing is up or refused (for a transfer that cannot take joiners). */
  readonly settledConnections: Effect.Effect<ReadonlyArray<Connection>, LinkError>
  /** Connections that join after `known` ("auto" growing), while this spell of being connected lasts. */
  readonly joining: (known: ReadonlyArray<Connection>) => Stream.Stream<Connection>
  /** A handle for a new dataset transfer (unique on this server's connections). */
  readonly nextHandle: () => number
  /** Datasets being sent to it now, for the choice of the least loaded. */
  readonly load: Ref.Ref<number>
  /** Pieces acknowledged by this server over the whole run. */
  readonly acked: Effect.Effect<number>
}

interface SessionEnd {
  readonly error: LinkError
  readonly progressed: boolean
}

export interface UplinkOptions {
  /** The only server of a run that ends when it is given up on: the run's last line says why, once. */
  readonly alone?: boolean
  /** Round trips below this are near (tests set it to see a far server on loopback). */
  readonly nearMs?: number | undefined
  /**
   * Awaited before anything about the server is told (logged, published: up, down, given up on): a
   * sender dials while it counts its folder, and a folder with nothing to send ends the run before
   * anything is said.
   */
  readonly claimed?: Effect.Effect<void>
}

export const makeUplink = (
  address: Address,
  count: number | "auto",
  options: ConnectionOptions,
  policy: ReconnectPolicy,
  { alone = false, claimed = Effect.void, nearMs = NEAR_ROUND_TRIP_MS }: UplinkOptions = {}
): Effect.Effect<Uplink, never, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const name = formatAddress(address)
    const state = yield* SubscriptionRef.make<UplinkState>({ _tag: "Connecting" })
    let handles = 0
    let current: ReadonlyArray<Connection> = []
    /** The last state change told in the log, so that each is told once. */
    let lastLogged: "up" | "down" | undefined
    let wasUp = false
    /** What this server acknowledged over the run, on every connection to it, old and new. */
    const acked = yield* Ref.make<Acknowledged>({ pieces: 0, bytes: 0 })
    const ackedBytes = Effect.map(Ref.get(acked), (a) => a.bytes)

    const connectTo = (steps: HandshakeSteps = {}) => connect(address, options, acked, steps)
    const dial = (steps: HandshakeSteps = {}) => Effect.sequentialFinalizers(connectTo(steps))

    /**
     * "auto" to a far server: one more connection while the bytes acknowledged per second still grow
     * (domain/Growth.ts). A connection the server refuses ends the growth; the others carry on.
     */
    const grow = (roundTrip: number, watch: (c: Connection) => Effect.Effect<void, never, Scope.Scope>) =>
      Effect.gen(function*() {
        const every = probeInterval(roundTrip)
        let before = { at: yield* Clock.currentTimeMillis, bytes: yield* ackedBytes }
        let previous: number | undefined
        let added = false
        while (true) {
          yield* Effect.sleep(every)
          const now = { at: yield* Clock.currentTimeMillis, bytes: yield* ackedBytes }
          const rate = ((now.bytes - before.bytes) * 1000) / Math.max(1, now.at - before.at)
          before = now
          const busy = current.some((c) => c.inflight() > 0)
          const step = nextGrowthStep({ rate, previous, added, connections: current.length, max: MAX_AUTO_CONNECTIONS, busy })
          if (step === "wait") {
            // a probe that saw the link: the next compares with it
            if (busy && rate > 0) previous = rate
            continue
          }
          const why = added ? `up from ${formatBytes(Math.round(previous ?? 0))}/s with the last one added` : "levelled off"
          previous = rate
          if (step === "stop") {
            const ended = current.length >= MAX_AUTO_CONNECTIONS ? `the most auto opens` : added ? "the last one added did not pay" : "no longer growing"
            return yield* Effect.logDebug(`${name}: ${current.length} connection(s) (auto: ${formatBytes(Math.round(rate))}/s, ${ended})`)
          }
          const dialed = yield* Effect.either(dial())
          if (Either.isLeft(dialed)) return yield* Effect.logDebug(`${name}: no connection beyond ${current.length} (${dialed.left.message})`)
          yield* watch(dialed.right)
          current = [...current, dialed.right]
          added = true
          yield* Effect.logDebug(`${name}: ${current.length} connection(s) (auto: ${formatBytes(Math.round(rate))}/s, ${why})`)
          yield* SubscriptionRef.set(state, { _tag: "Up", connections: current, settled: true })
          // the probe starts again once it takes part: its set-up time is no measure of the link
          before = { at: yield* Clock.currentTimeMillis, bytes: yield* ackedBytes }
        }
      })

    /**
     * One spell of being connected: up until a connection breaks. The connections close side by
     * side: each waits a round trip for the server's end of the stream, and one after another that
     * was a second at the end of a run on a 200 ms link.
     */
    const spell = Effect.scoped(
      Effect.gen(function*() {
        // The first connection is dialed, then the others it calls for (only once it is accepted: a
        // server that refuses us sees one attempt). Transfers start on the first and the others
        // join as they come: on a lossy link a lost SYN costs a connection a second.
        const broken = yield* Deferred.make<LinkError>()
        const watch = (c: Connection) => Effect.asVoid(Effect.forkScoped(Effect.flatMap(Effect.flip(c.lost), (e) => Deferred.succeed(broken, e))))
        const up = yield* Ref.make(false)
        const join = (c: Connection) =>
          Effect.zipRight(
            watch(c),
            Effect.flatMap(Ref.get(up), (isUp) => {
              current = [...current, c]
              return isUp ? SubscriptionRef.set(state, { _tag: "Up", connections: current, settled: false }) : Effect.void
            })
          )
        // the first hello waits for the folder's count (2 s at most, well inside the server's
        // handshake timeout): its round trip decides near or far, and measured while several
        // senders start at once on a small machine, loopback looked far (four clients: 17-52 ms)
        const helloAfterCount = Effect.ignore(Effect.timeout(claimed, HOLD_HELLO))
        const ahead = count === "auto" ? yield* dialAhead(address, connectTo, nearMs * DIAL_AHEAD_FACTOR, FAR_CONNECTIONS - 1, helloAfterCount) : undefined
        const first = yield* (ahead === undefined ? dial({ beforeHello: helloAfterCount }) : ahead.first)
        const measured = first.roundTrip
        const wanted = count === "auto" ? autoConnections(measured, nearMs) : Math.max(1, count)
        const others = Effect.gen(function*() {
          const { attempts, ahead: early } = ahead === undefined
            ? { attempts: Array.from({ length: wanted - 1 }, () => dial()), ahead: 0 }
            : yield* ahead.others(wanted - 1)
          const dialed = yield* Effect.forEach(attempts, (a) => Effect.tap(Effect.either(a), (r) => Either.isRight(r) ? join(r.right) : Effect.void), {
            concurrency: "unbounded"
          })
          const refused = dialed.filter(Either.isLeft)
          if (refused.length > 0) {
            yield* Effect.logDebug(`${name}: ${wanted - refused.length} of ${wanted} connections accepted (${refused[0]!.left.message}); carrying on with those`)
          }
          yield* Effect.logDebug(
            `${wanted - refused.length} connection(s) to ${name}${count === "auto" ? ` (auto: round trip ${measured.toFixed(2)} ms, ${measured < nearMs ? "near" : "far: more while the throughput grows"}${early > 0 ? `, ${early} dialed ahead` : ""})` : ""}, ` +
              `window ${formatBytes(options.window)} per connection: at most ${formatBytes((options.window * 1000) / Math.max(1, measured))}/s each, or what the kernel's socket buffers allow if less`
          )
        })
        const othersDone = yield* Effect.forkScoped(others)
        yield* watch(first)
        current = [first, ...current]
        // nothing is told of the server before there is something to send to it (dialed while the folder is counted)
        yield* claimed
        // one line per change of state: the first connection is not news, a reconnection is
        if (lastLogged === "down") yield* Effect.logInfo(`connected to ${name} again`)
        else yield* Effect.logDebug(`connected to ${name}`)
        if (wasUp) yield* Metric.increment(Metric.tagged(reconnections, "server", name))
        // up for as long as this spell lasts, however it ends
        yield* Effect.acquireRelease(Metric.increment(serversUp), () => Metric.incrementBy(serversUp, -1))
        lastLogged = "up"
        wasUp = true
        yield* publish({ event: "link", server: name, state: "up", message: "connected" })
        yield* Ref.set(up, true)
        yield* SubscriptionRef.set(state, { _tag: "Up", connections: current, settled: false })
        // up until the first connection breaks; from that moment no new transfer may take these
        // connections, even while they close
        yield* Effect.forkScoped(Effect.gen(function*() {
          yield* Fiber.join(othersDone)
          yield* SubscriptionRef.set(state, { _tag: "Up", connections: current, settled: true })
          if (count === "auto" && measured >= nearMs) yield* grow(measured, watch)
        }))
        const error = yield* Deferred.await(broken)
        yield* SubscriptionRef.set(state, { _tag: "Down", error })
        return yield* Effect.fail(error)
      }).pipe(Effect.parallelFinalizers)
    )
    // a spell made progress when the server acknowledged pieces during it
    const session = Effect.flatMap(Ref.get(acked), (before) =>
      Effect.catchAll(spell, (error) =>
        Effect.flatMap(Ref.get(acked), (now) => {
          current = []
          return Effect.fail<SessionEnd>({ error, progressed: now.pieces > before.pieces })
        }))
    ).pipe(
      Effect.tapError((end) => SubscriptionRef.set(state, { _tag: "Down", error: end.error })),
      Effect.tapError((end) =>
        Effect.gen(function*() {
          if (!isTransient(end.error) || lastLogged === "down") return
          yield* claimed
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
          yield* claimed
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

    /** The connections once the state is Up and `ready` says so; fails once the server is given up on. */
    const upWith = (ready: (s: Extract<UplinkState, { _tag: "Up" }>) => boolean) =>
      state.changes.pipe(
        Stream.filter((s) => (s._tag === "Up" && ready(s)) || s._tag === "Gone"),
        Stream.take(1),
        Stream.runHead,
        Effect.flatMap((s) =>
          s._tag === "Some" && s.value._tag === "Up"
            ? Effect.succeed(s.value.connections)
            : Effect.fail(s._tag === "Some" && s.value._tag === "Gone" ? s.value.error : new PeerMismatch({ peer: name, reason: "no connection" }))
        )
      )

    return {
      address: name,
      state,
      load: yield* Ref.make(0),
      nextHandle: () => ++handles,
      acked: Effect.map(Ref.get(acked), (a) => a.pieces),
      joining: (known) => {
        const seen = new Set(known)
        return state.changes.pipe(
          Stream.takeWhile((s) => s._tag === "Up" && s.connections.includes(known[0]!)),
          // seen and told in one step: each connection joins once
          Stream.mapConcat((s) => {
            const fresh = s._tag === "Up" ? s.connections.filter((c) => !seen.has(c)) : []
            for (const c of fresh) seen.add(c)
            return fresh
          })
        )
      },
      connections: upWith(() => true),
      settledConnections: upWith((s) => s.settled)
    } satisfies Uplink
  })
