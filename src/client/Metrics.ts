/**
 * What `ferry send --metrics` shows: the metrics the sender's code declares
 * beside what it measures (Transfer, Client, Uplink, WorkerPool), the
 * current rate, and the sender's health: a server is up, or there is
 * nothing to send.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { AnyMetric, MetricsEndpointOptions } from "../node/MetricsEndpoint.js"
import { Throttle } from "../services/Throttle.js"
import { committedDatasets } from "./Client.js"
import { Progress } from "./Progress.js"
import { ackedBytes, sentBytes, sentPieces } from "./Transfer.js"
import { serversUp } from "./Uplink.js"

export const sendRate = Metric.gauge("ferry_send_rate_bytes_per_second", {
  description: "Original bytes per second the servers acknowledged, over the last 5 seconds (sampled every second)."
})

export const bwlimit = Metric.gauge("ferry_send_bwlimit_bytes_per_second", {
  description: "Bytes per second --bwlimit allows now, as its timetable says (0 when there is no limit)."
})

/** The sender's metrics without labels: shown at zero from the start. Those with labels appear with their first value. */
export const senderMetrics: ReadonlyArray<AnyMetric> = [sentBytes, sentPieces, ackedBytes, committedDatasets, serversUp, sendRate, bwlimit]

const RATE_WINDOW_SECONDS = 5

/** The endpoint's view of this sender; samples the rate every second for as long as the scope lasts. */
export const senderEndpoint: Effect.Effect<Omit<MetricsEndpointOptions, "host" | "port">, never, Progress | Scope.Scope> = Effect.gen(function*() {
  const progress = yield* Progress
  const samples: Array<{ readonly at: number; readonly bytes: number }> = []
  const sample = Effect.gen(function*() {
    const at = yield* Clock.currentTimeMillis
    const bytes = (yield* Metric.value(ackedBytes)).count
    samples.push({ at, bytes })
    if (samples.length > RATE_WINDOW_SECONDS + 1) samples.shift()
    const first = samples[0]!
    yield* Metric.set(sendRate, at > first.at ? (bytes - first.bytes) / ((at - first.at) / 1000) : 0)
  })
  yield* sample.pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped)

  const health = Effect.gen(function*() {
    if ((yield* Metric.value(serversUp)).value > 0) return Option.none()
    const snapshot = yield* SubscriptionRef.get(progress.state)
    let waiting = 0
    for (const p of snapshot.values()) if (p.phase === "queued" || p.phase === "sending" || p.phase === "committing") waiting++
    return waiting === 0 ? Option.none() : Option.some(`no server is up, and ${waiting} dataset(s) wait to be sent`)
  })
  const throttle = yield* Throttle
  // read when scraped: the limit changes by the clock, with nothing else to tell
  const refresh = Effect.flatMap(throttle.limit, (limit) => Metric.set(bwlimit, limit))
  return { metrics: senderMetrics, refresh, health }
})
