/**
 * What a scan of a folder found, dataset by dataset, in constant memory per
 * dataset: the lowest and highest piece, how many, and whether the marker is
 * there. Names are unique in a folder, so count = highest - lowest + 1 means
 * the numbering is contiguous.
 */
import { parseEntry, pieceFileName } from "./Dataset.js"

export interface Holdings {
  readonly dataset: string
  lowest: number
  highest: number
  pieces: number
  marker: boolean
}

const MOVING = /^\.([a-z]+)\.done\.moving$/

export class Inventory {
  readonly datasets = new Map<string, Holdings>()
  /** Datasets whose move after commit (`--on-commit move:`) was interrupted. */
  readonly moving = new Set<string>()
  ignored = 0

  /** Adds one directory entry; answers false when it is not ferry's. */
  add(fileName: string): boolean {
    const entry = parseEntry(fileName)
    if (entry._tag === "Other") {
      const moving = MOVING.exec(fileName)
      if (moving !== null) {
        this.moving.add(moving[1]!)
        return true
      }
      this.ignored++
      return false
    }
    let h = this.datasets.get(entry.dataset)
    if (h === undefined) {
      h = { dataset: entry.dataset, lowest: Infinity, highest: -1, pieces: 0, marker: false }
      this.datasets.set(entry.dataset, h)
    }
    if (entry._tag === "Marker") h.marker = true
    else {
      h.pieces++
      if (entry.index < h.lowest) h.lowest = entry.index
      if (entry.index > h.highest) h.highest = entry.index
    }
    return true
  }

}

export const isContiguous = (h: Holdings): boolean => h.pieces === 0 || h.highest - h.lowest + 1 === h.pieces

/** The first gap in a dataset's numbering, given every index present (used only once a gap is known). */
export const firstGap = (dataset: string, lowest: number, present: Iterable<number>): string => {
  const seen = new Set(present)
  let i = lowest
  while (seen.has(i)) i++
  return pieceFileName(dataset, i)
}
