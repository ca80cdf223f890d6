/**
 * Progress of the datasets being sent: a live board on a terminal, plain
 * periodic lines otherwise (logs, CI). Counts are plain numbers updated by
 * the transfer; a render fiber reads them on its own schedule.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"

export type Phase = "waiting" | "sending" | "committing" | "committed" | "failed"

export class DatasetProgress {
  phase: Phase = "waiting"
  startedAt = 0
  ackedPieces = 0
  ackedBytes = 0
  sentBytes = 0
  note = ""
  constructor(
    readonly dataset: string,
    public totalPieces = 0,
    public totalBytes = 0,
    public heldAtStart = 0
  ) {}

  start(totalPieces: number, totalBytes: number, held: number, heldBytes: number) {
    this.totalPieces = totalPieces
    this.totalBytes = totalBytes
    this.heldAtStart = held
    this.ackedPieces = held
    this.ackedBytes = heldBytes
    this.phase = "sending"
    this.startedAt = Date.now()
  }
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`

const clock = (seconds: number) => {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--"
  const s = Math.round(seconds)
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`
}

export const describe = (p: DatasetProgress, width = 24): string => {
  if (p.phase === "waiting") return `${p.dataset}: waiting for ${p.dataset}.done`
  const fraction = p.totalPieces === 0 ? 1 : p.ackedPieces / p.totalPieces
  const elapsed = (Date.now() - p.startedAt) / 1000
  const fresh = p.ackedBytes - (p.heldAtStart / Math.max(1, p.totalPieces)) * p.totalBytes
  const rate = elapsed > 0 ? fresh / elapsed : 0
  const eta = rate > 0 ? (p.totalBytes - p.ackedBytes) / rate : Number.NaN
  const filled = Math.round(fraction * width)
  const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`
  const pieces = `${p.ackedPieces.toLocaleString("en-US")}/${p.totalPieces.toLocaleString("en-US")} pieces`
  const tail = p.phase === "sending" ? `${mb(rate)}/s ETA ${clock(eta)}` : p.phase === "committed" ? "committed" : p.phase === "committing" ? "committing" : `failed${p.note === "" ? "" : `: ${p.note}`}`
  return `${p.dataset} ${bar} ${(fraction * 100).toFixed(1).padStart(5)}% ${pieces} ${mb(p.ackedBytes)} of ${mb(p.totalBytes)} ${tail}`
}

/**
 * Lines the live board occupies at the bottom of the terminal. A log line
 * printed meanwhile first erases them (see Logging.ts), and the board is drawn
 * again below it on its next tick, so neither overwrites the other.
 */
export const boardOnScreen = { lines: 0 }

/** Erases the live board, if any, so that a line can be printed in its place. */
export const eraseBoard = (write: (s: string) => void): void => {
  if (boardOnScreen.lines > 0) {
    write(`\x1b[${boardOnScreen.lines}A\x1b[0J`)
    boardOnScreen.lines = 0
  }
}

export interface Board {
  readonly track: (dataset: string) => DatasetProgress
  /** Draws once more, now, and leaves that on screen (at the end). */
  readonly flush: Effect.Effect<void>
}

/** A board that redraws in place on a terminal, or prints lines every `every` elsewhere. */
export const makeBoard = (options: {
  readonly mode: "tty" | "lines" | "none"
  readonly every?: Duration.DurationInput
  readonly write?: (s: string) => void
}) =>
  Effect.gen(function*() {
    const write = options.write ?? ((s: string) => void process.stderr.write(s))
    const rows: Array<DatasetProgress> = []
    const tty = options.mode === "tty"
    const draw = Effect.sync(() => {
      if (rows.length === 0) return
      if (tty) {
        let out = boardOnScreen.lines > 0 ? `\x1b[${boardOnScreen.lines}A` : ""
        for (const p of rows) out += `\x1b[2K${describe(p)}\n`
        boardOnScreen.lines = rows.length
        write(out)
      } else {
        for (const p of rows) if (p.phase === "sending" || p.phase === "committing") write(`${describe(p)}\n`)
      }
    })
    if (options.mode !== "none") {
      yield* draw.pipe(
        Effect.repeat(Schedule.spaced(options.every ?? (tty ? "200 millis" : "5 seconds"))),
        Effect.forkScoped
      )
    }
    return {
      track: (dataset: string) => {
        const p = new DatasetProgress(dataset)
        rows.push(p)
        return p
      },
      // the last drawing stays on screen as it is: what follows prints below it
      flush: tty ? Effect.zipRight(draw, Effect.sync(() => void (boardOnScreen.lines = 0))) : Effect.void
    } satisfies Board
  })
