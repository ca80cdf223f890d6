/**
 * Progress as state, and what shows it: rows, the terminal board, the
 * periodic lines off a terminal; and the reconnection schedule.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Stream, SubscriptionRef, TestClock } from "effect"
import { describe as describeRow, emptyProgress, makeBoard, makeProgress, Progress, runProgressReports } from "../src/client/Progress.js"
import { reconnectSchedule } from "../src/client/Uplink.js"
import { Monitor, makeMonitor } from "../src/services/Monitor.js"

describe("progress state", () => {
  it.effect("updates are immutable snapshots a program can subscribe to", () =>
    Effect.gen(function*() {
      const progress = yield* makeProgress
      const seen = yield* progress.state.changes.pipe(Stream.take(3), Stream.runCollect, Effect.fork)
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow()
      yield* progress.update("abc", (p) => ({ ...p, phase: "sending", pieces: 10, ackedPieces: 2 }))
      const first = yield* SubscriptionRef.get(progress.state)
      yield* progress.update("abc", (p) => ({ ...p, ackedPieces: 5 }))
      expect(first.get("abc")!.ackedPieces).toBe(2)
      const snapshots = [...(yield* seen)]
      expect(snapshots.map((s) => s.get("abc")?.ackedPieces)).toEqual([undefined, 2, 5])
    }))

  it.effect("a sender running for months keeps only the latest finished datasets", () =>
    Effect.gen(function*() {
      const progress = yield* makeProgress
      for (let i = 0; i < 200; i++) yield* progress.update(`d${String.fromCharCode(97 + (i % 26))}${i}`, (p) => ({ ...p, phase: "committed" }))
      yield* progress.update("live", (p) => ({ ...p, phase: "sending" }))
      const snapshot = yield* SubscriptionRef.get(progress.state)
      expect(snapshot.size).toBe(65)
      expect(snapshot.get("live")?.phase).toBe("sending")
    }))
})

describe("showing progress", () => {
  const sending = { ...emptyProgress("abc"), phase: "sending" as const, pieces: 1000, bytes: 16_384_000, ackedPieces: 250, ackedBytes: 4_096_000, startedAt: 0 }

  it("describes each phase in one line", () => {
    expect(describeRow({ ...emptyProgress("abc") })).toBe("abc: waiting for abc.done")
    expect(describeRow({ ...emptyProgress("abc"), phase: "queued", note: "Busy at h:1" })).toBe("abc: queued (Busy at h:1)")
    expect(describeRow(sending, 10_000, 1_000_000)).toBe("abc [######------------------]  25.0% 250/1,000 pieces 4.1 MB of 16.4 MB 1.0 MB/s ETA 0:12")
    expect(describeRow({ ...sending, phase: "failed", note: "disk full" }, 10_000)).toMatch(/ failed: disk full$/)
  })

  it("the terminal board redraws in place, clipped to the terminal's width, and gives way to log lines", () => {
    const out: Array<string> = []
    const board = makeBoard((s) => void out.push(s), () => 40)
    const snapshot = new Map([["abc", sending], ["two", emptyProgress("two")]])
    board.draw(snapshot, 10_000)
    board.draw(snapshot, 10_000)
    const lines = out.at(-1)!.split("\n").filter((l) => l !== "")
    expect(out.at(-1)!.startsWith("\x1b[2A")).toBe(true)
    for (const line of lines) expect(line.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "").length).toBeLessThanOrEqual(39)
    board.erase()
    expect(out.at(-1)).toBe("\x1b[2A\x1b[0J")
    board.erase()
    expect(out.at(-1)).toBe("\x1b[2A\x1b[0J") // nothing left to erase: nothing written
    expect(out.filter((s) => s === "\x1b[2A\x1b[0J")).toHaveLength(1)
  })

  it.scoped("off a terminal, a line per interval: timestamp, rate over the last interval, ETA; and progress events", () =>
    Effect.gen(function*() {
      const progress = yield* makeProgress
      const monitor = yield* makeMonitor()
      const events = yield* monitor.subscribe
      const lines: Array<string> = []
      yield* runProgressReports({ every: "5 seconds", events: true, line: (t) => Effect.sync(() => void lines.push(t)) }).pipe(
        Effect.provideService(Progress, progress),
        Effect.provideService(Monitor, monitor)
      )
      yield* progress.update("abc", () => ({ ...sending, ackedBytes: 0, ackedPieces: 0, startedAt: 0 }))
      yield* progress.update("abc", (p) => ({ ...p, ackedBytes: 5_000_000, ackedPieces: 300 }))
      yield* TestClock.adjust("5 seconds")
      yield* progress.update("abc", (p) => ({ ...p, ackedBytes: 7_000_000, ackedPieces: 420 }))
      yield* TestClock.adjust("5 seconds")
      expect(lines).toHaveLength(2)
      expect(lines[0]).toMatch(/^1970-01-01T00:00:05\.000Z abc .* 1\.0 MB\/s ETA 0:11$/)
      // the second interval moved 2 MB in 5 s: 0.4 MB/s, and the 9.4 MB left take 0:23 at that rate
      expect(lines[1]).toMatch(/^1970-01-01T00:00:10\.000Z abc .* 0\.4 MB\/s ETA 0:23$/)
      const collected = yield* events.pipe(Stream.take(2), Stream.runCollect)
      expect([...collected].map((e) => e.event === "progress" && [e.rate, e.eta])).toEqual([[1_000_000, 11], [400_000, 23]])
    }))
})

describe("reconnection schedule", () => {
  it.effect("exponential from 0.25 s, capped, jittered, and bounded by count", () =>
    Effect.gen(function*() {
      let attempts = 0
      const failing = Effect.suspend(() => {
        attempts++
        return Effect.fail("down")
      })
      const fiber = yield* failing.pipe(Effect.retry(reconnectSchedule({ retries: 8, retryFor: "1 hour", cap: "2 seconds" })), Effect.either, Effect.fork)
      // 0.25, 0.5, 1, 2, 2, 2, 2, 2 s, each jittered by 0.8 to 1.2: at most 14.1 s in all
      yield* TestClock.adjust("15 seconds")
      const r = yield* fiber.await
      expect(r._tag === "Success" && Either.isLeft(r.value)).toBe(true)
      expect(attempts).toBe(9)
    }))

  it.effect("and bounded by time", () =>
    Effect.gen(function*() {
      let attempts = 0
      const failing = Effect.suspend(() => {
        attempts++
        return Effect.fail("down")
      })
      const fiber = yield* failing.pipe(Effect.retry(reconnectSchedule({ retries: 1000, retryFor: "10 seconds", cap: "1 second" })), Effect.either, Effect.fork)
      yield* TestClock.adjust("30 seconds")
      yield* fiber.await
      // 0.25 + 0.5 + about 1 s per retry after that: about 10 attempts in 10 s, never 1000
      expect(attempts).toBeGreaterThan(5)
      expect(attempts).toBeLessThan(20)
    }))
})
