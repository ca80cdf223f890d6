import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { makeGate } from "../src/server/Gate.js"
import { makeHandles } from "../src/server/Handles.js"

describe("the server's gate", () => {
  it.effect("past --max-pending, the oldest in the handshake is dropped; past --max-connections, pass says no; leaving gives back the place", () =>
    Effect.gen(function*() {
      const { gate } = yield* makeGate({ maxPending: 2, maxConnections: 1 })
      const dropped = yield* Ref.make<ReadonlyArray<string>>([])
      const enter = (name: string) =>
        Effect.flatMap(Scope.make(), (scope) =>
          Effect.map(Scope.extend(gate.enter(Ref.update(dropped, (d) => [...d, name])), scope), (ticket) => ({ ticket, scope })))
      const a = yield* enter("a")
      const b = yield* enter("b")
      expect(yield* Ref.get(dropped)).toEqual([])
      const c = yield* enter("c")
      expect(yield* Ref.get(dropped)).toEqual(["a"])
      expect(yield* b.ticket.pass).toBe(true)
      expect(yield* c.ticket.pass).toBe(false)
      expect(yield* c.ticket.ready).toBe(1)
      // b left the handshake when it passed, c when it was refused: two more come in without a drop
      yield* enter("d")
      yield* enter("e")
      expect(yield* Ref.get(dropped)).toEqual(["a"])
      yield* Scope.close(b.scope, Exit.void)
      expect(yield* a.ticket.ready).toBe(0)
      expect(yield* a.ticket.pass).toBe(true)
      yield* Scope.close(a.scope, Exit.void)
      expect(yield* c.ticket.ready).toBe(0)
    }))

  it.effect("stop waits until every connection is gone", () =>
    Effect.gen(function*() {
      const { gate, stop } = yield* makeGate({ maxPending: 4, maxConnections: 4 })
      const scope = yield* Scope.make()
      const ticket = yield* Scope.extend(gate.enter(Effect.void), scope)
      yield* ticket.pass
      const stopping = yield* Effect.fork(stop("10 seconds"))
      yield* gate.stopping
      expect(yield* gate.isStopping).toBe(true)
      yield* Effect.yieldNow()
      expect(stopping.unsafePoll()).toBeNull()
      yield* Scope.close(scope, Exit.void)
      yield* Fiber.join(stopping)
    }))
})

describe("a connection's handles", () => {
  it.effect("a handle is taken once, up to the limit, and a failed one's batches are dropped quietly until it opens again", () =>
    Effect.gen(function*() {
      const handles = yield* makeHandles(2)
      const refusal = (handle: number) => Effect.map(handles.take(handle), (o) => (Option.isNone(o) ? "taken" : o.value._tag === "Full" ? `full at ${o.value.open}` : o.value._tag))
      expect(yield* refusal(1)).toBe("taken")
      expect(yield* refusal(1)).toBe("InUse")
      expect(yield* refusal(2)).toBe("taken")
      expect(yield* refusal(3)).toBe("full at 2")
      // a handle still opening is not open to writes
      expect((yield* handles.find(1))._tag).toBe("Unknown")
      yield* handles.drop(1)
      expect((yield* handles.find(1))._tag).toBe("Dropped")
      expect(yield* refusal(1)).toBe("taken")
      expect((yield* handles.find(1))._tag).toBe("Dropped")
    }))
})
