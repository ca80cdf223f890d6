/**
 * Gunzip and verify one batch of pieces against the manifest: the work each
 * gunzip worker does, also run in-process by the test layer. Every piece must
 * be whole gzip (CRC32 and ISIZE checked by zlib), use every input byte, and
 * decompress to exactly its slice.
 *
 * The slices of a batch are inflated straight into one buffer, in batch
 * order, so that a run of consecutive pieces is one positional write, and so
 * that no buffer is allocated per piece.
 */
import * as zlib from "node:zlib"
import { crcOffsetOf, type Geometry, lengthOf, offsetOf, pieceFileName } from "../domain/Layout.js"
import { loadNative, type NativeAddon } from "./Native.js"
import { openZlibHandle, type ZlibEngine } from "./ZlibHandle.js"

export interface InflateTask {
  readonly geometry: Geometry
  readonly body: Uint8Array
  readonly indices: Uint32Array
  readonly starts: Uint32Array
  readonly lengths: Uint32Array
}

export type Inflated =
  | {
    readonly _tag: "Inflated"
    /** The slices, back to back in batch order. */
    readonly slices: Buffer
    /** Where each slice starts in `slices`; one more entry marks the end. */
    readonly bounds: Float64Array
    /** The CRC32 of each slice, as the CRC file holds them: 4 bytes each, little-endian. */
    readonly crcs: Buffer
  }
  | { readonly _tag: "BadPiece"; readonly index: number; readonly reason: string }

type InflateOne = { readonly produced: number; readonly consumed: number } | { readonly error: NodeJS.ErrnoException }

const ISAL_PROBLEMS: Record<number, string> = {
  2: "unexpected end of file",
  3: "incorrect header check",
  4: "invalid deflate data",
  5: "incorrect data check",
  6: "incorrect length check"
}


type Engine = (input: Uint8Array, out: Buffer, at: number, room: number) => InflateOne

/** ISA-L through the native addon (about 1.3 to 3x faster than zlib, same verdicts), or zlib. */
const makeEngine = (isal: NativeAddon | null): Engine => {
  if (isal !== null) {
    return (input, out, at, room) => {
      const [status, produced, consumed] = isal.inflateInto(input, out, at, room + 1)
      if (status === 0) return { produced, consumed }
      if (status === 1) return { produced: room + 1, consumed }
      // good members followed by bytes that are not gzip: trailing garbage, as with zeros
      if (status === 3 && produced > 0) return { produced, consumed }
      return { error: Object.assign(new Error(ISAL_PROBLEMS[status] ?? `gzip error ${status}`), { code: `ISAL_${status}` }) }
    }
  }
  // one reusable engine over zlib's own handle (node/ZlibHandle.ts): it inflates into a buffer we
  // choose, and is reset between pieces instead of being rebuilt
  let engine: ZlibEngine | undefined
  let failure: NodeJS.ErrnoException | undefined
  const fresh = () => {
    const e = openZlibHandle()
    if (e === undefined) return undefined
    // keep the error for us instead of letting the stream destroy itself
    e.handle.onerror = (message, errno, code) => {
      failure = Object.assign(new Error(message), { errno, code }) as NodeJS.ErrnoException
    }
    return e
  }
  engine = fresh()
  if (engine === undefined) {
    return (input, out, at, room) => {
      try {
        const r = zlib.gunzipSync(input, { maxOutputLength: Math.max(1, room), info: true }) as unknown as { buffer: Buffer; engine: { bytesWritten: number } }
        r.buffer.copy(out, at)
        return { produced: r.buffer.length, consumed: r.engine.bytesWritten }
      } catch (e) {
        const err = e as NodeJS.ErrnoException
        return err.code === "ERR_BUFFER_TOO_LARGE" ? { produced: room + 1, consumed: input.length } : { error: err }
      }
    }
  }
  return (input, out, at, room) => {
    const e = engine!
    failure = undefined
    // one byte more than the slice: using it means the piece is too large
    e.handle.writeSync(zlib.constants.Z_FINISH, input, 0, input.length, out, at, room + 1)
    if (failure !== undefined) {
      engine = fresh()
      return { error: failure }
    }
    const produced = room + 1 - e.writeState[0]!
    const consumed = input.length - e.writeState[1]!
    e.handle.reset()
    return { produced, consumed }
  }
}

export interface Inflater {
  /** "ISA-L" or "zlib", for the logs. */
  readonly name: string
  /** Inflates and verifies a batch; `into`, when given and large enough, receives the slices (workers reuse one buffer). */
  readonly inflate: (task: InflateTask, into?: Buffer) => Inflated
  /** The CRC32 of `bytes` continuing from `crc` (zlib's crc32): ISA-L's when the addon is there, about 4x zlib's speed here. */
  readonly crc32: (bytes: Uint8Array, crc: number) => number
}

