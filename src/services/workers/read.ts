/** Reader worker: reads a batch of piece files straight into one pieces frame. */
import * as fs from "node:fs"
import * as path from "node:path"
import { parentPort } from "node:worker_threads"
import { pieceFileName } from "../../domain/Dataset.js"
import { piecesFrameBytes, writePieceEntry, writePiecesHeader } from "../../domain/Frame.js"
import type { ReadOutcome, ReadRequest } from "../PieceReader.js"

const work = (req: ReadRequest): ReadOutcome => {
  const n = req.indices.length
  const pieces = new Array<Buffer>(n)
  let total = 0
  for (let k = 0; k < n; k++) {
    const name = pieceFileName(req.dataset, req.indices[k]!)
    try {
      const bytes = fs.readFileSync(path.join(req.dir, name))
      if (bytes.length > req.maxPieceBytes) {
        return { _tag: "Unreadable", index: req.indices[k]!, reason: `${name} is ${bytes.length} bytes, over the limit of ${req.maxPieceBytes}` }
      }
      pieces[k] = bytes
      total += bytes.length
    } catch (e) {
      const err = e as NodeJS.ErrnoException
      return { _tag: "Unreadable", index: req.indices[k]!, reason: `${name} cannot be read (${err.code ?? err.message})` }
    }
  }
  const frame = Buffer.allocUnsafeSlow(piecesFrameBytes(n, total))
  let at = writePiecesHeader(frame, req.handle, req.seq, n)
  for (let k = 0; k < n; k++) {
    at = writePieceEntry(frame, at, req.indices[k]!, pieces[k]!.length)
    pieces[k]!.copy(frame, at)
    at += pieces[k]!.length
  }
  return { _tag: "Frame", frame: frame.buffer as ArrayBuffer, pieceBytes: total }
}

parentPort!.on("message", ({ id, task }: { id: number; task: ReadRequest }) => {
  try {
    const ok = work(task)
    parentPort!.postMessage({ id, ok }, ok._tag === "Frame" ? [ok.frame] : [])
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
