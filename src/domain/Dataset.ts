/**
 * Datasets as the producer lays them out: `NAME-NNNNNNN.gz` pieces and a
 * `NAME.done` marker holding the original size. Pure: names, sizes, offsets.
 */
import * as Schema from "effect/Schema"
import { MAX_PIECES, pieceFileName } from "./Layout.js"

export * from "./Layout.js"

/** Dataset names are `[a-z]+`, at most this long, on disk and on the wire. */
export const MAX_NAME_LENGTH = 64
/** Sizes must stay exact in a JavaScript number. */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER

export const DatasetName = Schema.String.pipe(
  Schema.pattern(/^[a-z]+$/),
  Schema.maxLength(MAX_NAME_LENGTH),
  Schema.annotations({ identifier: "DatasetName" })
)

const PIECE = /^([a-z]+)-([0-9]{7})\.gz$/
const MARKER = /^([a-z]+)\.done$/

/** What one directory entry means to ferry. */
export type Entry =
  | { readonly _tag: "Piece"; readonly dataset: string; readonly index: number }
  | { readonly _tag: "Marker"; readonly dataset: string }
  | { readonly _tag: "Other" }

const other: Entry = { _tag: "Other" }

export const parseEntry = (fileName: string): Entry => {
  const piece = PIECE.exec(fileName)
  if (piece !== null) return { _tag: "Piece", dataset: piece[1]!, index: Number(piece[2]) }
  const marker = MARKER.exec(fileName)
  if (marker !== null) return { _tag: "Marker", dataset: marker[1]! }
  return other
}


/** Text of a marker: the size, one line. */
export const formatMarker = (size: number): string => `${size}\n`

/** Marker text to a size, or the reason it is not one. */
export const parseMarker = (text: string): { readonly size: number } | { readonly problem: string } => {
  const match = /^([0-9]+)[ \t\r\n]*$/.exec(text)
  if (match === null) {
    return { problem: text.trim() === "" ? "is empty" : `does not hold a size in bytes (found ${JSON.stringify(text.slice(0, 40))})` }
  }
  const digits = match[1]!.replace(/^0+(?=.)/, "")
  const size = Number(digits)
  if (digits.length > 16 || size > MAX_SIZE) return { problem: `holds a size too large to be real (${digits.slice(0, 24)})` }
  return { size }
}

/**
 * Everything both ends must agree on to rebuild a dataset: its name, the
 * original size, the slice size S and the numbering of the pieces, and the
 * CRC32 of the first slice, so that two senders with different content under
 * one name are told apart before either sends a piece (the seal at the end
 * checks the rest).
 */
export class Manifest extends Schema.Class<Manifest>("Manifest")({
  dataset: DatasetName,
  size: Schema.Number.pipe(Schema.int(), Schema.between(0, MAX_SIZE)),
  sliceSize: Schema.Number.pipe(Schema.int(), Schema.between(0, MAX_SIZE)),
  first: Schema.Number.pipe(Schema.int(), Schema.between(0, MAX_PIECES - 1)),
  count: Schema.Number.pipe(Schema.int(), Schema.between(0, MAX_PIECES)),
  firstSliceCrc: Schema.Number.pipe(Schema.int(), Schema.between(0, 0xffff_ffff))
}) {}

/** ceil(size / sliceSize), the number of pieces a size calls for. */
export const expectedCount = (size: number, sliceSize: number): number =>
  size === 0 ? 0 : sliceSize === 0 ? Number.NaN : Math.ceil(size / sliceSize)

/** Why a manifest cannot describe a real dataset, or undefined when it can. */
export const manifestProblem = (m: Manifest): string | undefined => {
  if (m.first + m.count > MAX_PIECES) return `pieces run past ${pieceFileName(m.dataset, MAX_PIECES - 1)}`
  if (m.size === 0) {
    // An empty file: a marker alone, or one piece that decompresses to nothing.
    return m.count <= 1 && m.sliceSize === 0 ? undefined : `size 0 needs no piece or one empty piece, found ${m.count} of ${m.sliceSize} bytes`
  }
  if (m.sliceSize === 0) return `the first piece ${pieceFileName(m.dataset, m.first)} decompresses to 0 bytes`
  const want = expectedCount(m.size, m.sliceSize)
  if (want !== m.count) {
    return `the marker says ${m.size} bytes, which with slices of ${m.sliceSize} bytes needs ${want} pieces, but there are ${m.count}`
  }
  return undefined
}


export const sameManifest = (a: Manifest, b: Manifest): boolean =>
  a.dataset === b.dataset && a.size === b.size && a.sliceSize === b.sliceSize && a.first === b.first &&
  a.count === b.count && a.firstSliceCrc === b.firstSliceCrc

/** Why two manifests of one name cannot be the same dataset, in a user's words. */
export const manifestDifference = (held: Manifest, asked: Manifest): string =>
  held.size !== asked.size
    ? `${held.size} bytes, not ${asked.size}`
    : held.sliceSize !== asked.sliceSize
    ? `slices of ${held.sliceSize} bytes, not ${asked.sliceSize}`
    : held.first !== asked.first || held.count !== asked.count
    ? `pieces ${held.first}..${held.first + held.count - 1}, not ${asked.first}..${asked.first + asked.count - 1}`
    : "different content (the first slices differ)"
