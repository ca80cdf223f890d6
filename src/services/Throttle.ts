/**
 * Throttle: a limit on the bytes per second all connections of the process
 * put on the wire (`send --bwlimit`). A token bucket that may go into debt:
 * a frame takes its bytes at once and, when the bucket is short, waits until
 * the debt is paid back at the rate, so the average over any long window is
 * the rate, whatever the frame sizes. Unset, it is not there at all.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

export class Throttle extends Context.Reference<Throttle>()("ferry/Throttle", {
  defaultValue: () => ({ take: (_bytes: number): Effect.Effect<void> => Effect.void })
}) {}

/** Pure bookkeeping of the bucket: how long a take of `bytes` at `now` must wait, in ms. */
export class TokenBucket {
  private tokens: number
  private at: number
  constructor(
    readonly bytesPerSecond: number,
    /** Largest saving allowed, so that an idle while does not buy a long burst later. */
    readonly burst: number,
    now: number
  ) {
    this.tokens = burst
    this.at = now
  }

  take(bytes: number, now: number): number {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.bytesPerSecond) / 1000)
    this.at = now
    this.tokens -= bytes
    return this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.bytesPerSecond
  }
}

export const ThrottleLive = (bytesPerSecond: number) =>
  Layer.effect(
    Throttle,
    Effect.gen(function*() {
      const bucket = new TokenBucket(bytesPerSecond, Math.max(64 * 1024, bytesPerSecond / 10), yield* Clock.currentTimeMillis)
      // one take at a time: the waits queue up in order, so the rate holds across connections
      const turn = yield* Effect.makeSemaphore(1)
      return {
        take: (bytes: number) =>
          turn.withPermits(1)(
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              const wait = bucket.take(bytes, now)
              return wait > 0 ? Effect.sleep(wait) : Effect.void
            })
          )
      }
    })
  )
