/**
 * A dataset in progress as the piece store holds it: one entry of its
 * RcMap, shared by every session, commit and batch that uses it, and let go
 * of by the last of them.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Hash from "effect/Hash"
import * as HashMap from "effect/HashMap"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type * as Scope from "effect/Scope"
import type { Manifest } from "../../domain/Dataset.js"
import type { StoreError } from "../../domain/Errors.js"
import type { GrowingSpec } from "../../domain/Growing.js"
import type { Geometry } from "../../domain/Layout.js"
import type { Commit } from "./Commit.js"
import type { Lease } from "./Leases.js"
import type { Destination } from "../Destination.js"
import { datasetsInProgress } from "./Metrics.js"
import { type StateFiles, syncState } from "./StateFiles.js"

export interface Seal {
  readonly crc: number
  readonly reply: Deferred.Deferred<Commit, StoreError>
}
/** What a dataset's users change as they go, owned by one Ref. */
export interface Status {
  /** Set when the dataset failed for every session (the lease was lost, the commit failed). */
  readonly failure: Option.Option<StoreError>
  /** Seals waiting for the last piece. */
  readonly seals: ReadonlyArray<Seal>
  readonly committing: boolean
  /** Remove the state when the last user lets go: it holds a file no sender vouches for. */
  readonly discard: boolean
}

/** A dataset whose size is not known yet (`send --early`): what is known, and the pieces it may reach here. */
export interface Growing {
  readonly spec: GrowingSpec
  readonly bound: number
}

export interface Active {
  readonly key: DatasetKey
  /** These four change once, when a growing dataset's marker arrives (under `settling`), and never after. */
  manifest: Manifest
  geometry: Geometry
  state: StateFiles
  growing: Growing | undefined
  readonly lease: Lease
  /** A file was at `DEST/NAME` when the dataset was taken up: a crashed commit's, ferry's to replace. */
  readonly leftover: boolean
  /** The entry's own scope: background work on its files runs here. */
  readonly scope: Scope.Scope
  readonly commit: Deferred.Deferred<Commit, StoreError>
  /** One settlement of seals at a time. */
  readonly settling: Effect.Semaphore
  readonly status: Ref.Ref<Status>
  /** Bytes written since the last flush-behind, and one flush at a time. */
  readonly unflushed: Ref.Ref<number>
  readonly flushing: Effect.Semaphore
}

/** The RcMap's value: a dataset in progress, or one already committed (held only while its openers look at it). */
export type Taken = { readonly _tag: "Committed"; readonly commit: Commit } | { readonly _tag: "Active"; readonly entry: Active }

/**
 * A dataset is known by its name; the first opener's manifest rides along for the lookup that
 * takes it up, and every later opener's is compared with the one in force.
 */
export class DatasetKey implements Equal.Equal {
  constructor(readonly manifest: Manifest, readonly growing?: Growing) {}
  [Equal.symbol](that: Equal.Equal): boolean {
    return that instanceof DatasetKey && that.manifest.dataset === this.manifest.dataset
  }
  [Hash.symbol](): number {
    return Hash.string(this.manifest.dataset)
  }
}


/** Fails the dataset for every session: later writes and seals, and the seals waiting now. */
export const failAll = (entry: Active, error: StoreError): Effect.Effect<void> =>
  Ref.modify(entry.status, (s) => [s.seals, { ...s, failure: Option.orElse(s.failure, () => Option.some(error)), seals: [] }]).pipe(
    Effect.flatMap((seals) => Effect.forEach(seals, (s) => Deferred.fail(s.reply, error), { discard: true }))
  )

/**
 * Flush-behind: once `every` bytes have been written since the last one, the data file is
 * fsynced in the background, so that the disk writes while the transfer goes on and the
 * commit's own fsync only has the tail left. A failure here is left for the commit's fsync.
 * It runs in the dataset's scope, which waits for it before closing the file.
 */
export const flushBehind = (entry: Active, bytes: number, every: number): Effect.Effect<void> =>
  Effect.gen(function*() {
    const due = yield* Ref.modify(entry.unflushed, (n) => (n + bytes >= every ? [true, 0] : [false, n + bytes]))
    if (!due || (yield* Ref.get(entry.status)).committing) return
    yield* entry.state.data.sync.pipe(
      Effect.catchAll((e) => Effect.logDebug(`${entry.manifest.dataset}: flush-behind failed (${e.message})`)),
      entry.flushing.withPermitsIfAvailable(1),
      Effect.uninterruptible,
      Effect.forkIn(entry.scope)
    )
  })

/**
 * The last user let go: the dataset leaves the ones in progress, its state is made durable (or
 * discarded, while the lease is still ours), and its files close after this (their finalizers
 * were added before this one).
 */
export const letGo = (entry: Active, inProgress: Ref.Ref<HashMap.HashMap<string, Active>>, dest: Destination["Type"]): Effect.Effect<void> =>
  Effect.gen(function*() {
    const name = entry.manifest.dataset
    yield* Ref.update(inProgress, (m) => (Option.getOrUndefined(HashMap.get(m, name)) === entry ? HashMap.remove(m, name) : m))
    yield* Metric.incrementBy(datasetsInProgress, -1)
    const status = yield* Ref.get(entry.status)
    // a dataset let go of may be resumed by a server on another machine: its state must be on the storage
    if (Option.isNone(status.failure) && !status.discard) yield* syncState(entry.state).pipe(Effect.ignore)
    if (status.discard) {
      // only while the lease is ours: after a takeover, this folder's name may be another holder's
      yield* entry.lease.confirm.pipe(
        Effect.zipRight(Effect.logInfo(`${name}: discarding its state, which no sender vouched for; a new transfer starts afresh`)),
        Effect.zipRight(dest.remove(entry.lease.folder)),
        Effect.ignore
      )
    }
  })
