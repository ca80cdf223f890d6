/** Gunzip worker: inflates a batch, then writes slices and CRCs with positional writes. */
import * as fs from "node:fs"
import { parentPort } from "node:worker_threads"
import { crcOffset, type InflateTask, inflatePieces, runsOf, sliceOffset } from "../Inflate.js"
import type { InflateOutcome } from "../GunzipPool.js"

export interface InflateMessage extends InflateTask {
  readonly dataFd: number
  readonly crcFd: number
}

const writeAll = (fd: number, buf: Buffer, from: number, to: number, position: number) => {
  for (let at = from; at < to;) {
    const wrote = fs.writeSync(fd, buf, at, to - at, position + (at - from))
    if (wrote <= 0) throw Object.assign(new Error("short write"), { code: "EIO" })
    at += wrote
  }
}

const work = (task: InflateMessage): InflateOutcome => {
  const r = inflatePieces(task)
  if (r._tag === "BadPiece") return r
  try {
    for (const [a, b] of runsOf(task.indices)) {
      writeAll(task.dataFd, r.slices, r.bounds[a]!, r.bounds[b]!, sliceOffset(task.geometry, task.indices[a]!))
      writeAll(task.crcFd, Buffer.from(r.crcs.buffer), a * 4, b * 4, crcOffset(task.geometry, task.indices[a]!))
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    return { _tag: "WriteFailed", code: err.code ?? "EIO", reason: err.message }
  }
  return { _tag: "Written", bytes: r.bounds[task.indices.length]! }
}

parentPort!.on("message", ({ id, task }: { id: number; task: InflateMessage }) => {
  try {
    parentPort!.postMessage({ id, ok: work(task) })
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
