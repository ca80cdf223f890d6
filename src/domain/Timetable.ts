/**
 * A bandwidth timetable, as `--bwlimit` takes it (rclone's syntax): entries
 * `[Day-]HH:MM,RATE` separated by spaces, such as "08:00,10MiB/s 18:00,off" or
 * "Mon-08:00,10MiB/s Sat-00:00,off". An entry without a day holds on every
 * day; one with a day wins over it at the same time. A plain rate (`10MiB/s`)
 * or `off` is a timetable of one entry, always in force. Times are wall-clock
 * times in the week: positions in milliseconds from Monday 00:00, which the
 * caller reads from its local clock. Seconds (`HH:MM:SS`) are allowed too.
 */
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { formatByteSize, parseRate } from "./Units.js"

/** Bytes per second, or no limit at all. */
export type Limit = number | "off"

export const DAY_MS = 24 * 3600 * 1000
export const WEEK_MS = 7 * DAY_MS
export const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] as const

/** One point of the week where a limit starts, and the entry that says so. */
export interface Change {
  /** Milliseconds from Monday 00:00. */
  readonly at: number
  readonly limit: Limit
  readonly entry: string
}

export interface Timetable {
  /** As written, so that it can be shown back. */
  readonly text: string
  /** In the order of the week, at least one, no two at the same point. */
  readonly changes: ReadonlyArray<Change>
}

/** What a user reads: "10MiB/s", or "off". */
export const formatLimit = (limit: Limit): string => (limit === "off" ? "off" : `${formatByteSize(limit)}/s`)

/** "Mon 08:00", or "Mon 08:00:30" when the seconds are not 0. */
export const formatWeekPosition = (at: number): string => {
  const day = Math.floor(at / DAY_MS)
  const seconds = Math.floor((at % DAY_MS) / 1000)
  const two = (n: number) => String(n).padStart(2, "0")
  const hhmm = `${two(Math.floor(seconds / 3600))}:${two(Math.floor(seconds / 60) % 60)}`
  return `${DAYS[day]} ${seconds % 60 === 0 ? hhmm : `${hhmm}:${two(seconds % 60)}`}`
}

/** One limit, always in force. */
export const constantLimit = (limit: Limit): Timetable => {
  const text = formatLimit(limit)
  return { text, changes: [{ at: 0, limit, entry: text }] }
}

const parseLimit = (text: string): Limit | undefined => (text.trim().toLowerCase() === "off" ? "off" : parseRate(text))

interface Entry {
  readonly text: string
  readonly day: number | undefined
  readonly time: number
  readonly limit: Limit
}

