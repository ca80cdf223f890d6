/**
 * Gunzip pool: verifies a batch of pieces and writes each slice at its place
 * in the dataset's file. Live: worker threads, one per core, writing with
 * pwrite into the preallocated file. Test: the same checks in-process,
 * writing through the injected FileSystem.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { crcOffset, type InflateTask, inflaterName, inflatePieces, sliceOffset } from "./Inflate.js"
import { framePool } from "./BufferPool.js"
import { defaultWorkers, makeWorkerPool } from "./WorkerPool.js"
import type { InflateMessage } from "./workers/inflate.js"
import { workerScript } from "./Assets.js"

export interface InflateJob extends InflateTask {
  readonly data: FileSystem.File
  readonly crcs: FileSystem.File
}

export type InflateOutcome =
  | { readonly _tag: "Written"; readonly bytes: number }
  | { readonly _tag: "BadPiece"; readonly index: number; readonly reason: string }
  | { readonly _tag: "WriteFailed"; readonly code: string; readonly reason: string }

export class GunzipPool extends Context.Tag("ferry/GunzipPool")<GunzipPool, {
  /** Takes ownership of `job.body`: it may be moved to another thread. */
  readonly inflate: (job: InflateJob) => Effect.Effect<InflateOutcome>
}>() {}

export const GunzipPoolLive = (workers = defaultWorkers()) =>
  Layer.scoped(
    GunzipPool,
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<InflateMessage, InflateOutcome>(
        workerScript("inflate"),
        workers
      )
      yield* Effect.logDebug(`gunzip: ${workers} worker thread(s), inflating with ${inflaterName()}`)
      return {
        inflate: (job) => {
          const message: InflateMessage = {
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
              framePool.give((outcome as { body?: ArrayBuffer }).body ?? new ArrayBuffer(0))
              return outcome
            })
          )
        }
      }
    })
  )

/** Same verification on the calling thread, writes through FileSystem.File: for tests and fakes. */
export const GunzipPoolInProcess = Layer.effect(
  GunzipPool,
  Effect.gen(function*() {
    // File positions are shared state: one batch writes at a time.
    const writing = yield* Effect.makeSemaphore(1)
    return {
      inflate: (job) =>
        Effect.suspend(() => {
          const r = inflatePieces(job)
          if (r._tag === "BadPiece") return Effect.succeed<InflateOutcome>(r)
          return writing.withPermits(1)(
            Effect.gen(function*() {
              for (let k = 0; k < job.indices.length; k++) {
                const index = job.indices[k]!
                yield* job.data.seek(sliceOffset(job.geometry, index), "start")
                yield* job.data.writeAll(r.slices.subarray(r.bounds[k]!, r.bounds[k + 1]!))
                yield* job.crcs.seek(crcOffset(job.geometry, index), "start")
                yield* job.crcs.writeAll(new Uint8Array(r.crcs.buffer, k * 4, 4))
              }
              const bytes = r.bounds[job.indices.length]!
              return { _tag: "Written", bytes } as InflateOutcome
            }).pipe(
              Effect.catchAll((e) =>
                Effect.succeed<InflateOutcome>({ _tag: "WriteFailed", code: errorCode(e), reason: e.message })
              )
            )
          )
        })
    }
  })
)

/** The errno code in a platform error's message ("ENOSPC: no space left..."), if any. */
const errorCode = (e: { readonly _tag: string; readonly message: string }): string =>
  /\b(E[A-Z]{2,})\b/.exec(e.message)?.[1] ?? e._tag
