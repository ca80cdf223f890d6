/**
 * How `--connections auto` grows the connections to a far server (README: the network). It starts
 * from the round-trip rule (client/Uplink.ts `autoConnections`), then probes the bytes acknowledged
 * per second. While the connections it has still speed up by themselves (TCP's slow start: a tenth
 * more or better from one probe to the next), it waits: a connection added then would only share
 * the ramp, and on a link without loss each extra one costs (four connections took 13.0 s on the
 * 200 ms link here, growing to six during the ramp 13.7-14.4 s). Once they level off (the rate
 * holds within a tenth of the probe before: a drop is a pause in the data, and waits), it adds one;
 * if the next probe shows a tenth more, it adds another, and so on; the first added connection that
 * does not pay ends the growth for that spell of being connected. A probe with nothing in flight,
 * or nothing acknowledged yet, says nothing about the link and waits. Pure.
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
  /** Whether a connection was added since the probe before (the rate then tells whether it paid). */
  readonly added: boolean
  readonly connections: number
  readonly max: number
  /** Whether batches were in flight: a quiet link is no evidence either way. */
  readonly busy: boolean
}

export const nextGrowthStep = (p: Probe): GrowthStep => {
  if (p.connections >= p.max) return "stop"
  // nothing in flight, or nothing acknowledged yet (the first batches are still in slow start)
  if (!p.busy || p.rate === 0) return "wait"
  // the first measure: a trend needs two
  if (p.previous === undefined) return "wait"
  const grew = p.rate >= p.previous * GROWTH
  // after an addition: another while each pays
  if (p.added) return grew ? "add" : "stop"
  // before any: wait while the ramp lasts, and after a drop (a pause in the data, such as the end
  // of one dataset, is no sign of a full link); add once the rate holds within a tenth
  const dropped = p.rate * GROWTH < p.previous
  return grew || dropped ? "wait" : "add"
}

/** Time between probes: long enough for a new connection's slow start to show (five round trips), half a second at least. */
export const probeInterval = (roundTripMs: number): number => Math.max(500, 5 * roundTripMs)
