/**
 * Dataset scanner: lists a folder's entries as a stream of batches (never all
 * ten million names at once) and tells when the folder may have changed.
 * Live: opendir + fs.watch with a polling fallback. Test: the injected
 * FileSystem, polled.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as fs from "node:fs"
import * as path from "node:path"
import { FolderError } from "../domain/Errors.js"

export class DatasetScanner extends Context.Tag("ferry/DatasetScanner")<DatasetScanner, {
  /** The folder's entry names, in batches. */
  readonly list: (dir: string) => Stream.Stream<ReadonlyArray<string>, FolderError>
  /**
   * Completes once `name` exists in the folder: looked for at once, whenever an event names it,
   * and every poll. However many other entries change meanwhile (a producer writing thousands of
   * pieces beside a marker), their events are dropped where they arrive, not queued ahead of it.
   */
  readonly appears: (dir: string, name: string) => Effect.Effect<void>
  /**
   * Names seen in the folder, for a sender that keeps watching it: names from filesystem events
   * as they come, and a slow sweep through the folder that reads at most a bounded number of
   * entries per tick (so a tick costs the same with ten million pieces present), starting over
   * when it reaches the end. Never ends by itself.
   */
  readonly watch: (dir: string) => Stream.Stream<ReadonlyArray<string>>
}>() {}

/** Entries one sweep tick reads at most. */
export const SWEEP_BUDGET = 16_384

const folderError = (dir: string, e: unknown) => {
  const err = e as NodeJS.ErrnoException
  const reason = err.code === "ENOENT"
    ? "no such folder"
    : err.code === "ENOTDIR"
    ? "not a folder"
    : err.code === "EACCES"
    ? "permission denied"
    : err.message ?? String(e)
  return new FolderError({ path: dir, reason })
}

const BATCH = 1024

/** Folder events, as names (a change event without a name stands for "look again"). */
const events = (dir: string) =>
  Stream.async<ReadonlyArray<string>>((emit) => {
    let watcher: fs.FSWatcher | undefined
    try {
      watcher = fs.watch(dir, { persistent: false }, (_kind, name) => void emit.single(name === null ? [] : [String(name)]))
      watcher.on("error", () => watcher?.close())
    } catch {
      // no watching here (some network filesystems): the sweep covers it
    }
    return Effect.sync(() => watcher?.close())
  })

/** Lets the event loop run what is due (I/O callbacks included: Effect's own yield is a microtask). */
const turn = Effect.async<void>((resume) => {
  const t = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(t))
})

/** One tick of the sweep: the next entries from a cursor kept open between ticks. */
const sweep = (dir: string, budget: number) => {
  let cursor: fs.Dir | undefined
  const close = Effect.sync(() => {
    try {
      cursor?.closeSync()
    } catch {
      // already closed
    }
    cursor = undefined
  })
  const next = Effect.sync((): ReadonlyArray<string> => {
    const names: Array<string> = []
    try {
      cursor ??= fs.opendirSync(dir, { bufferSize: 1024 })
      for (let entry = cursor.readSync(); entry !== null; entry = cursor.readSync()) {
        names.push(entry.name)
        if (names.length >= budget) return names
      }
      cursor.closeSync()
      cursor = undefined
    } catch {
      try {
        cursor?.closeSync()
      } catch {
        // already closed
      }
      cursor = undefined
    }
    return names
  })
  return { next, close }
}

export interface ScannerOptions {
  /** Filesystem events; off, only the polls notice changes (as on filesystems without events). */
  readonly events?: boolean
}

/**
 * Waits for one entry. Events are filtered by name in the watcher's callback and checks never
 * overlap (one stat at a time, one more if something came up meanwhile), so a flood of events
 * about other entries costs a string comparison each, and the poll, a stat of that one name, finds
 * the entry within `pollMs` even when the kernel dropped its event (inotify's queue overflows).
 */
const appears = (dir: string, name: string, pollMs: number, watchEvents: boolean) =>
  Effect.async<void>((resume) => {
    const target = path.join(dir, name)
    let done = false
    let checking = false
    let again = false
    let watcher: fs.FSWatcher | undefined
    let timer: NodeJS.Timeout | undefined
    const stop = () => {
      done = true
      watcher?.close()
      if (timer !== undefined) clearInterval(timer)
    }
    const check = () => {
      if (done) return
      if (checking) return void (again = true)
      checking = true
      fs.stat(target, (e) => {
        checking = false
        if (done) return
        if (e === null) {
          stop()
          return resume(Effect.void)
        }
        if (again) {
          again = false
          check()
        }
      })
    }
    if (watchEvents) {
      try {
        watcher = fs.watch(dir, { persistent: false }, (_kind, changed) => {
          if (changed === null || String(changed) === name) check()
        })
        watcher.on("error", () => watcher?.close())
      } catch {
        // no watching here (some network filesystems): the poll covers it
      }
    }
    timer = setInterval(check, pollMs)
    check()
    return Effect.sync(stop)
  })

export const DatasetScannerLive = (pollEvery: Duration.DurationInput = "1 second", options: ScannerOptions = {}) =>
  Layer.succeed(DatasetScanner, {
    watch: (dir) =>
      Stream.suspend(() => {
        const tick = sweep(dir, SWEEP_BUDGET)
        return Stream.merge(
          events(dir),
          Stream.fromSchedule(Schedule.spaced(pollEvery)).pipe(Stream.mapEffect(() => tick.next), Stream.ensuring(tick.close))
        )
      }),
    list: (dir) =>
      Stream.acquireRelease(
        Effect.try({ try: () => fs.opendirSync(dir, { bufferSize: 1024 }), catch: (e) => folderError(dir, e) }),
        (handle) => Effect.sync(() => handle.closeSync())
      ).pipe(
        Stream.flatMap((handle) =>
          Stream.repeatEffectOption(
            Effect.try({
              try: () => {
                const names: Array<string> = []
                for (let entry = handle.readSync(); entry !== null; entry = handle.readSync()) {
                  names.push(entry.name)
                  if (names.length === BATCH) break
                }
                return names
              },
              catch: (e) => folderError(dir, e)
            }).pipe(
              Effect.mapError(Option.some),
              Effect.flatMap((names) => (names.length === 0 ? Effect.fail(Option.none()) : Effect.succeed(names))),
              // the event loop's turn between batches: a count runs while the sender dials, and a
              // socket event held behind a whole count made a server on loopback measure far
              Effect.zipLeft(turn)
            )
          )
        )
      ),
    appears: (dir, name) => appears(dir, name, Duration.toMillis(pollEvery), options.events ?? true)
  })

export const DatasetScannerInProcess = Layer.effect(
  DatasetScanner,
  Effect.gen(function*() {
    const files = yield* FileSystem.FileSystem
    return {
      list: (dir) =>
        Stream.fromEffect(
          files.readDirectory(dir).pipe(
            Effect.mapError((e) => new FolderError({ path: dir, reason: e._tag === "SystemError" && e.reason === "NotFound" ? "no such folder" : e.message }))
          )
        ),
      appears: (dir, name) =>
        files.exists(`${dir}/${name}`).pipe(
          Effect.orElseSucceed(() => false),
          Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (found) => found }),
          Effect.asVoid
        ),
      watch: (dir) =>
        Stream.fromSchedule(Schedule.spaced("10 millis")).pipe(
          Stream.mapEffect(() => files.readDirectory(dir).pipe(Effect.orElseSucceed((): ReadonlyArray<string> => [])))
        )
    }
  })
)
