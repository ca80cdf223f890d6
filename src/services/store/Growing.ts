/**
 * The state of a growing dataset (`send --early`): held before its size is
 * known under a provisional geometry of `bound` pieces of S bytes, in the
 * same epoch folder as any dataset, with `growing.json` (the spec and the
 * bound) in place of `manifest.json`. The data file is not preallocated:
 * it grows as pieces are written at their places. The CRC and bitmap files
 * are sized for the bound (sparse: 4 bytes and a bit per piece). At the
 * marker the state is cut down to the real count and size, and
 * `manifest.json` written: from then on it is an ordinary dataset.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import { PieceBitmap } from "../../domain/Bitmap.js"
import { Manifest } from "../../domain/Dataset.js"
import type { StoreError } from "../../domain/Errors.js"
import { GrowingSpec, provisionalManifest, sameSpec, sealedManifest } from "../../domain/Growing.js"
import { Destination, type IoError } from "../Destination.js"
import { fileNames, ioToStore, type StateFiles } from "./StateFiles.js"

const GrowingJson = Schema.parseJson(Schema.Struct({ spec: GrowingSpec, bound: Schema.Number }))
const ManifestJson = Schema.parseJson(Manifest)

const growingFile = (folder: string) => `${folder}/growing.json`

/** The growing state an earlier run left in `folder`, when it is for this spec and bound and whole; else None. */
export const resumeGrowing = (folder: string, spec: GrowingSpec, bound: number): Effect.Effect<Option.Option<StateFiles>, never, Destination | Scope.Scope> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const names = fileNames(folder)
    if ((yield* dest.kind(names.manifest)) !== "none") return Option.none()
    const text = yield* dest.readFile(growingFile(folder), 64 * 1024)
    if (Option.isNone(text)) return Option.none()
    const stored = yield* Schema.decodeUnknown(GrowingJson)(Buffer.from(text.value).toString("utf8")).pipe(Effect.option)
    if (Option.isNone(stored) || !sameSpec(stored.value.spec, spec) || stored.value.bound !== bound) return Option.none()
    const manifest = provisionalManifest(spec, bound)
    const data = yield* dest.open(names.data, "existing")
    const crcs = yield* dest.open(names.crcs, "existing")
    const bitmapFile = yield* dest.open(names.bitmap, "existing")
    const bytes = Math.ceil(bound / 8)
    if ((yield* data.size) > manifest.size || (yield* crcs.size) !== bound * 4 || (yield* bitmapFile.size) !== bytes) return Option.none()
    const bits = yield* bitmapFile.read(bytes, 0)
    const bitmap = PieceBitmap.fromBase64(bound, Buffer.from(bits).toString("base64"))
    if (bitmap === undefined) return Option.none()
    return Option.some<StateFiles>({ manifest, folder, bitmap, data, crcs, bitmapFile, resumed: true })
  }).pipe(Effect.catchAll(() => Effect.succeed(Option.none<StateFiles>())))

/** A growing dataset's files made afresh: an empty data file, CRC and bitmap files for `bound` pieces. */
export const createGrowing = (folder: string, spec: GrowingSpec, bound: number): Effect.Effect<StateFiles, StoreError, Destination | Scope.Scope> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const names = fileNames(folder)
    yield* dest.remove(folder)
    yield* dest.ensureDir(folder)
    yield* dest.writeFile(growingFile(folder), Buffer.from(Schema.encodeSync(GrowingJson)({ spec, bound })))
    const sized = (rel: string, size: number) => Effect.tap(dest.open(rel, "truncate"), (f) => f.truncate(size))
    const data = yield* sized(names.data, 0)
    const crcs = yield* sized(names.crcs, bound * 4)
    const bitmapFile = yield* sized(names.bitmap, Math.ceil(bound / 8))
    return { manifest: provisionalManifest(spec, bound), folder, bitmap: new PieceBitmap(bound), data, crcs, bitmapFile, resumed: false } satisfies StateFiles
  }).pipe(Effect.mapError(ioToStore(spec.dataset, "StateUnusable")))

/** The highest piece held (relative to first), or -1. */
export const highestHeld = (bitmap: PieceBitmap): number => {
  for (let byte = bitmap.bits.length - 1; byte >= 0; byte--) {
    const b = bitmap.bits[byte]!
    if (b !== 0) return byte * 8 + 31 - Math.clz32(b)
  }
  return -1
}

/**
 * Cuts a growing state down to what the marker says (checked by the caller): the data file to the
 * size, the CRC and bitmap files to the count; then `manifest.json` is written and `growing.json`
 * removed, so that a restarted server resumes it as the ordinary dataset it now is.
 */
export const sealGrowing = (state: StateFiles, spec: GrowingSpec, size: number): Effect.Effect<StateFiles, IoError, Destination> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const manifest = sealedManifest(spec, size)
    const bytes = Math.ceil(manifest.count / 8)
    yield* state.data.truncate(manifest.size)
    yield* state.crcs.truncate(manifest.count * 4)
    yield* state.bitmapFile.truncate(bytes)
    yield* dest.writeFile(fileNames(state.folder).manifest, Buffer.from(Schema.encodeSync(ManifestJson)(manifest)))
    yield* dest.remove(growingFile(state.folder))
    const bitmap = new PieceBitmap(manifest.count, state.bitmap.bits.slice(0, bytes))
    return { ...state, manifest, bitmap }
  })
