/**
 * `--bwlimit` by the clock, in process: the timetable's parser and evaluator
 * (src/domain/Timetable.ts) by properties, and the Throttle following it on
 * Effect's TestClock: the limit in force changes at the time the timetable says,
 * a frame already waiting on the old rate is let go when it turns off, and a
 * constant rate waits exactly what the bucket owes.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Option, TestClock } from "effect"
import fc from "fast-check"
import { DAY_MS, DAYS, inForce, type Limit, nextChange, parseTimetable, type Timetable, WEEK_MS } from "../src/domain/Timetable.js"
import { formatByteSize } from "../src/domain/Units.js"
import { localWeekPosition, Throttle, ThrottleLive } from "../src/services/Throttle.js"

fc.configureGlobal({ seed: 20261202, numRuns: 300 })

const two = (n: number) => String(n).padStart(2, "0")
/** "HH:MM:SS" of a time of day in ms. */
const clock = (ms: number) => `${two(Math.floor(ms / 3_600_000))}:${two(Math.floor(ms / 60_000) % 60)}:${two(Math.floor(ms / 1000) % 60)}`

const timetable = (text: string): Timetable => {
  const parsed = parseTimetable(text)
  if ("problem" in parsed) throw new Error(`${text}: ${parsed.problem}`)
  return parsed
}

interface EntryModel {
  readonly day: number | undefined
  readonly minute: number
  readonly limit: Limit
}
const entryText = (e: EntryModel) =>
  `${e.day === undefined ? "" : `${DAYS[e.day]}-`}${two(Math.floor(e.minute / 60))}:${two(e.minute % 60)},${e.limit === "off" ? "off" : `${e.limit}`}`

const entries = fc.uniqueArray(
  fc.record({
    day: fc.option(fc.integer({ min: 0, max: 6 }), { nil: undefined }),
    // few distinct minutes and limits, so that every-day and one-day entries meet, and limits repeat
    minute: fc.oneof(fc.constantFrom(0, 480, 1080, 1439), fc.integer({ min: 0, max: 1439 })),
    limit: fc.oneof(fc.constant("off" as const), fc.constantFrom(1024, 10 * 1024 * 1024), fc.integer({ min: 1, max: 1e9 }))
  }),
  { minLength: 2, maxLength: 8, selector: (e) => `${e.day}@${e.minute}` }
)
const position = fc.integer({ min: 0, max: WEEK_MS - 1 })

