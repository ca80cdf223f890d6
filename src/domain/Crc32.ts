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
