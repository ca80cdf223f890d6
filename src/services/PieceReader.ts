/**
 * Piece reader: turns a batch of piece files into one ready-to-send pieces
 * frame. Live: worker threads doing the open/read/close syscalls off the
 * event loop. Test: in-process through the injected FileSystem.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { pieceFileName } from "../domain/Dataset.js"
import { DatasetError } from "../domain/Errors.js"
import { encodePieces, piecesFrameBytes } from "../domain/Frame.js"
import { framePool } from "./BufferPool.js"
import { makeWorkerPool } from "./WorkerPool.js"
import { workerScript } from "./Assets.js"

export interface ReadRequest {
  readonly dir: string
  readonly dataset: string
  readonly handle: number
  readonly seq: number
  readonly indices: Uint32Array
  readonly maxPieceBytes: number
  /** Compressed bytes the batch is expected to hold (a sizing hint). */
  readonly expectBytes: number
  /** Memory to fill (moved to the worker and back), when the caller has some. */
  readonly buffer?: ArrayBuffer
}

export type ReadOutcome =
  | { readonly _tag: "Frame"; readonly frame: ArrayBuffer; readonly length: number; readonly pieceBytes: number }
  | { readonly _tag: "Unreadable"; readonly index: number; readonly reason: string }

export interface PieceFrame {
  readonly frame: Buffer
  /** Compressed bytes of the pieces themselves, for progress. */
  readonly pieceBytes: number
  /** Hands the frame's memory back for reuse once it is no longer needed (sent). */
  readonly release: () => void
}

export class PieceReader extends Context.Tag("ferry/PieceReader")<PieceReader, {
  readonly read: (req: ReadRequest) => Effect.Effect<PieceFrame, DatasetError>
}>() {}

const outcome = (dataset: string, r: ReadOutcome): Effect.Effect<PieceFrame, DatasetError> =>
  r._tag === "Frame"
    ? Effect.succeed({ frame: Buffer.from(r.frame, 0, r.length), pieceBytes: r.pieceBytes, release: () => framePool.give(r.frame) })
    : Effect.fail(new DatasetError({ dataset, reason: r.reason }))

/** Reading is mostly syscalls: two threads keep the disk queue full without starving gunzip. */
export const PieceReaderLive = (workers = Number(process.env["FERRY_READERS"] ?? 0) || 2) =>
  Layer.scoped(
    PieceReader,
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<ReadRequest, ReadOutcome>(workerScript("read"), workers)
      return {
        read: (req) =>
          Effect.suspend(() => {
            const buffer = framePool.take(Math.ceil(piecesFrameBytes(req.indices.length, req.expectBytes * 1.25))).buffer as ArrayBuffer
            return Effect.flatMap(pool.run({ ...req, buffer }, [buffer]), (r) => outcome(req.dataset, r))
          })
      }
    })
  )

export const PieceReaderInProcess = Layer.effect(
  PieceReader,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    return {
      read: (req) =>
        Effect.forEach(req.indices, (index) => {
          const name = pieceFileName(req.dataset, index)
          return fs.readFile(path.join(req.dir, name)).pipe(
            Effect.mapError((e) =>
              new DatasetError({ dataset: req.dataset, reason: `${name} cannot be read (${e.message})` })
            ),
            Effect.filterOrFail(
              (bytes) => bytes.length <= req.maxPieceBytes,
              (bytes) =>
                new DatasetError({ dataset: req.dataset, reason: `${name} is ${bytes.length} bytes, over the limit of ${req.maxPieceBytes}` })
            ),
            Effect.map((bytes) => ({ index, bytes }))
          )
        }).pipe(
          Effect.map((pieces) => ({
            frame: encodePieces(req.handle, req.seq, pieces),
            pieceBytes: pieces.reduce((n, p) => n + p.bytes.length, 0),
            release: () => {}
          }))
        )
    }
  })
)
