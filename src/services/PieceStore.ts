/**
 * Piece store: the server's destination folder. A dataset in progress is
 * one entry of an `RcMap` keyed by its name: taken up (leased, admitted
 * against the free space, its files opened) by its first user, and let go
 * of by its last. Every user holds a reference: each session, each commit,
 * and, through its session, each batch being written, so a dataset's files
 * are never closed (and their descriptors never reused) under a write.
 * Batches are checked (domain/Batch.ts), then inflated, verified and written
 * by the gunzip pool. A dataset is committed once every piece is recorded,
 * a sender has vouched with a seal for the CRC32 of exactly the file the
 * server holds, and the file read back from the disk has that CRC32
 * (store/Commit.ts has the steps).
 *
 * The parts: taking a dataset up (store/Admission.ts), writing its batches
 * (store/Writes.ts), seals and the commit (store/Seals.ts), a growing
 * dataset's marker (store/Marker.ts); this file wires them and hands out
 * sessions.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as RcMap from "effect/RcMap"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { type Manifest, manifestDifference, sameManifest } from "../domain/Dataset.js"
import { growingBound, type GrowingSpec, provisionalManifest, sameSpec } from "../domain/Growing.js"
import type { StoreError } from "../domain/Errors.js"
import type { PieceBatch } from "../domain/Frame.js"
import { defaultStoreLimits, limitProblem, type StoreLimits } from "../domain/Limits.js"
import { Destination } from "./Destination.js"
import { GunzipPool } from "./GunzipPool.js"
import { DatasetKey } from "./store/Active.js"
import { makeAdmission } from "./store/Admission.js"
import { type Commit, refuse } from "./store/Commit.js"
import { makeMarker, type Marked } from "./store/Marker.js"
import { makeSeals } from "./store/Seals.js"
import { checkDestination } from "./store/StateFolder.js"
import { makeWrite, type WriteOutcome } from "./store/Writes.js"

export type { Commit, StoreLimits, WriteOutcome }
export { defaultStoreLimits }

/** One client's view of a dataset it opened. */
export interface Session {
  readonly manifest: Manifest
  /** Pieces the store held when the session opened (all of them when already committed). */
  readonly held: number
  /** Which pieces the dataset holds now, as base64 of its bitmap (read when asked, never copied per session). */
  readonly heldBitmap: () => string
  /** The commit on record, when the dataset was already committed with this size. */
  readonly committed: Option.Option<Commit>
  /**
   * Verifies and writes a batch; succeeds once every piece of it is on disk and recorded, or as
   * "dropped" when the session was closed first. Closing the session waits for its batches in the
   * gunzip threads, and stops the others before they reach them.
   */
  readonly write: (batch: PieceBatch, body: Buffer) => Effect.Effect<WriteOutcome, StoreError>
  /**
   * The sender vouches that its pieces make a file with this CRC32. Completes with the commit once
   * every piece is held and the file's CRC32 is this one; fails with Conflict when it is not.
   */
  readonly seal: (crc32: number) => Effect.Effect<Commit, StoreError>
  /**
   * A growing dataset's marker says this size: checked against the pieces held, then the dataset
   * is cut down to it and goes on as an ordinary one. Answers what is held, over the real count.
   */
  readonly marker: (size: number) => Effect.Effect<Marked, StoreError>
}

export class PieceStore extends Context.Tag("ferry/PieceStore")<PieceStore, {
  readonly dest: string
  readonly open: (manifest: Manifest) => Effect.Effect<Session, StoreError, Scope.Scope>
  /** Opens a dataset whose size is not known yet (`send --early`); its session's manifest is provisional until `marker`. */
  readonly openGrowing: (spec: GrowingSpec) => Effect.Effect<Session, StoreError, Scope.Scope>
  /** Datasets in progress now. */
  readonly inProgress: Effect.Effect<number>
}>() {}

/** Bytes written to a dataset between two background fsyncs of its data file. */
export const FLUSH_BEHIND = 128 * 1024 * 1024

const interruptedOnly = <A, E>(exit: Exit.Exit<A, E>): boolean => Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)

