/**
 * Which pieces of a dataset are held: one bit per piece, so ten million
 * pieces cost 1.25 MB. Bit i stands for piece first + i.
 */
export class PieceBitmap {
  private heldCount = 0

  constructor(
    readonly count: number,
    readonly bits: Uint8Array = new Uint8Array(Math.ceil(count / 8))
  ) {
    if (bits.length !== Math.ceil(count / 8)) throw new RangeError("bitmap length does not match count")
    for (let i = 0; i < bits.length; i++) this.heldCount += popcount(bits[i]!)
  }

  get held(): number {
    return this.heldCount
  }

  get complete(): boolean {
    return this.heldCount === this.count
  }

  has(i: number): boolean {
    return (this.bits[i >>> 3]! & (1 << (i & 7))) !== 0
  }

  /** Marks piece i; answers false when it was already held. */
  set(i: number): boolean {
    const mask = 1 << (i & 7)
    const byte = this.bits[i >>> 3]!
    if ((byte & mask) !== 0) return false
    this.bits[i >>> 3] = byte | mask
    this.heldCount++
    return true
  }

  /** The runs of missing pieces, as [start, end) pairs of relative indices. */
  *missing(): Generator<readonly [number, number]> {
    let i = 0
    while (i < this.count) {
      // skip whole held bytes fast
      if ((i & 7) === 0 && this.bits[i >>> 3] === 0xff) {
        i += 8
        continue
      }
      if (this.has(i)) {
        i++
        continue
      }
      const start = i
      while (i < this.count && !this.has(i)) i++
      yield [start, i]
    }
  }

  /** The runs of held pieces, as [start, end) pairs of relative indices. */
  *heldRuns(): Generator<readonly [number, number]> {
    let at = 0
    for (const [a, b] of this.missing()) {
      if (a > at) yield [at, a]
      at = b
    }
    if (at < this.count) yield [at, this.count]
  }

  toBase64(): string {
    return Buffer.from(this.bits.buffer, this.bits.byteOffset, this.bits.byteLength).toString("base64")
  }

  static fromBase64(count: number, text: string): PieceBitmap | undefined {
    const bytes = Buffer.from(text, "base64")
    if (bytes.length !== Math.ceil(count / 8)) return undefined
    const bits = new Uint8Array(bytes.length)
    bits.set(bytes)
    // bits past `count` must be clear
    if (count % 8 !== 0 && bits.length > 0 && (bits[bits.length - 1]! >> (count % 8)) !== 0) return undefined
    return new PieceBitmap(count, bits)
  }
}

const popcount = (b: number): number => {
  b = b - ((b >> 1) & 0x55)
  b = (b & 0x33) + ((b >> 2) & 0x33)
  return (b + (b >> 4)) & 0x0f
}
