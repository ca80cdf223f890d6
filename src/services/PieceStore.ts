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
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as RcMap from "effect/RcMap"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { admit, remainingBytes, stateBytes } from "../domain/Admission.js"
import { checkBatch, pick } from "../domain/Batch.js"
import { formatCrc } from "../domain/Crc32.js"
import { expectedCount, type Manifest, manifestDifference, sameManifest } from "../domain/Dataset.js"
import { growingBound, type GrowingSpec, markerDisagreement, provisionalManifest, sameSpec, sealedManifest } from "../domain/Growing.js"
import { StoreError } from "../domain/Errors.js"
import type { PieceBatch } from "../domain/Frame.js"
import { defaultStoreLimits, limitProblem, type StoreLimits } from "../domain/Limits.js"
import { Destination } from "./Destination.js"
import { GunzipPool } from "./GunzipPool.js"
import { type Active, DatasetKey, failAll, flushBehind, letGo, type Status, type Taken } from "./store/Active.js"
import { checkOnDisk, type Commit, committedOf, publishCommit, refuse } from "./store/Commit.js"
import { Leases, STATE_FOLDER } from "./store/Leases.js"
import { badPieces, batchesWritten, batchSeconds, datasetsCommitted, datasetsInProgress, datasetsOpened, piecesVerified, writtenBytes } from "./store/Metrics.js"
import { createGrowing, highestHeld, resumeGrowing, sealGrowing } from "./store/Growing.js"
import { checkDestination } from "./store/StateFolder.js"
import { createState, fileCrc, ioToStore, outOfDescriptors, record, resumeState, type StateFiles } from "./store/StateFiles.js"

export type { Commit, StoreLimits }
export { defaultStoreLimits, STATE_FOLDER }

/** What became of a batch: written and recorded, or dropped because its session was closed first. */
export type WriteOutcome = "written" | "dropped"

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
  readonly marker: (size: number) => Effect.Effect<{ readonly held: number; readonly bitmap: string }, StoreError>
}

export class PieceStore extends Context.Tag("ferry/PieceStore")<PieceStore, {
  readonly dest: string
  readonly open: (manifest: Manifest) => Effect.Effect<Session, StoreError, Scope.Scope>
  /** Opens a dataset whose size is not known yet (`send --early`); its session's manifest is provisional until `marker`. */
  readonly openGrowing: (spec: GrowingSpec) => Effect.Effect<Session, StoreError, Scope.Scope>
  /** Datasets in progress now. */
  readonly inProgress: Effect.Effect<number>
}>() {}

/** Bytes one batch may decompress to: a batch needs that much memory in a gunzip worker. */
export const MAX_BATCH_OUTPUT = 128 * 1024 * 1024

/** Bytes written to a dataset between two background fsyncs of its data file. */
export const FLUSH_BEHIND = 128 * 1024 * 1024

const written: WriteOutcome = "written"

const interruptedOnly = <A, E>(exit: Exit.Exit<A, E>): boolean => Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)

