/**
 * Dialing ahead for `--connections auto`: the other connections to a far server are dialed as soon
 * as the first one's greeting shows the server far, not after its whole handshake. Each holds
 * before its hello until the first one is accepted (a server that refuses us sees one hello), so on
 * a 200 ms link the extra connections are up one and a half round trips sooner.
 *
 * Far is judged twice. At the greeting, by the shorter of the TCP set-up and our hi and its answer;
 * then by the first connection's whole measure (client/Uplink.ts `autoConnections`). When the
 * second says near, the connections dialed ahead are closed unused.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { type Address, formatAddress } from "../domain/Units.js"
import type { Transport } from "../services/Transport.js"
import type { Connection, HandshakeSteps, LinkError } from "./Connection.js"

/** A connection dialed ahead, in a scope of its own so that it can be closed unused. */
interface Attempt {
  readonly fiber: Fiber.Fiber<Either.Either<Connection, LinkError>>
  readonly own: Scope.CloseableScope
}

export interface DialedAhead {
  /** The first connection, whole handshake. */
  readonly first: Effect.Effect<Connection, LinkError, Transport>
  /**
   * The other connections, `wanted` of them: those dialed ahead first (released to say hello), the
   * rest dialed now; those dialed ahead beyond `wanted` are closed. Call it once the first is up.
   */
  readonly others: (wanted: number) => Effect.Effect<{ readonly attempts: ReadonlyArray<Effect.Effect<Connection, LinkError, Transport>>; readonly ahead: number }>
}

/** Dials in the scope of the caller: every connection lives as long as it does. */
export const dialAhead = (
  address: Address,
  /** One connection to the server, with these handshake hooks (client/Uplink.ts: `connect` with its options and ledger). */
  connectTo: (steps?: HandshakeSteps) => Effect.Effect<Connection, LinkError, Transport | Scope.Scope>,
  /** Round trips below this are near: nothing is dialed ahead. */
  nearMs: number,
  /** Connections to dial ahead when the server looks far. */
  extra: number,
  /** Awaited before the first connection's hello (client/Uplink.ts: until the folder is counted). */
  beforeHello: Effect.Effect<void> = Effect.void
): Effect.Effect<DialedAhead, never, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const spell = yield* Effect.scope
    const context = yield* Effect.context<Transport>()
    const dial = () => Effect.sequentialFinalizers(connectTo()).pipe(Scope.extend(spell))
    /** Succeeds once the first connection is accepted, fails with its error if it is not. */
    const go = yield* Deferred.make<void, LinkError>()
    const ahead = yield* Ref.make<ReadonlyArray<Attempt>>([])

    const attempt = Effect.gen(function*() {
      const own = yield* Scope.fork(spell, ExecutionStrategy.sequential)
      const fiber = yield* connectTo({ beforeHello: Deferred.await(go) }).pipe(
        Scope.extend(own),
        Effect.tapError(() => Scope.close(own, Exit.void)),
        Effect.either,
        Effect.provide(context),
        Effect.forkIn(spell)
      )
      return { fiber, own } satisfies Attempt
    })
    const greeted = (roundTripMs: number) =>
      roundTripMs < nearMs ? Effect.void : Effect.logDebug(`${formatAddress(address)}: far at its greeting (${roundTripMs.toFixed(2)} ms): ${extra} more connection(s) dialed ahead`).pipe(
        Effect.zipRight(Effect.all(Array.from({ length: extra }, () => attempt))),
        Effect.flatMap((list) => Ref.set(ahead, list))
      )

    const first = Effect.sequentialFinalizers(connectTo({ greeted, beforeHello })).pipe(
      Scope.extend(spell),
      Effect.tapError((e) => Deferred.fail(go, e))
    )

    const others = (wanted: number) =>
      Effect.gen(function*() {
        const dialed = yield* Ref.getAndSet(ahead, [])
        const unused = dialed.slice(wanted)
        yield* Effect.forEach(unused, (a) => Effect.zipRight(Fiber.interrupt(a.fiber), Scope.close(a.own, Exit.void)), { discard: true })
        if (unused.length > 0) {
          yield* Effect.logDebug(`${unused.length} connection(s) dialed ahead closed unused (the hello measured the server near)`)
        }
        yield* Deferred.succeed(go, undefined)
        const used = dialed.slice(0, wanted).map((a) => Effect.flatten(Fiber.join(a.fiber)))
        return { attempts: [...used, ...Array.from({ length: wanted - used.length }, dial)], ahead: used.length }
      })

    return { first, others }
  })
