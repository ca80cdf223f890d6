import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as TestClock from "effect/TestClock"
import { boardOnScreen, describe as describeRow, eraseBoard, makeBoard } from "../src/client/Progress.js"

describe("progress board", () => {
  it.scoped("without a terminal, prints a plain line per active dataset on each tick", () =>
    Effect.gen(function*() {
      const out: Array<string> = []
      const board = yield* makeBoard({ mode: "lines", every: "5 seconds", write: (s) => void out.push(s) })
      const p = board.track("abc")
      p.start(1000, 16_384_000, 0, 0)
      p.ackedPieces = 250
      p.ackedBytes = 4_096_000
      yield* TestClock.adjust("5 seconds")
      expect(out.join("")).toMatch(/^abc \[######-+\]  25\.0% 250\/1,000 pieces 4\.1 MB of 16\.4 MB .*MB\/s ETA /m)
      p.phase = "committed"
      out.length = 0
      yield* TestClock.adjust("5 seconds")
      expect(out).toEqual([]) // finished datasets are not repeated
    }))

  it.scoped("on a terminal, redraws in place and gives way to log lines", () =>
    Effect.gen(function*() {
      const out: Array<string> = []
      const write = (s: string) => void out.push(s)
      const board = yield* makeBoard({ mode: "tty", every: "200 millis", write })
      board.track("one")
      board.track("two")
      yield* TestClock.adjust("200 millis")
      expect(boardOnScreen.lines).toBe(2)
      yield* TestClock.adjust("200 millis")
      expect(out.at(-1)).toMatch(/^\x1b\[2A\x1b\[2Kone: waiting for one\.done\n\x1b\[2Ktwo: waiting for two\.done\n$/)
      eraseBoard(write)
      expect(out.at(-1)).toBe("\x1b[2A\x1b[0J")
      expect(boardOnScreen.lines).toBe(0)
      yield* board.flush
      expect(boardOnScreen.lines).toBe(0)
    }))

  it("describes failures and commits", () => {
    const row = { dataset: "x", phase: "failed", note: "disk full", totalPieces: 10, ackedPieces: 5, totalBytes: 100, ackedBytes: 50, heldAtStart: 0, startedAt: Date.now(), sentBytes: 0 } as never
    expect(describeRow(row)).toMatch(/50\.0% 5\/10 pieces .* failed: disk full$/)
  })
})

describe("reconnection backoff", () => {
  it("doubles from 0.25 s up to 10 s, with jitter between half and all of it", async () => {
    const { backoff } = await import("../src/client/Client.js")
    const Duration = await import("effect/Duration")
    const ms = (attempt: number, random: number) => Duration.toMillis(backoff(attempt, random))
    expect([0, 1, 2, 3].map((a) => ms(a, 1))).toEqual([250, 500, 1000, 2000])
    expect(ms(0, 0)).toBe(125)
    expect(ms(10, 1)).toBe(10_000)
    expect(ms(30, 0)).toBe(5_000)
  })
})
