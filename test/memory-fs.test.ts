import type { PlatformError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { makeMemoryFileSystem } from "./support/MemoryFileSystem.js"

const text = (s: string) => new TextEncoder().encode(s)

/** Runs `effect` expecting a SystemError with this reason and errno code. */
const failsWith = <A>(effect: Effect.Effect<A, PlatformError>, reason: string, code: string) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(effect)
    if (error._tag !== "SystemError") throw new Error(`expected a SystemError, got ${error._tag}`)
    expect(error.reason).toBe(reason)
    expect(error.description).toContain(code)
    return error
  })

describe("MemoryFileSystem: directories", () => {
  const { layer, files } = makeMemoryFileSystem()
  it.effect("makeDirectory, nested and not, and readDirectory", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* failsWith(fs.makeDirectory("/data/a/b"), "NotFound", "ENOENT")
      yield* fs.makeDirectory("/data/a/b", { recursive: true })
      yield* fs.makeDirectory("/data/a/b", { recursive: true }) // idempotent
      yield* failsWith(fs.makeDirectory("/data/a"), "AlreadyExists", "EEXIST")
      yield* fs.makeDirectory("/data/c")
      yield* fs.writeFileString("/data/z.txt", "z")
      yield* fs.writeFileString("/data/a/b/deep.txt", "deep")
      expect(yield* fs.readDirectory("/data")).toEqual(["a", "c", "z.txt"])
      expect(yield* fs.readDirectory("/data/a/")).toEqual(["b"])
      expect(yield* fs.readDirectory("/data", { recursive: true })).toEqual(["a", "a/b", "a/b/deep.txt", "c", "z.txt"])
      yield* failsWith(fs.readDirectory("/data/z.txt"), "BadResource", "ENOTDIR")
      yield* failsWith(fs.makeDirectory("/data/z.txt/sub", { recursive: true }), "BadResource", "ENOTDIR")
      yield* failsWith(fs.makeDirectory("/data/z.txt", { recursive: true }), "AlreadyExists", "EEXIST")
      expect(files.list("/data/a/b")).toEqual(["deep.txt"])
      const dir = yield* fs.stat("/data/a")
      expect(dir.type).toBe("Directory")
    }).pipe(Effect.provide(layer)))

  it.effect("paths are normalised", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* fs.makeDirectory("/n/x/", { recursive: true })
      yield* fs.writeFileString("/n/./x/../x//f.txt", "hi")
      expect(files.readText("/n/x/f.txt")).toBe("hi")
      expect(yield* fs.readFileString("/n/x/./f.txt")).toBe("hi")
      expect(yield* fs.exists("/n/y/../x/f.txt/")).toBe(true)
      expect(yield* fs.realPath("/n//x/.")).toBe("/n/x")
    }).pipe(Effect.provide(layer)))
})

