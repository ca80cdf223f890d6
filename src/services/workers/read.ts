/** Reader worker: reads a batch of piece files straight into one pieces frame. */
import * as fs from "node:fs"
import * as path from "node:path"
import { parentPort } from "node:worker_threads"
import { pieceFileName } from "../../domain/Layout.js"
import { HEADER_BYTES, PIECE_ENTRY_HEADER, PIECES_HEADER, piecesFrameBytes, writePieceEntry, writePiecesHeader } from "../../domain/Frame.js"

const PIECES_START = HEADER_BYTES + PIECES_HEADER
import type { ReadOutcome, ReadRequest } from "../PieceReader.js"

const work = (req: ReadRequest): ReadOutcome => {
  const n = req.indices.length
  // the pooled buffer handed in, grown if the pieces are larger: files are read straight into it
  let frame = req.buffer !== undefined && req.buffer.byteLength > 0
    ? Buffer.from(req.buffer)
    : Buffer.allocUnsafeSlow(Math.ceil(piecesFrameBytes(n, req.expectBytes * 1.25)))
  let at = PIECES_START
  for (let k = 0; k < n; k++) {
    const index = req.indices[k]!
    const name = pieceFileName(req.dataset, index)
    let fd = -1
    try {
      fd = fs.openSync(path.join(req.dir, name), "r")
      // Read straight into the frame, leaving room for the entry headers still to come. A short
      // read of a regular file means end of file, so most pieces cost open, read, close: no fstat.
      const start = at + PIECE_ENTRY_HEADER
      const reserve = (n - k - 1) * PIECE_ENTRY_HEADER
      let size = 0
      for (;;) {
        const room = frame.length - reserve - (start + size)
        if (room <= 0) {
          const known = fs.fstatSync(fd).size
          const bigger = Buffer.allocUnsafeSlow(Math.max(start + Math.max(known, size) + 1 + reserve, Math.ceil(frame.length * 1.5)))
          frame.copy(bigger, 0, 0, start + size)
          frame = bigger
          continue
        }
        const got = fs.readSync(fd, frame, start + size, Math.min(room, req.maxPieceBytes + 1 - size), null)
        size += got
        if (size > req.maxPieceBytes) {
          return { _tag: "Unreadable", index, reason: `${name} is over the limit of ${req.maxPieceBytes} bytes` }
        }
        if (got === 0 || got < room) break
      }
      writePieceEntry(frame, at, index, size)
      at = start + size
    } catch (e) {
      const err = e as NodeJS.ErrnoException
      return { _tag: "Unreadable", index, reason: `${name} cannot be read (${err.code ?? err.message})` }
    } finally {
      if (fd >= 0) fs.closeSync(fd)
    }
  }
  writePiecesHeader(frame.subarray(0, at), req.handle, req.seq, n)
  return { _tag: "Frame", frame: frame.buffer as ArrayBuffer, length: at, pieceBytes: at - PIECES_START - n * PIECE_ENTRY_HEADER }
}

parentPort!.on("message", ({ id, task }: { id: number; task: ReadRequest }) => {
  try {
    const ok = work(task)
    parentPort!.postMessage({ id, ok }, ok._tag === "Frame" ? [ok.frame] : [])
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
