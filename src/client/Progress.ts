/**
 * Progress of the datasets being sent, as state a program can read or
 * subscribe to (a SubscriptionRef of immutable snapshots), and the ways the
 * command line shows it: a board redrawn in place on a terminal, and
 * periodic lines (with the rate over the interval and an ETA) or progress
 * events elsewhere. The transfer only updates the state; who shows it is the
 * program's choice.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { formatBytes } from "../domain/Units.js"
import { publish } from "../services/Monitor.js"

export type Phase = "waiting" | "queued" | "sending" | "committing" | "committed" | "failed"

export interface DatasetProgress {
  readonly dataset: string
  readonly phase: Phase
  readonly pieces: number
  readonly bytes: number
  /** Pieces and original bytes the server has acknowledged (those it held before included). */
  readonly ackedPieces: number
  readonly ackedBytes: number
  /** Original bytes the server already held when this transfer started. */
  readonly heldBytes: number
  readonly startedAt: number
  readonly server: string
  /** Why it is queued, or why it failed. */
  readonly note: string
}

export type Snapshot = ReadonlyMap<string, DatasetProgress>

export const emptyProgress = (dataset: string): DatasetProgress => ({
  dataset,
  phase: "waiting",
  pieces: 0,
  bytes: 0,
  ackedPieces: 0,
  ackedBytes: 0,
  heldBytes: 0,
  startedAt: 0,
  server: "",
  note: ""
})

/** Finished datasets kept in the state, so that a sender running for months stays small. */
const KEEP_FINISHED = 64

export class Progress extends Context.Tag("ferry/Progress")<Progress, {
  readonly state: SubscriptionRef.SubscriptionRef<Snapshot>
  readonly update: (dataset: string, f: (p: DatasetProgress) => DatasetProgress) => Effect.Effect<void>
}>() {}

const finished = (p: DatasetProgress) => p.phase === "committed" || p.phase === "failed"

export const makeProgress = Effect.map(SubscriptionRef.make<Snapshot>(new Map()), (state) => ({
  state,
  update: (dataset: string, f: (p: DatasetProgress) => DatasetProgress) =>
    SubscriptionRef.update(state, (current) => {
      const next = new Map(current)
      next.set(dataset, f(current.get(dataset) ?? emptyProgress(dataset)))
      let done = 0
      for (const p of next.values()) if (finished(p)) done++
      for (const [name, p] of next) {
        if (done <= KEEP_FINISHED) break
        if (finished(p)) {
          next.delete(name)
          done--
        }
      }
      return next
    })
}))

export const ProgressLive = Layer.effect(Progress, makeProgress)

/* Showing it */

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`

const clock = (seconds: number) => {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--"
  const s = Math.round(seconds)
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`
}

/** Original bytes per second since the transfer started (what this run sent, not what was held). */
const averageRate = (p: DatasetProgress, now: number) => {
  const elapsed = (now - p.startedAt) / 1000
  return elapsed > 0 ? (p.ackedBytes - p.heldBytes) / elapsed : 0
}

