/**
 * Piece reader: turns a batch of piece files into one ready-to-send pieces
 * frame, with the CRC32 of each piece's slice, and reads the trailers of
 * pieces that are not sent. Both layers run the code of PieceFrames.ts. Live,
 * the open/read/close syscalls run off the event loop: a whole batch as one
 * piece of the native addon's async work on libuv's thread pool, or, where
 * the addon is not built, in a reader worker thread over node:fs (trailers
 * always there). In process, over files loaded through the injected FileSystem.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { DatasetError } from "../domain/Errors.js"
import { type Geometry, pieceFileName } from "../domain/Layout.js"
import { nativeAddon, workerScript } from "../node/Assets.js"
import { FramePool } from "./BufferPool.js"
import { loadNative } from "../node/Native.js"
import { type FrameOutcome, frameCapacity, type PieceFiles, readFrame, readFrameInBatch, readTrailers } from "../node/PieceFrames.js"
import { makeWorkerPool } from "../node/WorkerPool.js"
import type { ReadReply, ReadTask } from "../node/workers/read.js"

export interface ReadRequest {
  readonly dir: string
  readonly geometry: Geometry
  readonly handle: number
  readonly seq: number
  readonly indices: Uint32Array
  readonly maxPieceBytes: number
  /** Compressed bytes the batch is expected to hold (a sizing hint). */
  readonly expectBytes: number
}

export interface PieceFrame {
  readonly seq: number
  readonly frame: Buffer
  /** Compressed bytes of the pieces themselves, for progress. */
  readonly pieceBytes: number
  /** The CRC32 of each piece's slice, in batch order. */
  readonly crcs: Uint32Array
  /** Hands the frame's memory back for reuse once it is no longer needed (sent). */
  readonly release: () => void
}

export class PieceReader extends Context.Tag("ferry/PieceReader")<PieceReader, {
  readonly read: (req: ReadRequest) => Effect.Effect<PieceFrame, DatasetError>
  /** The slice CRC32s of these pieces, from their trailers. */
  readonly trailers: (dir: string, geometry: Geometry, indices: Uint32Array) => Effect.Effect<Uint32Array, DatasetError>
}>() {}

const failed = (dataset: string, r: { readonly reason: string }) => Effect.fail(new DatasetError({ dataset, reason: r.reason }))

/** Trailer reads go in chunks, so that one message never holds a worker for long. */
const TRAILER_CHUNK = 4096

const inChunks = (indices: Uint32Array, read: (chunk: Uint32Array) => Effect.Effect<Uint32Array, DatasetError>) =>
  Effect.map(
    Effect.forEach(
      Array.from({ length: Math.ceil(indices.length / TRAILER_CHUNK) }, (_, c) => indices.slice(c * TRAILER_CHUNK, (c + 1) * TRAILER_CHUNK)),
      read,
      { concurrency: 2 }
    ),
    (parts) => {
      const out = new Uint32Array(indices.length)
      parts.forEach((p, c) => out.set(p, c * TRAILER_CHUNK))
      return out
    }
  )

export interface ReaderOptions {
  /** Reader threads at most: reading is mostly syscalls, so two keep the disk queue full without starving others; the second starts only when needed. */
  readonly workers?: number
  /** The native addon's loader, whose `readPieces` reads a batch on libuv's thread pool; null: reader threads over node:fs (default: the one shipped in native/). */
  readonly nativeAddon?: string | null
}

