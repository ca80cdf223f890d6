/**
 * Piece store: the server's destination folder. Each dataset in progress has
 * a hidden state folder `DEST/.ferry/NAME/` holding its manifest, the
 * preallocated data file, one CRC32 per piece and a bitmap of the pieces
 * written. When the bitmap is full the dataset is committed: data fsynced,
 * renamed to `DEST/NAME`, then `DEST/NAME.done` written to a temporary name,
 * fsynced and renamed, then the folder fsynced.
 *
 * Built only on FileSystem, Path and GunzipPool, so the same code runs on a
 * real disk and on the in-memory test filesystem.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import { PieceBitmap } from "../domain/Bitmap.js"
import { FileCrc, formatCrc } from "../domain/Crc32.js"
import {
  formatMarker,
  holdsIndex,
  lastIndex,
  lengthOf,
  Manifest,
  manifestProblem,
  markerFileName,
  MAX_PIECES,
  parseMarker,
  pieceFileName,
  sameManifest
} from "../domain/Dataset.js"
import { StoreError } from "../domain/Errors.js"
import type { PieceBatch } from "../domain/Frame.js"
import { DiskSpace } from "./DiskSpace.js"
import { GunzipPool } from "./GunzipPool.js"

export const STATE_FOLDER = ".ferry"

export interface Commit {
  readonly dataset: string
  readonly size: number
  readonly crc32: string
}

/** One client's view of a dataset it opened. */
export interface Session {
  readonly manifest: Manifest
  /** What the store held when the session opened (all set when already committed). */
  readonly held: PieceBitmap
  readonly committed: boolean
  /** Verifies and writes a batch; succeeds once every piece of it is on disk and recorded. */
  readonly write: (batch: PieceBatch, body: Buffer) => Effect.Effect<void, StoreError>
  /** Completes when the dataset is committed (at once if it already was). */
  readonly commit: Effect.Effect<Commit, StoreError>
}

export class PieceStore extends Context.Tag("ferry/PieceStore")<PieceStore, {
  readonly dest: string
  readonly open: (manifest: Manifest) => Effect.Effect<Session, StoreError, Scope.Scope>
}>() {}

interface Active {
  readonly manifest: Manifest
  readonly bitmap: PieceBitmap
  readonly data: FileSystem.File
  readonly crcs: FileSystem.File
  readonly bitmapFile: FileSystem.File
  readonly scope: Scope.CloseableScope
  readonly committed: Deferred.Deferred<Commit, StoreError>
  users: number
  committing: boolean
  /** Bytes written since the last flush-behind started, and whether one is running. */
  unflushed: number
  flushing: boolean
}

const ManifestJson = Schema.parseJson(Manifest)

const storeError = (dataset: string, code: string) => (e: { readonly message: string }) =>
  new StoreError({ dataset, code, reason: e.message })

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

