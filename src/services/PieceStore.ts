/**
 * Piece store: the server's destination folder. A dataset in progress is
 * leased by this server (store/Leases.ts), admitted only when what it still
 * has to write fits beside every other dataset in progress
 * (domain/Admission.ts), and has its files in an epoch folder
 * (store/StateFiles.ts). Batches are checked (domain/Batch.ts), then
 * inflated, verified and written by the gunzip pool. A dataset is committed
 * once every piece is recorded and a sender has vouched, with a seal, for
 * the CRC32 of exactly the file the server holds: data fsynced, renamed to
 * `DEST/NAME`, then `DEST/NAME.done` written to a temporary name, fsynced
 * and renamed, then the folder fsynced.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { admit, remainingBytes } from "../domain/Admission.js"
import { checkBatch, pick } from "../domain/Batch.js"
import { PieceBitmap } from "../domain/Bitmap.js"
import { formatCrc } from "../domain/Crc32.js"
import { formatMarker, type Manifest, manifestDifference, manifestProblem, markerFileName, MAX_PIECES, parseMarker, sameManifest } from "../domain/Dataset.js"
import { DestinationError, StoreError } from "../domain/Errors.js"
import type { PieceBatch } from "../domain/Frame.js"
import type { Geometry } from "../domain/Layout.js"
import { describeCode, Destination } from "./Destination.js"
import { GunzipPool } from "./GunzipPool.js"
import { type Lease, Leases, STATE_FOLDER } from "./store/Leases.js"
import { fileCrc, fileNames, ioToStore, openState, record, type StateFiles, syncState } from "./store/StateFiles.js"

export { STATE_FOLDER }

export interface Commit {
  readonly dataset: string
  readonly size: number
  /** The CRC32 of the committed file, 8 hex digits ("" when an old commit left none on record). */
  readonly crc32: string
}

/** One client's view of a dataset it opened. */
export interface Session {
  readonly manifest: Manifest
  /** What the store held when the session opened (all set when already committed). */
  readonly held: PieceBitmap
  /** The commit on record, when the dataset was already committed with this size. */
  readonly committed: Option.Option<Commit>
  /** Verifies and writes a batch; succeeds once every piece of it is on disk and recorded. */
  readonly write: (batch: PieceBatch, body: Buffer) => Effect.Effect<void, StoreError>
  /**
   * The sender vouches that its pieces make a file with this CRC32. Completes with the commit once
   * every piece is held and the file's CRC32 is this one; fails with Conflict when it is not.
   */
  readonly seal: (crc32: number) => Effect.Effect<Commit, StoreError>
}

export class PieceStore extends Context.Tag("ferry/PieceStore")<PieceStore, {
  readonly dest: string
  readonly open: (manifest: Manifest) => Effect.Effect<Session, StoreError, Scope.Scope>
  /** Datasets in progress now. */
  readonly inProgress: Effect.Effect<number>
}>() {}

/** What one server accepts; each has a flag on `ferry serve`. */
export interface StoreLimits {
  /** Largest original file accepted, in bytes. */
  readonly maxDatasetSize: number
  /** Most pieces in one dataset. */
  readonly maxPieces: number
  /** Datasets in progress at once, over all clients. */
  readonly maxDatasets: number
  /** Largest slice: what one piece may decompress to (a gunzip worker holds a batch of them). */
  readonly maxSliceSize: number
}

export const defaultStoreLimits: StoreLimits = {
  maxDatasetSize: 2 ** 44, // 16 TiB
  maxPieces: MAX_PIECES,
  maxDatasets: 64,
  maxSliceSize: 64 * 1024 * 1024
}

/** Bytes one batch may decompress to: a batch needs that much memory in a gunzip worker. */
export const MAX_BATCH_OUTPUT = 128 * 1024 * 1024

/** Bytes written to a dataset between two background fsyncs of its data file. */
export const FLUSH_BEHIND = 128 * 1024 * 1024

