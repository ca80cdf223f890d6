/** What one server accepts, each a flag on `ferry serve`, and the check a manifest must pass before anything touches the disk. */
import { type Manifest, manifestProblem, MAX_PIECES } from "./Dataset.js"
import { StoreError } from "./Errors.js"

export interface StoreLimits {
  /** Largest original file accepted, in bytes. */
  readonly maxDatasetSize: number
  /** Most pieces in one dataset. */
  readonly maxPieces: number
  /** Datasets in progress at once, over all clients. */
  readonly maxDatasets: number
  /** Largest slice: what one piece may decompress to (a gunzip worker holds a batch of them). */
  readonly maxSliceSize: number
}

export const defaultStoreLimits: StoreLimits = {
  maxDatasetSize: 2 ** 44, // 16 TiB
  maxPieces: MAX_PIECES,
  maxDatasets: 64,
  maxSliceSize: 64 * 1024 * 1024
}

/** The limit a manifest breaks, as the failure its sender is told; undefined when it fits. */
export const limitProblem = (m: Manifest, limits: StoreLimits): StoreError | undefined => {
  const fail = (code: StoreError["code"], reason: string) => new StoreError({ dataset: m.dataset, code, reason })
  const problem = manifestProblem(m)
  if (problem !== undefined) return fail("BadManifest", problem)
  if (m.size > limits.maxDatasetSize) return fail("TooLarge", `${m.size} bytes is over this server's limit of ${limits.maxDatasetSize}`)
  if (m.sliceSize > limits.maxSliceSize) return fail("TooLarge", `slices of ${m.sliceSize} bytes are over this server's limit of ${limits.maxSliceSize}`)
  if (m.count > limits.maxPieces) return fail("TooManyPieces", `${m.count} pieces is over this server's limit of ${limits.maxPieces}`)
  return undefined
}
