/**
 * The sender's folder: finding the datasets in it, waiting for their
 * markers, and turning a dataset's pieces and marker into a manifest.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as zlib from "node:zlib"
import { Manifest, manifestProblem, markerFileName, MAX_NAME_LENGTH, parseEntry, parseMarker, pieceFileName } from "../domain/Dataset.js"
import { DatasetError, type FolderError } from "../domain/Errors.js"
import { firstGap, type Holdings, Inventory, isContiguous } from "../domain/Inventory.js"
import { DatasetScanner } from "../services/DatasetScanner.js"

/** Every entry of the folder, folded into per-dataset holdings. */
export const inventory = (dir: string): Effect.Effect<Inventory, FolderError, DatasetScanner> =>
  Effect.gen(function*() {
    const scanner = yield* DatasetScanner
    const inv = new Inventory()
    const skipped: Array<string> = []
    yield* scanner.list(dir).pipe(
      Stream.runForEach((names) =>
        Effect.sync(() => {
          for (const name of names) if (!inv.add(name) && skipped.length < 20) skipped.push(name)
        })
      )
    )
    for (const name of skipped) yield* Effect.logDebug(`ignoring ${name}: not a piece or a marker`)
    if (inv.ignored > skipped.length) yield* Effect.logDebug(`ignoring ${inv.ignored - skipped.length} more entries`)
    return inv
  })

/** Why a dataset of this name cannot be sent at all, or undefined. */
export const nameProblem = (name: string): string | undefined =>
  name.length > MAX_NAME_LENGTH ? `its name is longer than ${MAX_NAME_LENGTH} characters` : undefined

/** Whether `NAME.done` is there now. */
export const markerPresent = (dir: string, dataset: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    return yield* fs.exists(path.join(dir, markerFileName(dataset))).pipe(Effect.orElseSucceed(() => false))
  })

/** Waits until `NAME.done` exists (DatasetScanner.appears: events about it, and a poll for it). */
export const awaitMarker = (dir: string, dataset: string): Effect.Effect<void, never, DatasetScanner> =>
  Effect.flatMap(DatasetScanner, (scanner) => scanner.appears(dir, markerFileName(dataset)))

/** Reads the marker and the first piece, checks the numbering, and answers the manifest. */
export const readManifest = (
  dir: string,
  holdings: Holdings
): Effect.Effect<Manifest, DatasetError, FileSystem.FileSystem | Path.Path | DatasetScanner> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const name = holdings.dataset
    const bad = (reason: string) => new DatasetError({ dataset: name, reason })
    const invalid = nameProblem(name)
    if (invalid !== undefined) return yield* Effect.fail(bad(invalid))
    // never open what is not a regular file: a FIFO named like a marker or a piece would hold the read for good
    const regular = (file: string) =>
      fs.stat(path.join(dir, file)).pipe(
        Effect.mapError((e) => bad(`${file} cannot be read (${e.message})`)),
        Effect.filterOrFail((info) => info.type === "File", (info) => bad(`${file} is not a regular file (${info.type === "FIFO" ? "a FIFO" : info.type})`))
      )
    yield* regular(markerFileName(name))
    // a marker written in place (not renamed into place) can be caught empty: give its writer a moment
    const text = yield* fs.readFileString(path.join(dir, markerFileName(name))).pipe(
      Effect.mapError((e) => bad(`${markerFileName(name)} cannot be read (${e.message})`)),
      Effect.filterOrFail((t) => t.trim() !== "", () => bad(`${markerFileName(name)} is empty`)),
      Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 10, while: (e) => e.reason.endsWith("is empty") }),
      Effect.catchIf((e) => e.reason.endsWith("is empty"), () => Effect.succeed(""))
    )
    const marker = parseMarker(text)
    if ("problem" in marker) return yield* Effect.fail(bad(`${markerFileName(name)} ${marker.problem}`))
    const size = marker.size
    if (holdings.pieces === 0) {
      if (size === 0) return new Manifest({ dataset: name, size: 0, sliceSize: 0, first: 0, count: 0, firstSliceCrc: 0 })
      return yield* Effect.fail(bad(`${markerFileName(name)} says ${size} bytes but there are no pieces`))
    }
    if (!isContiguous(holdings)) {
      const present = yield* piecesPresent(dir, name)
      return yield* Effect.fail(bad(`piece ${firstGap(name, holdings.lowest, present)} is missing (found ${holdings.pieces} pieces numbered ${holdings.lowest} to ${holdings.highest})`))
    }
    const firstName = pieceFileName(name, holdings.lowest)
    yield* regular(firstName)
    const first = yield* fs.readFile(path.join(dir, firstName)).pipe(
      Effect.mapError((e) => bad(`${firstName} cannot be read (${e.message})`))
    )
    const slice = yield* Effect.try({
      try: () => zlib.gunzipSync(first, { maxOutputLength: 2 ** 31 - 1 }),
      catch: (e) => bad(`${firstName} is not valid gzip (${(e as Error).message})`)
    })
    const manifest = new Manifest({ dataset: name, size, sliceSize: slice.length, first: holdings.lowest, count: holdings.pieces, firstSliceCrc: zlib.crc32(slice) })
    const problem = manifestProblem(manifest)
    if (problem !== undefined) return yield* Effect.fail(bad(problem))
    return manifest
  })

/** The piece numbers of one dataset present in the folder now, sorted (naming a gap; --early's looks). */
export const piecesPresent = (dir: string, dataset: string): Effect.Effect<Array<number>, never, DatasetScanner> =>
  Effect.gen(function*() {
    const scanner = yield* DatasetScanner
    const found: Array<number> = []
    yield* scanner.list(dir).pipe(
      Stream.runForEach((names) =>
        Effect.sync(() => {
          for (const n of names) {
            const e = parseEntry(n)
            if (e._tag === "Piece" && e.dataset === dataset) found.push(e.index)
          }
        })
      ),
      Effect.orElse(() => Effect.void)
    )
    return found.sort((a, b) => a - b)
  })

/** Compressed size of one piece, a hint for sizing read buffers. */
export const pieceFileBytes = (dir: string, dataset: string, index: number) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const info = yield* fs.stat(path.join(dir, pieceFileName(dataset, index)))
    return Number(info.size)
  }).pipe(Effect.orElseSucceed(() => 16 * 1024))
