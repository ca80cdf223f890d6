/**
 * Sample datasets for `ferry fake`, tests and the benchmark: slices of
 * deterministic mixed content, each gzipped to NAME-NNNNNNN.gz, with the
 * sha256 and CRC32 of the original so that a rebuilt file can be checked.
 * Live: worker threads gzip and write in parallel. Test: in-process, through
 * the injected FileSystem.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { createHash } from "node:crypto"
import * as zlib from "node:zlib"
import { expectedCount, formatMarker, markerFileName, MAX_PIECES, pieceFileName } from "../domain/Dataset.js"
import { FolderError } from "../domain/Errors.js"
import { fillSlice, textPool } from "../domain/Sample.js"
import { defaultWorkers, makeWorkerPool } from "../node/WorkerPool.js"
import { workerScript } from "../node/Assets.js"

export interface SampleSpec {
  readonly dir: string
  readonly name: string
  readonly size: number
  readonly sliceSize: number
  readonly seed: number
  /** Number of the first piece (usually 0). */
  readonly firstNumber: number
  /** gzip level: 1 is fast and still 1.5 to 2x on this content. */
  readonly level: number
}

export interface SampleMade {
  readonly pieces: number
  readonly compressed: number
  readonly sha256: string
  readonly crc32: number
}

/** A run of consecutive slices for one worker task. */
export interface SliceRun extends SampleSpec {
  readonly from: number
  readonly count: number
  readonly bytes: number
}

export interface SliceRunDone {
  readonly raw: ArrayBuffer
  readonly compressed: number
}

export class SampleMaker extends Context.Tag("ferry/SampleMaker")<SampleMaker, {
  /** Writes the pieces (not the marker) and answers the original's digests. */
  readonly make: (spec: SampleSpec) => Effect.Effect<SampleMade, FolderError>
}>() {}

/** Splits the slices into runs of about 1 MiB of original data, one worker task each. */
const workOf = (spec: SampleSpec): Array<SliceRun> => {
  const total = expectedCount(spec.size, spec.sliceSize)
  const per = Math.max(1, Math.floor((1024 * 1024) / Math.max(1, spec.sliceSize)))
  const runs: Array<SliceRun> = []
  for (let from = 0; from < total; from += per) {
    const count = Math.min(per, total - from)
    const bytes = Math.min(spec.size, (from + count) * spec.sliceSize) - from * spec.sliceSize
    runs.push({ ...spec, from, count, bytes })
  }
  return runs
}

const digests = () => {
  const sha = createHash("sha256")
  let crc = 0
  return {
    add: (raw: Uint8Array) => {
      sha.update(raw)
      crc = zlib.crc32(raw, crc)
    },
    done: (pieces: number, compressed: number): SampleMade => ({ pieces, compressed, sha256: sha.digest("hex"), crc32: crc })
  }
}

const prepare = (spec: SampleSpec) =>
  Effect.try({
    try: () => {
      if (!(spec.sliceSize > 0)) throw new Error("slice size must be at least 1 byte")
      if (spec.firstNumber + expectedCount(spec.size, spec.sliceSize) > MAX_PIECES) throw new Error(`that needs more than ${MAX_PIECES.toLocaleString("en-US")} pieces; use a larger --slice`)
    },
    catch: (e) => new FolderError({ path: spec.dir, reason: (e as Error).message })
  })

export const SampleMakerLive = (workers = defaultWorkers()) =>
  Layer.scoped(
    SampleMaker,
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<SliceRun, SliceRunDone>(workerScript("fake"), workers)
      const fs = yield* FileSystem.FileSystem
      return {
        make: (spec) =>
          Effect.gen(function*() {
            yield* prepare(spec)
            yield* fs.makeDirectory(spec.dir, { recursive: true }).pipe(
              Effect.mapError((e) => new FolderError({ path: spec.dir, reason: `cannot create folder (${e.message})` }))
            )
            const d = digests()
            let compressed = 0
            const runs = workOf(spec)
            yield* Stream.fromIterable(runs).pipe(
              // ordered: the digests need the slices in file order
              Stream.mapEffect((run) => pool.run(run), { concurrency: workers * 2 }),
              Stream.runForEach((done) =>
                Effect.sync(() => {
                  d.add(new Uint8Array(done.raw))
                  compressed += done.compressed
                })
              )
            )
            return d.done(expectedCount(spec.size, spec.sliceSize), compressed)
          })
      }
    })
  )

export const SampleMakerInProcess = Layer.effect(
  SampleMaker,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    return {
      make: (spec) =>
        Effect.gen(function*() {
          yield* prepare(spec)
          const fail = (e: { message: string }) => new FolderError({ path: spec.dir, reason: e.message })
          yield* fs.makeDirectory(spec.dir, { recursive: true }).pipe(Effect.mapError(fail))
          const text = textPool(spec.seed)
          const d = digests()
          let compressed = 0
          const total = expectedCount(spec.size, spec.sliceSize)
          for (let index = 0; index < total; index++) {
            const slice = Buffer.allocUnsafe(Math.min(spec.sliceSize, spec.size - index * spec.sliceSize))
            fillSlice(slice, text, spec.seed, index)
            d.add(slice)
            const gz = zlib.gzipSync(slice, { level: spec.level })
            compressed += gz.length
            yield* fs.writeFile(path.join(spec.dir, pieceFileName(spec.name, spec.firstNumber + index)), gz).pipe(Effect.mapError(fail))
          }
          return d.done(total, compressed)
        })
    }
  })
)

export interface DatasetSpec extends Omit<SampleSpec, "seed" | "firstNumber" | "level"> {
  readonly seed?: number
  readonly firstNumber?: number
  readonly level?: number
  /** Leave the marker out, as a producer that has not finished yet would. */
  readonly withoutMarker?: boolean
}

/**
 * A whole sample dataset, as a producer makes one: the pieces, then the marker,
 * written last and atomically (a watching sender must never read half of one).
 */
export const makeDataset = (spec: DatasetSpec): Effect.Effect<SampleMade, FolderError, SampleMaker | FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const maker = yield* SampleMaker
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const made = yield* maker.make({ seed: 1, firstNumber: 0, level: 1, ...spec })
    if (spec.withoutMarker !== true) {
      const tmp = path.join(spec.dir, `.${markerFileName(spec.name)}.tmp`)
      yield* fs.writeFileString(tmp, formatMarker(spec.size)).pipe(
        Effect.zipRight(fs.rename(tmp, path.join(spec.dir, markerFileName(spec.name)))),
        Effect.mapError((e) => new FolderError({ path: spec.dir, reason: e.message }))
      )
    }
    return made
  })
