/**
 * What the server accepts of a batch of pieces, decided before anything is
 * inflated or written: every index must belong to the dataset and appear
 * once, the batch must not decompress to more than a worker may hold, and
 * pieces already held are skipped. Pure, so property tests reach it.
 */
import type { PieceBitmap } from "./Bitmap.js"
import { type Geometry, holdsIndex, lastIndex } from "./Layout.js"
import { pieceFileName } from "./Layout.js"

export type BatchVerdict =
  | {
    readonly _tag: "Accepted"
    /** Positions in the batch of the pieces to inflate and write, in batch order (all of them, most often). */
    readonly keep: ReadonlyArray<number> | "all"
  }
  | { readonly _tag: "Rejected"; readonly code: "BadFrame" | "BadIndex" | "DuplicatePiece"; readonly reason: string }

export const checkBatch = (
  m: Geometry,
  held: PieceBitmap,
  indices: Uint32Array,
  maxOutput: number
): BatchVerdict => {
  const n = indices.length
  if (n * m.sliceSize > Math.max(maxOutput, m.sliceSize)) {
    return { _tag: "Rejected", code: "BadFrame", reason: `a batch of ${n} pieces would decompress to ${n * m.sliceSize} bytes, over the limit of ${maxOutput}` }
  }
  // Clients send increasing indices: then there can be no duplicate and no set is needed.
  let increasing = true
  for (let k = 1; k < n && increasing; k++) increasing = indices[k]! > indices[k - 1]!
  const seen = increasing ? undefined : new Set<number>()
  let keep: Array<number> | undefined
  for (let k = 0; k < n; k++) {
    const index = indices[k]!
    if (!holdsIndex(m, index)) {
      return { _tag: "Rejected", code: "BadIndex", reason: `piece index ${index} is outside ${pieceFileName(m.dataset, m.first)}..${pieceFileName(m.dataset, lastIndex(m))}` }
    }
    if (seen !== undefined) {
      if (seen.has(index)) return { _tag: "Rejected", code: "DuplicatePiece", reason: `${pieceFileName(m.dataset, index)} appears twice in one batch` }
      seen.add(index)
    }
    if (held.has(index - m.first)) keep ??= Array.from({ length: k }, (_, j) => j)
    else keep?.push(k)
  }
  return { _tag: "Accepted", keep: keep ?? "all" }
}

/** The entries of `values` at the kept positions (the array itself when all are kept). */
export const pick = (values: Uint32Array, keep: ReadonlyArray<number> | "all"): Uint32Array =>
  keep === "all" ? values : Uint32Array.from(keep, (k) => values[k]!)
