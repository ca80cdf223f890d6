/**
 * Monitor: where the pipelines publish their events (domain/Events.ts).
 * By default nobody listens and publishing costs nothing; a program (the
 * CLI's JSON output and progress lines, the public API) provides
 * `MonitorLive` and subscribes to the events it wants.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import { type EventBody, type FerryEvent, stamp } from "../domain/Events.js"

export interface MonitorService {
  readonly publish: (body: EventBody) => Effect.Effect<void>
  /** Events from now on, for as long as the scope lasts: a queue of its own, drained by its reader. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<FerryEvent>, never, Scope.Scope>
}

export class Monitor extends Context.Reference<Monitor>()("ferry/Monitor", {
  defaultValue: (): MonitorService => ({ publish: () => Effect.void, subscribe: Queue.unbounded<FerryEvent>() })
}) {}

/** Events go to every subscriber; a subscriber that falls behind by more than `capacity` loses the oldest. */
export const makeMonitor = (capacity = 4096) =>
  Effect.map(PubSub.sliding<FerryEvent>(capacity), (hub): MonitorService => ({
    publish: (body) => PubSub.publish(hub, stamp(body)).pipe(Effect.asVoid),
    subscribe: PubSub.subscribe(hub)
  }))

export const MonitorLive = Layer.effect(Monitor, makeMonitor())

export const publish = (body: EventBody): Effect.Effect<void> =>
  Effect.flatMap(Monitor, (m) => m.publish(body))