export const makePieceStore = (
  dest: string,
  limits: StoreLimits = defaultStoreLimits,
  /** Bytes between two background fsyncs of a dataset's data file. */
  flushEvery: number = FLUSH_BEHIND
) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const gunzip = yield* GunzipPool
    const disk = yield* DiskSpace
    const active = new Map<string, Active>()
    // Opening and closing datasets touch shared folders: one at a time.
    const registry = yield* Effect.makeSemaphore(1)
    // Bitmap files are written at positions: one write per dataset at a time.
    const recording = yield* Effect.makeSemaphore(1)

    const stateDir = path.join(dest, STATE_FOLDER)
    const isLink = (p: string) => fs.readLink(p).pipe(Effect.as(true), Effect.orElseSucceed(() => false))
    if (yield* isLink(stateDir)) {
      return yield* Effect.fail(new StoreError({ dataset: "", code: "DestinationUnusable", reason: `${stateDir} is a symbolic link; ferry keeps its work inside --dest and will not follow it` }))
    }
    yield* fs.makeDirectory(stateDir, { recursive: true }).pipe(
      Effect.mapError((e) => new StoreError({ dataset: "", code: "DestinationUnusable", reason: `${dest}: cannot create state folder (${e.message})` }))
    )

    /** Every path the store opens is built here, from a validated name, and checked to lie in dest. */
    const paths = (name: string) => {
      const dir = path.join(stateDir, name)
      const inside = (p: string) => {
        const relative = path.relative(dest, p)
        if (relative.startsWith("..") || path.isAbsolute(relative)) throw new Error(`${p} is outside ${dest}`)
        return p
      }
      inside(dir)
      inside(path.join(dest, name))
      return {
        dir,
        manifest: path.join(dir, "manifest.json"),
        data: path.join(dir, "data"),
        crcs: path.join(dir, "crc32"),
        bitmap: path.join(dir, "bitmap"),
        markerTmp: path.join(dir, "done.tmp"),
        output: path.join(dest, name),
        marker: path.join(dest, markerFileName(name))
      }
    }

    const syncPath = (p: string) => Effect.scoped(Effect.flatMap(fs.open(p, { flag: "r" }), (f) => f.sync))

    /** The size in an existing `NAME.done`, if any. */
    const committedSize = (name: string) =>
      Effect.flatMap(isLink(paths(name).marker), (link) =>
        link
          ? Effect.fail(new StoreError({ dataset: name, code: "Conflict", reason: `${markerFileName(name)} in the destination is a symbolic link; remove it first` }))
          : Effect.succeed(undefined)
      ).pipe(Effect.zipRight(fs.readFileString(paths(name).marker).pipe(
        Effect.map((text) => {
          const r = parseMarker(text)
          return "size" in r ? Option.some(r.size) : Option.some(-1)
        }),
        Effect.catchAll(() => Effect.succeed(Option.none<number>()))
      )))

    const readState = (name: string, manifest: Manifest) =>
      Effect.gen(function*() {
        const p = paths(name)
        // a planted link must not lead our reads and writes out of dest: start afresh instead
        if (yield* isLink(p.dir)) return Option.none()
        const text = yield* fs.readFileString(p.manifest)
        const stored = yield* Schema.decodeUnknown(ManifestJson)(text)
        if (!sameManifest(stored, manifest)) return Option.none()
        const bits = yield* fs.readFile(p.bitmap)
        const dataSize = (yield* fs.stat(p.data)).size
        if (bits.length !== Math.ceil(manifest.count / 8) || Number(dataSize) !== manifest.size) return Option.none()
        // a bitmap with bits past the last piece was not written by us: start afresh
        return Option.fromNullable(PieceBitmap.fromBase64(manifest.count, Buffer.from(bits).toString("base64")))
      }).pipe(Effect.catchAll(() => Effect.succeed(Option.none<PieceBitmap>())))

    const createState = (manifest: Manifest) =>
      Effect.gen(function*() {
        const p = paths(manifest.dataset)
        yield* fs.remove(p.dir, { recursive: true, force: true })
        yield* fs.makeDirectory(p.dir, { recursive: true })
        yield* fs.writeFileString(p.manifest, Schema.encodeSync(ManifestJson)(manifest))
        for (const [file, size] of [[p.data, manifest.size], [p.crcs, manifest.count * 4], [p.bitmap, Math.ceil(manifest.count / 8)]] as const) {
          yield* Effect.scoped(Effect.flatMap(fs.open(file, { flag: "w" }), (f) => f.truncate(size)))
        }
        return new PieceBitmap(manifest.count)
      })

    const activate = (manifest: Manifest) =>
      Effect.gen(function*() {
        const name = manifest.dataset
        const p = paths(name)
        const resumed = yield* readState(name, manifest)
        const held = Option.isSome(resumed) ? resumed.value.held : 0
        const need = Math.ceil((manifest.size + manifest.count * 4.125) * (1 - held / Math.max(1, manifest.count)))
        const free = yield* disk.available(dest)
        if (need > free) {
          return yield* Effect.fail(new StoreError({ dataset: name, code: "NoSpace", reason: `needs ${need} more bytes but only ${free} are free in ${dest}` }))
        }
        const bitmap = Option.isSome(resumed) ? resumed.value : yield* createState(manifest)
        const scope = yield* Scope.make()
        const openIn = (file: string) => fs.open(file, { flag: "r+" }).pipe(Scope.extend(scope))
        const files = yield* Effect.all([openIn(p.data), openIn(p.crcs), openIn(p.bitmap)]).pipe(
          Effect.onError(() => Scope.close(scope, Exit.void))
        )
        const entry: Active = {
          manifest,
          bitmap,
          data: files[0],
          crcs: files[1],
          bitmapFile: files[2],
          scope,
          committed: yield* Deferred.make<Commit, StoreError>(),
          users: 0,
          committing: false,
          unflushed: 0,
          flushing: false
        }
        yield* Effect.logDebug(`${name}: ${Option.isSome(resumed) ? `resuming with ${bitmap.held} of ${manifest.count} pieces held` : "new dataset"}`)
        return entry
      }).pipe(Effect.mapError((e) => (e instanceof StoreError ? e : storeError(manifest.dataset, "StateUnusable")(e))))

    const commit = (entry: Active) =>
      Effect.gen(function*() {
        const m = entry.manifest
        const p = paths(m.dataset)
        const started = Date.now()
        yield* entry.data.sync
        yield* entry.crcs.sync
        const synced = Date.now()
        const crcBytes = yield* fs.readFile(p.crcs)
        const crcs = new Uint32Array(crcBytes.buffer, crcBytes.byteOffset, m.count)
        const file = new FileCrc(m.sliceSize)
        for (let i = 0; i < m.count; i++) {
          if (i === m.count - 1) file.addLast(crcs[i]!, lengthOf(m, lastIndex(m)))
          else file.add(crcs[i]!)
        }
        yield* fs.rename(p.data, p.output)
        yield* fs.writeFileString(p.markerTmp, formatMarker(m.size))
        yield* syncPath(p.markerTmp)
        yield* fs.rename(p.markerTmp, p.marker)
        yield* syncPath(dest)
        yield* fs.remove(p.dir, { recursive: true, force: true })
        yield* Effect.logDebug(`${m.dataset}: commit took ${Date.now() - started} ms, of which ${synced - started} ms flushing the data to disk`)
        const result: Commit = { dataset: m.dataset, size: m.size, crc32: formatCrc(file.value) }
        yield* Effect.logInfo(`${m.dataset}: committed ${m.size} bytes in ${m.count} pieces, crc32 ${result.crc32}`)
        return result
      }).pipe(
        Effect.mapError(storeError(entry.manifest.dataset, "CommitFailed")),
        Effect.exit,
        Effect.flatMap((exit) => Deferred.done(entry.committed, exit))
      )

    /** One user of a dataset is done with it; the last one closes its files. */
    const release = (entry: Active) =>
      registry.withPermits(1)(
        Effect.suspend(() => {
          entry.users--
          if (entry.users > 0) return Effect.void
          active.delete(entry.manifest.dataset)
          return Scope.close(entry.scope, Exit.void)
        })
      )

    /**
     * Flush-behind: once `flushEvery` bytes have been written since the last one, the data file
     * is fsynced in the background, so that the disk writes while the transfer goes on and the
     * commit's own fsync only has the tail left (on a 1.6 GB dataset, 0.4 s less at the end).
     * It also bounds the dirty pages a transfer leaves behind. A failure here is left for the
     * commit's fsync to report.
     */
    const flushBehind = (entry: Active, bytes: number) =>
      Effect.suspend(() => {
        entry.unflushed += bytes
        if (entry.unflushed < flushEvery || entry.flushing || entry.committing) return Effect.void
        entry.unflushed = 0
        entry.flushing = true
        return Effect.asVoid(
          Effect.forkIn(
            entry.data.sync.pipe(
              Effect.catchAll((e) => Effect.logDebug(`${entry.manifest.dataset}: flush-behind failed (${e.message})`)),
              Effect.ensuring(Effect.sync(() => {
                entry.flushing = false
              }))
            ),
            entry.scope
          )
        )
      })

    const startCommitIfComplete = (entry: Active) =>
      Effect.suspend(() => {
        if (!entry.bitmap.complete || entry.committing) return Effect.void
        entry.committing = true
        // The commit belongs to the dataset, not to the connection that happened to finish it,
        // and it is a user of its own: the files stay open until it is done.
        entry.users++
        return Effect.asVoid(Effect.forkDaemon(Effect.ensuring(commit(entry), release(entry))))
      })

    const record = (entry: Active, indices: Uint32Array) =>
      Effect.suspend(() => {
        let lo = Infinity
        let hi = -1
        for (const index of indices) {
          const i = index - entry.manifest.first
          entry.bitmap.set(i)
          if (i < lo) lo = i
          if (i > hi) hi = i
        }
        if (hi < 0) return Effect.void
        const from = lo >>> 3
        const to = (hi >>> 3) + 1
        return recording.withPermits(1)(
          Effect.zipRight(
            entry.bitmapFile.seek(from, "start"),
            entry.bitmapFile.writeAll(entry.bitmap.bits.subarray(from, to))
          )
        )
      })

    const write = (entry: Active) => (batch: PieceBatch, body: Buffer): Effect.Effect<void, StoreError> =>
      Effect.suspend(() => {
        const m = entry.manifest
        const n = batch.indices.length
        if (n * m.sliceSize > Math.max(MAX_BATCH_OUTPUT, m.sliceSize)) {
          return Effect.fail(new StoreError({ dataset: m.dataset, code: "BadFrame", reason: `a batch of ${n} pieces would decompress to ${n * m.sliceSize} bytes, over the limit of ${MAX_BATCH_OUTPUT}` }))
        }
        // Every index must belong to the dataset and appear once; held pieces are skipped.
        const seen = new Set<number>()
        const keep: Array<number> = []
        for (let k = 0; k < n; k++) {
          const index = batch.indices[k]!
          if (!holdsIndex(m, index)) {
            return Effect.fail(new StoreError({ dataset: m.dataset, code: "BadIndex", reason: `piece index ${index} is outside ${pieceFileName(m.dataset, m.first)}..${pieceFileName(m.dataset, lastIndex(m))}` }))
          }
          if (seen.has(index)) {
            return Effect.fail(new StoreError({ dataset: m.dataset, code: "DuplicatePiece", reason: `${pieceFileName(m.dataset, index)} appears twice in one batch` }))
          }
          seen.add(index)
          if (!entry.bitmap.has(index - m.first)) keep.push(k)
        }
        if (keep.length === 0) return Effect.void
        const pick = (a: Uint32Array) => (keep.length === n ? a : Uint32Array.from(keep, (k) => a[k]!))
        const indices = pick(batch.indices)
        const written = Uint32Array.from(indices) // `indices` moves to the worker
        return gunzip.inflate({
          geometry: { dataset: m.dataset, size: m.size, sliceSize: m.sliceSize, first: m.first, count: m.count },
          body,
          indices,
          starts: pick(batch.starts),
          lengths: pick(batch.lengths),
          data: entry.data,
          crcs: entry.crcs
        }).pipe(
          Effect.flatMap((outcome) => {
            switch (outcome._tag) {
              case "Written":
                return record(entry, written).pipe(
                  Effect.mapError(storeError(m.dataset, "WriteFailed")),
                  Effect.zipRight(flushBehind(entry, written.length * m.sliceSize)),
                  Effect.zipRight(startCommitIfComplete(entry))
                )
              case "BadPiece":
                return Effect.fail(new StoreError({ dataset: m.dataset, code: "BadPiece", reason: outcome.reason }))
              case "WriteFailed":
                return Effect.fail(
                  new StoreError({
                    dataset: m.dataset,
                    code: outcome.code === "ENOSPC" ? "NoSpace" : "WriteFailed",
                    reason: outcome.code === "ENOSPC" ? "the destination disk is full" : `cannot write (${outcome.reason})`
                  })
                )
            }
          })
        )
      })

    const committedSession = (manifest: Manifest): Session => {
      const held = new PieceBitmap(manifest.count)
      for (let i = 0; i < manifest.count; i++) held.set(i)
      return {
        manifest,
        held,
        committed: true,
        write: () => Effect.void,
        // the CRC is not kept once committed; the marker and size are what the client checks
        commit: Effect.succeed({ dataset: manifest.dataset, size: manifest.size, crc32: "" })
      }
    }

    const open = (manifest: Manifest): Effect.Effect<Session, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        const name = manifest.dataset
        const problem = manifestProblem(manifest)
        if (problem !== undefined) return yield* Effect.fail(new StoreError({ dataset: name, code: "BadManifest", reason: problem }))
        if (manifest.size > limits.maxDatasetSize) {
          return yield* Effect.fail(new StoreError({ dataset: name, code: "TooLarge", reason: `${manifest.size} bytes is over this server's limit of ${limits.maxDatasetSize}` }))
        }
        if (manifest.sliceSize > limits.maxSliceSize) {
          return yield* Effect.fail(new StoreError({ dataset: name, code: "TooLarge", reason: `slices of ${manifest.sliceSize} bytes are over this server's limit of ${limits.maxSliceSize}` }))
        }
        if (manifest.count > limits.maxPieces) {
          return yield* Effect.fail(new StoreError({ dataset: name, code: "TooManyPieces", reason: `${manifest.count} pieces is over this server's limit of ${limits.maxPieces}` }))
        }
        // Counting a user and arranging its release happen together, uninterruptibly.
        const entry = yield* Effect.acquireRelease(
          registry.withPermits(1)(
            Effect.gen(function*() {
              const current = active.get(name)
              if (current !== undefined) {
                if (!sameManifest(current.manifest, manifest)) {
                  return yield* Effect.fail(new StoreError({ dataset: name, code: "Conflict", reason: `another transfer of ${name} with a different manifest is in progress` }))
                }
                current.users++
                return Option.some(current)
              }
              const done = yield* committedSize(name)
              if (Option.isSome(done)) {
                if (done.value === manifest.size) return Option.none()
                return yield* Effect.fail(new StoreError({ dataset: name, code: "Conflict", reason: `${name} is already committed on the server with a different size (${done.value} bytes, not ${manifest.size})` }))
              }
              if (active.size >= limits.maxDatasets) {
                return yield* Effect.fail(new StoreError({ dataset: name, code: "Busy", reason: `the server already has ${active.size} datasets in progress, its limit; try again later` }))
              }
              const fresh = yield* activate(manifest)
              fresh.users = 1
              active.set(name, fresh)
              return Option.some(fresh)
            })
          ),
          (opened) => (Option.isSome(opened) ? release(opened.value) : Effect.void)
        )
        if (Option.isNone(entry)) return committedSession(manifest)
        const e = entry.value
        // A dataset resumed complete (crash after the last write) commits now.
        yield* startCommitIfComplete(e)
        const held = new PieceBitmap(manifest.count, Uint8Array.from(e.bitmap.bits))
        return {
          manifest,
          held,
          committed: false,
          write: write(e),
          commit: Deferred.await(e.committed)
        } satisfies Session
      })

    return { dest, open }
  })

export const PieceStoreLayer = (dest: string, limits: StoreLimits = defaultStoreLimits, flushEvery: number = FLUSH_BEHIND) =>
  Layer.effect(PieceStore, makePieceStore(dest, limits, flushEvery))
