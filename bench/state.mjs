#!/usr/bin/env node
// Scale check: the bookkeeping for one 10,000,000-piece dataset, on the server
// (bitmap of held pieces, what Opened carries) and on the client (the scan's
// inventory, the batch plan), measured as memory growth. Run with
// `node --expose-gc bench/state.mjs` (npm run bench runs it too).
import { writeFileSync, mkdirSync } from "node:fs"
import { PieceBitmap } from "../dist/domain/Bitmap.js"
import { Manifest, pieceFileName } from "../dist/domain/Dataset.js"
import { Inventory } from "../dist/domain/Inventory.js"
import { planBatches } from "../dist/client/Transfer.js"

const PIECES = 10_000_000
const gc = globalThis.gc ?? (() => {})
const used = () => {
  gc()
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}
const mib = (b) => (b / 1024 / 1024).toFixed(1)
const rows = []
const measure = (what, run) => {
  const before = used()
  let peak = before
  const sample = () => (peak = Math.max(peak, process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers))
  const kept = run(sample)
  const after = used()
  rows.push({ what, retainedMiB: Number(mib(after - before)), peakMiB: Number(mib(peak - before)) })
  return kept
}

const manifest = new Manifest({ dataset: "abc", size: PIECES * 16384 - 100, sliceSize: 16384, first: 0, count: PIECES, firstSliceCrc: 0 })

// server: the bitmap of a dataset in progress, half held at random
const bitmap = measure("server: bitmap of held pieces", () => {
  const b = new PieceBitmap(PIECES)
  for (let i = 0; i < PIECES; i += 2) b.set(i)
  return b
})
{
  // a string V8 may keep outside its heap: count its characters instead
  const text = bitmap.toBase64()
  rows.push({ what: "server: Opened's bitmap (base64) for a resume", retainedMiB: Number(mib(text.length)), peakMiB: Number(mib(text.length)) })
}

// client: scanning ten million names keeps a few numbers per dataset
measure("client: inventory of a 10M-name scan", (sample) => {
  const inv = new Inventory()
  for (let i = 0; i < PIECES; i++) {
    inv.add(pieceFileName("abc", i))
    if (i % 1_000_000 === 0) sample()
  }
  return inv
})

// client: the batch plan is made as it is consumed, from the bitmap
measure("client: batch plan for the missing half", (sample) => {
  let batches = 0
  for (const task of planBatches(manifest, bitmap, 4096)) {
    batches++
    if (batches % 10_000 === 0) sample()
    void task
  }
  return batches
})

const total = rows.reduce((n, r) => n + Math.max(r.retainedMiB, r.peakMiB), 0)
console.log(`## Bookkeeping for one dataset of ${PIECES.toLocaleString("en-US")} pieces\n`)
console.log("| what | retained MiB | peak while building MiB |")
console.log("| --- | ---: | ---: |")
for (const r of rows) console.log(`| ${r.what} | ${r.retainedMiB} | ${r.peakMiB} |`)
console.log(`\nSum of the larger of the two per row: ${total.toFixed(1)} MiB (target: under 64 MiB).`)
mkdirSync(new URL("./results/", import.meta.url), { recursive: true })
writeFileSync(new URL("./results/state.json", import.meta.url), JSON.stringify({ pieces: PIECES, rows, totalMiB: total }, null, 2) + "\n")
if (total >= 64) process.exitCode = 1