/* What the store counts (README: Operating ferry): per batch or per dataset, never per piece. */

export const writtenBytes = Metric.counter("ferry_serve_written_bytes_total", {
  description: "Original bytes written: slices inflated, verified and written at their place.",
  incremental: true
})
export const piecesVerified = Metric.counter("ferry_serve_pieces_verified_total", {
  description: "Pieces inflated, verified against their gzip trailer and written.",
  incremental: true
})
export const badPieces = Metric.counter("ferry_serve_bad_pieces_total", {
  description: "Batches refused for a bad piece, by reason (the failure code: BadPiece, BadIndex, DuplicatePiece, BadFrame).",
  incremental: true
})
export const batchesWritten = Metric.counter("ferry_serve_batches_total", {
  description: "Batches of pieces verified and written.",
  incremental: true
})
export const batchSeconds = Metric.histogram(
  "ferry_serve_batch_seconds",
  MetricBoundaries.fromIterable([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]),
  "Time to verify and write one batch, from handing it to the inflate threads (waiting for one included) until it is recorded, in seconds."
)
export const datasetsOpened = Metric.counter("ferry_serve_datasets_opened_total", {
  description: "Datasets taken up for writing, new or resumed (once each, however many connections carry it).",
  incremental: true
})
export const datasetsCommitted = Metric.counter("ferry_serve_datasets_committed_total", {
  description: "Datasets committed: file synced and renamed into place, marker written.",
  incremental: true
})
export const datasetsInProgress = Metric.gauge("ferry_serve_datasets_in_progress", {
  description: "Datasets being written now (leased, files open)."
})

interface Seal {
  readonly crc: number
  readonly reply: Deferred.Deferred<Commit, StoreError>
}

interface Active {
  readonly manifest: Manifest
  readonly geometry: Geometry
  readonly state: StateFiles
  readonly lease: Lease
  readonly scope: Scope.CloseableScope
  readonly commit: Deferred.Deferred<Commit, StoreError>
  /** One settlement of seals at a time. */
  readonly settling: Effect.Semaphore
  users: number
  /** Bytes still to write, reserved against the free space. */
  remaining: number
  committing: boolean
  /** Set when the dataset failed for every session (the lease was lost). */
  failure: StoreError | undefined
  seals: Array<Seal>
  /** Remove the state when the last session leaves: it holds a file no sender vouches for. */
  discard: boolean
  unflushed: number
  flushing: boolean
}

const CommittedRecord = Schema.parseJson(Schema.Struct({ size: Schema.Number, crc32: Schema.String }))
const committedRecord = (name: string) => `${STATE_FOLDER}/committed/${name}`

const refuse = (dataset: string, code: StoreError["code"], reason: string) => Effect.fail(new StoreError({ dataset, code, reason }))

/** The limits a manifest must fit, checked before anything touches the disk. */
const limitProblem = (m: Manifest, limits: StoreLimits): StoreError | undefined => {
  const fail = (code: StoreError["code"], reason: string) => new StoreError({ dataset: m.dataset, code, reason })
  const problem = manifestProblem(m)
  if (problem !== undefined) return fail("BadManifest", problem)
  if (m.size > limits.maxDatasetSize) return fail("TooLarge", `${m.size} bytes is over this server's limit of ${limits.maxDatasetSize}`)
  if (m.sliceSize > limits.maxSliceSize) return fail("TooLarge", `slices of ${m.sliceSize} bytes are over this server's limit of ${limits.maxSliceSize}`)
  if (m.count > limits.maxPieces) return fail("TooManyPieces", `${m.count} pieces is over this server's limit of ${limits.maxPieces}`)
  return undefined
}