/** One `[Day-]HH:MM,RATE` entry, or why it is not one. */
const parseEntry = (text: string): Entry | { readonly problem: string } => {
  const comma = text.indexOf(",")
  if (comma < 0) return { problem: "an entry is [Day-]HH:MM,RATE" }
  const when = text.slice(0, comma)
  const rate = text.slice(comma + 1)
  const dash = when.indexOf("-")
  const dayText = dash < 0 ? undefined : when.slice(0, dash)
  const timeText = dash < 0 ? when : when.slice(dash + 1)
  const day = dayText === undefined ? undefined : DAYS.findIndex((d) => d.toLowerCase() === dayText.toLowerCase())
  if (day === -1) return { problem: `${JSON.stringify(dayText)} is not a day (Mon, Tue, Wed, Thu, Fri, Sat or Sun)` }
  const m = /^([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?$/.exec(timeText)
  const [h, min, s] = m === null ? [] : [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)]
  if (m === null || h! > 23 || min! > 59 || s! > 59) return { problem: `${JSON.stringify(timeText)} is not a time of day (HH:MM, from 00:00 to 23:59)` }
  const limit = parseLimit(rate)
  if (limit === undefined) return { problem: `${JSON.stringify(rate)} is not a rate above 0 (such as 10MiB/s) or off` }
  return { text, day, time: ((h! * 60 + min!) * 60 + s!) * 1000, limit }
}

/** A timetable, or the first entry that is wrong and why. */
export const parseTimetable = (text: string): Timetable | { readonly problem: string } => {
  const words = text.trim().split(/\s+/).filter((w) => w !== "")
  if (words.length === 0) return { problem: "is empty" }
  // a plain rate, or off: one limit, always in force
  if (words.length === 1 && !words[0]!.includes(",")) {
    const limit = parseLimit(words[0]!)
    return limit === undefined
      ? { problem: `must be a rate such as 50MiB/s or 10MB/s, off, or a timetable such as "08:00,10MiB/s 18:00,off", not ${JSON.stringify(text)}` }
      : { text: words[0]!, changes: [{ at: 0, limit, entry: words[0]! }] }
  }
  const byPoint = new Map<number, { readonly change: Change; readonly everyDay: boolean }>()
  const seen = new Map<string, string>()
  for (const word of words) {
    const entry = parseEntry(word)
    if ("problem" in entry) return { problem: `has a bad entry ${JSON.stringify(word)}: ${entry.problem}` }
    const key = `${entry.day ?? "*"}@${entry.time}`
    const before = seen.get(key)
    if (before !== undefined) return { problem: `has a bad entry ${JSON.stringify(word)}: its time is already given by ${JSON.stringify(before)}` }
    seen.set(key, word)
    for (const day of entry.day === undefined ? [0, 1, 2, 3, 4, 5, 6] : [entry.day]) {
      const at = day * DAY_MS + entry.time
      // an entry for one day wins over an every-day entry at the same time, in whichever order they come
      if (entry.day === undefined && byPoint.get(at)?.everyDay === false) continue
      byPoint.set(at, { change: { at, limit: entry.limit, entry: word }, everyDay: entry.day === undefined })
    }
  }
  return { text: words.join(" "), changes: [...byPoint.values()].map((p) => p.change).sort((a, b) => a.at - b.at) }
}

const wrap = (at: number) => ((at % WEEK_MS) + WEEK_MS) % WEEK_MS

/** Index of the change in force at `at`: the last one at or before it, else the week's last (from the week before). */
const inForceIndex = (timetable: Timetable, at: number): number => {
  const changes = timetable.changes
  const position = wrap(at)
  let lo = 0
  let hi = changes.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (changes[mid]!.at <= position) lo = mid + 1
    else hi = mid
  }
  return lo === 0 ? changes.length - 1 : lo - 1
}

/** The change in force at a point of the week (wrapped into the week). */
export const inForce = (timetable: Timetable, at: number): Change => timetable.changes[inForceIndex(timetable, at)]!

/**
 * How long after `at` the limit next differs from the one in force, in ms (above 0, at most a week),
 * and the change that brings it; undefined when the limit never changes.
 */
export const nextChange = (timetable: Timetable, at: number): { readonly after: number; readonly change: Change } | undefined => {
  const changes = timetable.changes
  const current = inForceIndex(timetable, at)
  const limit = changes[current]!.limit
  for (let step = 1; step <= changes.length; step++) {
    const change = changes[(current + step) % changes.length]!
    if (change.limit !== limit) return { after: wrap(change.at - wrap(at)) || WEEK_MS, change }
  }
  return undefined
}

/** A timetable as `--bwlimit` and FERRY_BWLIMIT take it; a bad one fails naming the entry. */
export const TimetableText: Schema.Schema<Timetable, string> = Schema.transformOrFail(
  Schema.String,
  Schema.typeSchema(Schema.Struct({
    text: Schema.String,
    changes: Schema.Array(Schema.Struct({ at: Schema.Number, limit: Schema.Union(Schema.Number, Schema.Literal("off")), entry: Schema.String }))
  })),
  {
    strict: true,
    decode: (text, _, ast) => {
      const parsed = parseTimetable(text)
      return "problem" in parsed ? ParseResult.fail(new ParseResult.Type(ast, text, parsed.problem)) : ParseResult.succeed(parsed)
    },
    encode: (timetable) => ParseResult.succeed(timetable.text)
  }
)
