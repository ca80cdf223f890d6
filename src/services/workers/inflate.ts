/** Gunzip worker: inflates a batch, then writes slices and CRCs with positional writes. */
import * as fs from "node:fs"
import { parentPort } from "node:worker_threads"
import { crcOffset, type InflateTask, inflatePieces, runsOf, sliceOffset } from "../Inflate.js"
import type { InflateOutcome } from "../GunzipPool.js"

export interface InflateMessage extends InflateTask {
  readonly dataFd: number
  readonly crcFd: number
}

const work = (task: InflateMessage): InflateOutcome => {
  const r = inflatePieces(task)
  if (r._tag === "BadPiece") return r
  try {
    for (const [a, b] of runsOf(task.indices)) {
      const slices = r.slices.slice(a, b)
      const want = slices.reduce((n, s) => n + s.length, 0)
      const wrote = fs.writevSync(task.dataFd, slices, sliceOffset(task.geometry, task.indices[a]!))
      if (wrote !== want) throw Object.assign(new Error(`short write (${wrote} of ${want} bytes)`), { code: "EIO" })
      const crcBytes = Buffer.from(r.crcs.buffer, a * 4, (b - a) * 4)
      fs.writeSync(task.crcFd, crcBytes, 0, crcBytes.length, crcOffset(task.geometry, task.indices[a]!))
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    return { _tag: "WriteFailed", code: err.code ?? "EIO", reason: err.message }
  }
  return { _tag: "Written", bytes: r.slices.reduce((n, s) => n + s.length, 0) }
}

parentPort!.on("message", ({ id, task }: { id: number; task: InflateMessage }) => {
  try {
    parentPort!.postMessage({ id, ok: work(task) })
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
