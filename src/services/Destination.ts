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
import * as FileSystem from "@effect/platform/FileSystem"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as nodePath from "node:path"

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
const segmentsOf = (rel: string): ReadonlyArray<string> | undefined => {
  const parts = rel.split("/").filter((p) => p !== "" && p !== ".")
  return rel.startsWith("/") || parts.some((p) => p === "..") ? undefined : parts
}

const errnoOf = (e: unknown): string => (e as NodeJS.ErrnoException)?.code ?? "EIO"

/** A whole small file through `open`: created or emptied (or, `exclusive`, new), written, fsynced when asked. */
const writeFileWith = (open: Destination["Type"]["open"]): Destination["Type"]["writeFile"] => (rel, bytes, options) =>
  Effect.scoped(
    Effect.flatMap(open(rel, options?.exclusive === true ? "exclusive" : "truncate"), (f) =>
      Effect.zipRight(f.write(bytes, 0), options?.sync === true ? f.sync : Effect.void))
  )

/* Live */

const { O_RDONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_NOFOLLOW, O_DIRECTORY } = fs.constants

const flagsOf = (mode: OpenMode): number =>
  O_NOFOLLOW |
  (mode === "read" ? O_RDONLY : O_RDWR) |
  (mode === "truncate" ? O_CREAT | O_TRUNC : mode === "exclusive" ? O_CREAT | O_EXCL : 0)

/** mkdir, where a folder made meanwhile is fine. */
const makeFolder = (dir: string) => {
  try {
    fs.mkdirSync(dir, { mode: 0o755 })
  } catch (e) {
    if (errnoOf(e) !== "EEXIST") throw e
  }
}

/** mkdir -p one folder at a time: Node's recursive mkdir answers ENOENT where the filesystem said EROFS. */
const makeParents = (dir: string) => {
  const missing: Array<string> = []
  for (let at = dir; !fs.existsSync(at) && nodePath.dirname(at) !== at; at = nodePath.dirname(at)) missing.unshift(at)
  for (const at of missing) makeFolder(at)
}

