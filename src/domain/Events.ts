/**
 * What ferry tells a program about its work: one event per line of
 * `--json` output (NDJSON), the same values the public API streams. The
 * schema is versioned: `v` changes only when a field changes meaning or goes
 * away; new events and new fields may appear within a version, so readers
 * should ignore what they do not know.
 */
import * as Schema from "effect/Schema"

export const EVENTS_VERSION = 1

const base = <E extends string, F extends Schema.Struct.Fields>(event: E, fields: F) =>
  Schema.Struct({
    v: Schema.Literal(EVENTS_VERSION),
    /** ISO-8601, UTC. */
    time: Schema.String,
    event: Schema.Literal(event),
    ...fields
  })

const Code = Schema.String

/* send */

/** A dataset's pieces are there but its marker is not yet. */
export const Waiting = base("waiting", { dataset: Schema.String })
/** A dataset is ready and waits for its turn (a free slot, or a server that said Busy / no space). */
export const Queued = base("queued", { dataset: Schema.String, reason: Schema.String })
export const Started = base("started", {
  dataset: Schema.String,
  server: Schema.String,
  pieces: Schema.Number,
  bytes: Schema.Number,
  /** Pieces the server already held. */
  held: Schema.Number
})
export const Progress = base("progress", {
  dataset: Schema.String,
  ackedPieces: Schema.Number,
  pieces: Schema.Number,
  ackedBytes: Schema.Number,
  bytes: Schema.Number,
  /** Original bytes per second over the last interval. */
  rate: Schema.Number,
  /** Seconds left at that rate; null when unknown. */
  eta: Schema.NullOr(Schema.Number)
})
export const Committed = base("committed", {
  dataset: Schema.String,
  server: Schema.String,
  bytes: Schema.Number,
  pieces: Schema.Number,
  /** Pieces this run sent (the server held the others). */
  sent: Schema.Number,
  crc32: Schema.String,
  seconds: Schema.Number,
  alreadyCommitted: Schema.Boolean
})
export const Failed = base("failed", { dataset: Schema.String, code: Code, message: Schema.String })
/** What was done after a commit (--on-commit). */
export const Cleaned = base("cleaned", { dataset: Schema.String, action: Schema.Literal("delete", "move"), to: Schema.NullOr(Schema.String) })
/** A server's connection state changed. */
export const Link = base("link", { server: Schema.String, state: Schema.Literal("up", "down"), message: Schema.String })
/** The end of a `send` run. */
export const Finished = base("finished", { committed: Schema.Number, failed: Schema.Number, exitCode: Schema.Number })

export const SendEvent = Schema.Union(Waiting, Queued, Started, Progress, Committed, Failed, Cleaned, Link, Finished)
export type SendEvent = typeof SendEvent.Type

/* serve */

/** The subject of the certificate a client showed (serve --tls-client-ca), as `CN=alice, O=example`; absent without one. */
const client = { client: Schema.optional(Schema.String) }

export const Listening = base("listening", { address: Schema.String, tls: Schema.Boolean, dest: Schema.String })
export const ConnectionAccepted = base("connection-accepted", { peer: Schema.String, ...client })
export const ConnectionRefused = base("connection-refused", { peer: Schema.String, code: Code, message: Schema.String })
export const ConnectionClosed = base("connection-closed", { peer: Schema.String, reason: Schema.String, ...client })
export const DatasetOpened = base("dataset-opened", { dataset: Schema.String, peer: Schema.String, pieces: Schema.Number, held: Schema.Number, ...client })
export const DatasetCommitted = base("dataset-committed", { dataset: Schema.String, peer: Schema.String, bytes: Schema.Number, crc32: Schema.String, ...client })
export const DatasetFailed = base("dataset-failed", { dataset: Schema.String, peer: Schema.String, code: Code, message: Schema.String, ...client })
export const Stopping = base("stopping", { reason: Schema.String })
export const Stopped = base("stopped", { reason: Schema.String })

export const ServeEvent = Schema.Union(
  Listening,
  ConnectionAccepted,
  ConnectionRefused,
  ConnectionClosed,
  DatasetOpened,
  DatasetCommitted,
  DatasetFailed,
  Stopping,
  Stopped
)
export type ServeEvent = typeof ServeEvent.Type

export const FerryEvent = Schema.Union(SendEvent, ServeEvent)
export type FerryEvent = typeof FerryEvent.Type

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never

/** An event's fields without the envelope, for the code that makes them. */
export type EventBody = DistributiveOmit<FerryEvent, "v" | "time">

export const stamp = (body: EventBody, now: Date = new Date()): FerryEvent =>
  ({ v: EVENTS_VERSION, time: now.toISOString(), ...body }) as FerryEvent

export const encodeEvent = (event: FerryEvent): string => JSON.stringify(Schema.encodeSync(FerryEvent)(event))
