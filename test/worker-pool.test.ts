import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { makeWorkerPool } from "../src/node/WorkerPool.js"

const script = () => {
  const file = join(mkdtempSync(join(tmpdir(), "ferry-pool-")), "echo.mjs")
  writeFileSync(
    file,
    `import { parentPort } from "node:worker_threads"
parentPort.on("message", ({ id, task }) => {
  if (task === "die") process.exit(3)
  if (task === "throw") return parentPort.postMessage({ id, crash: "boom" })
  if (typeof task === "object") Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, task.sleep)
  parentPort.postMessage({ id, ok: typeof task === "object" ? task.sleep : task * 2 })
})`
  )
  return pathToFileURL(file)
}

describe("worker pool", () => {
  it.scoped("runs tasks on every worker and answers each caller", () =>
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<number | string | { sleep: number }, number>(script(), 2)
      const results = yield* Effect.forEach([1, 2, 3, 4, 5, 6, 7], (n) => pool.run(n), { concurrency: "unbounded" })
      expect(results).toEqual([2, 4, 6, 8, 10, 12, 14])
    }))

  it.scoped("a worker that dies fails its job as a defect and is replaced", () =>
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<number | string | { sleep: number }, number>(script(), 1)
      const died = yield* Effect.exit(pool.run("die"))
      expect(Exit.isFailure(died) && Exit.isInterrupted(died) === false).toBe(true)
      // the replacement answers
      expect(yield* pool.run(21)).toBe(42)
      const crashed = yield* Effect.exit(pool.run("throw"))
      expect(Exit.isFailure(crashed)).toBe(true)
      expect(yield* pool.run(5)).toBe(10)
    }))

  it.scoped("starts its other threads only when the started ones stay busy with work waiting", () =>
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<number | string | { sleep: number }, number>(script(), 2, { start: 1, depth: 1, growAfterMs: 20 })
      expect(pool.started()).toBe(1)
      // one task at a time: nothing ever waits, so the second thread is never needed
      for (const n of [1, 2, 3, 4]) expect(yield* pool.run(n)).toBe(n * 2)
      expect(yield* pool.run({ sleep: 40 })).toBe(40)
      expect(pool.started()).toBe(1)
      // four at once, each busy 60 ms: the first thread is busy past 20 ms with three waiting
      const slept = yield* Effect.forEach([60, 60, 60, 60], (ms) => pool.run({ sleep: ms }), { concurrency: "unbounded" })
      expect(slept).toEqual([60, 60, 60, 60])
      expect(pool.started()).toBe(2)
    }))
  it.scoped("with start 0, starts no thread until the first task, then one", () =>
    Effect.gen(function*() {
      const pool = yield* makeWorkerPool<number | string | { sleep: number }, number>(script(), 2, { start: 0 })
      expect(pool.started()).toBe(0)
      expect(yield* pool.run(21)).toBe(42)
      expect(pool.started()).toBe(1)
    }))
})
