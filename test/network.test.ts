/**
 * The network issue's parts that need no network: how "auto" grows its connections (pure), and how
 * batches are spread over connections that are up and connections that join (Dispatch.ts).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import fc from "fast-check"
import { dispatch } from "../src/client/Dispatch.js"
import { GROWTH, MAX_AUTO_CONNECTIONS, nextGrowthStep, probeInterval } from "../src/domain/Growth.js"

fc.configureGlobal({ seed: 20261203, numRuns: 300 })

describe("auto grows its connections while the throughput grows", () => {
  const probe = { rate: 10e6, previous: undefined, connections: 4, max: MAX_AUTO_CONNECTIONS, busy: true }

  it("the first busy probe adds one; a quiet one, or one with nothing acknowledged yet, waits; at the limit it stops", () => {
    expect(nextGrowthStep(probe)).toBe("add")
    expect(nextGrowthStep({ ...probe, busy: false })).toBe("wait")
    expect(nextGrowthStep({ ...probe, busy: false, previous: 20e6 })).toBe("wait")
    expect(nextGrowthStep({ ...probe, rate: 0, previous: 20e6 })).toBe("wait")
    expect(nextGrowthStep({ ...probe, connections: MAX_AUTO_CONNECTIONS })).toBe("stop")
  })

  it("adds exactly when the rate grew by a tenth or more over the probe before", () => {
    fc.assert(
      fc.property(fc.double({ min: 1, max: 1e10, noNaN: true }), fc.double({ min: 0, max: 1e10, noNaN: true }), fc.integer({ min: 1, max: MAX_AUTO_CONNECTIONS - 1 }), (previous, rate, connections) => {
        const step = nextGrowthStep({ rate, previous, connections, max: MAX_AUTO_CONNECTIONS, busy: true })
        // nothing acknowledged yet is slow start, not the end of growth
        expect(step).toBe(rate === 0 ? "wait" : rate >= previous * GROWTH ? "add" : "stop")
      })
    )
  })

  it("probes every five round trips, half a second at least", () => {
    expect(probeInterval(0.1)).toBe(500)
    expect(probeInterval(200)).toBe(1000)
  })
})

describe("batches spread over connections by pull", () => {
  /** A connection whose sends take `cost` steps of the event loop, recording what it carried. */
  const connection = (name: string, cost: number) => ({ name, cost, carried: [] as Array<number> })
  type Conn = ReturnType<typeof connection>
  const send = (c: Conn, batch: number) =>
    Effect.gen(function*() {
      for (let i = 0; i < c.cost; i++) yield* Effect.yieldNow()
      c.carried.push(batch)
    })

  it.effect("every batch is sent once, and a faster connection carries more", () =>
    Effect.gen(function*() {
      const fast = connection("fast", 1)
      const slow = connection("slow", 20)
      const batches = Array.from({ length: 200 }, (_, i) => i)
      yield* dispatch(Stream.fromIterable(batches), { ready: 4, connections: [fast, slow], send })
      expect([...fast.carried, ...slow.carried].sort((a, b) => a - b)).toEqual(batches)
      expect(fast.carried.length).toBeGreaterThan(slow.carried.length * 3)
    }))

  it.effect("a connection that joins takes batches too, and the dispatch ends when every batch is sent", () =>
    Effect.gen(function*() {
      const first = connection("first", 20)
      const late = connection("late", 1)
      const started = yield* Deferred.make<void>()
      const sending = (c: Conn, batch: number) => Effect.zipRight(Deferred.succeed(started, undefined), send(c, batch))
      // joins once the first has started sending, and the joining stream never ends: the dispatch must end anyway
      const joining = Stream.concat(Stream.fromEffect(Effect.as(Deferred.await(started), late)), Stream.never)
      yield* dispatch(Stream.range(0, 99), { ready: 2, connections: [first], joining, send: sending })
      expect([...first.carried, ...late.carried].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i))
      expect(first.carried[0]).toBe(0)
      expect(late.carried.length).toBeGreaterThan(first.carried.length)
    }))

  it.effect("a connection that fails ends the dispatch with its error", () =>
    Effect.gen(function*() {
      const good = connection("good", 1)
      const bad = connection("bad", 1)
      const failing = (c: Conn, batch: number) => (c === bad && batch > 10 ? Effect.fail("lost" as const) : send(c, batch))
      const outcome = yield* Effect.either(dispatch(Stream.range(0, 999), { ready: 4, connections: [good, bad], send: failing }))
      expect(outcome._tag).toBe("Left")
      expect(good.carried.length + bad.carried.length).toBeLessThan(1000)
    }))
})
