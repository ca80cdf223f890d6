/**
 * Free space, counted honestly: data files are preallocated sparse, so the
 * filesystem's free space does not show what datasets in progress will
 * still write. A dataset is admitted only when its own remainder fits beside
 * the remainders of every dataset already admitted, so that what is admitted
 * can finish.
 */
import type { Geometry } from "./Layout.js"

/** Bytes of state beside the data: a CRC32 and a bit per piece, and the small files. */
export const stateBytes = (m: Geometry): number => m.count * 4 + Math.ceil(m.count / 8) + 16 * 1024

/** Bytes a dataset still has to write, given how many of its pieces are held. */
export const remainingBytes = (m: Geometry, heldPieces: number): number =>
  m.count === 0 ? stateBytes(m) : Math.ceil((m.size + stateBytes(m)) * (1 - heldPieces / m.count))

export type Admission =
  | { readonly _tag: "Admitted" }
  | { readonly _tag: "Refused"; readonly reason: string }

export const admit = (need: number, free: number, reservedByOthers: number): Admission =>
  need + reservedByOthers <= free
    ? { _tag: "Admitted" }
    : {
      _tag: "Refused",
      reason: reservedByOthers > 0
        ? `needs ${need} more bytes, but of the ${free} free, ${Math.min(free, reservedByOthers)} are promised to datasets in progress`
        : `needs ${need} more bytes but only ${free} are free`
    }
