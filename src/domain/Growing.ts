/**
 * Datasets sent while their producer is still writing them (`send --early`):
 * when a piece counts as finished, the room a dataset is held in before its
 * size is known, and what its marker must agree with once it appears. Pure.
 */
import * as Schema from "effect/Schema"
import { DatasetName, expectedCount, Manifest, MAX_SIZE, pieceFileName } from "./Dataset.js"
import { MAX_PIECES } from "./Layout.js"
import type { Geometry } from "./Layout.js"

/**
 * What is known of a dataset before its marker: its name, the slice size S and the CRC32 of the
 * first slice (both from piece `first`), and the number of that piece. Size and count are not.
 */
export class GrowingSpec extends Schema.Class<GrowingSpec>("GrowingSpec")({
  dataset: DatasetName,
  sliceSize: Schema.Number.pipe(Schema.int(), Schema.between(1, MAX_SIZE)),
  first: Schema.Number.pipe(Schema.int(), Schema.between(0, MAX_PIECES - 1)),
  firstSliceCrc: Schema.Number.pipe(Schema.int(), Schema.between(0, 0xffff_ffff))
}) {}

export const sameSpec = (a: GrowingSpec, b: GrowingSpec): boolean =>
  a.dataset === b.dataset && a.sliceSize === b.sliceSize && a.first === b.first && a.firstSliceCrc === b.firstSliceCrc

/** Whether a full manifest is what a growing dataset turned out to be (the marker's size aside). */
export const specOf = (m: Manifest): GrowingSpec =>
  new GrowingSpec({ dataset: m.dataset, sliceSize: Math.max(1, m.sliceSize), first: m.first, firstSliceCrc: m.firstSliceCrc })

/**
 * Most pieces a growing dataset may reach on a server: its piece limit, the pieces its size limit
 * allows at this slice size, and the seven digits of the numbering.
 */
export const growingBound = (spec: GrowingSpec, maxPieces: number, maxDatasetSize: number): number =>
  Math.max(0, Math.min(maxPieces, Math.floor(maxDatasetSize / spec.sliceSize), MAX_PIECES - spec.first))

/**
 * The geometry a growing dataset is held under until its marker: `bound` pieces of S bytes. Every
 * piece sent before the marker must be a whole slice; the last one, shorter, waits for the marker.
 */
export const provisionalManifest = (spec: GrowingSpec, bound: number): Manifest =>
  new Manifest({ dataset: spec.dataset, size: bound * spec.sliceSize, sliceSize: spec.sliceSize, first: spec.first, count: bound, firstSliceCrc: spec.firstSliceCrc })

/** The full manifest once the marker says the size. */
export const sealedManifest = (spec: GrowingSpec, size: number): Manifest =>
  new Manifest({ dataset: spec.dataset, size, sliceSize: spec.sliceSize, first: spec.first, count: expectedCount(size, spec.sliceSize), firstSliceCrc: spec.firstSliceCrc })

/**
 * Why a marker's size disagrees with the pieces received before it, or undefined. `highestHeld` is
 * the highest piece index held (relative to first, -1 for none), `lastHeld` whether the piece the
 * size makes last is held (it was received as a whole slice of S).
 */
export const markerDisagreement = (spec: GrowingSpec, bound: number, size: number, highestHeld: number, lastHeld: boolean): string | undefined => {
  const name = spec.dataset
  const marker = `${name}.done`
  if (size === 0) return `${marker} says 0 bytes, but ${pieceFileName(name, spec.first)} holds a slice of ${spec.sliceSize} bytes`
  const count = expectedCount(size, spec.sliceSize)
  if (count > bound) return `${marker} says ${size} bytes, which with slices of ${spec.sliceSize} bytes needs ${count} pieces, over this server's limit of ${bound}`
  if (highestHeld >= count) {
    return `${marker} says ${size} bytes, which with slices of ${spec.sliceSize} bytes makes ${count} pieces (${pieceFileName(name, spec.first)} to ${pieceFileName(name, spec.first + count - 1)}), but ${pieceFileName(name, spec.first + highestHeld)} was sent and verified`
  }
  const last = size - (count - 1) * spec.sliceSize
  if (lastHeld && last !== spec.sliceSize) {
    return `${marker} says ${size} bytes, so the last piece ${pieceFileName(name, spec.first + count - 1)} must hold ${last} bytes, but it was sent and verified with ${spec.sliceSize}`
  }
  return undefined
}

/**
 * The sender's readiness rule for a piece before the marker: its gzip trailer's ISIZE is the
 * slice size (a whole slice), its first bytes are a gzip header, and its size and modification
 * time were the same at two looks at least `settle` apart. A piece whose ISIZE is smaller may be
 * the last one, or half written: it waits for the marker.
 */
export interface Look {
  readonly size: number
  readonly mtimeMs: number
  /** When this look was taken (ms). */
  readonly at: number
}

export type Readiness = "ready" | "unsettled" | "short" | "not-gzip"

export const readiness = (previous: Look | undefined, now: Look, settle: number, isize: number, sliceSize: number, magic: boolean): Readiness => {
  if (!magic) return "not-gzip"
  if (previous === undefined || previous.size !== now.size || previous.mtimeMs !== now.mtimeMs || now.at - previous.at < settle) return "unsettled"
  return isize === sliceSize % 2 ** 32 ? "ready" : "short"
}

/** The piece names a server's message mentions (a BadPiece names the piece). */
export const piecesNamed = (dataset: string, message: string): Array<number> => {
  const found: Array<number> = []
  const re = new RegExp(`\\b${dataset}-([0-9]{7})\\.gz\\b`, "g")
  for (const m of message.matchAll(re)) found.push(Number(m[1]))
  return found
}

export type { Geometry }