describe("MemoryFileSystem: files", () => {
  it.effect("writeFile flags, readFile, stat, copyFile, truncate", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/in/seed.bin": new Uint8Array([1, 2, 3]) } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      expect(yield* fs.readFile("/in/seed.bin")).toEqual(new Uint8Array([1, 2, 3]))
      yield* fs.writeFileString("/in/log", "one,")
      yield* fs.writeFileString("/in/log", "two", { flag: "a" })
      expect(yield* fs.readFileString("/in/log")).toBe("one,two")
      yield* fs.writeFileString("/in/log", "w")
      expect(files.readText("/in/log")).toBe("w")
      yield* failsWith(fs.writeFileString("/in/log", "x", { flag: "wx" }), "AlreadyExists", "EEXIST")
      yield* failsWith(fs.writeFileString("/in", "x"), "BadResource", "EISDIR")
      yield* failsWith(fs.readFile("/in"), "BadResource", "EISDIR")

      const info = yield* fs.stat("/in/seed.bin")
      expect(info.type).toBe("File")
      expect(info.size).toBe(FileSystem.Size(3))
      expect(typeof info.size).toBe("bigint")
      expect(Option.isSome(info.mtime)).toBe(true)

      yield* fs.copyFile("/in/seed.bin", "/in/copy.bin")
      files.write("/in/seed.bin", "changed")
      expect(files.read("/in/copy.bin")).toEqual(new Uint8Array([1, 2, 3]))
      yield* failsWith(fs.copyFile("/in/none", "/in/x"), "NotFound", "ENOENT")

      yield* fs.truncate("/in/copy.bin", 1)
      expect(files.read("/in/copy.bin")).toEqual(new Uint8Array([1]))
      yield* fs.truncate("/in/copy.bin", 4) // growing again exposes zeros, not the old bytes
      expect(files.read("/in/copy.bin")).toEqual(new Uint8Array([1, 0, 0, 0]))
      yield* fs.truncate("/in/copy.bin")
      expect((yield* fs.stat("/in/copy.bin")).size).toBe(0n)
    }).pipe(Effect.provide(layer))
  })

  it.effect("NotFound errors carry ENOENT and the path", () => {
    const { layer } = makeMemoryFileSystem()
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const e = yield* failsWith(fs.readFile("/missing/file"), "NotFound", "ENOENT")
      expect(e.pathOrDescriptor).toBe("/missing/file")
      expect(e.method).toBe("readFile")
      yield* failsWith(fs.stat("/missing"), "NotFound", "ENOENT")
      yield* failsWith(fs.readDirectory("/missing"), "NotFound", "ENOENT")
      yield* failsWith(fs.writeFileString("/missing/f", "x"), "NotFound", "ENOENT")
      yield* failsWith(fs.rename("/missing", "/elsewhere"), "NotFound", "ENOENT")
      yield* failsWith(fs.remove("/missing"), "NotFound", "ENOENT")
      yield* failsWith(fs.access("/missing"), "NotFound", "ENOENT")
      yield* failsWith(Effect.scoped(fs.open("/missing", { flag: "r" })), "NotFound", "ENOENT")
      yield* failsWith(Effect.scoped(fs.open("/missing", { flag: "r+" })), "NotFound", "ENOENT")
      expect(yield* fs.exists("/missing")).toBe(false)
      yield* fs.remove("/missing", { force: true })
    }).pipe(Effect.provide(layer))
  })
})

describe("MemoryFileSystem: rename and remove", () => {
  it.effect("rename a file over another file replaces it", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/d/a": "new", "/d/b": "old content" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* fs.rename("/d/a", "/d/b")
      expect(files.readText("/d/b")).toBe("new")
      expect(files.exists("/d/a")).toBe(false)
      expect(files.list("/d")).toEqual(["b"])
      files.mkdir("/d/sub")
      yield* failsWith(fs.rename("/d/b", "/d/sub"), "BadResource", "EISDIR")
      yield* failsWith(fs.rename("/d/b", "/nowhere/b"), "NotFound", "ENOENT")
      expect(files.readText("/d/b")).toBe("new")
    }).pipe(Effect.provide(layer))
  })

  it.effect("rename a whole directory", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/src/x/1": "one", "/src/x/y/2": "two", "/src/x-sibling": "s" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      files.mkdir("/dst")
      yield* fs.rename("/src/x", "/dst/x2")
      expect(files.exists("/src/x")).toBe(false)
      expect(files.list("/src")).toEqual(["x-sibling"])
      expect(yield* fs.readDirectory("/dst/x2", { recursive: true })).toEqual(["1", "y", "y/2"])
      expect(files.readText("/dst/x2/y/2")).toBe("two")
      yield* failsWith(fs.rename("/dst", "/dst/x2/inside"), "Unknown", "EINVAL")
      files.write("/full/f", "f")
      yield* failsWith(fs.rename("/dst/x2", "/full"), "Unknown", "ENOTEMPTY")
      yield* failsWith(fs.rename("/dst/x2", "/full/f"), "BadResource", "ENOTDIR")
      files.mkdir("/empty")
      yield* fs.rename("/dst/x2", "/empty") // over an empty directory is allowed
      expect(files.readText("/empty/1")).toBe("one")
    }).pipe(Effect.provide(layer))
  })

  it.effect("remove: recursive, force, and refusing a directory without recursive", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/r/a/b/c": "c", "/r/a/d": "d", "/r/keep": "k" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* failsWith(fs.remove("/r/a"), "BadResource", "EISDIR")
      expect(files.exists("/r/a/b/c")).toBe(true)
      yield* fs.remove("/r/a", { recursive: true })
      expect(files.paths().filter((p) => p.startsWith("/r"))).toEqual(["/r", "/r/keep"])
      yield* fs.remove("/r/keep")
      yield* fs.remove("/r/keep", { force: true })
      expect(files.list("/r")).toEqual([])
    }).pipe(Effect.provide(layer))
  })
})

