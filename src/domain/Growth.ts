/**
 * How `--connections auto` grows the connections to a far server (README: the network). It starts
 * from the round-trip rule (client/Uplink.ts `autoConnections`), then, every probe, compares the
 * bytes acknowledged per second with the probe before: while they still grow by a tenth or more,
 * one more connection; the first probe that shows less ends the growth for that spell of being
 * connected. A probe with nothing in flight, or nothing acknowledged yet, says nothing about the link and waits. Pure.
 */

/** Growth that counts: a tenth more bytes per second than the probe before. */
export const GROWTH = 1.1
/** Connections "auto" opens to one server, at most. */
export const MAX_AUTO_CONNECTIONS = 16

export type GrowthStep = "add" | "wait" | "stop"

export interface Probe {
  /** Bytes acknowledged per second since the last probe. */
  readonly rate: number
  /** The same at the probe before (undefined at the first that saw data in flight). */
  readonly previous: number | undefined
  readonly connections: number
  readonly max: number
  /** Whether batches were in flight: a quiet link is no evidence either way. */
  readonly busy: boolean
}

export const nextGrowthStep = (p: Probe): GrowthStep => {
  if (p.connections >= p.max) return "stop"
  // nothing in flight, or nothing acknowledged yet (the first batches are still in slow start)
  if (!p.busy || p.rate === 0) return "wait"
  if (p.previous === undefined) return "add"
  return p.rate >= p.previous * GROWTH ? "add" : "stop"
}

/** Time between probes: long enough for a new connection's slow start to show (five round trips), half a second at least. */
export const probeInterval = (roundTripMs: number): number => Math.max(500, 5 * roundTripMs)
