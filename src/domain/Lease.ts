/**
 * Leases: which server owns a dataset's state on a shared destination.
 *
 * A dataset's state folder `.ferry/NAME/` holds `lease.E` files and one
 * `epoch.E/` folder with the data, CRC and bitmap files. The highest E is
 * the current epoch. A server takes a dataset by creating `lease.(E+1)` with
 * O_EXCL (only one server can) and renaming `epoch.E/` to `epoch.(E+1)/`:
 * from then on a former holder's commit, which renames `epoch.E/data` into
 * place, finds nothing there and fails, so it can never commit over us.
 * The holder rewrites its lease file (a beat counter) every third of the
 * lease time; another server takes over a lease whose beat it has seen
 * stand still for a whole lease time by its own clock (no clocks compared
 * across machines), or at once when the holder was a process on the same
 * machine that is gone.
 *
 * Pure: names, the record, the judgement. The I/O is in services/store/Leases.ts.
 */
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

export const LeaseOwner = Schema.Struct({
  /** Host name and boot id: the same machine, the same boot. */
  host: Schema.String,
  boot: Schema.String,
  pid: Schema.Number,
  /** When that process started (ticks since boot), so that a reused pid is not taken for it. */
  start: Schema.String,
  /** Random, per server: tells two servers in one process apart. */
  id: Schema.String
})
export type LeaseOwner = typeof LeaseOwner.Type

export const LeaseRecord = Schema.Struct({
  owner: LeaseOwner,
  epoch: Schema.Number,
  /** Incremented by every heartbeat. */
  beat: Schema.Number
})
export type LeaseRecord = typeof LeaseRecord.Type

/** Lease files have a fixed size, so that a beat rewrites them in place. */
export const LEASE_BYTES = 512

const RecordJson = Schema.parseJson(LeaseRecord)
const decodeRecord = Schema.decodeUnknownEither(RecordJson)

export const encodeLease = (record: LeaseRecord): Uint8Array => {
  const text = Schema.encodeSync(RecordJson)(record)
  const out = Buffer.alloc(LEASE_BYTES, 0x20)
  out.write(text.slice(0, LEASE_BYTES - 1), 0, "utf8")
  out[LEASE_BYTES - 1] = 0x0a
  return out
}

/** The record in a lease file; undefined when it is empty or torn (a crash while it was created). */
export const decodeLease = (bytes: Uint8Array): LeaseRecord | undefined => {
  const r = decodeRecord(Buffer.from(bytes).toString("utf8").trim())
  return Either.isRight(r) ? r.right : undefined
}

export const leaseFile = (epoch: number): string => `lease.${epoch}`
export const epochFolder = (epoch: number): string => `epoch.${epoch}`

/** The leases and epoch folders among a state folder's names. */
export const stateEntries = (names: ReadonlyArray<string>) => {
  const leases: Array<number> = []
  const epochs: Array<number> = []
  for (const name of names) {
    const m = /^(lease|epoch)\.([0-9]{1,15})$/.exec(name)
    if (m === null) continue
    ;(m[1] === "lease" ? leases : epochs).push(Number(m[2]))
  }
  leases.sort((a, b) => a - b)
  epochs.sort((a, b) => a - b)
  const top = (xs: Array<number>) => (xs.length === 0 ? 0 : xs[xs.length - 1]!)
  return { leases, epochs, current: Math.max(top(leases), top(epochs)), lease: leases.length === 0 ? undefined : top(leases) }
}

/** What one server last saw of another's lease, by its own clock. */
export interface Observation {
  readonly epoch: number
  /** The beat, or -1 for a lease file that could not be read. */
  readonly beat: number
  readonly since: number
}

/**
 * Whether a lease is free to take: its beat has not moved for `leaseMs` of
 * our own time. The first sight of a lease, or of a new beat, starts the count.
 */
export const judge = (
  previous: Observation | undefined,
  seen: { readonly epoch: number; readonly beat: number },
  now: number,
  leaseMs: number
): { readonly observation: Observation; readonly expired: boolean; readonly remainingMs: number } => {
  if (previous === undefined || previous.epoch !== seen.epoch || previous.beat !== seen.beat) {
    return { observation: { ...seen, since: now }, expired: false, remainingMs: leaseMs }
  }
  const waited = now - previous.since
  return { observation: previous, expired: waited >= leaseMs, remainingMs: Math.max(0, leaseMs - waited) }
}

/** The same machine, the same boot: whether the holder is still there can be asked directly. */
export const sameMachine = (a: LeaseOwner, b: LeaseOwner): boolean => a.host === b.host && a.boot === b.boot && a.boot !== ""
