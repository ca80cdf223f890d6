/**
 * File descriptors: the server holds a few per dataset in progress and one
 * per connection, so the soft limit (`ulimit -n`, often 1024) is raised to
 * the hard one at start, as servers do, and a configuration that cannot fit
 * is said once at start rather than discovered as EMFILE under load. Node
 * has no setrlimit: util-linux's `prlimit` sets the limit of this process.
 */
import * as Effect from "effect/Effect"
import { execFile } from "node:child_process"
import { readFile } from "node:fs/promises"

export interface DescriptorLimit {
  readonly soft: number
  readonly hard: number
}

/** Descriptors one dataset in progress holds: data, CRCs, bitmap, and one for its lease and small files. */
export const DESCRIPTORS_PER_DATASET = 4
/** Descriptors the process holds whatever it serves: stdio, the listener, worker threads, the event loop. */
export const BASE_DESCRIPTORS = 64

/** The "Max open files" row of /proc/self/limits; undefined where there is none. */
export const parseLimits = (text: string): DescriptorLimit | undefined => {
  const row = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  if (row === null) return undefined
  const value = (s: string) => (s === "unlimited" ? Infinity : Number(s))
  const soft = value(row[1]!)
  const hard = value(row[2]!)
  return Number.isNaN(soft) || Number.isNaN(hard) ? undefined : { soft, hard }
}

/** Descriptors a server may need at its limits. */
export const descriptorsNeeded = (maxDatasets: number, maxConnections: number): number =>
  BASE_DESCRIPTORS + maxDatasets * DESCRIPTORS_PER_DATASET + maxConnections

const readLimit = Effect.promise(() => readFile("/proc/self/limits", "utf8").then(parseLimits, () => undefined))

/**
 * Raises the soft limit to the hard one (when they differ), and says once when the limits asked
 * for (`--max-datasets`, `--max-connections`) need more descriptors than the process may open.
 */
export const raiseDescriptorLimit = (maxDatasets: number, maxConnections: number): Effect.Effect<void> =>
  Effect.gen(function*() {
    const before = yield* readLimit
    if (before === undefined) return
    if (before.soft < before.hard) {
      const hard = Number.isFinite(before.hard) ? String(before.hard) : "unlimited"
      const raised = yield* Effect.async<boolean>((resume) => {
        execFile("prlimit", ["--pid", String(process.pid), `--nofile=${hard}:${hard}`], (error) => resume(Effect.succeed(error === null)))
      })
      if (!raised) yield* Effect.logDebug(`could not raise the open files limit from ${before.soft} to ${hard} (prlimit)`)
    }
    const now = (yield* readLimit) ?? before
    yield* Effect.logDebug(`open files limit: ${now.soft} (hard ${now.hard})`)
    const need = descriptorsNeeded(maxDatasets, maxConnections)
    if (need > now.soft) {
      yield* Effect.logWarning(
        `--max-datasets ${maxDatasets} and --max-connections ${maxConnections} need about ${need} file descriptors, but this process may open ${now.soft} (ulimit -n); ` +
          `past that, datasets wait as Busy: lower those limits or raise ulimit -n`
      )
    }
  })
