/**
 * A batch of pieces on its way to a dataset's files: checked (domain/Batch.ts),
 * then inflated, verified and written by the gunzip pool, recorded, and
 * flushed behind; the last piece held answers the seals waiting.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { checkBatch, pick } from "../../domain/Batch.js"
import type { StoreError } from "../../domain/Errors.js"
import type { PieceBatch } from "../../domain/Frame.js"
import type { GunzipPool } from "../GunzipPool.js"
import { type Active, flushBehind } from "./Active.js"
import { refuse } from "./Commit.js"
import { badPieces, batchesWritten, batchSeconds, piecesVerified, writtenBytes } from "./Metrics.js"
import { ioToStore, record } from "./StateFiles.js"

/** What became of a batch: written and recorded, or dropped because its session was closed first. */
export type WriteOutcome = "written" | "dropped"

/** Bytes one batch may decompress to: a batch needs that much memory in a gunzip worker. */
export const MAX_BATCH_OUTPUT = 128 * 1024 * 1024

const written: WriteOutcome = "written"

export interface WritesOptions {
  readonly gunzip: GunzipPool["Type"]
  /** Bytes written to a dataset between two background fsyncs of its data file. */
  readonly flushEvery: number
  /** Answers the seals waiting, once the last piece is held. */
  readonly settle: (entry: Active) => Effect.Effect<void>
}

export const makeWrite = ({ flushEvery, gunzip, settle }: WritesOptions) =>
(entry: Active, batch: PieceBatch, body: Buffer): Effect.Effect<WriteOutcome, StoreError> =>
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