describe("MemoryFileSystem: open", () => {
  it.effect("seek past the end and write fills the gap with zeros", () => {
    const { layer, files } = makeMemoryFileSystem()
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/p.bin", { flag: "w+" })
        yield* f.writeAll(text("ab"))
        yield* f.seek(5, "start")
        expect(yield* f.write(text("XY"))).toBe(2n)
        yield* f.seek(-3, "current")
        const buf = new Uint8Array(10)
        expect(yield* f.read(buf)).toBe(3n)
        expect(buf.subarray(0, 3)).toEqual(new Uint8Array([0, 88, 89]))
        expect(Option.isNone(yield* f.readAlloc(4))).toBe(true) // at end of file
        expect((yield* f.stat).size).toBe(7n)
      }))
      expect(files.read("/p.bin")).toEqual(new Uint8Array([97, 98, 0, 0, 0, 88, 89]))
    }).pipe(Effect.provide(layer))
  })

  it.effect("r+ writes in place, w truncates, a appends, wx refuses an existing file", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/f": "0123456789" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/f", { flag: "r+" })
        yield* f.seek(2, "start")
        yield* f.writeAll(text("ab"))
        expect(Option.getOrThrow(yield* f.readAlloc(3))).toEqual(text("456"))
      }))
      expect(files.readText("/f")).toBe("01ab456789")

      yield* Effect.scoped(Effect.flatMap(fs.open("/f", { flag: "a" }), (f) => f.writeAll(text("!"))))
      expect(files.readText("/f")).toBe("01ab456789!")

      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/f", { flag: "w" })
        expect((yield* f.stat).size).toBe(0n) // truncated on open
        yield* f.writeAll(text("new"))
        yield* failsWith(f.read(new Uint8Array(1)), "Unknown", "EBADF") // write-only
      }))
      expect(files.readText("/f")).toBe("new")

      yield* failsWith(Effect.scoped(fs.open("/f", { flag: "wx" })), "AlreadyExists", "EEXIST")
      yield* Effect.scoped(Effect.flatMap(fs.open("/g", { flag: "wx" }), (f) => f.writeAll(text("g"))))
      expect(files.readText("/g")).toBe("g")

      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/f", { flag: "r" })
        yield* failsWith(f.write(text("x")), "Unknown", "EBADF")
        yield* failsWith(f.truncate(0), "Unknown", "EINVAL")
      }))
      expect(files.readText("/f")).toBe("new")

      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/f", { flag: "a+" })
        yield* f.writeAll(text("er"))
        expect(Option.getOrThrow(yield* f.readAlloc(10))).toEqual(text("newer"))
      }))
    }).pipe(Effect.provide(layer))
  })

  it.effect("handle truncate shrinks, then writes past the end zero-fill", () => {
    const { layer, files } = makeMemoryFileSystem({ files: { "/t": "abcdef" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/t", { flag: "r+" })
        yield* f.seek(6, "start")
        yield* f.truncate(2)
        yield* f.writeAll(text("Z")) // position clamped to the new end
        yield* f.seek(5, "start")
        yield* f.writeAll(text("Q"))
        yield* f.truncate(8)
      }))
      expect(files.read("/t")).toEqual(new Uint8Array([97, 98, 90, 0, 0, 81, 0, 0]))
    }).pipe(Effect.provide(layer))
  })

  it.effect("directories open read-only for sync; fds are distinct; handles close with their scope", () => {
    const { layer, files, faults } = makeMemoryFileSystem({ files: { "/dir/f": "x" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const leaked = yield* Effect.scoped(Effect.gen(function*() {
        const d = yield* fs.open("/dir", { flag: "r" })
        const f = yield* fs.open("/dir/f", { flag: "r" })
        expect(d.fd).not.toBe(f.fd)
        expect(typeof d.fd).toBe("number")
        expect(files.openHandles()).toBe(2)
        yield* d.sync
        expect((yield* d.stat).type).toBe("Directory")
        yield* failsWith(d.read(new Uint8Array(4)), "BadResource", "EISDIR")
        faults.inject = (method, path) => (method === "sync" && path === "/dir" ? "EIO" : undefined)
        const e = yield* failsWith(d.sync, "Unknown", "EIO")
        expect(e.pathOrDescriptor).toBe(d.fd)
        yield* f.sync
        faults.inject = undefined
        return f
      }))
      expect(files.openHandles()).toBe(0)
      yield* failsWith(leaked.read(new Uint8Array(1)), "Unknown", "EBADF")
      yield* failsWith(Effect.scoped(fs.open("/dir", { flag: "w" })), "BadResource", "EISDIR")
      yield* failsWith(Effect.scoped(fs.open("/dir", { flag: "r+" })), "BadResource", "EISDIR")
    }).pipe(Effect.provide(layer))
  })

  it.effect("derived stream and sink go through open", () => {
    const { layer, files } = makeMemoryFileSystem()
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const data = Uint8Array.from({ length: 200_000 }, (_, i) => i % 251)
      yield* Stream.make(data.subarray(0, 70_000), data.subarray(70_000)).pipe(Stream.run(fs.sink("/s.bin")))
      // Buffer.equals: vitest's toEqual on 200k-element arrays is slow
      expect(Buffer.from(files.read("/s.bin")!).equals(data)).toBe(true)
      const chunks = yield* Stream.runCollect(fs.stream("/s.bin", { chunkSize: 65_536, offset: 100 }))
      expect([...chunks].map((c) => c.length)).toEqual([65_536, 65_536, 65_536, 3_292])
      expect(Buffer.concat([...chunks]).equals(data.subarray(100))).toBe(true)
    }).pipe(Effect.provide(layer))
  })
})

