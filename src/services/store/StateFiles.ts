/**
 * The files of one dataset in progress, in its epoch folder
 * (`.ferry/NAME/epoch.E/`): the manifest, the preallocated data file, one
 * CRC32 per piece and a bitmap of the pieces written. Data is written
 * first and the bitmap after it, so that the record never claims a piece
 * the data file lacks.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import { PieceBitmap } from "../../domain/Bitmap.js"
import { FileCrc } from "../../domain/Crc32.js"
import { lastIndex, lengthOf, Manifest, sameManifest } from "../../domain/Dataset.js"
import { StoreError } from "../../domain/Errors.js"
import { type DestFile, Destination, type IoError } from "../Destination.js"

export interface StateFiles {
  readonly manifest: Manifest
  readonly folder: string
  /** Which pieces are written and recorded; the bitmap file mirrors it. */
  readonly bitmap: PieceBitmap
  readonly data: DestFile
  readonly crcs: DestFile
  readonly bitmapFile: DestFile
  readonly resumed: boolean
}

const ManifestJson = Schema.parseJson(Manifest)

export const fileNames = (folder: string) => ({
  manifest: `${folder}/manifest.json`,
  data: `${folder}/data`,
  crcs: `${folder}/crc32`,
  bitmap: `${folder}/bitmap`,
  markerTmp: `${folder}/done.tmp`
})

/** Out of file descriptors, for this process or the whole system: "not now", never "never". */
export const isOutOfDescriptors = (code: string): boolean => code === "EMFILE" || code === "ENFILE"

/** One map from an I/O failure's errno to what the sender is told: read-only, no space, not now (Busy), or `otherwise`. */
export const ioToStore = (dataset: string, otherwise: "StateUnusable" | "WriteFailed" | "CommitFailed") => (e: Pick<IoError, "code" | "message">) =>
  isOutOfDescriptors(e.code)
    ? new StoreError({ dataset, code: "Busy", reason: `the server is out of file descriptors (${e.code}) for now; try again later`, cause: e })
    : new StoreError({
      dataset,
      code: e.code === "EROFS" ? "ReadOnly" : e.code === "ENOSPC" || e.code === "EDQUOT" ? "NoSpace" : otherwise,
      reason: e.message,
      cause: e
    })

/** Whether a store failure came from running out of file descriptors. */
export const outOfDescriptors = (e: StoreError): boolean =>
  typeof e.cause === "object" && e.cause !== null && "code" in e.cause && isOutOfDescriptors(String(e.cause.code))

/** The state an earlier run left in `folder`, when it is for this manifest and whole; else None. Closed with the scope. */
export const resumeState = (folder: string, manifest: Manifest): Effect.Effect<Option.Option<StateFiles>, never, Destination | Scope.Scope> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const names = fileNames(folder)
    const text = yield* dest.readFile(names.manifest, 64 * 1024)
    if (Option.isNone(text)) return Option.none()
    const stored = yield* Schema.decodeUnknown(ManifestJson)(Buffer.from(text.value).toString("utf8")).pipe(Effect.option)
    if (Option.isNone(stored) || !sameManifest(stored.value, manifest)) return Option.none()
    // opened without following links and checked to be regular files; a planted link makes this fail: start afresh
    const data = yield* dest.open(names.data, "existing")
    const crcs = yield* dest.open(names.crcs, "existing")
    const bitmapFile = yield* dest.open(names.bitmap, "existing")
    const bytes = Math.ceil(manifest.count / 8)
    if ((yield* data.size) !== manifest.size || (yield* crcs.size) !== manifest.count * 4 || (yield* bitmapFile.size) !== bytes) return Option.none()
    const bits = yield* bitmapFile.read(bytes, 0)
    // a bitmap with bits past the last piece was not written by us
    const bitmap = PieceBitmap.fromBase64(manifest.count, Buffer.from(bits).toString("base64"))
    if (bitmap === undefined) return Option.none()
    return Option.some<StateFiles>({ manifest, folder, bitmap, data, crcs, bitmapFile, resumed: true })
  }).pipe(Effect.catchAll(() => Effect.succeed(Option.none<StateFiles>())))

/** The dataset's files made afresh (any earlier state in `folder` removed); closed with the scope. */
export const createState = (folder: string, manifest: Manifest): Effect.Effect<StateFiles, StoreError, Destination | Scope.Scope> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const names = fileNames(folder)
    yield* dest.remove(folder)
    yield* dest.ensureDir(folder)
    yield* dest.writeFile(names.manifest, Buffer.from(Schema.encodeSync(ManifestJson)(manifest)))
    const sized = (rel: string, size: number) => Effect.tap(dest.open(rel, "truncate"), (f) => f.truncate(size))
    const data = yield* sized(names.data, manifest.size)
    const crcs = yield* sized(names.crcs, manifest.count * 4)
    const bitmapFile = yield* sized(names.bitmap, Math.ceil(manifest.count / 8))
    return { manifest, folder, bitmap: new PieceBitmap(manifest.count), data, crcs, bitmapFile, resumed: false } satisfies StateFiles
  }).pipe(Effect.mapError(ioToStore(manifest.dataset, "StateUnusable")))

/** Makes the state durable, data and CRCs before the bitmap that claims them: what another machine may resume from. */
export const syncState = (state: StateFiles): Effect.Effect<void, IoError> =>
  Effect.all([state.data.sync, state.crcs.sync], { concurrency: 2, discard: true }).pipe(Effect.zipRight(state.bitmapFile.sync))

/** Marks pieces as held and writes the changed bytes of the bitmap file. */
export const record = (state: StateFiles, indices: Uint32Array): Effect.Effect<void, IoError> =>
  Effect.suspend(() => {
    let lo = Infinity
    let hi = -1
    for (const index of indices) {
      const i = index - state.manifest.first
      state.bitmap.set(i)
      if (i < lo) lo = i
      if (i > hi) hi = i
    }
    if (hi < 0) return Effect.void
    const from = lo >>> 3
    return state.bitmapFile.write(state.bitmap.bits.subarray(from, (hi >>> 3) + 1), from)
  })

/** The CRC32 of the rebuilt file, combined from the recorded CRC32 of its slices. */
export const fileCrc = (state: StateFiles): Effect.Effect<number, IoError> =>
  Effect.map(state.crcs.read(state.manifest.count * 4, 0), (bytes) => {
    const m = state.manifest
    const crcs = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const file = new FileCrc(m.sliceSize)
    for (let i = 0; i < m.count; i++) {
      const crc = crcs.readUInt32LE(i * 4)
      if (i === m.count - 1) file.addLast(crc, lengthOf(m, lastIndex(m)))
      else file.add(crc)
    }
    return file.value
  })
