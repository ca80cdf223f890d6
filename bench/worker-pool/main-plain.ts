import { Worker } from "node:worker_threads"
const t0 = performance.now(); const c0 = process.cpuUsage()
const ws = [0, 1].map(() => new Worker(new URL("./plain-worker.mjs", import.meta.url)))
let id = 0
const call = (w: Worker, n: number) => new Promise<number>((ok) => { const my = ++id; const h = (m: any) => { if (m.id === my) { w.off("message", h); ok(m.ok) } }; w.on("message", h); w.postMessage({ id: my, task: n }) })
;(async () => {
  await Promise.all([call(ws[0]!, 1), call(ws[1]!, 2)])
  const t1 = performance.now()
  for (let i = 0; i < 2000; i++) await call(ws[i % 2]!, i)
  const t2 = performance.now()
  console.log(`plain pool: first answers after ${(t1 - t0).toFixed(0)} ms; 2000 round trips ${(t2 - t1).toFixed(0)} ms`)
  await Promise.all(ws.map((w) => w.terminate()))
  const c = process.cpuUsage(c0); console.log(`cpu ${(c.user + c.system) / 1000} ms (main+workers)`)
})()
