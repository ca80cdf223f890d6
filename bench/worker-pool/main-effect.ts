import * as Worker from "@effect/platform/Worker"
import * as NodeWorker from "@effect/platform-node/NodeWorker"
import * as Effect from "effect/Effect"
import { Worker as W } from "node:worker_threads"
const t0 = performance.now(); const c0 = process.cpuUsage()
const program = Effect.gen(function*() {
  const pool = yield* Worker.makePool<number, number, never>({ size: 2, concurrency: 2 })
  yield* Effect.all([pool.executeEffect(1), pool.executeEffect(2)], { concurrency: 2 })
  const t1 = performance.now()
  for (let i = 0; i < 2000; i++) yield* pool.executeEffect(i)
  const t2 = performance.now()
  console.log(`effect pool: first answers after ${(t1 - t0).toFixed(0)} ms; 2000 round trips ${(t2 - t1).toFixed(0)} ms`)
}).pipe(Effect.scoped, Effect.provide(NodeWorker.layer(() => new W(new URL("./effect-worker.mjs", import.meta.url)))))
Effect.runPromise(program).then(() => { const c = process.cpuUsage(c0); console.log(`cpu ${(c.user + c.system) / 1000} ms (main+workers)`) })
