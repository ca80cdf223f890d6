/** Which server a dataset goes to: the least loaded that is up, ties broken by rendezvous hashing. */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { LinkError } from "./Connection.js"
import type { Uplink } from "./Uplink.js"

/** A stable order of servers for one dataset (rendezvous hashing): ties go to the dataset's own favourite. */
export const affinity = (dataset: string, server: string): number => {
  let h = 0x811c9dc5
  for (const c of `${dataset}@${server}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0
  return h
}

/**
 * Waits until a server is up and answers the least loaded (ties by affinity), preferring those
 * not in `avoid`; fails when every server has been given up on.
 */
export const pickUplink = (uplinks: ReadonlyArray<Uplink>, dataset: string, avoid: ReadonlySet<string>) =>
  Stream.mergeAll(uplinks.map((u) => u.state.changes), { concurrency: "unbounded" }).pipe(
    Stream.mapEffect(() => Effect.forEach(uplinks, (u) => Effect.all([Effect.succeed(u), SubscriptionRef.get(u.state), Ref.get(u.load)] as const))),
    Stream.map((states): Either.Either<Uplink, LinkError> | undefined => {
      const load = new Map(states.map(([u, , n]) => [u, n]))
      const up = states.filter(([, s]) => s._tag === "Up").map(([u]) => u)
      if (up.length === 0) {
        const gone = states.flatMap(([, s]) => (s._tag === "Gone" ? [s.error] : []))
        return gone.length === states.length ? Either.left(gone[0]!) : undefined
      }
      const preferred = up.filter((u) => !avoid.has(u.address))
      const candidates = preferred.length > 0 ? preferred : up
      return Either.right(candidates.reduce((best, u) =>
        load.get(u)! < load.get(best)! || (load.get(u) === load.get(best) && affinity(dataset, u.address) > affinity(dataset, best.address)) ? u : best
      ))
    }),
    Stream.filter((x): x is Either.Either<Uplink, LinkError> => x !== undefined),
    Stream.runHead,
    Effect.flatMap((x) => (Option.isSome(x) ? x.value : Effect.die(new Error("no server state")))),
  )
