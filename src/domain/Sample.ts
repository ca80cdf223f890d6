/**
 * Realistic sample content, deterministic from a seed: runs of text-like
 * bytes (words from a vocabulary, which gzip shrinks about 3x) alternating
 * with runs of random bytes (which it cannot shrink), so that a dataset
 * compresses around 1.5 to 3x like real data, not like zeros or noise.
 */

/** mulberry32: small, fast, good enough for test data. */
export const prng = (seed: number) => {
  let a = seed >>> 0
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
}

const mix = (seed: number, index: number): number => {
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35)
  return (h ^ (h >>> 16)) >>> 0
}

const SYLLABLES = ["ka", "ri", "to", "mel", "an", "dor", "vi", "est", "lu", "pon", "sa", "ter", "qu", "io", "ne", "bar", "lo", "zen", "fi", "ra"]
const PUNCT = [" ", " ", " ", " ", " ", ", ", ". ", "\n", " = ", ": "]

/** A pool of text made of words, to copy windows from. Same seed, same pool. */
export const textPool = (seed: number, bytes = 256 * 1024): Buffer => {
  const next = prng(seed ^ 0x5eed)
  const words: Array<string> = []
  for (let i = 0; i < 400; i++) {
    let w = ""
    const n = 1 + (next() % 4)
    for (let k = 0; k < n; k++) w += SYLLABLES[next() % SYLLABLES.length]
    words.push(w)
  }
  const parts: Array<string> = []
  let length = 0
  while (length < bytes) {
    // a few words are much more frequent than others, as in real text
    const r = next() % 1000
    const w = words[r < 500 ? r % 20 : r % words.length]!
    const p = PUNCT[next() % PUNCT.length]!
    parts.push(w, p)
    length += w.length + p.length
  }
  return Buffer.from(parts.join("")).subarray(0, bytes)
}

/** Fills `out` with slice `index` of the sample file made from `seed`. */
export const fillSlice = (out: Buffer, pool: Buffer, seed: number, index: number): void => {
  const next = prng(mix(seed, index))
  let at = 0
  while (at < out.length) {
    const run = Math.min(out.length - at, 256 + (next() % 3840))
    if (next() % 100 < 70) {
      const from = next() % (pool.length - run)
      pool.copy(out, at, from, from + run)
      at += run
    } else {
      const end = at + run
      for (; at + 4 <= end; at += 4) out.writeUInt32LE(next(), at)
      for (; at < end; at++) out[at] = next() & 0xff
    }
  }
}
