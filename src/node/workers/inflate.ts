/**
 * Gunzip worker: inflates and verifies a batch, then makes its positional
 * writes (placementsOf) through the dataset's descriptors; and, before a
 * commit, reads back a range of the written file for its CRC32.
 */
import * as fs from "node:fs"
import { parentPort, workerData } from "node:worker_threads"
import type { GunzipOutcome, InflateOutcome } from "../../services/GunzipPool.js"
import { type InflateTask, makeInflater, placementsOf } from "../Inflate.js"

export interface InflateMessage extends InflateTask {
  readonly kind: "inflate"
  readonly dataFd: number
  readonly crcFd: number
}

/** The CRC32 of `length` bytes of the file at `position`, as they are on disk. */
export interface ChecksumMessage {
  readonly kind: "checksum"
  readonly fd: number
  readonly position: number
  readonly length: number
}

export type GunzipMessage = InflateMessage | ChecksumMessage

const inflater = makeInflater((workerData as { nativeAddon: string | null }).nativeAddon)

const writeAll = (fd: number, bytes: Uint8Array, position: number) => {
  for (let at = 0; at < bytes.length;) {
    const wrote = fs.writeSync(fd, bytes, at, bytes.length - at, position + at)
    if (wrote <= 0) throw Object.assign(new Error("short write"), { code: "EIO" })
    at += wrote
  }
}

/** Slices of the current batch: one buffer for the worker's life, grown when a batch needs more. */
let scratch = Buffer.allocUnsafeSlow(0)

const work = (task: InflateMessage): InflateOutcome => {
  const need = task.indices.length === 0 ? 1 : 1 + task.lengths.length * task.geometry.sliceSize
  if (scratch.length < need) scratch = Buffer.allocUnsafeSlow(Math.max(need, scratch.length * 2))
  const r = inflater.inflate(task, scratch)
  // a large batch's buffer is not kept for the life of the worker
  if (scratch.length > 16 * 1024 * 1024) scratch = Buffer.allocUnsafeSlow(0)
  if (r._tag === "BadPiece") return r
  try {
    for (const p of placementsOf(task, r)) writeAll(p.file === "data" ? task.dataFd : task.crcFd, p.bytes, p.position)
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    return { _tag: "WriteFailed", code: err.code ?? "EIO", reason: err.message }
  }
  return { _tag: "Written", bytes: r.bounds[task.indices.length]! }
}

/**
 * The read-back's chunk: small enough that what read() copies is still in the core's cache when
 * the CRC reads it. Reading 800 MB back here took 148 ms in 128 KiB chunks and 397 ms in 4 MiB
 * ones (ISA-L's CRC32, one thread); past 256 KiB it is no faster than the copy from memory.
 */
const READ_BACK = 128 * 1024

const checksum = (task: ChecksumMessage): GunzipOutcome => {
  if (scratch.length < READ_BACK) scratch = Buffer.allocUnsafeSlow(READ_BACK)
  let crc = 0
  try {
    for (let at = 0; at < task.length;) {
      const got = fs.readSync(task.fd, scratch, 0, Math.min(READ_BACK, task.length - at), task.position + at)
      if (got <= 0) return { _tag: "ReadFailed", code: "EIO", reason: `the file ends ${task.length - at} bytes early` }
      crc = inflater.crc32(scratch.subarray(0, got), crc)
      at += got
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException
    return { _tag: "ReadFailed", code: err.code ?? "EIO", reason: err.message }
  }
  return { _tag: "Checksum", crc }
}

parentPort!.on("message", ({ id, task }: { id: number; task: GunzipMessage }) => {
  if (task.kind === "checksum") return parentPort!.postMessage({ id, ok: checksum(task) })
  try {
    // the frame's memory goes back to the main thread's pool
    const body = task.body.buffer as ArrayBuffer
    parentPort!.postMessage({ id, ok: { ...work(task), body } }, [body])
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.stack ?? e.message : String(e) })
  }
})
