/**
 * Destination: the files of `serve --dest`, opened so that a link planted
 * anywhere under it is never followed out of it. Every path is relative to
 * the destination and checked: no `..`, no absolute path; each folder on the
 * way must be a real folder (lstat), the file itself is opened with
 * O_NOFOLLOW and must turn out a regular file (fstat on the descriptor).
 *
 * Live: node:fs. In process: built on the injected FileSystem (the in-memory
 * one in tests, which has no links), with the same interface and errors.
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type * as Scope from "effect/Scope"

/** A file operation under the destination failed; `code` is the errno code (or ours: NOTREGULAR, OUTSIDE). */
export class IoError extends Data.TaggedError("IoError")<{
  readonly op: string
  readonly path: string
  readonly code: string
  readonly detail: string
}> {
  override get message() {
    return `${this.path}: ${describeCode(this.code, this.detail)}`
  }
}

export const describeCode = (code: string, detail = code): string => {
  switch (code) {
    case "EROFS":
      return "the destination is on a read-only filesystem"
    case "ENOSPC":
    case "EDQUOT":
      return "the destination disk is full"
    case "ELOOP":
      return "is a symbolic link, which ferry does not follow"
    case "NOTREGULAR":
      return "is not a regular file"
    case "NOTDIR":
    case "ENOTDIR":
      return "a file is in the way where a folder should be"
    case "EACCES":
    case "EPERM":
      return "permission denied"
    case "ENOENT":
      return "no such file or folder"
    default:
      return detail
  }
}

/** An open file of the destination: positional reads and writes only. */
export interface DestFile {
  /** The descriptor, for worker threads that write through it (live only; the in-process one is not a real fd). */
  readonly fd: number
  readonly write: (bytes: Uint8Array, position: number) => Effect.Effect<void, IoError>
  /** Reads up to `length` bytes at `position` (fewer at the end of the file). */
  readonly read: (length: number, position: number) => Effect.Effect<Uint8Array, IoError>
  readonly sync: Effect.Effect<void, IoError>
  readonly truncate: (size: number) => Effect.Effect<void, IoError>
  readonly size: Effect.Effect<number, IoError>
}

/** How a file is opened: an existing one, a new or emptied one, one that must not exist yet, or read-only. */
export type OpenMode = "existing" | "truncate" | "exclusive" | "read"

export type EntryKind = "file" | "directory" | "link" | "other" | "none"

export class Destination extends Context.Tag("ferry/Destination")<Destination, {
  readonly root: string
  /** Creates the folder and any missing parent, refusing a link or a file in the way. */
  readonly ensureDir: (rel: string) => Effect.Effect<void, IoError>
  readonly open: (rel: string, mode: OpenMode) => Effect.Effect<DestFile, IoError, Scope.Scope>
  /** The whole file, or None when there is none; at most `limit` bytes are read. */
  readonly readFile: (rel: string, limit?: number) => Effect.Effect<Option.Option<Uint8Array>, IoError>
  /** Creates or replaces the file's content; `sync` fsyncs it before closing. */
  readonly writeFile: (rel: string, bytes: Uint8Array, options?: { readonly sync?: boolean; readonly exclusive?: boolean }) => Effect.Effect<void, IoError>
  /** Atomic rename within the destination; never follows a link at either end. */
  readonly rename: (from: string, to: string) => Effect.Effect<void, IoError>
  /** Removes a file or a whole folder (links inside are removed, not followed); nothing there is fine. */
  readonly remove: (rel: string) => Effect.Effect<void, IoError>
  /** Names in a folder; none when it does not exist. */
  readonly list: (rel: string) => Effect.Effect<ReadonlyArray<string>, IoError>
  readonly kind: (rel: string) => Effect.Effect<EntryKind, IoError>
  /** fsyncs a folder, so that renames in it are durable. */
  readonly syncDir: (rel: string) => Effect.Effect<void, IoError>
  /** Bytes an unprivileged writer may still use; Infinity when unknown. */
  readonly available: Effect.Effect<number>
  /** Bytes the whole filesystem holds for an unprivileged writer, used or not; Infinity when unknown. */
  readonly capacity: Effect.Effect<number>
}>() {}

/** `a/b/c` and the folders on the way to it, relative to the root, or undefined when it would leave the root. */
export const segmentsOf = (rel: string): ReadonlyArray<string> | undefined => {
  const parts = rel.split("/").filter((p) => p !== "" && p !== ".")
  return rel.startsWith("/") || parts.some((p) => p === "..") ? undefined : parts
}

export const errnoOf = (e: unknown): string => (e as NodeJS.ErrnoException)?.code ?? "EIO"

/** A whole small file through `open`: created or emptied (or, `exclusive`, new), written, fsynced when asked. */
export const writeFileWith = (open: Destination["Type"]["open"]): Destination["Type"]["writeFile"] => (rel, bytes, options) =>
  Effect.scoped(
    Effect.flatMap(open(rel, options?.exclusive === true ? "exclusive" : "truncate"), (f) =>
      Effect.zipRight(f.write(bytes, 0), options?.sync === true ? f.sync : Effect.void))
  )