/** One line for a dataset; `rate` in bytes per second (default: the average so far). */
export const describe = (p: DatasetProgress, now = Date.now(), rate = averageRate(p, now), width = 24): string => {
  if (p.phase === "waiting") return `${p.dataset}: waiting for ${p.dataset}.done`
  if (p.phase === "queued") return `${p.dataset}: queued${p.note === "" ? "" : ` (${p.note})`}`
  // sent early, before its marker, a dataset's total is not known (0): no fraction, no ETA
  const fraction = p.pieces === 0 ? (p.phase === "sending" ? 0 : 1) : p.ackedPieces / p.pieces
  const eta = rate > 0 && p.bytes > 0 ? (p.bytes - p.ackedBytes) / rate : Number.NaN
  const filled = Math.round(fraction * width)
  const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`
  const pieces = `${p.ackedPieces.toLocaleString("en-US")}/${p.pieces.toLocaleString("en-US")} pieces`
  const tail = p.phase === "sending"
    ? `${mb(rate)}/s ETA ${clock(eta)}`
    : p.phase === "committed"
    ? "committed"
    : p.phase === "committing"
    ? "committing"
    : `failed${p.note === "" ? "" : `: ${p.note}`}`
  return `${p.dataset} ${bar} ${(fraction * 100).toFixed(1).padStart(5)}% ${pieces} ${mb(p.ackedBytes)} of ${mb(p.bytes)} ${tail}`
}

/**
 * The live board at the bottom of a terminal. A log line printed meanwhile first erases it (the
 * logger calls `erase`), and the board is drawn again below it on its next tick, so neither
 * overwrites the other. Lines are clipped to the terminal's width, so that a redraw never leaves
 * a wrapped copy behind.
 */
export const makeBoard = (write: (s: string) => void, columns: () => number) => {
  let lines = 0
  return {
    erase: () => {
      if (lines > 0) write(`\x1b[${lines}A\x1b[0J`)
      lines = 0
    },
    draw: (snapshot: Snapshot, now = Date.now()) => {
      if (snapshot.size === 0) return
      const width = Math.max(20, columns() - 1)
      let out = lines > 0 ? `\x1b[${lines}A` : ""
      for (const p of snapshot.values()) out += `\x1b[2K${describe(p, now).slice(0, width)}\n`
      lines = snapshot.size
      write(out)
    },
    /** Leaves what is drawn on screen for good: what follows prints below it. */
    keep: () => {
      lines = 0
    }
  }
}

export type Board = ReturnType<typeof makeBoard>

/** Redraws the board every `every` until the scope closes, then once more, and leaves it. */
export const runBoard = (board: Board, every: Duration.DurationInput = "200 millis"): Effect.Effect<void, never, Progress | Scope.Scope> =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const draw = Effect.flatMap(SubscriptionRef.get(progress.state), (s) => Effect.sync(() => board.draw(s)))
    yield* draw.pipe(Effect.repeat(Schedule.spaced(every)), Effect.forkScoped)
    yield* Effect.addFinalizer(() => Effect.zipRight(draw, Effect.sync(() => board.keep())))
  })

/**
 * Every `every`, for each dataset being sent: a line with a timestamp, the rate over the last
 * interval and the ETA at that rate (for logs and CI), and/or a `progress` event.
 */
export const runProgressReports = (options: {
  readonly every: Duration.DurationInput
  readonly line?: (text: string) => Effect.Effect<void>
  readonly events?: boolean
}): Effect.Effect<void, never, Progress | Scope.Scope> =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const previous = new Map<string, { readonly at: number; readonly bytes: number }>()
    const report = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const snapshot = yield* SubscriptionRef.get(progress.state)
      for (const p of snapshot.values()) {
        if (p.phase !== "sending" && p.phase !== "committing") {
          previous.delete(p.dataset)
          continue
        }
        const before = previous.get(p.dataset) ?? { at: p.startedAt, bytes: p.heldBytes }
        const seconds = (now - before.at) / 1000
        const rate = seconds > 0 ? Math.max(0, p.ackedBytes - before.bytes) / seconds : 0
        previous.set(p.dataset, { at: now, bytes: p.ackedBytes })
        const eta = rate > 0 && p.bytes > 0 ? (p.bytes - p.ackedBytes) / rate : null
        if (options.line !== undefined) yield* options.line(`${new Date(now).toISOString()} ${describe(p, now, rate)}`)
        if (options.events === true) {
          yield* publish({ event: "progress", dataset: p.dataset, ackedPieces: p.ackedPieces, pieces: p.pieces, ackedBytes: p.ackedBytes, bytes: p.bytes, rate: Math.round(rate), eta: eta === null ? null : Math.round(eta) })
        }
      }
    })
    yield* report.pipe(Effect.repeat(Schedule.spaced(options.every)), Effect.delay(options.every), Effect.forkScoped)
  })

/** "1.64 GB in 5.1 s (322 MB/s)". */
export const summary = (bytes: number, seconds: number) =>
  `${formatBytes(bytes)} in ${seconds.toFixed(1)} s (${formatBytes(bytes / Math.max(seconds, 1e-3))}/s)`

export const formatDuration = (d: Duration.DurationInput) => Duration.format(d)
