/**
 * What `send --on-commit` does with a dataset once the server has confirmed
 * its commit: keep it, delete it, or move it to another folder.
 *
 * The order of the steps is chosen so that a crash between any two of them
 * never makes a dataset look complete when it is not (a sender would send a
 * broken dataset), and never makes it look new (it would be sent again):
 *
 * - delete: the marker first (from then on the dataset is not complete, so
 *   it is never sent again), then the pieces.
 * - move: the marker is first renamed to a hidden name in the source
 *   (`.NAME.done.moving`: the source is no longer complete), then the pieces
 *   are moved, then the marker, last, into the destination (which keeps the
 *   producer's convention: pieces first, marker last). A sender that finds a
 *   `.NAME.done.moving` finishes that move before anything else.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { markerFileName, pieceFileName } from "../domain/Dataset.js"
import { FolderError } from "../domain/Errors.js"
import { fromText } from "../domain/Units.js"

/** What to do with a dataset's files once the server has committed it. */
export const OnCommit = Schema.Union(Schema.TaggedStruct("Keep", {}), Schema.TaggedStruct("Delete", {}), Schema.TaggedStruct("Move", { to: Schema.String }))
export type OnCommit = typeof OnCommit.Type

/** `keep`, `delete` or `move:DIR`; undefined when it is none of them. */
export const parseOnCommit = (text: string): OnCommit | undefined => {
  if (text === "keep") return { _tag: "Keep" }
  if (text === "delete") return { _tag: "Delete" }
  if (text.startsWith("move:") && text.length > 5) return { _tag: "Move", to: text.slice(5) }
  return undefined
}

/** `--on-commit` as the command line writes it. */
export const OnCommitText = fromText(OnCommit, "keep, delete or move:DIR", parseOnCommit, (a) => (a._tag === "Move" ? `move:${a.to}` : a._tag.toLowerCase()))

export const movingMarker = (dataset: string) => `.${markerFileName(dataset)}.moving`

export interface Pieces {
  readonly dataset: string
  readonly first: number
  readonly count: number
}

const folderError = (path: string) => (e: { readonly message: string }) => new FolderError({ path, reason: e.message })

const isMissing = (e: { readonly _tag: string; readonly reason?: unknown }) => e._tag === "SystemError" && e.reason === "NotFound"

/** Moves a file, copying across filesystems when a rename cannot. */
const moveFile = (from: string, to: string) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) =>
    fs.rename(from, to).pipe(
      Effect.catchIf((e) => e._tag === "SystemError" && /EXDEV/.test(e.message), () => Effect.zipRight(fs.copyFile(from, to), fs.remove(from)))
    ))

/** Moves the pieces, then the hidden marker into place: the tail of a move, also run to finish one a crash interrupted. */
const finishMove = (dir: string, dataset: string, indices: Iterable<number>, to: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    yield* fs.makeDirectory(to, { recursive: true })
    for (const i of indices) {
      const name = pieceFileName(dataset, i)
      yield* moveFile(path.join(dir, name), path.join(to, name)).pipe(Effect.catchIf(isMissing, () => Effect.void))
    }
    yield* moveFile(path.join(dir, movingMarker(dataset)), path.join(to, markerFileName(dataset)))
  })

const range = function*(first: number, count: number) {
  for (let i = first; i < first + count; i++) yield i
}

export const cleanUp = (dir: string, pieces: Pieces, action: OnCommit): Effect.Effect<void, FolderError, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const marker = path.join(dir, markerFileName(pieces.dataset))
    switch (action._tag) {
      case "Keep":
        return
      case "Delete": {
        yield* fs.remove(marker).pipe(Effect.catchIf(isMissing, () => Effect.void))
        for (let i = pieces.first; i < pieces.first + pieces.count; i++) {
          yield* fs.remove(path.join(dir, pieceFileName(pieces.dataset, i))).pipe(Effect.catchIf(isMissing, () => Effect.void))
        }
        return
      }
      case "Move": {
        yield* fs.rename(marker, path.join(dir, movingMarker(pieces.dataset)))
        yield* finishMove(dir, pieces.dataset, range(pieces.first, pieces.count), action.to)
      }
    }
  }).pipe(Effect.mapError(folderError(dir)))

/** Finishes a move that a crash interrupted (a `.NAME.done.moving` in the folder): the pieces still there, then the marker. */
export const finishInterruptedMove = (dir: string, dataset: string, lowest: number, highest: number, to: string) =>
  finishMove(dir, dataset, range(lowest, Math.max(0, highest - lowest + 1)), to).pipe(Effect.mapError(folderError(dir)))
