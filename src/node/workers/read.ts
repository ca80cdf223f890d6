/**
 * Reader worker: reads a batch of piece files into a pieces frame, or the trailers of pieces
 * (PieceFrames.ts), over node:fs. The sender reads its frames here only where the native addon
 * (whose batch read needs no thread of ferry's own) is not built; trailers are read here always.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { parentPort } from "node:worker_threads"
import type { Geometry } from "../../domain/Layout.js"
import { type FrameRequest, KINDS, type PieceFiles, readFrame, readTrailers } from "../PieceFrames.js"

export type ReadTask =
  | { readonly _tag: "Frame"; readonly dir: string; readonly request: FrameRequest; readonly buffer: ArrayBuffer }
  | { readonly _tag: "Trailers"; readonly dir: string; readonly geometry: Geometry; readonly indices: Uint32Array }

export type ReadReply =
  | { readonly _tag: "Frame"; readonly frame: ArrayBuffer; readonly length: number; readonly pieceBytes: number; readonly crcs: Uint32Array }
  | { readonly _tag: "Trailers"; readonly crcs: Uint32Array }
  | { readonly _tag: "Unreadable"; readonly index: number; readonly reason: string }

const kindOf = (st: fs.Stats) =>
  st.isFIFO() ? KINDS[0] : st.isDirectory() ? KINDS[1] : st.isSocket() ? KINDS[2] : st.isCharacterDevice() || st.isBlockDevice() ? KINDS[3] : KINDS[4]

/**
 * Opens a piece without ever waiting: O_NONBLOCK, so that a FIFO named like a piece cannot hold
 * this thread in open() or read() for good, and anything but a regular file is refused by name.
 */
const openPiece = (file: string): number => {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const st = fs.fstatSync(fd)
  if (st.isFile()) return fd
  fs.closeSync(fd)
  throw new Error(`not a regular file: ${kindOf(st)}`)
}

const filesIn = (dir: string): PieceFiles => {
  // the folder's prefix once per batch; a piece's name holds no separator (domain/Layout.ts)
  const prefix = path.join(dir, "/")
  return {
    open: (name) => openPiece(prefix + name),
    read: (fd, into, offset, length, position) => fs.readSync(fd, into, offset, length, position),
    size: (fd) => fs.fstatSync(fd).size,
    close: (fd) => fs.closeSync(fd)
  }
}

const work = (task: ReadTask): { readonly reply: ReadReply; readonly transfer: Array<ArrayBuffer> } => {
  if (task._tag === "Trailers") {
    const r = readTrailers(task.geometry, task.indices, filesIn(task.dir))
    return { reply: r, transfer: r._tag === "Trailers" ? [r.crcs.buffer as ArrayBuffer] : [] }
  }
  const r = readFrame(task.request, filesIn(task.dir), Buffer.from(task.buffer))
  if (r._tag === "Unreadable") return { reply: r, transfer: [] }
  const frame = r.frame.buffer as ArrayBuffer
  return {
    reply: { _tag: "Frame", frame, length: r.frame.length, pieceBytes: r.pieceBytes, crcs: r.crcs },
    transfer: [frame, r.crcs.buffer as ArrayBuffer]
  }
}

parentPort!.on("message", ({ id, task }: { id: number; task: ReadTask }) => {
  try {
    const { reply, transfer } = work(task)
    parentPort!.postMessage({ id, ok: reply }, transfer)
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