describe("Timetable", () => {
  it("the limit in force is constant up to the next change, and differs from then on", () => {
    fc.assert(
      fc.property(entries, position, fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), (model, at, u) => {
        const table = timetable(model.map(entryText).join(" "))
        const now = inForce(table, at).limit
        const next = nextChange(table, at)
        if (next === undefined) {
          expect(new Set(table.changes.map((c) => c.limit))).toEqual(new Set([now]))
          return
        }
        expect(next.after).toBeGreaterThan(0)
        expect(next.after).toBeLessThanOrEqual(WEEK_MS)
        expect(inForce(table, at + Math.floor(u * next.after)).limit).toBe(now)
        expect(inForce(table, at + next.after)).toEqual(next.change)
        expect(next.change.limit).not.toBe(now)
      })
    )
  })

  it("at an entry's own time its limit is in force, on its day, or every day no one-day entry takes that time", () => {
    fc.assert(
      fc.property(entries, (model) => {
        const table = timetable(model.map(entryText).join(" "))
        for (const e of model) {
          for (const day of e.day === undefined ? [0, 1, 2, 3, 4, 5, 6] : [e.day]) {
            const taken = e.day === undefined && model.some((o) => o.day === day && o.minute === e.minute)
            if (!taken) expect(inForce(table, day * DAY_MS + e.minute * 60_000)).toMatchObject({ limit: e.limit, entry: entryText(e) })
          }
        }
      })
    )
  })

  it("a plain rate is one entry, always in force; off is no limit", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 40 }), position, (bytes, at) => {
        for (const text of [`${bytes}`, `${formatByteSize(bytes)}/s`]) {
          const table = timetable(text)
          expect(inForce(table, at).limit).toBe(bytes)
          expect(nextChange(table, at)).toBeUndefined()
        }
        expect(inForce(timetable("off"), at).limit).toBe("off")
        expect(inForce(timetable("OFF"), at).limit).toBe("off")
      })
    )
    expect(inForce(timetable("10MiB/s"), 0).limit).toBe(10 * 1024 * 1024)
    expect(inForce(timetable(" 50MB/s "), 12345).limit).toBe(50_000_000)
  })

  it("rclone's example: by day of the week, wrapping round the week", () => {
    const table = timetable("Mon-08:00,10MiB/s Sat-00:00,off")
    const at = (day: number, hh: number, mm: number) => day * DAY_MS + (hh * 60 + mm) * 60_000
    expect(inForce(table, at(6, 12, 0)).limit).toBe("off") // Sunday
    expect(inForce(table, at(0, 7, 59)).limit).toBe("off")
    expect(inForce(table, at(0, 8, 0)).limit).toBe(10 * 1024 * 1024)
    expect(inForce(table, at(4, 23, 59)).limit).toBe(10 * 1024 * 1024)
    expect(nextChange(table, at(0, 8, 0))).toEqual({ after: at(5, 0, 0) - at(0, 8, 0), change: { at: at(5, 0, 0), limit: "off", entry: "Sat-00:00,off" } })
    expect(nextChange(table, at(6, 23, 0))?.after).toBe(9 * 3_600_000)
    const daily = timetable("08:00,10MiB/s 18:00:30,off")
    expect(inForce(daily, at(3, 3, 0)).limit).toBe("off")
    expect(nextChange(daily, at(3, 17, 0))?.after).toBe(3_630_000)
  })

  it("a bad entry among good ones is named, with why", () => {
    const bad = fc.constantFrom(
      ["25:00,1M", "is not a time of day"],
      ["08:61,off", "is not a time of day"],
      ["Mon-8,1M", "is not a time of day"],
      ["Mun-08:00,1M", "\"Mun\" is not a day"],
      ["08:00,fast", "\"fast\" is not a rate"],
      ["08:00,0", "\"0\" is not a rate above 0"],
      ["10MiB/s", "an entry is [Day-]HH:MM,RATE"]
    )
    fc.assert(
      fc.property(entries, bad, fc.nat(), (model, [entry, why], where) => {
        const words = model.map(entryText)
        words.splice(where % (words.length + 1), 0, entry)
        const parsed = parseTimetable(words.join(" "))
        expect(parsed).toEqual({ problem: expect.stringContaining(`has a bad entry ${JSON.stringify(entry)}: `) })
        expect((parsed as { problem: string }).problem).toContain(why)
      })
    )
    expect(parseTimetable("08:00,1M 18:00,off 08:00,2M")).toEqual({ problem: "has a bad entry \"08:00,2M\": its time is already given by \"08:00,1M\"" })
    expect(parseTimetable("fast")).toEqual({ problem: expect.stringContaining("must be a rate such as 50MiB/s or 10MB/s, off, or a timetable") })
    expect(parseTimetable("  ")).toEqual({ problem: "is empty" })
  })

  it("a one-day entry wins over an every-day entry at the same time, in either order", () => {
    for (const text of ["08:00,1M Tue-08:00,off", "Tue-08:00,off 08:00,1M"]) {
      const table = timetable(text)
      expect(inForce(table, DAY_MS + 8 * 3_600_000).limit).toBe("off")
      expect(inForce(table, 8 * 3_600_000).limit).toBe(1_000_000)
    }
  })
})

