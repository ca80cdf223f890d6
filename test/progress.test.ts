/**
 * Progress as state, and what shows it: rows, the terminal board, the
 * periodic lines off a terminal; and the reconnection schedule.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Stream, SubscriptionRef, TestClock } from "effect"
import {
  boardRows,
  type DatasetProgress,
  describe as describeRow,
  emptyProgress,
  makeBoard,
  makeProgress,
  type Phase,
  Progress,
  runProgressReports,
  type Snapshot
} from "../src/client/Progress.js"
import { reconnectSchedule } from "../src/client/Uplink.js"
import { Monitor, makeMonitor } from "../src/services/Monitor.js"
import { tempDirs, startServer } from "./support/cli.js"
import { makeFake } from "./support/datasets.js"
import { ferryOnTerminal, makeScreen } from "./support/screen.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

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

  const alpha = (ackedPieces: number, phase: Phase = "sending") => ({
    ...emptyProgress("alpha"), phase, pieces: 512, bytes: 8_388_608, ackedPieces, ackedBytes: ackedPieces * 16_384, startedAt: 0
  })
  const betagamma = (ackedPieces: number, phase: Phase = "sending") => ({
    ...emptyProgress("betagamma"), phase, pieces: 1024, bytes: 16_777_216, ackedPieces, ackedBytes: ackedPieces * 16_384, startedAt: 0
  })
  const board = (...rows: ReadonlyArray<DatasetProgress>): Snapshot => new Map(rows.map((p) => [p.dataset, p]))
  /** The column each row's bar starts at. */
  const barColumns = (rows: ReadonlyArray<string>) => rows.map((r) => r.indexOf("["))

  it("on a terminal, the board is redrawn in place as it grows and shrinks, lines printed meanwhile go above it, and it is left above the summary", () => {
    const screen = makeScreen({ columns: 120, rows: 30 })
    const stdout = (s: string) => screen.write(s) // stdout and stderr are the same terminal
    const live = makeBoard(screen.write, () => ({ columns: 120, rows: 30 }))
    screen.write("$ ferry send --path src --address 127.0.0.1:7000 --bwlimit 4MB/s\n")
    live.draw(board({ ...emptyProgress("alpha"), phase: "queued" }, { ...emptyProgress("betagamma"), phase: "queued" }), 0)
    live.draw(board(alpha(252), betagamma(100)), 10_000)
    expect(screen.history()).toEqual([
      "$ ferry send --path src --address 127.0.0.1:7000 --bwlimit 4MB/s",
      "alpha     [############------------]  49.2% 252/512 pieces 4.1 MB of 8.4 MB 0.4 MB/s ETA 0:10",
      "betagamma [##----------------------]   9.8% 100/1,024 pieces 1.6 MB of 16.8 MB 0.2 MB/s ETA 1:32"
    ])
    live.draw(board(alpha(512, "committing"), betagamma(300)), 10_000)
    live.draw(board(alpha(512, "committed"), betagamma(400)), 10_000)
    live.above("alpha: committed 8388608 bytes in 512 pieces (512 sent), crc32 a4719fd5\n", stdout)
    live.above("ferry: warning: 127.0.0.1:7000 went away; reconnecting\n")
    // a dataset whose marker has not appeared yet: three rows, then two again
    live.draw(board(alpha(512, "committed"), betagamma(500), emptyProgress("zeta")), 10_000)
    expect(screen.history().slice(-3)).toEqual([
      "alpha     [########################] 100.0% 512/512 pieces 8.4 MB of 8.4 MB committed",
      "betagamma [############------------]  48.8% 500/1,024 pieces 8.2 MB of 16.8 MB 0.8 MB/s ETA 0:10",
      "zeta      waiting for zeta.done"
    ])
    live.draw(board(alpha(512, "committed"), betagamma(900)), 10_000)
    live.draw(board(alpha(512, "committed"), betagamma(1024, "committing")), 10_000)
    live.leave(board(alpha(512, "committed"), betagamma(1024, "committed")), 10_000)
    live.above("ferry: done: 2 dataset(s) committed, 0 failed, 25.2 MB in 6.5 s (3.86 MB/s) sent\n")
    live.draw(board(alpha(512, "committed"), betagamma(1024, "committed")), 11_000) // nothing after it is left
    const final = screen.history()
    expect(final).toEqual([
      "$ ferry send --path src --address 127.0.0.1:7000 --bwlimit 4MB/s",
      "alpha: committed 8388608 bytes in 512 pieces (512 sent), crc32 a4719fd5",
      "ferry: warning: 127.0.0.1:7000 went away; reconnecting",
      "alpha     [########################] 100.0% 512/512 pieces 8.4 MB of 8.4 MB committed",
      "betagamma [########################] 100.0% 1,024/1,024 pieces 16.8 MB of 16.8 MB committed",
      "ferry: done: 2 dataset(s) committed, 0 failed, 25.2 MB in 6.5 s (3.86 MB/s) sent"
    ])
    expect(screen.cursor()).toEqual({ row: final.length, column: 0 })
  })

  it("the board fits the terminal: rows clipped to its width, no more rows than its height, names in one column", () => {
    const size = { columns: 40, rows: 10 }
    const committed = Array.from({ length: 12 }, (_, i) => ({ ...alpha(512, "committed"), dataset: `done${"abcdefghijkl"[i]}` }))
    const sending = [alpha(100), { ...betagamma(10), dataset: "averyveryverylongdatasetname" }]
    const failed = { ...betagamma(10, "failed"), dataset: "zeta", note: "disk full\non h:1" }
    const snapshot = board(...committed.slice(0, 6), ...sending, ...committed.slice(6), failed)
    const rows = boardRows(snapshot, 10_000, size)
    expect(rows).toHaveLength(9)
    for (const row of rows) expect(row.length).toBeLessThanOrEqual(39)
    // the finished datasets go first, oldest first; what is left out is counted
    expect(rows.map((r) => r.split(" ")[0])).toEqual(["alpha", "averyveryver~", "doneh", "donei", "donej", "donek", "donel", "zeta", "(7"])
    expect(rows.at(-1)).toBe("(7 more: 7 committed)")
    expect(rows[1]).toBe("averyveryver~ [------------------------")
    expect(rows[7]).toBe("zeta          [------------------------")
    expect(new Set(barColumns(rows.slice(0, -1)))).toEqual(new Set([14]))
    // redrawn many times on a terminal that size, it stays in place
    const screen = makeScreen(size)
    const live = makeBoard(screen.write, () => size)
    for (let i = 0; i < 5; i++) live.draw(snapshot, 10_000 + i)
    expect(screen.history()).toEqual(rows)
    expect(boardRows(board({ ...betagamma(10, "failed"), note: "disk full\non h:1" }), 10_000, { columns: 200, rows: 10 })[0]).toMatch(/ failed: disk full on h:1$/)
  })

  it("on a real terminal (a pseudo-terminal, 120 columns), two datasets with --bwlimit leave no stale line: each final row once, the summary last", async () => {
    const src = dirs.make("board-src")
    const dest = dirs.make("board-dest")
    await Promise.all([makeFake(src, "alpha", ["--size", "1MiB", "--seed", "1"]), makeFake(src, "betagamma", ["--size", "3MiB", "--seed", "2"])])
    const server = await startServer(dest)
    try {
      const size = { columns: 120, rows: 30 }
      const run = await ferryOnTerminal(["send", "--path", src, "--address", server.address, "--bwlimit", "2MB/s"], size)
      const screen = makeScreen(size)
      screen.write(run.output)
      const lines = screen.history()
      expect(run.code, lines.join("\n")).toBe(0)
      // the live board was up while sending, and redrawn in place
      expect(run.output).toMatch(/ \d+\/\d+ pieces .* ETA /)
      const finals = {
        alpha: /^alpha     \[#{24}\] 100\.0% 64\/64 pieces 1\.0 MB of 1\.0 MB committed$/,
        betagamma: /^betagamma \[#{24}\] 100\.0% 192\/192 pieces 3\.1 MB of 3\.1 MB committed$/
      }
      expect(lines.filter((l) => finals.alpha.test(l)), lines.join("\n")).toHaveLength(1)
      expect(lines.filter((l) => finals.betagamma.test(l)), lines.join("\n")).toHaveLength(1)
      // no other progress row anywhere: no bar, no "queued", no "waiting"
      expect(lines.filter((l) => /\[[#-]+\]|^\S+ +(queued|waiting)/.test(l) && !finals.alpha.test(l) && !finals.betagamma.test(l)), lines.join("\n")).toEqual([])
      expect(lines.filter((l) => /^alpha: committed 1048576 bytes in 64 pieces/.test(l))).toHaveLength(1)
      expect(lines.filter((l) => /^betagamma: committed 3145728 bytes in 192 pieces/.test(l))).toHaveLength(1)
      expect(lines.at(-1)).toMatch(/^ferry: done: 2 dataset\(s\) committed, 0 failed, /)
      // the board is the two rows above the summary, the result lines above it
      expect(lines.slice(-3, -1).map((l) => finals.alpha.test(l) || finals.betagamma.test(l))).toEqual([true, true])
      expect(lines).toHaveLength(5)
    } finally {
      await server.stop()
    }
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
      const collected = yield* Stream.fromQueue(events).pipe(Stream.take(2), Stream.runCollect)
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
