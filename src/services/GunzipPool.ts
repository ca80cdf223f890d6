/**
 * Gunzip pool: verifies a batch of pieces and writes each slice at its place
 * in the dataset's file. Both layers run the same code (Inflate.ts:
 * makeInflater, placementsOf); live, in worker threads, one per core,
 * writing with pwrite through the dataset's descriptors; in process, on the
 * calling fiber, writing through the Destination's files. Before a commit
 * it reads the written file back for its CRC32 (the same threads, in
 * ranges), so that what is committed is checked as it is on disk.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { nativeAddon, workerScript } from "../node/Assets.js"
import * as zlib from "node:zlib"
import { combine } from "../domain/Crc32.js"
import { FramePool } from "./BufferPool.js"
import { type DestFile, IoError } from "./Destination.js"
import { type InflateTask, makeInflater, placementsOf } from "../node/Inflate.js"
import { defaultWorkers, makeWorkerPool } from "../node/WorkerPool.js"
import type { GunzipMessage, InflateMessage } from "../node/workers/inflate.js"

export interface InflateJob extends InflateTask {
  readonly data: DestFile
  readonly crcs: DestFile
}

export type InflateOutcome =
  | { readonly _tag: "Written"; readonly bytes: number }
  | { readonly _tag: "BadPiece"; readonly index: number; readonly reason: string }
  | { readonly _tag: "WriteFailed"; readonly code: string; readonly reason: string }

/** What a worker answers to a batch, or to a range read back. */
export type GunzipOutcome =
  | InflateOutcome
  | { readonly _tag: "Checksum"; readonly crc: number }
  | { readonly _tag: "ReadFailed"; readonly code: string; readonly reason: string }

/** A range read back by one thread: large enough that combining the ranges' CRCs costs nothing. */
const CHECKSUM_RANGE = 64 * 1024 * 1024

/** [position, length] ranges covering `size` bytes, at most `threads` of them unless each would pass CHECKSUM_RANGE * 4. */
export const checksumRanges = (size: number, threads: number): Array<readonly [number, number]> => {
  const count = Math.max(1, Math.min(Math.ceil(size / CHECKSUM_RANGE), Math.max(threads, Math.ceil(size / (CHECKSUM_RANGE * 4)))))
  const each = Math.ceil(size / count)
  const out: Array<readonly [number, number]> = []
  for (let at = 0; at < size; at += each) out.push([at, Math.min(each, size - at)])
  return out
}

export class GunzipPool extends Context.Tag("ferry/GunzipPool")<GunzipPool, {
  /** "ISA-L" or "zlib", and how many threads inflate. */
  readonly inflater: string
  readonly threads: number
  /** Takes ownership of `job.body`: it may be moved to another thread. */
  readonly inflate: (job: InflateJob) => Effect.Effect<InflateOutcome>
  /** The CRC32 of the first `size` bytes of `file`, read back from it. */
  readonly checksum: (file: DestFile, size: number) => Effect.Effect<number, IoError>
}>() {}

export interface GunzipOptions {
  /** Worker threads (default: one per core). */
  readonly workers?: number
  /** The ISA-L addon's loader, or null for zlib (default: the one shipped in native/). */
  readonly nativeAddon?: string | null
}

export const GunzipPoolLive = (options: GunzipOptions = {}) =>
  Layer.scoped(
    GunzipPool,
    Effect.gen(function*() {
      const frames = yield* FramePool
      const workers = options.workers ?? defaultWorkers()
      const addon = options.nativeAddon === undefined ? nativeAddon : options.nativeAddon
      const pool = yield* makeWorkerPool<GunzipMessage, GunzipOutcome>(workerScript("inflate"), workers, { data: { nativeAddon: addon } })
      const name = makeInflater(addon).name
      yield* Effect.logDebug(`gunzip: ${workers} worker thread(s), inflating with ${name}`)
      if (addon !== null && name === "zlib") {
        yield* Effect.logInfo("inflating with zlib: the ISA-L addon is not built here (`node native/build.mjs` in ferry's folder builds it; about 1.6x faster)")
      }
      return {
        inflater: name,
        threads: workers,
        inflate: (job) => {
          const message: InflateMessage = {
            kind: "inflate",
            geometry: job.geometry,
            body: job.body,
            indices: job.indices,
            starts: job.starts,
            lengths: job.lengths,
            dataFd: job.data.fd,
            crcFd: job.crcs.fd
          }
          // Once posted, a batch is waited for even when its caller is interrupted: the worker
          // writes through the dataset's file descriptors, which must not be closed (and their
          // numbers reused) before it is done.
          return Effect.uninterruptible(pool.run(message, [job.body.buffer, job.indices.buffer, job.starts.buffer, job.lengths.buffer] as Array<ArrayBuffer>)).pipe(
            Effect.map((outcome) => {
              frames.give((outcome as { body?: ArrayBuffer }).body ?? new ArrayBuffer(0))
              return outcome as InflateOutcome
            })
          )
        },
        checksum: (file, size) =>
          Effect.forEach(
            checksumRanges(size, workers),
            ([position, length]) =>
              Effect.flatMap(pool.run({ kind: "checksum", fd: file.fd, position, length }), (outcome) =>
                outcome._tag === "Checksum"
                  ? Effect.succeed([outcome.crc, length] as const)
                  : Effect.fail(new IoError({ op: "read", path: "data", code: "code" in outcome ? outcome.code : "EIO", detail: "reason" in outcome ? outcome.reason : "" }))),
            // the reads go through the descriptor: waited for, like the writes
            { concurrency: "unbounded" }
          ).pipe(Effect.uninterruptible, Effect.map((parts) => parts.reduce((crc, [part, length]) => combine(crc, part, length), 0)))
      }
    })
  )

/** The same inflater and the same placements on the calling fiber, written through the Destination's files. */
export const GunzipPoolInProcess = (options: Pick<GunzipOptions, "nativeAddon"> = {}) =>
  Layer.sync(GunzipPool, () => {
    const inflater = makeInflater(options.nativeAddon === undefined ? nativeAddon : options.nativeAddon)
    return {
      inflater: inflater.name,
      threads: 1,
      inflate: (job) =>
        Effect.suspend(() => {
          const r = inflater.inflate(job)
          if (r._tag === "BadPiece") return Effect.succeed<InflateOutcome>(r)
          return Effect.forEach(placementsOf(job, r), (p) => (p.file === "data" ? job.data : job.crcs).write(p.bytes, p.position), { discard: true }).pipe(
            Effect.as<InflateOutcome>({ _tag: "Written", bytes: r.bounds[job.indices.length]! }),
            Effect.catchAll((e) => Effect.succeed<InflateOutcome>({ _tag: "WriteFailed", code: e.code, reason: e.message }))
          )
        }),
      checksum: (file, size) =>
        Effect.iterate({ at: 0, crc: 0 }, {
          while: (s) => s.at < size,
          body: (s) =>
            Effect.flatMap(file.read(Math.min(4 * 1024 * 1024, size - s.at), s.at), (bytes) =>
              bytes.length === 0
                ? Effect.fail(new IoError({ op: "read", path: "data", code: "EIO", detail: `the file ends ${size - s.at} bytes early` }))
                : Effect.succeed({ at: s.at + bytes.length, crc: zlib.crc32(bytes, s.crc) }))
        }).pipe(Effect.map((s) => s.crc))
    }
  })
