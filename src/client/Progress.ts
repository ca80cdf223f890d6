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
import * as Fiber from "effect/Fiber"
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

/** What a row says after the dataset's name; `rate` in bytes per second. */
const status = (p: DatasetProgress, rate: number, width: number): string => {
  if (p.phase === "waiting") return `waiting for ${p.dataset}.done`
  if (p.phase === "queued") return `queued${p.note === "" ? "" : ` (${p.note})`}`
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
  return `${bar} ${(fraction * 100).toFixed(1).padStart(5)}% ${pieces} ${mb(p.ackedBytes)} of ${mb(p.bytes)} ${tail}`
}

/** One line for a dataset; `rate` in bytes per second (default: the average so far). */
export const describe = (p: DatasetProgress, now = Date.now(), rate = averageRate(p, now), width = 24): string =>
  `${p.dataset}${p.phase === "waiting" || p.phase === "queued" ? ":" : ""} ${status(p, rate, width)}`

export interface TerminalSize {
  readonly columns: number
  readonly rows: number
}

/** A note from a server or the system may hold a line break, which would break the board's count of its lines. */
const oneLine = (text: string) => text.replace(/[\x00-\x1f\x7f-\x9f]/g, " ")

/** Cuts a line to `width` columns (names and numbers are one column a character). */
const clip = (text: string, width: number) => {
  const chars = [...text]
  return chars.length <= width ? text : chars.slice(0, width).join("")
}

const PHASES: ReadonlyArray<Phase> = ["waiting", "queued", "sending", "committing", "committed", "failed"]

/**
 * The board's rows: one a dataset, names in one column, each row shorter than the terminal is
 * wide (a row that wrapped would leave a copy behind when the board is redrawn), and fewer rows
 * than the terminal is high (the cursor cannot move back above the top of the screen). When the
 * datasets do not fit, the finished ones go first, oldest first, and the last row counts those
 * not shown.
 */
export const boardRows = (snapshot: Snapshot, now: number, size: TerminalSize): Array<string> => {
  const width = Math.max(20, size.columns - 1)
  const height = Math.max(2, size.rows - 1)
  let shown = [...snapshot.values()]
  if (shown.length > height) {
    let finishedToHide = shown.length - (height - 1)
    shown = shown.filter((p) => !(finished(p) && finishedToHide-- > 0))
    shown = shown.slice(0, height - 1)
  }
  const hidden = [...snapshot.values()].filter((p) => !shown.includes(p))
  // a long name is shortened rather than pushing every bar off the screen
  const nameWidth = Math.min(Math.max(0, ...shown.map((p) => p.dataset.length)), Math.max(8, Math.floor(width / 3)))
  const name = (n: string) => (n.length > nameWidth ? `${n.slice(0, nameWidth - 1)}~` : n.padEnd(nameWidth))
  const rows = shown.map((p) => clip(oneLine(`${name(p.dataset)} ${status(p, averageRate(p, now), 24)}`), width))
  if (hidden.length > 0) {
    const counts = PHASES.map((phase) => [phase, hidden.filter((p) => p.phase === phase).length] as const).filter(([, n]) => n > 0)
    rows.push(clip(`(${hidden.length} more: ${counts.map(([phase, n]) => `${n} ${phase}`).join(", ")})`, width))
  }
  return rows
}

/**
 * The live board at the bottom of a terminal. It owns the lines under the cursor: whatever else
 * is printed while it is up (log lines, each dataset's result line) goes through `above`, which
 * erases the board, prints the lines and draws the board again below them, so nothing is left
 * half overwritten. Each redraw moves up over the lines drawn last time, rewrites them and erases
 * what is below, so the board can grow and shrink. `leave` draws it a last time and leaves it on
 * screen: what is printed after it (the run's summary) comes below.
 */
export const makeBoard = (write: (s: string) => void, size: () => TerminalSize) => {
  let drawn = 0 // rows of the board on screen, right above the cursor
  let painted = "" // what they show
  let latest: { readonly snapshot: Snapshot; readonly now: number } | undefined
  let left = false
  const up = () => (drawn > 0 ? `\x1b[${drawn}A` : "")
  /** The bytes that bring the screen from what was drawn to the latest board. */
  const redraw = () => {
    const rows = latest === undefined ? [] : boardRows(latest.snapshot, latest.now, size())
    const text = rows.map((r) => `\x1b[2K${r}\n`).join("")
    if (text === painted) return ""
    const out = `${up()}${text}\x1b[J`
    drawn = rows.length
    painted = text
    return out
  }
  const erase = () => {
    const out = drawn > 0 ? `${up()}\x1b[J` : ""
    drawn = 0
    painted = ""
    return out
  }
  const flush = (out: string) => {
    if (out !== "") write(out)
  }
  return {
    draw: (snapshot: Snapshot, now = Date.now()) => {
      if (left) return
      latest = { snapshot, now }
      flush(redraw())
    },
    /**
     * Prints whole lines (ending with a line break) above the board. `to` is where they go, when
     * not where the board is written: stdout's result lines on the same terminal as stderr's board.
     */
    above: (lines: string, to?: (s: string) => void) => {
      if (left) return (to ?? write)(lines)
      if (to === undefined) return write(`${erase()}${lines}${redraw()}`)
      flush(erase())
      to(lines)
      flush(redraw())
    },
    /** Draws the board a last time and leaves it on screen: what is printed afterwards comes below it. */
    leave: (snapshot?: Snapshot, now = Date.now()) => {
      if (left) return
      if (snapshot !== undefined) latest = { snapshot, now }
      flush(redraw())
      left = true
      drawn = 0
    }
  }
}

export type Board = ReturnType<typeof makeBoard>

/**
 * Redraws the board every `every` until the scope closes; then stops redrawing, draws it a last
 * time and leaves it, so that what the program prints next comes below the final board.
 */
export const runBoard = (board: Board, every: Duration.DurationInput = "200 millis"): Effect.Effect<void, never, Progress | Scope.Scope> =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const current = Effect.zip(SubscriptionRef.get(progress.state), Clock.currentTimeMillis)
    const ticker = yield* current.pipe(
      Effect.flatMap(([snapshot, now]) => Effect.sync(() => board.draw(snapshot, now))),
      Effect.repeat(Schedule.spaced(every)),
      Effect.forkScoped
    )
    // the ticker stops first, so that no redraw comes after the last one
    yield* Effect.addFinalizer(() =>
      Fiber.interrupt(ticker).pipe(
        Effect.zipRight(current),
        Effect.flatMap(([snapshot, now]) => Effect.sync(() => board.leave(snapshot, now)))
      )
    )
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