export const makePieceStore = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Effect.gen(function*() {
    yield* checkDestination
    const dest = yield* Destination
    const gunzip = yield* GunzipPool
    const admission = yield* makeAdmission(limits)
    const datasets = yield* RcMap.make({ lookup: admission.takeUp })

    /**
     * A reference to a dataset, held by the caller's scope. Taken, and let go of when the opener
     * fails or is interrupted, under one mask: an opener lets go of its own reference and nothing
     * more. (Invalidating the entry here took it away from the users sharing it: the next opener,
     * or the commit's own reference, took the dataset up again and was refused by this server's
     * own lease.) A refusal is not kept for later openers all the same: each of its waiters lets go
     * at once, and the last one's release removes the entry and what its lookup took (a lease).
     */
    const reference = (key: DatasetKey) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(Effect.scope, (outer) =>
          Effect.flatMap(Scope.fork(outer, ExecutionStrategy.sequential), (own) =>
            restore(Scope.extend(RcMap.get(datasets, key), own)).pipe(Effect.onError(() => Scope.close(own, Exit.void)))))
      )

    const { seal, settle } = makeSeals({ dest, gunzip, reference, forget: (key) => RcMap.invalidate(datasets, key) })
    const write = makeWrite({ gunzip, flushEvery, settle })
    const marker = makeMarker(limits, admission)

    const notGrowing = () => Effect.die(new Error("a marker for a dataset that is not growing"))

    const committedSession = (manifest: Manifest, commit: Commit): Session => ({
      manifest,
      held: manifest.count,
      heldBitmap: () => "",
      committed: Option.some(commit),
      write: () => Effect.succeed<WriteOutcome>("dropped"),
      seal: () => Effect.succeed(commit),
      marker: notGrowing
    })

    const openGrowing = (spec: GrowingSpec): Effect.Effect<Session, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        const bound = growingBound(spec, limits.maxPieces, limits.maxDatasetSize)
        const name = spec.dataset
        if (spec.sliceSize > limits.maxSliceSize) return yield* refuse(name, "TooLarge", `slices of ${spec.sliceSize} bytes are over this server's limit of ${limits.maxSliceSize}`)
        if (bound < 1) return yield* refuse(name, "TooManyPieces", `pieces from ${spec.first} with slices of ${spec.sliceSize} bytes leave no room under this server's limits`)
        return yield* session(new DatasetKey(provisionalManifest(spec, bound), { spec, bound }))
      })

    const open = (manifest: Manifest): Effect.Effect<Session, StoreError, Scope.Scope> =>
      Effect.suspend(() => {
        const problem = limitProblem(manifest, limits)
        return problem !== undefined ? Effect.fail(problem) : session(new DatasetKey(manifest))
      })

    const session = (key: DatasetKey): Effect.Effect<Session, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        const manifest = key.manifest
        // a reference to the dataset for as long as the session's scope is open
        const taken = yield* reference(key).pipe(Effect.tapError(admission.sayShortOfDescriptors))
        const name = manifest.dataset
        if (taken._tag === "Committed") {
          if (key.growing !== undefined || taken.commit.size === manifest.size) return committedSession(manifest, taken.commit)
          return yield* refuse(name, "Conflict", `${name} is already committed on the server with a different size (${taken.commit.size} bytes, not ${manifest.size})`)
        }
        const entry = taken.entry
        const same = key.growing === undefined
          ? entry.growing === undefined && sameManifest(entry.manifest, manifest)
          : entry.growing !== undefined && sameSpec(entry.growing.spec, key.growing.spec)
        if (!same) {
          const what = entry.growing !== undefined
            ? "its size not known yet (sent with --early)"
            : key.growing !== undefined
            ? `its size known (${entry.manifest.size} bytes)`
            : manifestDifference(entry.manifest, manifest)
          return yield* refuse(name, "Conflict", `another transfer of ${name} is in progress with ${what}`)
        }
        const { failure } = yield* Ref.get(entry.status)
        if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
        // made after the reference, so closed before it: the session's batches are done (or
        // stopped before the threads) before the dataset may be let go of
        const writes = yield* FiberSet.make<WriteOutcome, StoreError>()
        return {
          manifest,
          held: entry.state.bitmap.held,
          heldBitmap: () => entry.state.bitmap.toBase64(),
          committed: Option.none(),
          write: (batch, body) =>
            FiberSet.run(writes, write(entry, batch, body)).pipe(
              Effect.flatMap(Fiber.await),
              Effect.flatMap((exit) => (interruptedOnly(exit) ? Effect.succeed<WriteOutcome>("dropped") : exit))
            ),
          seal: seal(entry),
          marker: marker(entry)
        } satisfies Session
      })

    return {
      dest: dest.root,
      open,
      openGrowing,
      inProgress: Effect.map(Ref.get(admission.inProgress), HashMap.size)
    }
  })

export const PieceStoreLive = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Layer.scoped(PieceStore, makePieceStore(limits, flushEvery))