export const PieceReaderLive = (options: ReaderOptions = {}) =>
  Layer.scoped(
    PieceReader,
    Effect.gen(function*() {
      const frames = yield* FramePool
      const native = loadNative(options.nativeAddon === undefined ? nativeAddon : options.nativeAddon)
      // with the addon no thread starts for frames; without it one does, and a second only when the
      // first cannot keep up (a cold or slow disk): a sender whose reader keeps ahead of the network
      // never pays for a thread's start and its JIT. Trailers (a resumed dataset) start one on demand.
      const pool = yield* makeWorkerPool<ReadTask, ReadReply>(workerScript("read"), options.workers ?? 2, { start: native === null ? 1 : 0 })
      return {
        read: (req) =>
          Effect.suspend(() => {
            const buffer = frames.take(frameCapacity(req.indices.length, req.expectBytes))
            const { dir, expectBytes: _, ...request } = req
            if (native !== null) {
              // interrupted meanwhile, the frame is left to the collector: the read may still be filling it
              return Effect.flatMap(
                Effect.async<FrameOutcome>((resume) => readFrameInBatch(request, dir, native.readPieces, buffer, (r) => resume(Effect.succeed(r)))),
                (r) =>
                  r._tag === "Frame"
                    ? Effect.succeed<PieceFrame>({ seq: req.seq, frame: r.frame, pieceBytes: r.pieceBytes, crcs: r.crcs, release: () => frames.give(r.frame.buffer) })
                    : failed(req.geometry.dataset, r)
              )
            }
            const ab = buffer.buffer as ArrayBuffer
            return Effect.flatMap(pool.run({ _tag: "Frame", dir, request, buffer: ab }, [ab]), (r) =>
              r._tag === "Frame"
                ? Effect.succeed<PieceFrame>({ seq: req.seq, frame: Buffer.from(r.frame, 0, r.length), pieceBytes: r.pieceBytes, crcs: r.crcs, release: () => frames.give(r.frame) })
                : failed(req.geometry.dataset, r._tag === "Unreadable" ? r : { reason: "unexpected reply from a reader thread" }))
          }),
        trailers: (dir, geometry, indices) =>
          inChunks(indices, (chunk) =>
            Effect.flatMap(pool.run({ _tag: "Trailers", dir, geometry, indices: chunk }), (r) =>
              r._tag === "Trailers" ? Effect.succeed(r.crcs) : failed(geometry.dataset, r._tag === "Unreadable" ? r : { reason: "unexpected reply from a reader thread" })))
      }
    })
  )

/** Files loaded whole through FileSystem, served to the shared reading code as if they were open descriptors. */
const loadFiles = (fs: FileSystem.FileSystem, path: Path.Path, dir: string, dataset: string, names: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const loaded = new Map<string, Uint8Array | { readonly error: string }>()
    for (const name of names) {
      // as the reader threads do: what is not a regular file is never opened
      const info = yield* Effect.either(fs.stat(path.join(dir, name)))
      if (info._tag === "Right" && info.right.type !== "File") {
        loaded.set(name, { error: `not a regular file: ${info.right.type === "FIFO" ? "a FIFO" : info.right.type}` })
        continue
      }
      const bytes = yield* fs.readFile(path.join(dir, name)).pipe(
        Effect.catchAll((e) => Effect.succeed({ error: /\b(E[A-Z]{2,})\b/.exec(e.message)?.[1] ?? e.message }))
      )
      loaded.set(name, bytes)
    }
    const open = new Map<number, { bytes: Uint8Array; at: number }>()
    let next = 3
    const files: PieceFiles = {
      open: (name) => {
        const f = loaded.get(name)
        if (f === undefined || "error" in f) throw Object.assign(new Error(`${dataset}: ${name}`), { code: f === undefined ? "ENOENT" : f.error })
        open.set(next, { bytes: f, at: 0 })
        return next++
      },
      read: (fd, into, offset, length, position) => {
        const f = open.get(fd)!
        const from = position ?? f.at
        const got = Math.max(0, Math.min(length, f.bytes.length - from))
        into.set(f.bytes.subarray(from, from + got), offset)
        if (position === null) f.at += got
        return got
      },
      size: (fd) => open.get(fd)!.bytes.length,
      close: (fd) => void open.delete(fd)
    }
    return files
  })

export const PieceReaderInProcess = Layer.effect(
  PieceReader,
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const load = (dir: string, g: Geometry, indices: Uint32Array) =>
      loadFiles(fs, path, dir, g.dataset, Array.from(indices, (i) => pieceFileName(g.dataset, i)))
    return {
      read: (req) =>
        Effect.flatMap(load(req.dir, req.geometry, req.indices), (files) => {
          const { dir: _, expectBytes, ...request } = req
          const r = readFrame(request, files, Buffer.allocUnsafe(frameCapacity(req.indices.length, expectBytes)))
          return r._tag === "Frame"
            ? Effect.succeed<PieceFrame>({ seq: req.seq, frame: r.frame, pieceBytes: r.pieceBytes, crcs: r.crcs, release: () => {} })
            : failed(req.geometry.dataset, r)
        }),
      trailers: (dir, geometry, indices) =>
        Effect.flatMap(load(dir, geometry, indices), (files) => {
          const r = readTrailers(geometry, indices, files)
          return r._tag === "Trailers" ? Effect.succeed(r.crcs) : failed(geometry.dataset, r)
        })
    }
  })
)
