/**
 * A dataset's commit on the destination, and the record of earlier ones.
 * The order is what makes a `.done` trustworthy: the data file is checked
 * as it is on disk and fsynced, renamed to `DEST/NAME` (the fence: after a
 * takeover the epoch folder has another name and the rename finds nothing),
 * then `DEST/NAME.done` is written to a temporary name, fsynced and renamed.
 * Once that rename is done the dataset is committed, whatever fails after.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { formatCrc } from "../../domain/Crc32.js"
import { formatMarker, type Manifest, markerFileName, parseMarker } from "../../domain/Dataset.js"
import { StoreError } from "../../domain/Errors.js"
import { Destination } from "../Destination.js"
import type { Lease } from "./Leases.js"
import { STATE_FOLDER } from "./Leases.js"
import { GunzipPool } from "../GunzipPool.js"
import { fileNames, ioToStore, type StateFiles } from "./StateFiles.js"

export interface Commit {
  readonly dataset: string
  readonly size: number
  /** The CRC32 of the committed file, 8 hex digits ("" when an old commit left none on record). */
  readonly crc32: string
}

const CommittedRecord = Schema.parseJson(Schema.Struct({ size: Schema.Number, crc32: Schema.String }))
const committedRecord = (name: string) => `${STATE_FOLDER}/committed/${name}`

export const refuse = (dataset: string, code: StoreError["code"], reason: string) => Effect.fail(new StoreError({ dataset, code, reason }))

/**
 * The commit on record for `name`: its marker says a size, and its output is a regular file.
 * A file at `DEST/NAME` that is not ferry's (no marker beside it, no transfer of it under way
 * or left by a crash) is the user's: a Conflict, and it is left alone.
 */
export const committedOf = (name: string): Effect.Effect<Option.Option<Commit>, StoreError, Destination> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const marker = yield* dest.kind(markerFileName(name))
    const output = yield* dest.kind(name)
    if (marker === "none") {
      if (output === "none" || (yield* dest.kind(`${STATE_FOLDER}/${name}`)) !== "none") return Option.none<Commit>()
      return yield* refuse(name, "Conflict", `${dest.root}/${name} is already there and is not ferry's (no ${markerFileName(name)} beside it, no transfer of it left); ferry leaves it alone: move it away to receive ${name} here`)
    }
    if (marker !== "file") return yield* refuse(name, "Conflict", `${markerFileName(name)} in the destination is not a regular file (a ${marker}); remove it first`)
    if (output !== "file") return yield* refuse(name, "Conflict", `${markerFileName(name)} is in the destination but ${name} is ${output === "none" ? "missing" : `a ${output}`}; remove the marker first`)
    const text = yield* dest.readFile(markerFileName(name), 64)
    const marked = Option.isSome(text) ? parseMarker(Buffer.from(text.value).toString("utf8")) : { problem: "" }
    const size = "size" in marked ? marked.size : -1
    const onRecord = yield* dest.readFile(committedRecord(name), 256).pipe(
      Effect.map(Option.flatMap((bytes) => Schema.decodeUnknownOption(CommittedRecord)(Buffer.from(bytes).toString("utf8")))),
      Effect.orElseSucceed(() => Option.none())
    )
    const crc32 = Option.isSome(onRecord) && onRecord.value.size === size ? onRecord.value.crc32 : ""
    return Option.some<Commit>({ dataset: name, size, crc32 })
  }).pipe(Effect.catchTag("IoError", (e) => Effect.fail(ioToStore(name, "StateUnusable")(e))))

/**
 * The data file as it is on disk has the manifest's size and the CRC32 its pieces make: stray
 * writes (a descriptor reused under a write in flight once made them) would show here, even
 * where they overwrote the CRC records too.
 */
export const checkOnDisk = (state: StateFiles, crc: number): Effect.Effect<void, StoreError, GunzipPool> =>
  Effect.gen(function*() {
    const m = state.manifest
    const gunzip = yield* GunzipPool
    const size = yield* state.data.size
    if (size !== m.size) return yield* refuse(m.dataset, "CommitFailed", `the file written is ${size} bytes on disk, not ${m.size}; it is discarded, so sending again starts afresh`)
    const onDisk = yield* gunzip.checksum(state.data, m.size)
    if (onDisk !== crc) {
      return yield* refuse(m.dataset, "CommitFailed", `the file written has crc32 ${formatCrc(onDisk)} on disk, but its pieces make ${formatCrc(crc)}; it is discarded, so sending again starts afresh`)
    }
  }).pipe(Effect.catchTag("IoError", (e) => Effect.fail(ioToStore(state.manifest.dataset, "CommitFailed")(e))))

/**
 * Renames the synced, checked data file into place and writes its marker: the last steps of a
 * commit. `leftover`: a file was at `DEST/NAME` when the dataset was taken up, left by a commit
 * that crashed half way (its state was there too), so replacing it is ferry's to do.
 */
export const publishCommit = (manifest: Manifest, lease: Lease, crc: number, leftover: boolean): Effect.Effect<Commit, StoreError, Destination> =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const name = manifest.dataset
    const files = fileNames(lease.folder)
    yield* lease.confirm
    // a file put there by someone else while the transfer ran is theirs, not ours to replace
    const there = yield* dest.kind(name)
    if (there !== "none" && !leftover && (yield* dest.kind(markerFileName(name))) === "none") {
      return yield* refuse(name, "Conflict", `${dest.root}/${name} appeared during the transfer and is not ferry's; ferry leaves it alone: move it away and send again`)
    }
    // the fence: after a takeover this folder has another name, and the rename finds nothing
    yield* dest.rename(files.data, name).pipe(
      Effect.catchIf((e) => e.code === "ENOENT", () => refuse(name, "LeaseLost", "another server took this dataset over before it could be committed here"))
    )
    if ((yield* dest.kind(name)) !== "file") return yield* refuse(name, "CommitFailed", `${name} is not a regular file after the rename`)
    const commit: Commit = { dataset: name, size: manifest.size, crc32: formatCrc(crc) }
    yield* dest.ensureDir(`${STATE_FOLDER}/committed`)
    yield* dest.writeFile(committedRecord(name), Buffer.from(Schema.encodeSync(CommittedRecord)({ size: manifest.size, crc32: commit.crc32 })))
    yield* dest.writeFile(files.markerTmp, Buffer.from(formatMarker(manifest.size)), { sync: true })
    yield* dest.rename(files.markerTmp, markerFileName(name))
    // committed: what follows only tidies, and its failure is a warning, never a failed commit
    yield* lease.retire
    yield* Effect.all([dest.syncDir(""), dest.remove(`${STATE_FOLDER}/${name}`)], { discard: true }).pipe(
      Effect.catchAll((e) => Effect.logWarning(`${name}: committed, but tidying up after the commit failed (${e.message})`))
    )
    return commit
  }).pipe(Effect.catchTag("IoError", (e) => Effect.fail(ioToStore(manifest.dataset, "CommitFailed")(e))))
