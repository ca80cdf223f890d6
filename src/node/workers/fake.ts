/** Sample-data worker: makes a run of slices, gzips each into its piece file, hands the slices back for hashing. */
import * as fs from "node:fs"
import * as path from "node:path"
import { parentPort } from "node:worker_threads"
import * as zlib from "node:zlib"
import { pieceFileName } from "../../domain/Layout.js"
import { fillSlice, textPool } from "../../domain/Sample.js"
import type { SliceRun, SliceRunDone } from "../../services/SampleMaker.js"

let pool: { seed: number; text: Buffer } | undefined

const work = (run: SliceRun): SliceRunDone => {
  if (pool?.seed !== run.seed) pool = { seed: run.seed, text: textPool(run.seed) }
  const raw = Buffer.allocUnsafeSlow(run.bytes)
  let at = 0
  let compressed = 0
  for (let k = 0; k < run.count; k++) {
    const index = run.from + k
    const length = Math.min(run.sliceSize, run.size - index * run.sliceSize)
    const slice = raw.subarray(at, at + length)
    fillSlice(slice, pool.text, run.seed, index)
    const gz = zlib.gzipSync(slice, { level: run.level })
    fs.writeFileSync(path.join(run.dir, pieceFileName(run.name, run.firstNumber + index)), gz)
    compressed += gz.length
    at += length
  }
  return { raw: raw.buffer as ArrayBuffer, compressed }
}

parentPort!.on("message", ({ id, task }: { id: number; task: SliceRun }) => {
  try {
    const ok = work(task)
    parentPort!.postMessage({ id, ok }, [ok.raw])
  } catch (e) {
    parentPort!.postMessage({ id, crash: e instanceof Error ? e.message : String(e) })
  }
})
