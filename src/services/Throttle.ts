/**
 * Throttle: a limit on the bytes per second all connections of the process
 * put on the wire (`send --bwlimit`). A token bucket that may go into debt:
 * a frame takes its bytes at once and, when the bucket is short, waits until
 * the debt is paid back at the rate, so the average over any long window is
 * the rate, whatever the frame sizes. The limit follows a timetable: a fiber
 * sleeps (on Effect's Clock) until the next change and sets the new rate,
 * which also cuts short the wait of a frame already queued. Unset, it is not
 * there at all.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import { constantLimit, DAY_MS, formatLimit, formatWeekPosition, inForce, type Limit, nextChange, type Timetable, WEEK_MS } from "../domain/Timetable.js"

export class Throttle extends Context.Reference<Throttle>()("ferry/Throttle", {
  defaultValue: () => ({
    take: (_bytes: number): Effect.Effect<void> => Effect.void,
    /** Bytes per second in force now; 0 when there is no limit. */
    limit: Effect.succeed(0) as Effect.Effect<number>,
    /** Reads the limit in force off the clock again (SIGHUP: after the clock was set), and the next change. */
    reapply: Effect.void as Effect.Effect<void>
  })
}) {}

const burstOf = (bytesPerSecond: number) => Math.max(64 * 1024, bytesPerSecond / 10)

/** Pure bookkeeping of the bucket: how long a take of `bytes` at `now` must wait, in ms. */
export class TokenBucket {
  private tokens: number
  private at: number
  constructor(
    public bytesPerSecond: number,
    /** Largest saving allowed, so that an idle while does not buy a long burst later. */
    public burst: number,
    now: number
  ) {
    this.tokens = burst
    this.at = now
  }

  private refill(now: number) {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.bytesPerSecond) / 1000)
    this.at = now
  }

  /** How long until the debt is paid back, in ms: 0 when there is none. */
  owed(now: number): number {
    this.refill(now)
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.bytesPerSecond
  }

  take(bytes: number, now: number): number {
    this.refill(now)
    this.tokens -= bytes
    return this.owed(now)
  }

  /** From `now` on, the debt is paid back at the new rate (what was earned until now, at the old one). */
  setRate(bytesPerSecond: number, now: number) {
    this.refill(now)
    this.bytesPerSecond = bytesPerSecond
    this.burst = burstOf(bytesPerSecond)
    this.tokens = Math.min(this.burst, this.tokens)
  }
}

/** Milliseconds from Monday 00:00 in the process's local time (TZ): where a timetable is read. */
export const localWeekPosition = (epochMillis: number): number => {
  const date = new Date(epochMillis)
  const sinceMidnight = ((date.getHours() * 60 + date.getMinutes()) * 60 + date.getSeconds()) * 1000 + date.getMilliseconds()
  return ((date.getDay() + 6) % 7) * DAY_MS + sinceMidnight
}

/**
 * Real milliseconds from `now` until the local clock reads `target` (a week position), `after`
 * wall-clock milliseconds away: the wall distance, less or more the daylight-saving shift in
 * between. A target the shift skips over is reached at the wall distance, just after the shift.
 */
export const realDelay = (now: number, after: number, target: number): number => {
  let drift = target - localWeekPosition(now + after)
  if (drift > WEEK_MS / 2) drift -= WEEK_MS
  if (drift < -WEEK_MS / 2) drift += WEEK_MS
  return after + drift > 0 ? after + drift : after
}

/** The limit in force, and a signal for those waiting on it: completed when it changes. */
interface InForce {
  readonly limit: Limit
  readonly changed: Deferred.Deferred<void>
}

/** A throttle following `timetable` (or one constant rate in bytes per second). */
export const ThrottleLive = (timetable: Timetable | number) =>
  Layer.scoped(
    Throttle,
    Effect.gen(function*() {
      const table = typeof timetable === "number" ? constantLimit(timetable) : timetable
      const now = yield* Clock.currentTimeMillis
      const first = inForce(table, localWeekPosition(now))
      const state = yield* Ref.make<InForce>({ limit: first.limit, changed: yield* Deferred.make<void>() })
      // none while the limit is off
      let bucket = first.limit === "off" ? undefined : new TokenBucket(first.limit, burstOf(first.limit), now)
      // one take at a time: the waits queue up in order, so the rate holds across connections
      const turn = yield* Effect.makeSemaphore(1)

      const setLimit = (limit: Limit, at: number) =>
        Effect.flatMap(Ref.get(state), (current) => {
          if (limit === current.limit) return Effect.void
          if (limit === "off") bucket = undefined
          else if (bucket === undefined) bucket = new TokenBucket(limit, burstOf(limit), at)
          else bucket.setRate(limit, at)
          return Effect.flatMap(Deferred.make<void>(), (changed) =>
            Effect.zipRight(Ref.set(state, { limit, changed }), Deferred.succeed(current.changed, undefined)))
        })

      // wakes at each change and reads the limit in force off the clock then, not off the timetable's order;
      // a constant limit is not logged: it is what the command line says
      /** Sets the limit in force now (logged when it is not `told`); answers it, and how long until the next change. */
      const apply = (told: Limit | undefined) =>
        Effect.gen(function*() {
          const at = yield* Clock.currentTimeMillis
          const position = localWeekPosition(at)
          const change = inForce(table, position)
          const next = nextChange(table, position)
          yield* setLimit(change.limit, at)
          if (next === undefined) return { limit: change.limit, wait: undefined }
          if (change.limit !== told) {
            yield* Effect.logInfo(
              `bandwidth limit now ${formatLimit(change.limit)} (timetable entry ${JSON.stringify(change.entry)}), until ${formatWeekPosition(next.change.at)}`
            )
          }
          return { limit: change.limit, wait: realDelay(at, next.after, next.change.at) }
        })
      const follow = (applied: { readonly limit: Limit; readonly wait: number | undefined }): Effect.Effect<never> =>
        applied.wait === undefined ? Effect.never : Effect.sleep(applied.wait).pipe(Effect.zipRight(apply(applied.limit)), Effect.flatMap(follow))
      const scope = yield* Effect.scope
      const follower = yield* Ref.make(yield* Effect.forkIn(Effect.flatMap(apply(undefined), follow), scope))
      // a follower sleeps until the next change as the clock read it then: after the clock is set, it starts over
      const reapply = Effect.gen(function*() {
        yield* Fiber.interrupt(yield* Ref.get(follower))
        const applied = yield* apply((yield* Ref.get(state)).limit)
        yield* Ref.set(follower, yield* Effect.forkIn(follow(applied), scope))
      })

      /** Waits until the debt is paid back, or the limit changes (then at the new rate, or not at all when off). */
      const payBack: Effect.Effect<void> = Effect.gen(function*() {
        const { changed } = yield* Ref.get(state)
        const owed = bucket === undefined ? 0 : bucket.owed(yield* Clock.currentTimeMillis)
        if (owed <= 0) return
        yield* Effect.raceFirst(Effect.sleep(owed), Deferred.await(changed))
        return yield* payBack
      })

      return {
        take: (bytes: number) =>
          turn.withPermits(1)(
            Effect.flatMap(Clock.currentTimeMillis, (at) => {
              if (bucket === undefined) return Effect.void
              return bucket.take(bytes, at) > 0 ? payBack : Effect.void
            })
          ),
        limit: Effect.map(Ref.get(state), (s) => (s.limit === "off" ? 0 : s.limit)),
        reapply
      }
    })
  )