describe("MemoryFileSystem: faults", () => {
  it.effect("capacity: writes fail with ENOSPC once the byte budget would be exceeded", () => {
    const { layer, files, faults } = makeMemoryFileSystem({ files: { "/d/old": new Uint8Array(40) } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      faults.capacity = 100
      yield* fs.writeFile("/d/a", new Uint8Array(60)) // 100 in all: exactly fits
      const e = yield* failsWith(fs.writeFile("/d/b", new Uint8Array(1)), "Unknown", "ENOSPC")
      expect(e.pathOrDescriptor).toBe("/d/b")
      expect(files.usedBytes()).toBe(100)
      yield* Effect.scoped(Effect.gen(function*() {
        const f = yield* fs.open("/d/a", { flag: "r+" })
        yield* f.writeAll(new Uint8Array(60).fill(7)) // overwriting in place needs no room
        yield* failsWith(f.writeAll(new Uint8Array(1)), "Unknown", "ENOSPC")
      }))
      yield* failsWith(fs.copyFile("/d/old", "/d/old2"), "Unknown", "ENOSPC")
      yield* failsWith(Stream.run(Stream.make(new Uint8Array(5)), fs.sink("/d/c")), "Unknown", "ENOSPC")
      yield* fs.remove("/d/old")
      yield* fs.writeFile("/d/b", new Uint8Array(40))
      // a file pre-sized past the budget (truncate is sparse) refuses every write
      yield* fs.truncate("/d/b", 500)
      yield* failsWith(
        Effect.scoped(Effect.flatMap(fs.open("/d/b", { flag: "r+" }), (f) => f.writeAll(new Uint8Array(1)))),
        "Unknown",
        "ENOSPC"
      )
      faults.capacity = undefined
      yield* fs.writeFile("/d/big", new Uint8Array(10_000))
    }).pipe(Effect.provide(layer))
  })

  it.effect("unwritable paths fail with EACCES", () => {
    const { layer, files, faults } = makeMemoryFileSystem({ files: { "/ro/file": "keep", "/rw/x": "x" } })
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      faults.denyWrite("/ro/file")
      const e = yield* failsWith(fs.writeFileString("/ro/file", "no"), "PermissionDenied", "EACCES")
      expect(e.description).toContain("/ro/file")
      yield* failsWith(Effect.scoped(fs.open("/ro/file", { flag: "r+" })), "PermissionDenied", "EACCES")
      yield* failsWith(fs.truncate("/ro/file"), "PermissionDenied", "EACCES")
      yield* failsWith(fs.access("/ro/file", { writable: true }), "PermissionDenied", "EACCES")
      yield* fs.access("/ro/file", { readable: true })
      expect(yield* Effect.scoped(Effect.flatMap(fs.open("/ro/file", { flag: "r" }), (f) => f.readAlloc(10)))).toEqual(
        Option.some(text("keep"))
      )
      expect(files.readText("/ro/file")).toBe("keep")

      faults.denyWrite("/rw/")
      yield* failsWith(fs.writeFileString("/rw/new", "n"), "PermissionDenied", "EACCES")
      yield* failsWith(fs.makeDirectory("/rw/sub"), "PermissionDenied", "EACCES")
      yield* failsWith(fs.remove("/rw/x"), "PermissionDenied", "EACCES")
      yield* failsWith(fs.rename("/rw/x", "/ro/x"), "PermissionDenied", "EACCES")
      yield* failsWith(fs.remove("/rw", { recursive: true }), "PermissionDenied", "EACCES")
      expect(files.list("/rw")).toEqual(["x"])
      yield* fs.writeFileString("/rw/x", "existing files stay writable")

      faults.allowWrite("/rw")
      faults.allowWrite("/ro/file")
      yield* fs.writeFileString("/rw/new", "n")
      yield* fs.writeFileString("/ro/file", "yes")
      expect(files.readText("/ro/file")).toBe("yes")
    }).pipe(Effect.provide(layer))
  })
})

