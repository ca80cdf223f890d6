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

/** Slices of the current batch: one buffer for the worker's life, grown when a batch needs more. */
let scratch = Buffer.allocUnsafeSlow(0)

const work = (task: InflateMessage): InflateOutcome => {
  const need = task.indices.length === 0 ? 1 : 1 + task.lengths.length * task.geometry.sliceSize
  if (scratch.length < need) scratch = Buffer.allocUnsafeSlow(Math.max(need, scratch.length * 2))
  const r = inflatePieces(task, scratch)
  // a large batch's buffer is not kept for the life of the worker
  if (scratch.length > 16 * 1024 * 1024) scratch = Buffer.allocUnsafeSlow(0)
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
    // the frame's memory goes back to the main thread's pool
    const body = task.body.buffer as ArrayBuffer
    parentPort!.postMessage({ id, ok: { ...work(task), body } }, [body])
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
