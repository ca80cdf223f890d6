/**
 * Gunzip and verify one batch of pieces against the manifest: the work each
 * gunzip worker does, also run in-process by the test layer. Every piece must
 * be whole gzip (CRC32 and ISIZE checked by zlib), use every input byte, and
 * decompress to exactly its slice.
 */
import * as zlib from "node:zlib"
import { lengthOf, Manifest, offsetOf, pieceFileName } from "../domain/Dataset.js"

/** The manifest fields the arithmetic needs, as plain numbers (cheap to post to a worker). */
export interface Geometry {
  readonly dataset: string
  readonly size: number
  readonly sliceSize: number
  readonly first: number
  readonly count: number
}

export interface InflateTask {
  readonly geometry: Geometry
  readonly body: Uint8Array
  readonly indices: Uint32Array
  readonly starts: Uint32Array
  readonly lengths: Uint32Array
}

export type Inflated =
  | { readonly _tag: "Inflated"; readonly slices: Array<Buffer>; readonly crcs: Uint32Array }
  | { readonly _tag: "BadPiece"; readonly index: number; readonly reason: string }

const asManifest = (g: Geometry): Manifest => g as unknown as Manifest

export const inflatePieces = (task: InflateTask): Inflated => {
  const m = asManifest(task.geometry)
  const n = task.indices.length
  const slices = new Array<Buffer>(n)
  const crcs = new Uint32Array(n)
  for (let k = 0; k < n; k++) {
    const index = task.indices[k]!
    const input = task.body.subarray(task.starts[k]!, task.starts[k]! + task.lengths[k]!)
    const expected = lengthOf(m, index)
    let out: Buffer
    let consumed: number
    try {
      const r = zlib.gunzipSync(input, { maxOutputLength: Math.max(1, expected), info: true }) as unknown as {
        buffer: Buffer
        engine: { bytesWritten: number }
      }
      out = r.buffer
      consumed = r.engine.bytesWritten
    } catch (e) {
      return { _tag: "BadPiece", index, reason: `${pieceFileName(m.dataset, index)} ${gunzipProblem(e, expected)}` }
    }
    if (consumed < input.length) {
      return {
        _tag: "BadPiece",
        index,
        reason: `${pieceFileName(m.dataset, index)} has ${input.length - consumed} bytes of trailing garbage after its gzip data`
      }
    }
    if (out.length !== expected) {
      return {
        _tag: "BadPiece",
        index,
        reason: `${pieceFileName(m.dataset, index)} decompresses to ${out.length} bytes, but the slice is ${expected}`
      }
    }
    slices[k] = out
    crcs[k] = zlib.crc32(out)
  }
  return { _tag: "Inflated", slices, crcs }
}

const gunzipProblem = (e: unknown, expected: number): string => {
  const err = e as NodeJS.ErrnoException
  if (err.code === "ERR_BUFFER_TOO_LARGE") return `decompresses to more than its slice of ${expected} bytes`
  const msg = err.message ?? String(e)
  if (/unexpected end/.test(msg)) return "is truncated (unexpected end of gzip data)"
  if (/incorrect header check|unknown compression method/.test(msg)) return "is not gzip data"
  if (/incorrect data check/.test(msg)) return "is corrupt (CRC32 mismatch)"
  if (/incorrect length check/.test(msg)) return "is corrupt (ISIZE mismatch)"
  return `is corrupt gzip (${msg})`
}

/** Consecutive runs of indices, so that a run is one positional write. */
export const runsOf = (indices: Uint32Array): Array<readonly [number, number]> => {
  const runs: Array<readonly [number, number]> = []
  let start = 0
  for (let k = 1; k <= indices.length; k++) {
    if (k === indices.length || indices[k] !== indices[k - 1]! + 1) {
      runs.push([start, k])
      start = k
    }
  }
  return runs
}

export const sliceOffset = (g: Geometry, index: number): number => offsetOf(asManifest(g), index)
export const crcOffset = (g: Geometry, index: number): number => (index - g.first) * 4