export const makePieceStore = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Effect.gen(function*() {
    yield* checkDestination
    const dest = yield* Destination
    const gunzip = yield* GunzipPool
    const leases = yield* Leases
    const inProgress = yield* Ref.make(HashMap.empty<string, Active>())
    // Taking datasets up: one at a time, so that each is admitted against the others' reservations.
    const admission = yield* Effect.makeSemaphore(1)
    const onDestination = Effect.provideService(Destination, dest)

    /** Takes a dataset up: leases it, admits it against the free space, then opens or resumes its files. */
    const lookup = (key: DatasetKey): Effect.Effect<Taken, StoreError, Scope.Scope> =>
      admission.withPermits(1)(Effect.gen(function*() {
        const manifest = key.manifest
        const name = manifest.dataset
        const done = yield* onDestination(committedOf(name))
        if (Option.isSome(done)) return { _tag: "Committed", commit: done.value } as const
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
        const lease = yield* onDestination(leases.acquire(name))
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

    const datasets = yield* RcMap.make({ lookup })

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

    // Out of descriptors is said once, until a dataset can be taken up again; each sender is told Busy.
    const shortOfDescriptors = yield* Ref.make(false)
    const sayShortOfDescriptors = (e: StoreError) =>
      outOfDescriptors(e)
        ? Effect.flatMap(Ref.getAndSet(shortOfDescriptors, true), (said) =>
          said ? Effect.void : Effect.logWarning(`out of file descriptors (${(e.cause as { code: string }).code}): datasets wait as Busy until others finish; raise ulimit -n, or lower --max-datasets`))
        : Effect.void

    /**
     * A reference to a dataset, held by the caller's scope. A refusal is not kept for later
     * openers, and what its lookup took (a lease) is let go of at once.
     */
    const reference = (key: DatasetKey) =>
      Effect.flatMap(Effect.scope, (outer) =>
        Effect.flatMap(Scope.fork(outer, ExecutionStrategy.sequential), (scope) =>
          Scope.extend(RcMap.get(datasets, key), scope).pipe(
            Effect.onError(() => Effect.zipRight(RcMap.invalidate(datasets, key), Scope.close(scope, Exit.void)))
          )))

    const commit = (entry: Active, crc: number) =>
      Effect.gen(function*() {
        const m = entry.manifest
        const started = Date.now()
        // what is committed is checked as it is on disk, not only by the CRC records beside it
        yield* checkOnDisk(entry.state, crc).pipe(
          Effect.provideService(GunzipPool, gunzip),
          Effect.tapError(() => Ref.update(entry.status, (st) => ({ ...st, discard: true })))
        )
        const checked = Date.now()
        yield* Effect.all([entry.state.data.sync, entry.state.crcs.sync], { concurrency: 2, discard: true }).pipe(Effect.mapError(ioToStore(m.dataset, "CommitFailed")))
        const synced = Date.now()
        const result = yield* onDestination(publishCommit(m, entry.lease, crc, entry.leftover))
        // later openers find the commit on record, not this entry
        yield* RcMap.invalidate(datasets, entry.key)
        yield* Effect.logDebug(`${m.dataset}: commit took ${Date.now() - started} ms: ${checked - started} ms reading the file back, ${synced - checked} ms flushing it to disk`)
        yield* Effect.logInfo(`${m.dataset}: committed ${m.size} bytes in ${m.count} pieces, crc32 ${result.crc32}`)
        yield* Metric.increment(datasetsCommitted)
        return result
      }).pipe(
        Effect.tapError((e) => failAll(entry, e)),
        Effect.exit,
        Effect.flatMap((exit) => Deferred.done(entry.commit, exit))
      )

    /** Starts the commit (once): it holds a reference of its own, so the files stay open until it is done. */
    const startCommit = (entry: Active, crc: number) =>
      Effect.gen(function*() {
        const holder = yield* Scope.make()
        yield* Scope.extend(reference(entry.key), holder)
        yield* Effect.forkDaemon(Effect.ensuring(commit(entry, crc), Scope.close(holder, Exit.void)))
      })

    /**
     * Answers the seals received so far, once every piece is held: a seal with the CRC32 of the
     * file the server holds starts the commit (once) and waits for it; any other is a Conflict, and
     * a file that no sealing sender vouches for is discarded when the last user lets go.
     */
    const settle = (entry: Active) =>
      entry.settling.withPermits(1)(
        Effect.gen(function*() {
          const status = yield* Ref.get(entry.status)
          if (!entry.state.bitmap.complete || status.seals.length === 0 || Option.isSome(status.failure)) return
          const crc = yield* fileCrc(entry.state).pipe(Effect.mapError(ioToStore(entry.manifest.dataset, "CommitFailed")))
          const seals = yield* Ref.modify(entry.status, (s) => [s.seals, { ...s, seals: [] }])
          const matched = seals.filter((s) => s.crc === crc)
          const mismatched = seals.filter((s) => s.crc !== crc)
          if (matched.length > 0 && !status.committing) {
            yield* Ref.update(entry.status, (s) => ({ ...s, committing: true }))
            yield* startCommit(entry, crc)
          }
          for (const s of matched) yield* Deferred.completeWith(s.reply, Deferred.await(entry.commit))
          const discard = mismatched.length > 0 && matched.length === 0 && !status.committing
          if (discard) yield* Ref.update(entry.status, (s) => ({ ...s, discard: true }))
          const name = entry.manifest.dataset
          for (const s of mismatched) {
            yield* Deferred.fail(s.reply, new StoreError({
              dataset: name,
              code: "Conflict",
              reason: `the pieces this server holds make a file with crc32 ${formatCrc(crc)}, but this sender's make ${formatCrc(s.crc)}: another sender sent different content under the name ${name}, or the folder changed since an earlier attempt${discard ? "; the server's copy is discarded, so sending again starts afresh" : ""}`
            }))
          }
        })
      ).pipe(Effect.catchAll((e) => failAll(entry, e)))

    const write = (entry: Active, batch: PieceBatch, body: Buffer): Effect.Effect<WriteOutcome, StoreError> =>
      Effect.gen(function*() {
        const { failure } = yield* Ref.get(entry.status)
        if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
        const m = entry.manifest
        const verdict = checkBatch(entry.geometry, entry.state.bitmap, batch.indices, MAX_BATCH_OUTPUT)
        if (verdict._tag === "Rejected") {
          yield* Metric.increment(Metric.tagged(badPieces, "reason", verdict.code))
          return yield* refuse(m.dataset, verdict.code, verdict.reason)
        }
        if (verdict.keep !== "all" && verdict.keep.length === 0) return written
        yield* entry.lease.assure
        const indices = pick(batch.indices, verdict.keep)
        const recorded = Uint32Array.from(indices) // `indices` moves to the worker
        const started = performance.now()
        const outcome = yield* gunzip.inflate({
          geometry: entry.geometry,
          body,
          indices,
          starts: pick(batch.starts, verdict.keep),
          lengths: pick(batch.lengths, verdict.keep),
          data: entry.state.data,
          crcs: entry.state.crcs
        })
        switch (outcome._tag) {
          case "BadPiece":
            yield* Metric.increment(Metric.tagged(badPieces, "reason", "BadPiece"))
            return yield* refuse(m.dataset, "BadPiece", outcome.reason)
          case "WriteFailed":
            return yield* refuse(
              m.dataset,
              outcome.code === "ENOSPC" ? "NoSpace" : outcome.code === "EROFS" ? "ReadOnly" : "WriteFailed",
              outcome.code === "ENOSPC" ? "the destination disk is full" : outcome.code === "EROFS" ? "the destination is on a read-only filesystem" : `cannot write (${outcome.reason})`
            )
          case "Written":
            yield* record(entry.state, recorded).pipe(Effect.mapError(ioToStore(m.dataset, "WriteFailed")))
            yield* Metric.update(batchSeconds, (performance.now() - started) / 1000)
            yield* Metric.increment(batchesWritten)
            yield* Metric.incrementBy(piecesVerified, recorded.length)
            yield* Metric.incrementBy(writtenBytes, outcome.bytes)
            yield* flushBehind(entry, outcome.bytes, flushEvery)
            if (entry.state.bitmap.complete) yield* settle(entry)
            return written
        }
      })

    const seal = (entry: Active) => (crc32: number): Effect.Effect<Commit, StoreError> =>
      Effect.gen(function*() {
        const reply = yield* Deferred.make<Commit, StoreError>()
        const failure = yield* Ref.modify(entry.status, (s) =>
          Option.isSome(s.failure) ? [s.failure, s] : [Option.none<StoreError>(), { ...s, seals: [...s.seals, { crc: crc32 >>> 0, reply }] }])
        if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
        yield* settle(entry)
        return yield* Deferred.await(reply)
      })

    /** A growing dataset's marker: checked against its pieces, admitted for the rest, then the state cut down to it. */
    const marker = (entry: Active) => (size: number): Effect.Effect<{ readonly held: number; readonly bitmap: string }, StoreError> =>
      entry.settling.withPermits(1)(Effect.gen(function*() {
        const { failure } = yield* Ref.get(entry.status)
        if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
        const name = entry.manifest.dataset
        const growing = entry.growing
        if (growing === undefined) {
          // another session of it brought the marker first
          if (entry.manifest.size === size) return { held: entry.state.bitmap.held, bitmap: entry.state.bitmap.toBase64() }
          return yield* refuse(name, "Conflict", `${name}.done says ${size} bytes, but another sender's marker said ${entry.manifest.size}`)
        }
        const { spec, bound } = growing
        const count = expectedCount(size, spec.sliceSize)
        const bitmap = entry.state.bitmap
        const disagreement = markerDisagreement(spec, bound, size, highestHeld(bitmap), count >= 1 && count <= bound && bitmap.has(count - 1))
        const problem = disagreement ?? limitProblem(sealedManifest(spec, size), limits)?.reason
        if (problem !== undefined) {
          // no sender can vouch for these pieces: the state goes when the last user lets go
          yield* Ref.update(entry.status, (s) => ({ ...s, discard: true }))
          const error = new StoreError({ dataset: name, code: "BadManifest", reason: problem })
          yield* failAll(entry, error)
          return yield* Effect.fail(error)
        }
        const sealed = sealedManifest(spec, size)
        yield* admission.withPermits(1)(Effect.gen(function*() {
          const verdict = admit(remainingBytes(sealed, bitmap.held), yield* dest.available, reservedByOthers(yield* Ref.get(inProgress), name))
          if (verdict._tag === "Refused") return yield* refuse(name, "NoSpace", `${verdict.reason} in ${dest.root}`)
          entry.state = yield* onDestination(sealGrowing(entry.state, spec, size)).pipe(Effect.mapError(ioToStore(name, "StateUnusable")))
          entry.manifest = sealed
          entry.geometry = { dataset: name, size, sliceSize: sealed.sliceSize, first: sealed.first, count: sealed.count }
          entry.growing = undefined
        }))
        yield* Effect.logDebug(`${name}: its marker says ${size} bytes (${sealed.count} pieces, ${entry.state.bitmap.held} held)`)
        return { held: entry.state.bitmap.held, bitmap: entry.state.bitmap.toBase64() }
      }))

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
        const taken = yield* reference(key).pipe(Effect.tapError(sayShortOfDescriptors))
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
      inProgress: Effect.map(Ref.get(inProgress), HashMap.size)
    }
  })

export const PieceStoreLayer = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Layer.scoped(PieceStore, makePieceStore(limits, flushEvery))
