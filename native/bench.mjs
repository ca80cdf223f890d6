#!/usr/bin/env node
// Single-thread gunzip throughput: the ISA-L addon (inflateInto into a reused buffer)
// vs zlib.gunzipSync, on 10,000 pieces of 16 KiB of mixed content gzipped by zlib at
// level 1 (about 60% of each piece is compressible text/runs, the rest random bytes).
// Prints MB/s of decompressed output (1 MB = 10^6 bytes). Usage: node native/bench.mjs [pieces]
import { createRequire } from "node:module"
import { gunzipSync, gzipSync } from "node:zlib"

const require = createRequire(import.meta.url)
const native = require("./index.cjs")

const PIECES = Number(process.argv[2] ?? 10_000)
const SIZE = 16 * 1024
const ROUNDS = 3

// Seeded PRNG (mulberry32) so every run measures the same data.
let seed = 0x5eed
const rand = () => {
  seed = (seed + 0x6d2b79f5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const words = "ferry moves chunked gzip datasets between machines and rebuilds them fast verified piece slice ".split(" ")
const piece = () => {
  const b = Buffer.alloc(SIZE)
  let i = 0
  while (i < SIZE) {
    const n = Math.min(SIZE - i, 64 + Math.floor(rand() * 448))
    if (rand() < 0.6) {
      // compressible: words, sometimes a run of one byte
      if (rand() < 0.2) b.fill(Math.floor(rand() * 256), i, i + n)
      else {
        let k = 0
        while (k < n) k += b.write(words[Math.floor(rand() * words.length)] + " ", i + k, n - k, "latin1")
      }
    } else {
      for (let k = 0; k < n; k++) b[i + k] = Math.floor(rand() * 256)
    }
    i += n
  }
  return b
}

const raw = Array.from({ length: PIECES }, piece)
const gz = raw.map((b) => gzipSync(b, { level: 1 }))
const inBytes = gz.reduce((s, g) => s + g.length, 0)
const outBytes = PIECES * SIZE
console.log(
  `${PIECES} pieces x ${SIZE} B, gzip level 1: ${(inBytes / 1e6).toFixed(1)} MB compressed / ${(outBytes / 1e6).toFixed(1)} MB ` +
    `(ratio ${((100 * inBytes) / outBytes).toFixed(1)}%), node ${process.version}`
)

const out = Buffer.alloc(SIZE)
const viaAddon = () => {
  for (let i = 0; i < PIECES; i++) {
    const [status, produced] = native.inflateInto(gz[i], out, 0, SIZE)
    if (status !== 0 || produced !== SIZE) throw new Error(`addon: piece ${i}: status ${status}, produced ${produced}`)
  }
}
const viaZlib = () => {
  for (let i = 0; i < PIECES; i++) {
    if (gunzipSync(gz[i]).length !== SIZE) throw new Error(`zlib: piece ${i}: wrong size`)
  }
}
const best = (fn) => {
  fn() // warm up
  let t = Infinity
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = process.hrtime.bigint()
    fn()
    t = Math.min(t, Number(process.hrtime.bigint() - t0) / 1e9)
  }
  return t
}
const report = (name, seconds) =>
  console.log(`${name.padEnd(22)} ${(outBytes / 1e6 / seconds).toFixed(0).padStart(6)} MB/s   (${((seconds / PIECES) * 1e6).toFixed(1)} µs/piece)`)

const tz = best(viaZlib)
report("zlib.gunzipSync", tz)
if (native === null) {
  console.log("ISA-L addon            not built (run `node native/build.mjs`)")
} else {
  // Check correctness on every piece once before timing.
  for (let i = 0; i < PIECES; i++) {
    native.inflateInto(gz[i], out, 0, SIZE)
    if (!out.equals(raw[i])) throw new Error(`addon: piece ${i} differs from the original`)
  }
  const ta = best(viaAddon)
  report("ISA-L inflateInto", ta)
  console.log(`speed-up: ${(tz / ta).toFixed(2)}x`)
}