/** Checks that the destination can be used at all: a real folder, writable, its state folder not a link. */
export const checkDestination: Effect.Effect<void, DestinationError, Destination> = Effect.gen(function*() {
  const dest = yield* Destination
  const unusable = (reason: string) => new DestinationError({ dest: dest.root, reason })
  const describe = (e: { readonly code: string; readonly detail: string }) =>
    unusable(e.code === "EROFS" ? "is on a read-only filesystem; ferry needs to write there" : `cannot create state folder ${STATE_FOLDER} (${describeCode(e.code, e.detail)})`)
  const kind = yield* dest.kind(STATE_FOLDER).pipe(Effect.mapError(describe))
  if (kind === "link") return yield* Effect.fail(unusable(`${STATE_FOLDER} is a symbolic link; ferry keeps its work inside --dest and will not follow it`))
  yield* dest.ensureDir(STATE_FOLDER).pipe(Effect.mapError(describe))
  // a probe write: a read-only mount may still let folders be listed, and mkdir there can answer ENOENT
  const probe = `${STATE_FOLDER}/.probe-${process.pid}`
  yield* dest.writeFile(probe, Buffer.from("ferry\n")).pipe(Effect.mapError(describe))
  yield* dest.remove(probe).pipe(Effect.ignore)
})

export const makePieceStore = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Effect.gen(function*() {
    yield* checkDestination
    const dest = yield* Destination
    const gunzip = yield* GunzipPool
    const leases = yield* Leases
    const active = new Map<string, Active>()
    // Opening and closing datasets: one at a time.
    const registry = yield* Effect.makeSemaphore(1)

    /** The commit on record for `name`: its marker says a size, and its output is a regular file. */
    const committedOf = (name: string) =>
      Effect.gen(function*() {
        const marker = yield* dest.kind(markerFileName(name))
        if (marker === "none") return Option.none<Commit>()
        if (marker !== "file") return yield* refuse(name, "Conflict", `${markerFileName(name)} in the destination is not a regular file (a ${marker}); remove it first`)
        const output = yield* dest.kind(name)
        if (output !== "file") return yield* refuse(name, "Conflict", `${markerFileName(name)} is in the destination but ${name} is ${output === "none" ? "missing" : `a ${output}`}; remove the marker first`)
        const text = yield* dest.readFile(markerFileName(name), 64)
        const marked = Option.isSome(text) ? parseMarker(Buffer.from(text.value).toString("utf8")) : { problem: "" }
        const size = "size" in marked ? marked.size : -1
        const onRecord = yield* dest.readFile(committedRecord(name), 256).pipe(
          Effect.map(Option.flatMap((bytes) => Schema.decodeUnknownOption(CommittedRecord)(Buffer.from(bytes).toString("utf8")))),
          Effect.orElseSucceed(() => Option.none())
        )
        const crc32 = Option.isSome(onRecord) && onRecord.value.size === size ? onRecord.value.crc32 : ""
        return Option.some<Commit>({ dataset: name, size, crc32 })
      }).pipe(Effect.catchTag("IoError", (e) => Effect.fail(ioToStore(name, "StateUnusable")(e))))

    /** Leases the dataset, opens or resumes its files, and admits it against the free space. */
    const activate = (manifest: Manifest) =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const inScope = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | Destination>) =>
          effect.pipe(Scope.extend(scope), Effect.provideService(Destination, dest))
        const opened = yield* Effect.gen(function*() {
          const lease = yield* inScope(leases.acquire(manifest.dataset))
          const state = yield* inScope(openState(lease.folder, manifest, lease.resumable))
          const remaining = remainingBytes(manifest, state.bitmap.held)
          let reserved = 0
          for (const other of active.values()) reserved += other.remaining
          const verdict = admit(remaining, yield* dest.available, reserved)
          if (verdict._tag === "Refused") {
            // a dataset that never started leaves nothing behind
            if (!state.resumed) yield* dest.remove(`${STATE_FOLDER}/${manifest.dataset}`).pipe(Effect.ignore)
            return yield* refuse(manifest.dataset, "NoSpace", `${verdict.reason} in ${dest.root}`)
          }
          return { lease, state, remaining }
        }).pipe(Effect.onError(() => Scope.close(scope, Exit.void)))
        const entry: Active = {
          manifest,
          geometry: { dataset: manifest.dataset, size: manifest.size, sliceSize: manifest.sliceSize, first: manifest.first, count: manifest.count },
          ...opened,
          scope,
          commit: yield* Deferred.make<Commit, StoreError>(),
          settling: yield* Effect.makeSemaphore(1),
          users: 1,
          committing: false,
          failure: undefined,
          seals: [],
          discard: false,
          unflushed: 0,
          flushing: false
        }
        // a lease lost to another server fails the dataset for every session at once (activation
        // runs uninterruptibly: this watch must not)
        yield* Deferred.await(opened.lease.lost).pipe(
          Effect.zipRight(failAll(entry, new StoreError({ dataset: manifest.dataset, code: "LeaseLost", reason: "another server on the same destination took this dataset over" }))),
          Effect.interruptible,
          Effect.forkIn(scope)
        )
        const held = opened.state.bitmap.held
        yield* Effect.logDebug(`${manifest.dataset}: ${opened.state.resumed ? `resuming with ${held} of ${manifest.count} pieces held` : "new dataset"} (epoch ${opened.lease.epoch})`)
        return entry
      })

    const failAll = (entry: Active, error: StoreError) =>
      Effect.suspend(() => {
        entry.failure ??= error
        const seals = entry.seals.splice(0)
        return Effect.forEach(seals, (s) => Deferred.fail(s.reply, error), { discard: true })
      })

    /** Counts one more session of `manifest`, activating it when it is the first. */
    const attach = (manifest: Manifest) =>
      registry.withPermits(1)(
        Effect.gen(function*() {
          const name = manifest.dataset
          const current = active.get(name)
          if (current !== undefined) {
            if (!sameManifest(current.manifest, manifest)) {
              return yield* refuse(name, "Conflict", `another transfer of ${name} is in progress with ${manifestDifference(current.manifest, manifest)}`)
            }
            if (current.failure !== undefined) return yield* Effect.fail(current.failure)
            current.users++
            return Either.right<Active>(current)
          }
          const done = yield* committedOf(name)
          if (Option.isSome(done)) {
            if (done.value.size === manifest.size) return Either.left(done.value)
            return yield* refuse(name, "Conflict", `${name} is already committed on the server with a different size (${done.value.size} bytes, not ${manifest.size})`)
          }
          if (active.size >= limits.maxDatasets) {
            return yield* refuse(name, "Busy", `the server already has ${active.size} datasets in progress, its limit; try again later`)
          }
          const fresh = yield* activate(manifest)
          active.set(name, fresh)
          yield* Metric.increment(datasetsOpened)
          yield* Metric.increment(datasetsInProgress)
          return Either.right<Active>(fresh)
        })
      )

    /** One session is done with the dataset; the last one closes its files and gives up the lease. */
    const release = (entry: Active) =>
      registry.withPermits(1)(
        Effect.gen(function*() {
          entry.users--
          if (entry.users > 0) return
          active.delete(entry.manifest.dataset)
          yield* Metric.incrementBy(datasetsInProgress, -1)
          // a dataset let go of may be resumed by a server on another machine: its state must be on the storage
          if (entry.failure === undefined && !entry.discard) yield* syncState(entry.state).pipe(Effect.ignore)
          if (entry.discard) {
            // only while the lease is ours: after a takeover, this folder's name may be another holder's
            yield* entry.lease.confirm.pipe(
              Effect.zipRight(Effect.logInfo(`${entry.manifest.dataset}: discarding its state, which no sender vouched for; a new transfer starts afresh`)),
              Effect.zipRight(dest.remove(entry.lease.folder)),
              Effect.ignore
            )
          }
          yield* Scope.close(entry.scope, Exit.void)
        })
      )

    /**
     * Flush-behind: once `flushEvery` bytes have been written since the last one, the data file
     * is fsynced in the background, so that the disk writes while the transfer goes on and the
     * commit's own fsync only has the tail left. A failure here is left for the commit's fsync.
     */
    const flushBehind = (entry: Active, bytes: number) =>
      Effect.suspend(() => {
        entry.unflushed += bytes
        if (entry.unflushed < flushEvery || entry.flushing || entry.committing) return Effect.void
        entry.unflushed = 0
        entry.flushing = true
        return entry.state.data.sync.pipe(
          Effect.catchAll((e) => Effect.logDebug(`${entry.manifest.dataset}: flush-behind failed (${e.message})`)),
          Effect.ensuring(Effect.sync(() => void (entry.flushing = false))),
          Effect.forkIn(entry.scope),
          Effect.asVoid
        )
      })

    const commit = (entry: Active, crc: number) =>
      Effect.gen(function*() {
        const m = entry.manifest
        const files = fileNames(entry.lease.folder)
        const started = Date.now()
        yield* entry.state.data.sync
        yield* entry.state.crcs.sync
        const synced = Date.now()
        yield* entry.lease.confirm
        // the fence: after a takeover this folder has another name, and the rename finds nothing
        yield* dest.rename(files.data, m.dataset).pipe(
          Effect.catchIf((e) => e.code === "ENOENT", () => refuse(m.dataset, "LeaseLost", "another server took this dataset over before it could be committed here"))
        )
        if ((yield* dest.kind(m.dataset)) !== "file") return yield* refuse(m.dataset, "CommitFailed", `${m.dataset} is not a regular file after the rename`)
        const result: Commit = { dataset: m.dataset, size: m.size, crc32: formatCrc(crc) }
        yield* dest.ensureDir(`${STATE_FOLDER}/committed`)
        yield* dest.writeFile(committedRecord(m.dataset), Buffer.from(Schema.encodeSync(CommittedRecord)({ size: m.size, crc32: result.crc32 })))
        yield* dest.writeFile(files.markerTmp, Buffer.from(formatMarker(m.size)), { sync: true })
        yield* dest.rename(files.markerTmp, markerFileName(m.dataset))
        yield* dest.syncDir("")
        yield* dest.remove(`${STATE_FOLDER}/${m.dataset}`)
        yield* Effect.logDebug(`${m.dataset}: commit took ${Date.now() - started} ms, of which ${synced - started} ms flushing the data to disk`)
        yield* Effect.logInfo(`${m.dataset}: committed ${m.size} bytes in ${m.count} pieces, crc32 ${result.crc32}`)
        yield* Metric.increment(datasetsCommitted)
        return result
      }).pipe(
        Effect.catchTag("IoError", (e) => Effect.fail(ioToStore(entry.manifest.dataset, "CommitFailed")(e))),
        Effect.exit,
        Effect.flatMap((exit) => Deferred.done(entry.commit, exit))
      )

    /**
     * Answers the seals received so far, once every piece is held: a seal with the CRC32 of the
     * file the server holds starts the commit (once) and waits for it; any other is a Conflict.
     * A file that no attached sender vouches for is discarded when the last of them leaves.
     */
    const settle = (entry: Active) =>
      entry.settling.withPermits(1)(
        Effect.gen(function*() {
          if (!entry.state.bitmap.complete || entry.seals.length === 0 || entry.failure !== undefined) return
          const crc = yield* fileCrc(entry.state).pipe(Effect.mapError(ioToStore(entry.manifest.dataset, "CommitFailed")))
          const seals = entry.seals.splice(0)
          const matched = seals.filter((s) => s.crc === crc)
          const mismatched = seals.filter((s) => s.crc !== crc)
          if (matched.length > 0 && !entry.committing) {
            entry.committing = true
            // The commit belongs to the dataset, not to the session that sealed it, and it is a user
            // of its own: the files stay open until it is done.
            entry.users++
            yield* Effect.forkDaemon(Effect.ensuring(commit(entry, crc), release(entry)))
          }
          for (const s of matched) yield* Deferred.completeWith(s.reply, Deferred.await(entry.commit))
          if (mismatched.length > 0 && matched.length === 0 && !entry.committing && entry.users <= mismatched.length) entry.discard = true
          const name = entry.manifest.dataset
          for (const s of mismatched) {
            yield* Deferred.fail(s.reply, new StoreError({
              dataset: name,
              code: "Conflict",
              reason: `the pieces this server holds make a file with crc32 ${formatCrc(crc)}, but this sender's make ${formatCrc(s.crc)}: another sender sent different content under the name ${name}, or the folder changed since an earlier attempt${entry.discard ? "; the server's copy is discarded, so sending again starts afresh" : ""}`
            }))
          }
        })
      ).pipe(Effect.catchAll((e) => failAll(entry, e)))

    const write = (entry: Active) => (batch: PieceBatch, body: Buffer): Effect.Effect<void, StoreError> =>
      Effect.gen(function*() {
        if (entry.failure !== undefined) return yield* Effect.fail(entry.failure)
        const m = entry.manifest
        const verdict = checkBatch(entry.geometry, entry.state.bitmap, batch.indices, MAX_BATCH_OUTPUT)
        if (verdict._tag === "Rejected") {
          yield* Metric.increment(Metric.tagged(badPieces, "reason", verdict.code))
          return yield* refuse(m.dataset, verdict.code, verdict.reason)
        }
        if (verdict.keep !== "all" && verdict.keep.length === 0) return
        yield* entry.lease.assure
        const indices = pick(batch.indices, verdict.keep)
        const written = Uint32Array.from(indices) // `indices` moves to the worker
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
            yield* record(entry.state, written).pipe(Effect.mapError(ioToStore(m.dataset, "WriteFailed")))
            yield* Metric.update(batchSeconds, (performance.now() - started) / 1000)
            yield* Metric.increment(batchesWritten)
            yield* Metric.incrementBy(piecesVerified, written.length)
            yield* Metric.incrementBy(writtenBytes, outcome.bytes)
            entry.remaining = remainingBytes(m, entry.state.bitmap.held)
            yield* flushBehind(entry, outcome.bytes)
            if (entry.state.bitmap.complete) yield* settle(entry)
        }
      })

    const seal = (entry: Active) => (crc32: number): Effect.Effect<Commit, StoreError> =>
      Effect.gen(function*() {
        if (entry.failure !== undefined) return yield* Effect.fail(entry.failure)
        const reply = yield* Deferred.make<Commit, StoreError>()
        entry.seals.push({ crc: crc32 >>> 0, reply })
        yield* settle(entry)
        return yield* Deferred.await(reply)
      })

    const open = (manifest: Manifest): Effect.Effect<Session, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        const problem = limitProblem(manifest, limits)
        if (problem !== undefined) return yield* Effect.fail(problem)
        // Counting a session and arranging its release happen together, uninterruptibly.
        const attached = yield* Effect.acquireRelease(attach(manifest), (a) => (Either.isRight(a) ? release(a.right) : Effect.void))
        if (Either.isLeft(attached)) {
          const held = new PieceBitmap(manifest.count)
          for (let i = 0; i < manifest.count; i++) held.set(i)
          return { manifest, held, committed: Option.some(attached.left), write: () => Effect.void, seal: () => Effect.succeed(attached.left) } satisfies Session
        }
        const entry = attached.right
        return {
          manifest,
          held: new PieceBitmap(manifest.count, Uint8Array.from(entry.state.bitmap.bits)),
          committed: Option.none(),
          write: write(entry),
          seal: seal(entry)
        } satisfies Session
      })

    return {
      dest: dest.root,
      open,
      inProgress: Effect.sync(() => active.size)
    }
  })

export const PieceStoreLayer = (limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Layer.effect(PieceStore, makePieceStore(limits, flushEvery))
