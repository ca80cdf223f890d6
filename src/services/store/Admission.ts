/**
 * Taking datasets up, one at a time: each is leased, admitted against the
 * free space and the other datasets' reservations, then its state files are
 * opened, resumed or made. A growing dataset is admitted again for the rest
 * of its size when its marker arrives.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { admit, remainingBytes, stateBytes } from "../../domain/Admission.js"
import type { Manifest } from "../../domain/Dataset.js"
import { StoreError } from "../../domain/Errors.js"
import type { StoreLimits } from "../../domain/Limits.js"
import { Destination } from "../Destination.js"
import { type Active, type DatasetKey, failAll, letGo, type Status, type Taken } from "./Active.js"
import { type Commit, committedOf, refuse } from "./Commit.js"
import { createGrowing, resumeGrowing, sealGrowing } from "./Growing.js"
import { type Lease, Leases, STATE_FOLDER } from "./Leases.js"
import { datasetsInProgress, datasetsOpened } from "./Metrics.js"
import { createState, ioToStore, outOfDescriptors, resumeState, type StateFiles } from "./StateFiles.js"

export interface Admission {
  /** The datasets in progress, by name. */
  readonly inProgress: Ref.Ref<HashMap.HashMap<string, Active>>
  /** Takes a dataset up (the RcMap's lookup): what is on record for it, or its entry in progress. */
  readonly takeUp: (key: DatasetKey) => Effect.Effect<Taken, StoreError, Scope.Scope>
  /** A growing dataset's marker: admits the rest of its size, then cuts its state down to `sealed`. */
  readonly admitSealed: (entry: Active, sealed: Manifest) => Effect.Effect<void, StoreError>
  /** Out of descriptors is said once, until a dataset can be taken up again; each sender is told Busy. */
  readonly sayShortOfDescriptors: (e: StoreError) => Effect.Effect<void>
}

/**
 * What the datasets in progress (but `name`) may still write. A growing dataset promises
 * nothing: its size is unknown, and what it wrote is already off the free space.
 */
const reservedByOthers = (active: HashMap.HashMap<string, Active>, name: string): number => {
  let reserved = 0
  for (const other of HashMap.values(active)) {
    if (other.growing === undefined && other.manifest.dataset !== name) reserved += remainingBytes(other.geometry, other.state.bitmap.held)
  }
  return reserved
}

