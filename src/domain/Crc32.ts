/**
 * CRC-32 (the gzip polynomial) of a whole file from the CRCs of its slices,
 * without reading the file again: crc(A ++ B) = shift(crc(A), |B|) xor crc(B).
 * shift(., n) is linear over GF(2), so it is a 32x32 bit matrix, built once
 * per slice length and applied per piece in 32 steps.
 */

type Matrix = Uint32Array<ArrayBuffer>

const times = (mat: Matrix, vec: number): number => {
  let sum = 0
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]!
  return sum >>> 0
}

const square = (mat: Matrix): Matrix => {
  const out = new Uint32Array(32)
  for (let n = 0; n < 32; n++) out[n] = times(mat, mat[n]!)
  return out
}

const multiply = (a: Matrix, b: Matrix): Matrix => {
  // (a . b)[n] = a applied to b's column n
  const out = new Uint32Array(32)
  for (let n = 0; n < 32; n++) out[n] = times(a, b[n]!)
  return out
}

const identity = (): Matrix => {
  const out = new Uint32Array(32)
  for (let n = 0; n < 32; n++) out[n] = (1 << n) >>> 0
  return out
}

/** The operator that appends `bytes` zero bytes to a CRC's message. */
export const shiftOperator = (bytes: number): Matrix => {
  // One zero bit: the CRC register steps once.
  let power = new Uint32Array(32)
  power[0] = 0xedb88320
  for (let n = 1; n < 32; n++) power[n] = (1 << (n - 1)) >>> 0
  power = square(square(square(power))) // eight zero bits: one byte
  let result = identity()
  for (let n = bytes; n > 0; n = Math.floor(n / 2)) {
    if (n % 2 === 1) result = multiply(power, result)
    power = square(power)
  }
  return result
}

export const applyShift = (op: Matrix, crc: number): number => times(op, crc >>> 0)

/** crc32(A ++ B) from crc32(A), crc32(B) and |B|. */
export const combine = (crcA: number, crcB: number, lengthB: number): number =>
  (applyShift(shiftOperator(lengthB), crcA) ^ crcB) >>> 0

/** Folds the CRCs of consecutive slices (all `sliceSize` long but the last) into the file's CRC. */
export class FileCrc {
  private readonly op: Matrix
  private crc = 0
  constructor(sliceSize: number) {
    this.op = shiftOperator(sliceSize)
  }
  /** Adds the next full slice. */
  add(sliceCrc: number): void {
    this.crc = (applyShift(this.op, this.crc) ^ sliceCrc) >>> 0
  }
  /** Adds a final slice of another length. */
  addLast(sliceCrc: number, length: number): void {
    this.crc = combine(this.crc, sliceCrc, length)
  }
  get value(): number {
    return this.crc
  }
}

export const formatCrc = (crc: number): string => (crc >>> 0).toString(16).padStart(8, "0")

/** Operators for shifts of 2^k bytes, k = 0..52: any length is a product of a few of them. */
let powers: Array<Matrix> | undefined
const shiftPowers = (): Array<Matrix> => {
  if (powers === undefined) {
    powers = [shiftOperator(1)]
    for (let k = 1; k <= 52; k++) powers.push(square(powers[k - 1]!))
  }
  return powers
}

/** shift(crc, bytes) for any length, in at most 53 matrix-vector products (no matrix built). */
export const shiftBy = (crc: number, bytes: number): number => {
  const p = shiftPowers()
  let out = crc >>> 0
  for (let k = 0; bytes > 0 && out !== 0; k++) {
    if (bytes % 2 === 1) out = times(p[k]!, out)
    bytes = Math.floor(bytes / 2)
  }
  return out
}

/**
 * The CRC32 of a whole file from the CRCs of its slices, added in any order:
 * crc(P0 ++ ... ++ Pn) is the xor over i of shift(crc(Pi), bytes after Pi),
 * because shifting is linear. So batches read in parallel, or pieces held by
 * the server and pieces sent now, each add their share when they are known.
 */
export class ContentCrc {
  private crc = 0
  private readonly op: Matrix | undefined
  constructor(
    /** Size of the whole file. */
    readonly size: number,
    readonly sliceSize: number
  ) {
    this.op = sliceSize > 0 ? shiftOperator(sliceSize) : undefined
  }

  /**
   * Adds slices `offset .. offset + lengths` (consecutive in the file): `crcs[k]` is the CRC32 of
   * slice k, `lengths[k]` its length; all but the last are `sliceSize` long.
   */
  addRun(offset: number, crcs: ArrayLike<number>, lengths: ArrayLike<number>, from = 0, to = crcs.length): void {
    let run = 0
    let bytes = 0
    for (let k = from; k < to; k++) {
      const length = lengths[k]!
      run = length === this.sliceSize && this.op !== undefined ? (applyShift(this.op, run) ^ crcs[k]!) >>> 0 : combine(run, crcs[k]!, length)
      bytes += length
    }
    this.crc = (this.crc ^ shiftBy(run, this.size - offset - bytes)) >>> 0
  }

  get value(): number {
    return this.crc
  }
}
