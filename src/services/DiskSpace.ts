/**
 * Free space on the destination's filesystem, asked before a dataset starts
 * so that one that cannot fit is refused early, with the numbers.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as fs from "node:fs"

export class DiskSpace extends Context.Tag("ferry/DiskSpace")<DiskSpace, {
  /** Bytes an unprivileged writer may still use under `path`; Infinity when unknown. */
  readonly available: (path: string) => Effect.Effect<number>
}>() {}

export const DiskSpaceLive = Layer.succeed(DiskSpace, {
  available: (path) =>
    Effect.async<number>((resume) => {
      fs.statfs(path, (error, stats) => resume(Effect.succeed(error === null ? stats.bavail * stats.bsize : Infinity)))
    })
})

/** A disk of a fixed size, for tests. */
export const DiskSpaceFixed = (bytes: number) => Layer.succeed(DiskSpace, { available: () => Effect.succeed(bytes) })
