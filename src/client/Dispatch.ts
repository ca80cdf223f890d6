/**
 * Batches spread over a server's connections by pull. Each connection takes the next batch as soon
 * as its socket has taken the last one (a send returns once the window has room and the kernel has
 * the bytes), so a connection the network serves faster carries more, a slow or lossy one carries
 * less, and none waits behind another. Choosing a connection for each batch up front (the least
 * bytes unacknowledged) queued batches behind a socket that was still full while another stood
 * empty: on a 200 ms link, four connections carried what two could.
 *
 * Connections may join while batches flow (`joining`): each starts taking from the same queue.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Mailbox from "effect/Mailbox"
import * as Stream from "effect/Stream"

export const dispatch = <A, C, E, R, E2, R2>(
  batches: Stream.Stream<A, E, R>,
  options: {
    /** Batches ready and waiting for a connection, at most. */
    readonly ready: number
    readonly connections: ReadonlyArray<C>
    /** Connections that join later, as they come; the stream may never end. */
    readonly joining?: Stream.Stream<C> | undefined
    readonly send: (connection: C, batch: A) => Effect.Effect<void, E2, R2>
  }
): Effect.Effect<void, E | E2, R | R2> =>
  Effect.scoped(
    Effect.gen(function*() {
      const ready = yield* Mailbox.make<A>({ capacity: Math.max(1, options.ready) })
      const failed = yield* Deferred.make<never, E2>()
      const senders = yield* FiberSet.make()
      const taking = (connection: C) =>
        ready.take.pipe(
          Effect.flatMap((batch) => options.send(connection, batch)),
          Effect.forever,
          Effect.catchTag("NoSuchElementException", () => Effect.void),
          Effect.catchAll((e) => Deferred.fail(failed, e as E2))
        )
      for (const c of options.connections) yield* FiberSet.run(senders, taking(c))
      if (options.joining !== undefined) {
        yield* Stream.runForEach(options.joining, (c) => FiberSet.run(senders, taking(c))).pipe(Effect.forkScoped)
      }
      const producing = Stream.runForEach(batches, (batch) => ready.offer(batch)).pipe(Effect.zipRight(ready.end))
      // done when every batch is taken and sent; a connection failing ends it at once, whichever it is
      yield* Effect.raceFirst(Effect.zipRight(producing, FiberSet.awaitEmpty(senders)), Deferred.await(failed))
      const failure = yield* Deferred.poll(failed)
      if (failure._tag === "Some") yield* failure.value
    })
  )
