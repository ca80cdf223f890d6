/**
 * A fixed pool of worker threads running one script, for the CPU- and
 * syscall-heavy batches (reading piece files, gunzip + positional writes).
 * Each task is one batch, so the cost of a message is paid per batch, never
 * per piece. Workers start with the scope and are terminated with it.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as os from "node:os"
import { Worker, type Transferable } from "node:worker_threads"

/**
 * How busy each thread is: the time during which it had at least one batch posted and not yet
 * answered, as the main thread sees it (so it includes the message's trip both ways). Its rate
 * is the thread's utilisation, from 0 to 1. Counted at each answer, so once per batch.
 */
export const workerBusySeconds = Metric.counter("ferry_worker_busy_seconds_total", {
  description: "Seconds during which a worker thread had a batch to work on, by pool (inflate, read) and thread; its rate is the thread's utilisation (0 to 1).",
  incremental: true
})
export const workerThreads = Metric.gauge("ferry_worker_threads", { description: "Worker threads, by pool (inflate, read)." })

export interface WorkerPool<In, Out> {
  readonly size: number
  readonly run: (task: In, transfer?: ReadonlyArray<Transferable>) => Effect.Effect<Out>
}

/** What a worker script posts back for task `id`. */
export type WorkerReply<Out> = { readonly id: number; readonly ok: Out } | { readonly id: number; readonly crash: string }

/** One worker thread per core. */
export const defaultWorkers = (): number => Math.max(1, os.availableParallelism())

interface Pending<Out> {
  readonly resume: (result: Effect.Effect<Out>) => void
}

export const makeWorkerPool = <In, Out>(
  script: URL,
  size: number,
  /** Given to every worker at start (as `workerData`). */
  data: unknown = undefined,
  /** Tasks a worker may queue, so it never waits for the main thread between batches. */
  depth = 2
): Effect.Effect<WorkerPool<In, Out>, never, import("effect").Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      // the pool's name for the metrics: its script's (workers/inflate.js is "inflate")
      const pool = (script.pathname.split("/").pop() ?? "worker").replace(/\.[cm]?js$/, "")
      const threads = Metric.tagged(workerThreads, "pool", pool)
      threads.unsafeModify(size, [])
      const workers = Array.from({ length: size }, (_, i) => {
        const worker = new Worker(script, { workerData: data })
        worker.unref()
        const busySeconds = Metric.tagged(Metric.tagged(workerBusySeconds, "pool", pool), "thread", String(i))
        busySeconds.unsafeUpdate(0, []) // shown at 0 from the start
        return { worker, busy: 0, since: 0, busySeconds }
      })
      let closing = false
      const pending = new Map<number, Pending<Out> & { readonly slot: (typeof workers)[number] }>()
      const queue: Array<{ id: number; task: In; transfer: ReadonlyArray<Transferable> }> = []
      let nextId = 1

      const pump = () => {
        while (queue.length > 0) {
          let slot = workers[0]!
          for (const w of workers) if (w.busy < slot.busy) slot = w
          if (slot.busy >= depth) return
          const job = queue.shift()!
          const p = pending.get(job.id)
          if (p === undefined) continue // interrupted while queued
          pending.set(job.id, { resume: p.resume, slot })
          if (slot.busy === 0) slot.since = performance.now()
          slot.busy++
          slot.worker.postMessage({ id: job.id, task: job.task }, job.transfer as Array<Transferable>)
        }
      }

      const attach = (slot: (typeof workers)[number]) => {
        slot.worker.on("message", (reply: WorkerReply<Out>) => {
          const p = pending.get(reply.id)
          const now = performance.now()
          slot.busySeconds.unsafeUpdate((now - slot.since) / 1000, [])
          slot.since = now
          slot.busy--
          if (p !== undefined) {
            pending.delete(reply.id)
            p.resume("ok" in reply ? Effect.succeed(reply.ok) : Effect.die(new Error(`worker failed: ${reply.crash}`)))
          }
          pump()
        })
        // A worker that dies fails the jobs it held (as defects) and is replaced, so that later
        // jobs are not queued behind a thread that will never answer.
        slot.worker.once("exit", () => {
          if (closing) return
          for (const [id, p] of pending) {
            if (p.slot === slot) {
              pending.delete(id)
              p.resume(Effect.die(new Error("a worker thread stopped")))
            }
          }
          slot.worker = new Worker(script, { workerData: data })
          slot.worker.unref()
          slot.busy = 0
          attach(slot)
          pump()
        })
        slot.worker.on("error", () => {}) // followed by "exit"
      }
      for (const slot of workers) attach(slot)

      const run = (task: In, transfer: ReadonlyArray<Transferable> = []) =>
        Effect.async<Out>((resume) => {
          const id = nextId++
          pending.set(id, { resume, slot: workers[0]! })
          queue.push({ id, task, transfer })
          pump()
          return Effect.sync(() => {
            pending.delete(id)
          })
        })

      return {
        size,
        run,
        terminate: () => {
          closing = true
          threads.unsafeModify(-size, [])
          return Promise.all(workers.map((w) => w.worker.terminate()))
        }
      }
    }),
    // a thread stuck in a syscall (a hung filesystem) never finishes terminating: do not wait on it for good
    (pool) => Effect.promise(() => pool.terminate()).pipe(Effect.timeout("2 seconds"), Effect.ignore)
  ).pipe(Effect.map(({ run, size }) => ({ run, size })))