describe("MemoryFileSystem: temp directories and helpers", () => {
  it.effect("makeTempDirectoryScoped is removed with its scope; Path is provided", () => {
    const { layer, files } = makeMemoryFileSystem()
    return Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const path = yield* Path.Path
      const dir = yield* Effect.scoped(Effect.gen(function*() {
        const d = yield* fs.makeTempDirectoryScoped({ prefix: "ferry-" })
        expect(path.basename(d).startsWith("ferry-")).toBe(true)
        yield* fs.writeFileString(path.join(d, "f"), "x")
        expect(files.exists(path.join(d, "f"))).toBe(true)
        return d
      }))
      expect(files.exists(dir)).toBe(false)
      const a = yield* fs.makeTempDirectory()
      const b = yield* fs.makeTempDirectory()
      expect(a).not.toBe(b)
      expect((yield* fs.stat(a)).type).toBe("Directory")
      const tmpFile = yield* fs.makeTempFile({ suffix: ".gz" })
      expect(tmpFile.endsWith(".gz")).toBe(true)
      expect(files.read(tmpFile)).toEqual(new Uint8Array(0))
    }).pipe(Effect.provide(layer))
  })

  it("files helpers work synchronously and ignore faults", () => {
    const { files, faults } = makeMemoryFileSystem()
    faults.capacity = 1
    faults.denyWrite("/h")
    files.write("/h/a/b.txt", "hello")
    expect(files.readText("/h/a/b.txt")).toBe("hello")
    expect(files.read("/h/none")).toBeUndefined()
    expect(() => files.readText("/h/none")).toThrow(/no file/)
    expect(files.list("/h")).toEqual(["a"])
    expect(files.list("/nope")).toEqual([])
    expect(files.usedBytes()).toBe(5)
    files.remove("/h")
    expect(files.exists("/h/a/b.txt")).toBe(false)
    expect(faults.capacity).toBe(1)
    expect(faults.unwritable.has("/h")).toBe(true)
  })
})