describe("Throttle by the clock (TestClock)", () => {
  const KiB = 1024
  /** Every-day entries around the TestClock's start (epoch 0 in this process's local time): `rate` until `seconds` from now, then `then`. */
  const aroundStart = (rate: string, seconds: number, then: string) => {
    const startOfDay = localWeekPosition(0) % DAY_MS
    const at = (offset: number) => clock((((startOfDay + offset) % DAY_MS) + DAY_MS) % DAY_MS)
    return timetable(`${at(-3_600_000)},${rate} ${at(seconds * 1000)},${then}`)
  }

  it.scoped("the limit changes at the time the timetable says; a frame waiting on the old rate goes when it turns off", () =>
    Effect.gen(function*() {
      const throttle = yield* Throttle
      expect(yield* throttle.limit).toBe(16 * KiB)
      // the burst (64 KiB) and then 10 s of debt at 16 KiB/s: far past the change
      yield* throttle.take(64 * KiB)
      const frame = yield* Effect.fork(throttle.take(160 * KiB))
      yield* TestClock.adjust("2999 millis")
      expect(yield* throttle.limit).toBe(16 * KiB)
      expect(Option.isNone(yield* Fiber.poll(frame))).toBe(true)
      yield* TestClock.adjust("1 millis")
      expect(yield* throttle.limit).toBe(0)
      yield* Fiber.join(frame)
      // off: nothing waits
      yield* throttle.take(1024 * 1024 * 1024)
    }).pipe(Effect.provide(ThrottleLive(aroundStart("16KiB/s", 3, "off")))))

  it.scoped("from off to a rate: the bucket starts full, and the debt is paid at the new rate", () =>
    Effect.gen(function*() {
      const throttle = yield* Throttle
      expect(yield* throttle.limit).toBe(0)
      yield* TestClock.adjust("2 seconds")
      expect(yield* throttle.limit).toBe(64 * KiB)
      // a full bucket of 64 KiB, then 128 KiB owed at 64 KiB/s: 2 s
      yield* throttle.take(64 * KiB)
      const frame = yield* Effect.fork(throttle.take(128 * KiB))
      yield* TestClock.adjust("1999 millis")
      expect(Option.isNone(yield* Fiber.poll(frame))).toBe(true)
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(frame)
    }).pipe(Effect.provide(ThrottleLive(aroundStart("off", 2, "64KiB/s")))))

  it.scoped("reapplied (SIGHUP) after the clock was set back: the limit in force is read off the clock again", () =>
    Effect.gen(function*() {
      const throttle = yield* Throttle
      yield* TestClock.adjust("3 seconds")
      expect(yield* throttle.limit).toBe(0)
      // the clock set back before the change: the follower still sleeps until the next change as it read it
      yield* TestClock.setTime(0)
      expect(yield* throttle.limit).toBe(0)
      yield* throttle.reapply
      expect(yield* throttle.limit).toBe(16 * KiB)
      // and it follows the timetable from there: off again at the change
      yield* TestClock.adjust("3 seconds")
      expect(yield* throttle.limit).toBe(0)
    }).pipe(Effect.provide(ThrottleLive(aroundStart("16KiB/s", 3, "off")))))

  it.scoped("a constant rate (--bwlimit RATE) never changes, and waits what the bucket owes", () =>
    Effect.gen(function*() {
      const throttle = yield* Throttle
      expect(yield* throttle.limit).toBe(64 * KiB)
      // a full bucket, then 64 KiB owed at 64 KiB/s: 1 s
      yield* throttle.take(64 * KiB)
      const frame = yield* Effect.fork(throttle.take(64 * KiB))
      yield* TestClock.adjust("999 millis")
      expect(Option.isNone(yield* Fiber.poll(frame))).toBe(true)
      yield* TestClock.adjust("1 millis")
      yield* Fiber.join(frame)
      yield* TestClock.adjust("7 days")
      expect(yield* throttle.limit).toBe(64 * KiB)
    }).pipe(Effect.provide(ThrottleLive(64 * KiB))))

  it.scoped("across a daylight-saving shift the change comes at the local time it says", () =>
    Effect.gen(function*() {
      const zone = process.env.TZ
      yield* Effect.addFinalizer(() => Effect.sync(() => (zone === undefined ? delete process.env.TZ : (process.env.TZ = zone))))
      process.env.TZ = "Europe/Paris"
      // 2026-03-29 00:00 in Paris (CET); at 02:00 the clocks go to 03:00, so 08:00 (CEST) is 7 hours away, not 8
      yield* TestClock.setTime(Date.UTC(2026, 2, 28, 23, 0))
      yield* Effect.gen(function*() {
        const throttle = yield* Throttle
        expect(yield* throttle.limit).toBe(16 * KiB)
        yield* TestClock.adjust(Duration.subtract(Duration.hours(7), Duration.millis(1)))
        expect(yield* throttle.limit).toBe(16 * KiB)
        yield* TestClock.adjust("1 millis")
        expect(yield* throttle.limit).toBe(0)
        // and back: 2026-10-25 03:00 CEST is 02:00 CET, so from 00:00 to 08:00 is 9 hours
        yield* TestClock.setTime(Date.UTC(2026, 9, 24, 22, 0))
      }).pipe(Effect.provide(ThrottleLive(timetable("00:00,16KiB/s 08:00,off"))))
      yield* Effect.gen(function*() {
        const throttle = yield* Throttle
        expect(yield* throttle.limit).toBe(16 * KiB)
        yield* TestClock.adjust(Duration.subtract(Duration.hours(9), Duration.millis(1)))
        expect(yield* throttle.limit).toBe(16 * KiB)
        yield* TestClock.adjust("1 millis")
        expect(yield* throttle.limit).toBe(0)
      }).pipe(Effect.provide(ThrottleLive(timetable("00:00,16KiB/s 08:00,off"))))
    }))

  it.effect("unset, there is no limit and nothing waits", () =>
    Effect.gen(function*() {
      const throttle = yield* Throttle
      expect(yield* throttle.limit).toBe(0)
      yield* throttle.take(1024 ** 3)
    }))
})