export const makeDestinationLive = (root: string): Destination["Type"] => {
  const fail = (op: string, path: string, code: string, detail = code) => new IoError({ op, path, code, detail })
  const wrap = (op: string, path: string) => (e: unknown) => fail(op, path, errnoOf(e), (e as Error)?.message ?? String(e))

  /** The absolute path, after checking that every folder on the way is a real folder. */
  const resolve = (op: string, rel: string, parentsOnly = true): Effect.Effect<string, IoError> =>
    Effect.suspend(() => {
      const parts = segmentsOf(rel)
      if (parts === undefined) return Effect.fail(fail(op, rel, "OUTSIDE", "is outside the destination"))
      return Effect.try({
        try: () => {
          let at = root
          const folders = parentsOnly ? parts.slice(0, -1) : parts
          for (const part of folders) {
            at = nodePath.join(at, part)
            const st = fs.lstatSync(at)
            if (st.isSymbolicLink()) throw Object.assign(new Error(at), { code: "ELOOP" })
            if (!st.isDirectory()) throw Object.assign(new Error(at), { code: "NOTDIR" })
          }
          return nodePath.join(root, ...parts)
        },
        catch: (e) => fail(op, nodePath.join(root, rel), errnoOf(e), (e as Error).message)
      })
    })

  const fileOf = (fd: number, path: string): DestFile => ({
    fd,
    write: (bytes, position) =>
      Effect.async<void, IoError>((resume) => {
        const step = (from: number) =>
          fs.write(fd, bytes, from, bytes.length - from, position + from, (e, wrote) => {
            if (e !== null) return resume(Effect.fail(wrap("write", path)(e)))
            if (from + wrote < bytes.length) {
              if (wrote === 0) return resume(Effect.fail(fail("write", path, "EIO", "short write")))
              return step(from + wrote)
            }
            resume(Effect.void)
          })
        if (bytes.length === 0) resume(Effect.void)
        else step(0)
      }),
    read: (length, position) =>
      Effect.async<Uint8Array, IoError>((resume) => {
        const out = Buffer.allocUnsafe(length)
        const step = (from: number) =>
          fs.read(fd, out, from, length - from, position + from, (e, got) => {
            if (e !== null) return resume(Effect.fail(wrap("read", path)(e)))
            if (got === 0 || from + got === length) return resume(Effect.succeed(out.subarray(0, from + got)))
            step(from + got)
          })
        if (length === 0) resume(Effect.succeed(out))
        else step(0)
      }),
    sync: Effect.async<void, IoError>((resume) => {
      fs.fsync(fd, (e) => resume(e === null ? Effect.void : Effect.fail(wrap("fsync", path)(e))))
    }),
    truncate: (size) =>
      Effect.async<void, IoError>((resume) => {
        fs.ftruncate(fd, size, (e) => resume(e === null ? Effect.void : Effect.fail(wrap("truncate", path)(e))))
      }),
    size: Effect.async<number, IoError>((resume) => {
      fs.fstat(fd, (e, st) => resume(e === null ? Effect.succeed(st.size) : Effect.fail(wrap("fstat", path)(e))))
    })
  })

  const openFd = (op: string, path: string, flags: number) =>
    Effect.async<number, IoError>((resume) => {
      fs.open(path, flags, 0o644, (e, fd) => {
        if (e !== null) return resume(Effect.fail(wrap(op, path)(e)))
        // tied to the descriptor: whatever the path led to, it must be a regular file
        fs.fstat(fd, (e2, st) => {
          if (e2 === null && st.isFile()) return resume(Effect.succeed(fd))
          fs.close(fd, () => resume(Effect.fail(e2 !== null ? wrap(op, path)(e2) : fail(op, path, "NOTREGULAR"))))
        })
      })
    })

  const closeFd = (fd: number) => Effect.async<void>((resume) => fs.close(fd, () => resume(Effect.void)))

  const open = (rel: string, mode: OpenMode) =>
    Effect.flatMap(resolve("open", rel), (path) =>
      Effect.acquireRelease(openFd("open", path, flagsOf(mode)), closeFd).pipe(Effect.map((fd) => fileOf(fd, path))))

  const kind = (rel: string) =>
    Effect.flatMap(resolve("lstat", rel), (path) =>
      Effect.async<EntryKind, IoError>((resume) => {
        fs.lstat(path, (e, st) => {
          if (e !== null) return resume(e.code === "ENOENT" ? Effect.succeed("none") : Effect.fail(wrap("lstat", path)(e)))
          resume(Effect.succeed(st.isSymbolicLink() ? "link" : st.isDirectory() ? "directory" : st.isFile() ? "file" : "other"))
        })
      }))

  return {
    root,
    ensureDir: (rel) =>
      Effect.suspend(() => {
        const parts = segmentsOf(rel)
        if (parts === undefined) return Effect.fail(fail("mkdir", rel, "OUTSIDE", "is outside the destination"))
        return Effect.try({
          try: () => {
            let at = root
            for (const part of ["", ...parts]) {
              at = part === "" ? root : nodePath.join(at, part)
              let st: fs.Stats | undefined
              try {
                st = fs.lstatSync(at)
              } catch (e) {
                if (errnoOf(e) !== "ENOENT") throw e
              }
              if (st === undefined) {
                // the destination itself may be new, parents and all; below it, one folder at a time
                if (part === "") makeParents(at)
                else makeFolder(at)
                st = fs.lstatSync(at)
              }
              if (st.isSymbolicLink()) throw Object.assign(new Error(at), { code: "ELOOP" })
              if (!st.isDirectory()) throw Object.assign(new Error(at), { code: "NOTDIR" })
            }
          },
          catch: (e) => fail("mkdir", nodePath.join(root, rel), errnoOf(e), (e as Error).message)
        })
      }),
    open,
    readFile: (rel, limit = 1024 * 1024) =>
      Effect.scoped(
        open(rel, "read").pipe(
          Effect.flatMap((f) => f.read(limit, 0)),
          Effect.map(Option.some),
          Effect.catchIf((e) => e.code === "ENOENT", () => Effect.succeed(Option.none()))
        )
      ),
    writeFile: writeFileWith(open),
    rename: (from, to) =>
      Effect.flatMap(Effect.all([resolve("rename", from), resolve("rename", to)]), ([a, b]) =>
        Effect.async<void, IoError>((resume) => {
          fs.rename(a, b, (e) => resume(e === null ? Effect.void : Effect.fail(wrap("rename", a)(e))))
        })),
    remove: (rel) =>
      Effect.flatMap(resolve("remove", rel), (path) =>
        Effect.async<void, IoError>((resume) => {
          fs.rm(path, { recursive: true, force: true }, (e) => resume(e === null ? Effect.void : Effect.fail(wrap("remove", path)(e))))
        })),
    list: (rel) =>
      Effect.flatMap(resolve("readdir", rel, false), (path) =>
        Effect.async<ReadonlyArray<string>, IoError>((resume) => {
          fs.readdir(path, (e, names) => {
            if (e !== null) return resume(e.code === "ENOENT" ? Effect.succeed([]) : Effect.fail(wrap("readdir", path)(e)))
            resume(Effect.succeed(names))
          })
        })).pipe(Effect.catchIf((e) => e.code === "ENOENT", () => Effect.succeed([]))),
    kind,
    syncDir: (rel) =>
      Effect.flatMap(resolve("fsync", rel, false), (path) =>
        Effect.acquireUseRelease(
          Effect.async<number, IoError>((resume) => {
            fs.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, (e, fd) => resume(e === null ? Effect.succeed(fd) : Effect.fail(wrap("open", path)(e))))
          }),
          (fd) =>
            Effect.async<void, IoError>((resume) => {
              fs.fsync(fd, (e) => resume(e === null ? Effect.void : Effect.fail(wrap("fsync", path)(e))))
            }),
          closeFd
        )),
    available: Effect.async<number>((resume) => {
      fs.statfs(root, (error, stats) => resume(Effect.succeed(error === null ? stats.bavail * stats.bsize : Infinity)))
    }),
    // blocks reserved for root (blocks - bfree + bavail short of blocks) are never ferry's
    capacity: Effect.async<number>((resume) => {
      fs.statfs(root, (error, stats) => resume(Effect.succeed(error === null ? (stats.blocks - stats.bfree + stats.bavail) * stats.bsize : Infinity)))
    })
  }
}

export const DestinationLive = (root: string) => Layer.sync(Destination, () => makeDestinationLive(nodePath.resolve(root)))

/* In process, over the injected FileSystem */

const codeOfPlatform = (e: { readonly message: string; readonly _tag: string }): string =>
  /\b(E[A-Z]{2,})\b/.exec(e.message)?.[1] ?? (e._tag === "SystemError" && /NotFound/.test(String((e as { reason?: string }).reason)) ? "ENOENT" : "EIO")

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

export const DestinationOnFileSystem = (root: string, space: number | Effect.Effect<number> = Infinity, capacity: number = Infinity) =>
  Layer.effect(
    Destination,
    Effect.map(FileSystem.FileSystem, (files) =>
      makeDestinationOn(root, files, typeof space === "number" ? Effect.succeed(space) : space, capacity))
  )