/** An inflater with its own engine: one per thread. `addonPath` null means zlib. */
export const makeInflater = (addonPath: string | null): Inflater => {
  const isal = loadNative(addonPath)
  const engine = makeEngine(isal)
  return {
    name: isal === null ? "zlib" : "ISA-L",
    inflate: (task, into) => inflatePieces(engine, task, into),
    crc32: isal === null ? (bytes, crc) => zlib.crc32(bytes, crc) : (bytes, crc) => isal.crc32(bytes, crc)
  }
}

const inflatePieces = (engine: Engine, task: InflateTask, into?: Buffer): Inflated => {
  const m = task.geometry
  const n = task.indices.length
  const bounds = new Float64Array(n + 1)
  for (let k = 0; k < n; k++) bounds[k + 1] = bounds[k]! + lengthOf(m, task.indices[k]!)
  const slices = into !== undefined && into.length >= bounds[n]! + 1 ? into : Buffer.allocUnsafeSlow(bounds[n]! + 1)
  const crcs = Buffer.allocUnsafe(n * 4)
  const body = Buffer.from(task.body.buffer, task.body.byteOffset, task.body.byteLength)
  for (let k = 0; k < n; k++) {
    const index = task.indices[k]!
    const input = body.subarray(task.starts[k]!, task.starts[k]! + task.lengths[k]!)
    const expected = bounds[k + 1]! - bounds[k]!
    const r = engine(input, slices, bounds[k]!, expected)
    const name = pieceFileName(m.dataset, index)
    if ("error" in r) return { _tag: "BadPiece", index, reason: `${name} ${gunzipProblem(r.error)}` }
    if (r.produced > expected) {
      return { _tag: "BadPiece", index, reason: `${name} decompresses to more than its slice of ${expected} bytes` }
    }
    if (r.consumed < input.length) {
      return { _tag: "BadPiece", index, reason: `${name} has ${input.length - r.consumed} bytes of trailing garbage after its gzip data` }
    }
    if (r.produced !== expected) {
      return { _tag: "BadPiece", index, reason: `${name} decompresses to ${r.produced} bytes, but the slice is ${expected}` }
    }
    // zlib has checked each member's CRC: for a single member (ISIZE = whole length) the trailer's CRC is the slice's
    const single = input.length >= 18 && input.readUInt32LE(input.length - 4) === expected >>> 0
    crcs.writeUInt32LE(single ? input.readUInt32LE(input.length - 8) : zlib.crc32(slices.subarray(bounds[k]!, bounds[k + 1]!)), k * 4)
  }
  return { _tag: "Inflated", slices, bounds, crcs }
}

const gunzipProblem = (err: NodeJS.ErrnoException): string => {
  const msg = err.message ?? String(err)
  if (/unexpected end/.test(msg)) return "is truncated (unexpected end of gzip data)"
  if (/incorrect header check|unknown compression method/.test(msg)) return "is not gzip data"
  if (/incorrect data check/.test(msg)) return "is corrupt (CRC32 mismatch)"
  if (/incorrect length check/.test(msg)) return "is corrupt (ISIZE mismatch)"
  if (/invalid deflate data/.test(msg)) return "is corrupt (invalid deflate data)"
  return `is corrupt gzip (${msg})`
}

/** Consecutive runs of indices, [from, to) positions in the batch: each run is one positional write. */
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

/** One positional write of a verified batch. */
export interface Placement {
  readonly file: "data" | "crcs"
  readonly bytes: Uint8Array
  readonly position: number
}

/**
 * Where a verified batch goes: for each run of consecutive pieces, their
 * slices at the run's offset in the data file, and their CRC32s at its place
 * in the CRC file. The worker threads and the in-process pool both write
 * exactly these, so the arithmetic exists once.
 */
export const placementsOf = (task: InflateTask, inflated: Extract<Inflated, { _tag: "Inflated" }>): Array<Placement> => {
  const out: Array<Placement> = []
  for (const [a, b] of runsOf(task.indices)) {
    const first = task.indices[a]!
    out.push({ file: "data", bytes: inflated.slices.subarray(inflated.bounds[a]!, inflated.bounds[b]!), position: offsetOf(task.geometry, first) })
    out.push({ file: "crcs", bytes: inflated.crcs.subarray(a * 4, b * 4), position: crcOffsetOf(task.geometry, first) })
  }
  return out
}
