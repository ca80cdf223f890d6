/**
 * Watching a folder for finished pieces of a dataset that is still being
 * written (`send --early`). A piece is taken as finished when it starts
 * with a gzip header, its trailer's ISIZE is the slice size, and its size
 * and modification time were the same at two looks at least `settle` apart
 * (domain/Growing.ts, `readiness`). The lowest piece (number 0) is inflated
 * whole: it gives the slice size and the first slice's CRC32.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as zlib from "node:zlib"
import {  pieceFileName } from "../domain/Dataset.js"
import { type Look } from "../domain/Growing.js"

/** What one look at a piece file saw: its size and time, and its first and last bytes. */
export interface PieceLook extends Look {
  readonly magic: boolean
  readonly isize: number
}

/**
 * Looks at one piece: None when it cannot be read now (gone, or not yet there). Its first and last
 * bytes are read only when `read` says so (its size and time held still since the last look):
 * most looks are one stat.
 */
export const lookAt = (
  dir: string,
  dataset: string,
  index: number,
  at: number,
  read: (size: number, mtimeMs: number) => boolean = () => true
): Effect.Effect<Option.Option<PieceLook>, never, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const file = path.join(dir, pieceFileName(dataset, index))
    const info = yield* fs.stat(file)
    const size = Number(info.size)
    const mtimeMs = Option.match(info.mtime, { onNone: () => 0, onSome: (d) => d.getTime() })
    // a gzip member is at least 18 bytes (10 of header, an empty block, 8 of trailer)
    if (size < 18 || !read(size, mtimeMs)) return Option.some<PieceLook>({ size, mtimeMs, at, magic: false, isize: -1 })
    const [head, tail] = yield* Effect.scoped(Effect.gen(function*() {
      const handle = yield* fs.open(file, { flag: "r" })
      const head = yield* handle.readAlloc(2)
      yield* handle.seek(size - 8, "start")
      const tail = yield* handle.readAlloc(8)
      return [Option.getOrUndefined(head), Option.getOrUndefined(tail)] as const
    }))
    const magic = head !== undefined && head.length === 2 && head[0] === 0x1f && head[1] === 0x8b
    const isize = tail !== undefined && tail.length === 8 ? Buffer.from(tail).readUInt32LE(4) : -1
    return Option.some<PieceLook>({ size, mtimeMs, at, magic, isize })
  }).pipe(Effect.orElseSucceed(() => Option.none()))

/** The slice of a piece, inflated whole; None when it is not (yet) a complete gzip. */
export const sliceOf = (dir: string, dataset: string, index: number): Effect.Effect<Option.Option<Uint8Array>, never, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const bytes = yield* fs.readFile(path.join(dir, pieceFileName(dataset, index)))
    return Option.some<Uint8Array>(zlib.gunzipSync(bytes))
  }).pipe(Effect.catchAllDefect(() => Effect.succeed(Option.none())), Effect.orElseSucceed(() => Option.none()))