export const makeAdmission = (limits: StoreLimits): Effect.Effect<Admission, never, Destination | Leases> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const leases = yield* Leases
    const inProgress = yield* Ref.make(HashMap.empty<string, Active>())
    // one at a time, so that each is admitted against the others' reservations
    const admission = yield* Effect.makeSemaphore(1)
    const shortOfDescriptors = yield* Ref.make(false)
    const onDestination = Effect.provideService(Destination, dest)

    /**
     * A committed dataset's state folder, left when its server stopped between the marker and its
     * tidying, is removed under its lease once that is free. A live holder (the committing server,
     * still tidying, or one that took it up in the same moment) keeps it: it removes it itself.
     */
    const tidyCommitted = (name: string): Effect.Effect<void> => {
      const folder = `${STATE_FOLDER}/${name}`
      return Effect.gen(function*() {
        if ((yield* dest.kind(folder)) === "none") return
        yield* Effect.uninterruptible(Effect.scoped(Effect.gen(function*() {
          const lease = yield* onDestination(leases.acquire(name))
          yield* lease.retire
          yield* dest.remove(folder)
        })))
        yield* Effect.logInfo(`${name}: removed the state folder left beside its commit`)
      }).pipe(Effect.catchAll((e) => Effect.logDebug(`${name}: committed; its state folder stays for now (${e.message})`)))
    }

    /**
     * The dataset's lease, taken whole in `scope` (made before the dataset's files, so closed after
     * them); or the commit another server made between our look and our lease: its commit removed the
     * state folder and our lease made a fresh one, which goes again at once, and the lease with it (the
     * sender is told Committed, and skips it). Uninterruptible: a lookup whose last opener went away
     * (its sender heard Committed from that other server) still looks, and tidies.
     */
    const leaseUnlessCommitted = (name: string, scope: Scope.CloseableScope): Effect.Effect<Either.Either<Lease, Commit>, StoreError> =>
      Effect.gen(function*() {
        const lease = yield* onDestination(leases.acquire(name)).pipe(Scope.extend(scope))
        const late = yield* onDestination(committedOf(name))
        if (Option.isNone(late)) return Either.right(lease)
        yield* Effect.logDebug(`${name}: committed by another server while this one took it up`)
        yield* lease.retire
        yield* dest.remove(`${STATE_FOLDER}/${name}`).pipe(Effect.ignore)
        yield* Scope.close(scope, Exit.void)
        return Either.left(late.value)
      }).pipe(Effect.uninterruptible)

    const takeUp = (key: DatasetKey): Effect.Effect<Taken, StoreError, Scope.Scope> =>
      admission.withPermits(1)(Effect.gen(function*() {
        const manifest = key.manifest
        const name = manifest.dataset
        const done = yield* onDestination(committedOf(name))
        if (Option.isSome(done)) {
          yield* tidyCommitted(name)
          return { _tag: "Committed", commit: done.value } as const
        }
        const active = yield* Ref.get(inProgress)
        if (HashMap.size(active) >= limits.maxDatasets) {
          return yield* refuse(name, "Busy", `the server already has ${HashMap.size(active)} datasets in progress, its limit; try again later`)
        }
        // "never" before "not now": a dataset bigger than the whole filesystem is not worth waiting for
        // (a growing one's size is not known: its state files only, until its marker)
        const growing = key.growing
        const need = (growing === undefined ? manifest.size : 0) + stateBytes(manifest)
        const capacity = yield* dest.capacity
        if (need > capacity) {
          return yield* refuse(name, "TooLarge", `needs ${need} bytes, more than the whole filesystem of ${dest.root} holds (${capacity} bytes): it can never fit there`)
        }
        const leftover = (yield* dest.kind(name).pipe(Effect.mapError(ioToStore(name, "StateUnusable")))) !== "none"
        const leased = yield* leaseUnlessCommitted(name, yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential))
        if (Either.isLeft(leased)) return { _tag: "Committed", commit: leased.left } as const
        const lease = leased.right
        const resumed = !lease.resumable
          ? Option.none<StateFiles>()
          : growing === undefined
          ? yield* onDestination(resumeState(lease.folder, manifest))
          : yield* onDestination(resumeGrowing(lease.folder, growing.spec, growing.bound))
        // admitted before any file is made: a refusal leaves nothing behind
        const verdict = admit(
          growing === undefined ? remainingBytes(manifest, Option.isSome(resumed) ? resumed.value.bitmap.held : 0) : stateBytes(manifest),
          yield* dest.available,
          reservedByOthers(active, name)
        )
        if (verdict._tag === "Refused") {
          if (Option.isNone(resumed)) yield* dest.remove(`${STATE_FOLDER}/${name}`).pipe(Effect.ignore)
          return yield* refuse(name, "NoSpace", `${verdict.reason} in ${dest.root}`)
        }
        const state = Option.isSome(resumed)
          ? resumed.value
          : growing === undefined
          ? yield* onDestination(createState(lease.folder, manifest))
          : yield* onDestination(createGrowing(lease.folder, growing.spec, growing.bound))
        const entry: Active = {
          key,
          manifest,
          growing,
          geometry: { dataset: name, size: manifest.size, sliceSize: manifest.sliceSize, first: manifest.first, count: manifest.count },
          state,
          lease,
          leftover,
          scope: yield* Effect.scope,
          commit: yield* Deferred.make<Commit, StoreError>(),
          settling: yield* Effect.makeSemaphore(1),
          status: yield* Ref.make<Status>({ failure: Option.none(), seals: [], committing: false, discard: false }),
          unflushed: yield* Ref.make(0),
          flushing: yield* Effect.makeSemaphore(1)
        }
        yield* Ref.update(inProgress, HashMap.set(name, entry))
        yield* Ref.set(shortOfDescriptors, false)
        yield* Metric.increment(datasetsOpened)
        yield* Metric.increment(datasetsInProgress)
        yield* Effect.addFinalizer(() => letGo(entry, inProgress, dest))
        // a lease lost to another server fails the dataset for every session at once
        yield* Deferred.await(lease.lost).pipe(
          Effect.zipRight(failAll(entry, new StoreError({ dataset: name, code: "LeaseLost", reason: "another server on the same destination took this dataset over" }))),
          Effect.interruptible,
          Effect.forkScoped
        )
        yield* Effect.logDebug(`${name}: ${Option.isSome(resumed) ? `resuming with ${state.bitmap.held} of ${manifest.count} pieces held` : "new dataset"} (epoch ${lease.epoch})`)
        return { _tag: "Active", entry } as const
      }))

    const admitSealed = (entry: Active, sealed: Manifest): Effect.Effect<void, StoreError> =>
      admission.withPermits(1)(Effect.gen(function*() {
        const name = entry.manifest.dataset
        const growing = entry.growing
        if (growing === undefined) return
        const verdict = admit(remainingBytes(sealed, entry.state.bitmap.held), yield* dest.available, reservedByOthers(yield* Ref.get(inProgress), name))
        if (verdict._tag === "Refused") return yield* refuse(name, "NoSpace", `${verdict.reason} in ${dest.root}`)
        entry.state = yield* onDestination(sealGrowing(entry.state, growing.spec, sealed.size)).pipe(Effect.mapError(ioToStore(name, "StateUnusable")))
        entry.manifest = sealed
        entry.geometry = { dataset: name, size: sealed.size, sliceSize: sealed.sliceSize, first: sealed.first, count: sealed.count }
        entry.growing = undefined
      }))

    const sayShortOfDescriptors = (e: StoreError) =>
      outOfDescriptors(e)
        ? Effect.flatMap(Ref.getAndSet(shortOfDescriptors, true), (said) =>
          said ? Effect.void : Effect.logWarning(`out of file descriptors (${(e.cause as { code: string }).code}): datasets wait as Busy until others finish; raise ulimit -n, or lower --max-datasets`))
        : Effect.void

    return { inProgress, takeUp, admitSealed, sayShortOfDescriptors }
  })
