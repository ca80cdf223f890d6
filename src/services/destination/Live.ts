/** The destination on the real disk, through node:fs: no link followed anywhere under it. */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as fs from "node:fs"
import * as nodePath from "node:path"
import { type DestFile, Destination, type EntryKind, errnoOf, IoError, type OpenMode, segmentsOf, writeFileWith } from "../Destination.js"

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
