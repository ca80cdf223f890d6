/**
 * Piece names and slice arithmetic, with no dependency at all: worker threads
 * import this, and each import costs start-up time on every worker.
 */

/** Seven digits of piece number: 0000000 to 9999999. */
export const MAX_PIECES = 10_000_000

export const pieceFileName = (dataset: string, index: number): string =>
  `${dataset}-${String(index).padStart(7, "0")}.gz`

export const markerFileName = (dataset: string): string => `${dataset}.done`

/** The numbers that place slices in the rebuilt file (a Manifest is one). */
export interface Geometry {
  readonly dataset: string
  readonly size: number
  readonly sliceSize: number
  readonly first: number
  readonly count: number
}

export const lastIndex = (m: Geometry): number => m.first + m.count - 1

export const holdsIndex = (m: Geometry, index: number): boolean =>
  Number.isInteger(index) && index >= m.first && index < m.first + m.count

/** Byte offset of piece `index` in the rebuilt file. */
export const offsetOf = (m: Geometry, index: number): number => (index - m.first) * m.sliceSize

/** Uncompressed length piece `index` must have: S, or the remainder for the last. */
export const lengthOf = (m: Geometry, index: number): number =>
  index === lastIndex(m) ? m.size - (m.count - 1) * m.sliceSize : m.sliceSize

/** Byte offset of piece `index`'s CRC32 in the dataset's CRC file (4 bytes per piece). */
export const crcOffsetOf = (m: Geometry, index: number): number => (index - m.first) * 4
