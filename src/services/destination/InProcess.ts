/** The destination over the injected FileSystem (the in-memory one in tests), with the live one's interface and errors. */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as nodePath from "node:path"
import { type DestFile, Destination, type EntryKind, IoError, type OpenMode, segmentsOf, writeFileWith } from "../Destination.js"

/** The errno code of a platform error, read from the Node error it keeps as its cause (never from its text). */
const codeOfPlatform = (e: { readonly message: string; readonly _tag: string }): string => {
  const code = (e as { readonly cause?: { readonly code?: unknown } }).cause?.code
  if (typeof code === "string") return code
  return e._tag === "SystemError" && (e as { readonly reason?: string }).reason === "NotFound" ? "ENOENT" : "EIO"
}

/**
 * The same capability over `FileSystem` (the in-memory one in tests), so that
 * the store's logic runs unchanged against an injected filesystem with faults.
 * That filesystem has no links; `space` stands for statfs.
 */
export const makeDestinationOn = (
  root: string,
  files: FileSystem.FileSystem,
  space: Effect.Effect<number>,
  capacity: number = Infinity
): Destination["Type"] => {
  const wrap = (op: string, path: string) => (e: { readonly message: string; readonly _tag: string }) =>
    new IoError({ op, path, code: codeOfPlatform(e), detail: e.message })
  const resolve = (op: string, rel: string) => {
    const parts = segmentsOf(rel)
    return parts === undefined
      ? Effect.fail(new IoError({ op, path: rel, code: "OUTSIDE", detail: "is outside the destination" }))
      : Effect.succeed(nodePath.posix.join(root, ...parts))
  }
  const flagOf = (mode: OpenMode): FileSystem.OpenFlag =>
    mode === "read" ? "r" : mode === "truncate" ? "w+" : mode === "exclusive" ? "wx+" : "r+"
  const open = (rel: string, mode: OpenMode) =>
    Effect.gen(function*() {
      const path = yield* resolve("open", rel)
      const file = yield* files.open(path, { flag: flagOf(mode) }).pipe(Effect.mapError(wrap("open", path)))
      const info = yield* file.stat.pipe(Effect.mapError(wrap("fstat", path)))
      if (info.type !== "File") return yield* Effect.fail(new IoError({ op: "open", path, code: "NOTREGULAR", detail: "not a regular file" }))
      // a file position is shared: one positional operation at a time
      const lock = yield* Effect.makeSemaphore(1)
      const at = (position: number) => file.seek(position, "start")
      const handle: DestFile = {
        fd: Number(file.fd),
        write: (bytes, position) => lock.withPermits(1)(Effect.zipRight(at(position), file.writeAll(bytes))).pipe(Effect.mapError(wrap("write", path))),
        read: (length, position) =>
          lock.withPermits(1)(
            Effect.zipRight(
              at(position),
              Effect.map(file.readAlloc(length), (bytes) => Option.getOrElse(bytes, () => new Uint8Array(0)))
            )
          ).pipe(Effect.mapError(wrap("read", path))),
        sync: file.sync.pipe(Effect.mapError(wrap("fsync", path))),
        truncate: (size) => file.truncate(size).pipe(Effect.mapError(wrap("truncate", path))),
        size: Effect.map(file.stat, (s) => Number(s.size)).pipe(Effect.mapError(wrap("fstat", path)))
      }
      return handle
    })
  return {
    root,
    ensureDir: (rel) =>
      Effect.flatMap(resolve("mkdir", rel), (path) => files.makeDirectory(path, { recursive: true }).pipe(Effect.mapError(wrap("mkdir", path)))),
    open,
    readFile: (rel, limit = 1024 * 1024) =>
      Effect.flatMap(resolve("read", rel), (path) =>
        files.readFile(path).pipe(
          Effect.map((bytes) => Option.some(bytes.subarray(0, limit))),
          Effect.mapError(wrap("read", path)),
          Effect.catchIf((e) => e.code === "ENOENT", () => Effect.succeed(Option.none()))
        )),
    writeFile: writeFileWith(open),
    rename: (from, to) =>
      Effect.flatMap(Effect.all([resolve("rename", from), resolve("rename", to)]), ([a, b]) =>
        files.rename(a, b).pipe(Effect.mapError(wrap("rename", a)))),
    remove: (rel) =>
      Effect.flatMap(resolve("remove", rel), (path) => files.remove(path, { recursive: true, force: true }).pipe(Effect.mapError(wrap("remove", path)))),
    list: (rel) =>
      Effect.flatMap(resolve("readdir", rel), (path) =>
        files.readDirectory(path).pipe(
          Effect.mapError(wrap("readdir", path)),
          Effect.catchIf((e) => e.code === "ENOENT", () => Effect.succeed([] as ReadonlyArray<string>))
        )),
    kind: (rel) =>
      Effect.flatMap(resolve("stat", rel), (path) =>
        files.stat(path).pipe(
          Effect.map((s): EntryKind => (s.type === "Directory" ? "directory" : s.type === "File" ? "file" : s.type === "SymbolicLink" ? "link" : "other")),
          Effect.mapError(wrap("stat", path)),
          Effect.catchIf((e) => e.code === "ENOENT", () => Effect.succeed<EntryKind>("none"))
        )),
    syncDir: (rel) =>
      Effect.flatMap(resolve("fsync", rel), (path) =>
        Effect.scoped(Effect.flatMap(files.open(path, { flag: "r" }), (f) => f.sync)).pipe(Effect.mapError(wrap("fsync", path)))),
    available: space,
    capacity: Effect.succeed(capacity)
  }
}

export const DestinationInProcess = (root: string, space: number | Effect.Effect<number> = Infinity, capacity: number = Infinity) =>
  Layer.effect(
    Destination,
    Effect.map(FileSystem.FileSystem, (files) =>
      makeDestinationOn(root, files, typeof space === "number" ? Effect.succeed(space) : space, capacity))
  )
