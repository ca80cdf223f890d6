/**
 * `--connections auto` dials ahead (client/DialAhead.ts): once the first connection's greeting
 * shows the server far, the others are dialed, and each says hello only once the first is
 * accepted. Over loopback with the live layers; "far" is made by lowering the threshold, or by a
 * transport that delays the greeting.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Metric, Stream } from "effect"
import { join } from "node:path"
import { afterAll } from "vitest"
import { defaultSendOptions, send } from "../src/client/Client.js"
import { ClientLive, SampleLive, ServerLive } from "../src/Layers.js"
import { connectionsAccepted, connectionsRefused } from "../src/server/Counters.js"
import { defaultServeOptions, serve } from "../src/server/Server.js"
import { makeDataset } from "../src/services/SampleMaker.js"
import { Transport } from "../src/services/Transport.js"
import { tempDirs } from "./support/cli.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())
const temp = (name: string) => dirs.make(`ahead-${name}`)

/** The debug lines logged while `self` runs. */
const logged = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const logger = Logger.make(({ message }) => void lines.push(Array.isArray(message) ? message.join(" ") : String(message)))
    const result = yield* self.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)), Logger.withMinimumLogLevel(LogLevel.Debug))
    return { result, lines }
  })

const counts = Effect.all({
  accepted: Effect.map(Metric.value(connectionsAccepted), (s) => s.count),
  refused: Effect.map(Metric.value(Metric.tagged(connectionsRefused, "code", "AuthFailed")), (s) => s.count)
})

/** A transport whose dialed links look `roundTrip` ms away at TCP set-up, and whose first frame comes `delayMs` late. */
const slowGreeting = (roundTrip: number, delayMs: number) =>
  Layer.effect(
    Transport,
    Effect.map(Transport, (live) => ({
      ...live,
      dial: (address, options) =>
        Effect.map(live.dial(address, options), (link) => {
          let first = true
          return {
            ...link,
            roundTrip,
            frames: link.frames.pipe(Stream.tap(() => first ? Effect.sleep(delayMs).pipe(Effect.ensuring(Effect.sync(() => first = false))) : Effect.void))
          }
        })
    }))
  )

describe("auto dials ahead to a far server", () => {
  it.scopedLive("far at the greeting and after the hello: four connections, three of them dialed ahead, and the data is exact", () => {
    const root = temp("far")
    return Effect.gen(function*() {
      yield* makeDataset({ dir: join(root, "out"), name: "abc", size: 1_000_000, sliceSize: 16 * 1024, seed: 3 })
      const address = yield* serve({ ...defaultServeOptions, host: "127.0.0.1", port: 0 })
      const before = yield* counts
      const { result: summary, lines } = yield* logged(Effect.scoped(send({ ...defaultSendOptions, dir: join(root, "out"), addresses: [address], nearRoundTripMs: 0 })))
      expect(summary.failed).toEqual([])
      expect(summary.committed.map((c) => c.dataset)).toEqual(["abc"])
      // four at first (more may join later: a threshold of 0 lets auto grow while the transfer lasts)
      expect((yield* counts).accepted - before.accepted).toBeGreaterThanOrEqual(4)
      expect(lines.some((l) => /^4 connection\(s\) to .*far: more while the throughput grows, 3 dialed ahead\)/.test(l))).toBe(true)
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest: join(root, "in") }), ClientLive(), SampleLive)))
  })

  it.scopedLive("a server that refuses the first connection sees one hello: the ones dialed ahead never say theirs", () => {
    const root = temp("refused")
    return Effect.gen(function*() {
      yield* makeDataset({ dir: join(root, "out"), name: "abc", size: 100_000, sliceSize: 16 * 1024, seed: 4 })
      const address = yield* serve({ ...defaultServeOptions, host: "127.0.0.1", port: 0, token: "the server's" })
      const before = yield* counts
      const { result: summary, lines } = yield* logged(Effect.scoped(send({ ...defaultSendOptions, dir: join(root, "out"), addresses: [address], nearRoundTripMs: 0, token: "not the server's" })))
      expect(summary.unreachable?._tag).toBe("PeerMismatch")
      // the others were dialed (at the greeting), and never said hello
      expect(lines.some((l) => /: far at its greeting \(.* ms\): 3 more connection\(s\) dialed ahead$/.test(l))).toBe(true)
      const after = yield* counts
      expect(after.refused - before.refused).toBe(1)
      expect(after.accepted - before.accepted).toBe(0)
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest: join(root, "in") }), ClientLive(), SampleLive, Logger.minimumLogLevel(LogLevel.Error))))
  })

  it.scopedLive("far at the greeting, near by the hello: the connections dialed ahead are closed unused and one carries the data", () => {
    const root = temp("near")
    return Effect.gen(function*() {
      yield* makeDataset({ dir: join(root, "out"), name: "abc", size: 200_000, sliceSize: 16 * 1024, seed: 5 })
      const address = yield* serve({ ...defaultServeOptions, host: "127.0.0.1", port: 0 })
      const before = yield* counts
      const sending = Effect.scoped(send({ ...defaultSendOptions, dir: join(root, "out"), addresses: [address], nearRoundTripMs: 200 })).pipe(
        // a greeting 600 ms late: past 2.5 times the near threshold of 200 ms, so far at the greeting
        Effect.provide(slowGreeting(1000, 600)),
        Effect.provide(ClientLive())
      )
      const { result: summary, lines } = yield* logged(sending)
      expect(summary.committed.map((c) => c.dataset)).toEqual(["abc"])
      expect((yield* counts).accepted - before.accepted).toBe(1)
      expect(lines).toContain("3 connection(s) dialed ahead closed unused (the hello measured the server near)")
      expect(lines.some((l) => /^1 connection\(s\) to .*near\)/.test(l))).toBe(true)
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest: join(root, "in") }), SampleLive)))
  })
})
