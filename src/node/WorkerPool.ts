/**
 * A pool of worker threads running one script, for the CPU- and
 * syscall-heavy batches (reading piece files, gunzip + positional writes).
 * Each task is one batch, so the cost of a message is paid per batch, never
 * per piece. Threads start with the scope (all, or `start` of them and the rest on
 * demand) and are terminated with it.
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
  /** Threads at most. */
  readonly size: number
  /** Threads started so far (see `WorkerPoolOptions.start`). */
  readonly started: () => number
  readonly run: (task: In, transfer?: ReadonlyArray<Transferable>) => Effect.Effect<Out>
}

/** What a worker script posts back for task `id`. */
export type WorkerReply<Out> = { readonly id: number; readonly ok: Out } | { readonly id: number; readonly crash: string }

/** One worker thread per core. */
export const defaultWorkers = (): number => Math.max(1, os.availableParallelism())

interface Pending<Out> {
  readonly resume: (result: Effect.Effect<Out>) => void
}

export interface WorkerPoolOptions {
  /** Given to every worker at start (as `workerData`). */
  readonly data?: unknown
  /** Tasks a worker may queue, so it never waits for the main thread between batches. */
  readonly depth?: number
  /**
   * Threads started with the pool (default: all of `size`; with 0, the first starts with the first
   * task). The others start one at a time, up to `size`, when work is waiting and every started
   * thread has been busy without a pause for `growAfterMs`: a pool that keeps up with its callers
   * never pays for threads it does not need (a thread's start, and V8 compiling its hot code again
   * in its own isolate).
   */
  readonly start?: number
  /** See `start`. */
  readonly growAfterMs?: number
}

export const makeWorkerPool = <In, Out>(
  script: URL,
  size: number,
  options: WorkerPoolOptions = {}
): Effect.Effect<WorkerPool<In, Out>, never, import("effect").Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const { data, depth = 2, growAfterMs = 300 } = options
      const start = Math.max(0, Math.min(size, options.start ?? size))
      // the pool's name for the metrics: its script's (workers/inflate.js is "inflate")
      const pool = (script.pathname.split("/").pop() ?? "worker").replace(/\.[cm]?js$/, "")
      const threads = Metric.tagged(workerThreads, "pool", pool)
      interface Slot {
        worker: Worker
        /** Tasks posted and not answered. */
        busy: number
        /** When the current busy time began (for the metric). */
        since: number
        /** When the thread last went from idle to busy; undefined while idle. */
        streak: number | undefined
        readonly busySeconds: Metric.Metric.Counter<number>
      }
      const workers: Array<Slot> = []
      let closing = false
      /** Tasks asked for: `slot` is the thread a task was posted to, undefined while it waits in the queue. */
      const pending = new Map<number, Pending<Out> & { readonly slot: Slot | undefined }>()
      /** A look again at the queue once a busy pool may grow: no task or answer may come meanwhile (a thread stuck in a syscall). */
      let recheck: NodeJS.Timeout | undefined
      const queue: Array<{ id: number; task: In; transfer: ReadonlyArray<Transferable> }> = []
      let nextId = 1

      const startThread = (): Slot => {
        const i = workers.length
        const busySeconds = Metric.tagged(Metric.tagged(workerBusySeconds, "pool", pool), "thread", String(i))
        busySeconds.unsafeUpdate(0, []) // shown at 0 from the start
        const slot: Slot = { worker: spawn(), busy: 0, since: 0, streak: undefined, busySeconds }
        workers.push(slot)
        threads.unsafeModify(1, [])
        attach(slot)
        return slot
      }
      const spawn = () => {
        const worker = new Worker(script, { workerData: data })
        worker.unref()
        return worker
      }
      /** Every started thread full and busy without a pause for `growAfterMs`: one more, if the pool may grow. */
      const grown = (): Slot | undefined => {
        if (workers.length >= size || closing) return undefined
        const now = performance.now()
        for (const w of workers) if (w.streak === undefined || now - w.streak < growAfterMs) return undefined
        return startThread()
      }

      const pump = () => {
        while (queue.length > 0) {
          let slot = workers[0] ?? startThread()
          for (const w of workers) if (w.busy < slot.busy) slot = w
          if (slot.busy >= depth) {
            const more = grown()
            if (more === undefined) {
              if (recheck === undefined && workers.length < size && !closing) {
                recheck = setTimeout(() => {
                  recheck = undefined
                  pump()
                }, growAfterMs)
                recheck.unref()
              }
              return
            }
            slot = more
          }
          const job = queue.shift()!
          const p = pending.get(job.id)
          if (p === undefined) continue // interrupted while queued
          pending.set(job.id, { resume: p.resume, slot })
          const now = performance.now()
          if (slot.busy === 0) slot.since = now
          slot.streak ??= now
          slot.busy++
          slot.worker.postMessage({ id: job.id, task: job.task }, job.transfer as Array<Transferable>)
        }
      }

      function attach(slot: Slot) {
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
          if (slot.busy === 0) slot.streak = undefined
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
          slot.worker = spawn()
          slot.busy = 0
          slot.streak = undefined
          attach(slot)
          pump()
        })
        slot.worker.on("error", () => {}) // followed by "exit"
      }
      threads.unsafeModify(0, []) // shown from the start, at 0 when no thread has started yet
      for (let i = 0; i < start; i++) startThread()

      const run = (task: In, transfer: ReadonlyArray<Transferable> = []) =>
        Effect.async<Out>((resume) => {
          const id = nextId++
          pending.set(id, { resume, slot: undefined })
          queue.push({ id, task, transfer })
          pump()
          return Effect.sync(() => {
            pending.delete(id)
          })
        })

      return {
        size,
        run,
        /** Threads started so far. */
        started: () => workers.length,
        terminate: () => {
          closing = true
          if (recheck !== undefined) clearTimeout(recheck)
          threads.unsafeModify(-workers.length, [])
          return Promise.all(workers.map((w) => w.worker.terminate()))
        }
      }
    }),
    // a thread stuck in a syscall (a hung filesystem) never finishes terminating: do not wait on it for good
    (pool) => Effect.promise(() => pool.terminate()).pipe(Effect.timeout("2 seconds"), Effect.ignore)
  ).pipe(Effect.map(({ run, size, started }) => ({ run, size, started })))
