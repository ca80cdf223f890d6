/**
 * An in-memory `FileSystem.FileSystem` for tests.
 *
 * Paths are POSIX and absolute (relative ones are taken from "/"), normalised
 * so "/a/./b/../c/" is "/a/c". Failures are `SystemError`s shaped like the ones
 * @effect/platform-node produces: the reason follows Node's errno mapping and
 * the description starts with the errno code ("ENOSPC: no space left on
 * device, write '/d/x'"). Faults can be injected through `faults`.
 */
import * as PlatformError from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"

// Reasons follow @effect/platform-node's handleErrnoException, which leaves
// everything it does not name (EPERM, ENOSPC, ENOTEMPTY, ...) as "Unknown".
const ERRNO = {
  ENOENT: ["NotFound", "no such file or directory"],
  EEXIST: ["AlreadyExists", "file already exists"],
  EISDIR: ["BadResource", "illegal operation on a directory"],
  ENOTDIR: ["BadResource", "not a directory"],
  EACCES: ["PermissionDenied", "permission denied"],
  EBUSY: ["Busy", "resource busy or locked"],
  EPERM: ["Unknown", "operation not permitted"],
  ENOTEMPTY: ["Unknown", "directory not empty"],
  ENOSPC: ["Unknown", "no space left on device"],
  EBADF: ["Unknown", "bad file descriptor"],
  EINVAL: ["Unknown", "invalid argument"],
  EIO: ["Unknown", "i/o error"],
  ENOSYS: ["Unknown", "function not implemented"],
  EROFS: ["Unknown", "read-only file system"]
} as const satisfies Record<string, readonly [PlatformError.SystemErrorReason, string]>

/** The errno codes this filesystem can fail with (and that `faults.inject` may return). */
export type Errno = keyof typeof ERRNO

export interface Faults {
  /** Byte budget for the sum of all file sizes. A write (write, writeAll,
   * writeFile, copyFile, copy) fails with ENOSPC, writing nothing, when the
   * total after it would exceed the budget. Extending by truncate is not
   * checked (sparse, as on ext4), so pre-sized files fail on their writes. */
  capacity: number | undefined
  /** Normalised paths that refuse writes with EACCES, like `chmod a-w`: a file
   * cannot be opened for writing, written or truncated; a directory refuses
   * entries being created, removed or renamed in or out of it. Checked at
   * open time, as POSIX does; already-open handles keep working. */
  readonly unwritable: ReadonlySet<string>
  denyWrite(path: string): void
  allowWrite(path: string): void
  /** Called before every operation with its method name (a FileSystem method,
   * or a handle's "read" | "readAlloc" | "write" | "writeAll" | "truncate" |
   * "sync" | "stat") and normalised path; return an errno code to fail it. */
  inject: ((method: string, path: string) => Errno | undefined) | undefined
}

/** Synchronous helpers for arranging and inspecting state; they ignore faults. */
export interface MemoryFiles {
  /** Contents of a file, or undefined when there is no file at `path`. */
  read(path: string): Uint8Array | undefined
  /** Contents of a file as UTF-8; throws when there is no file at `path`. */
  readText(path: string): string
  /** Creates or replaces a file, making missing parent directories. */
  write(path: string, content: Uint8Array | string): void
  /** Makes a directory and its missing parents. */
  mkdir(path: string): void
  /** Sorted entry names of a directory, or [] when it does not exist. */
  list(dir: string): Array<string>
  exists(path: string): boolean
  /** Removes a file or a whole directory tree; absent paths are ignored. */
  remove(path: string): void
  /** Every path in the filesystem, sorted. */
  paths(): Array<string>
  /** The total size of all files, as counted against `faults.capacity`. */
  usedBytes(): number
  /** How many handles from `open` are still open (not yet closed by their scope). */
  openHandles(): number
}

export interface MemoryFileSystemOptions {
  /** Files to start with, path → content; parents are created. */
  readonly files?: Readonly<Record<string, Uint8Array | string>>
  readonly capacity?: number
  /** Directory for makeTempDirectory/makeTempFile; created up front. Default "/tmp". */
  readonly tmpDir?: string
}

export interface MemoryFileSystemHandle {
  readonly fs: FileSystem.FileSystem
  readonly layer: Layer.Layer<FileSystem.FileSystem | Path.Path>
  readonly files: MemoryFiles
  readonly faults: Faults
}

/** Thrown inside operations and turned into a SystemError at the Effect boundary. */
class Fault {
  constructor(readonly code: Errno, readonly path: string) {}
}
const fault = (code: Errno, path: string): never => {
  throw new Fault(code, path)
}

export const normalize = (path: string): string => {
  const parts: Array<string> = []
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue
    if (part === "..") parts.pop()
    else parts.push(part)
  }
  return "/" + parts.join("/")
}
const parentOf = (p: string) => p.slice(0, p.lastIndexOf("/")) || "/"
const childPrefix = (p: string) => (p === "/" ? "/" : p + "/")

interface Meta { readonly ino: number; mode: number; mtime: Date; atime: Date; readonly birthtime: Date }
// `data` may be longer than `size` (room to grow); bytes past `size` are kept
// zero so that growing a file exposes zeros, as a hole would.
type FileNode = Meta & { readonly type: "File"; data: Uint8Array; size: number }
type DirNode = Meta & { readonly type: "Directory" }
type Node = FileNode | DirNode

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export const makeMemoryFileSystem = (options: MemoryFileSystemOptions = {}): MemoryFileSystemHandle => {
  const nodes = new Map<string, Node>()
  let nextIno = 1
  let nextFd = 3
  let nextTemp = 0
  let openHandles = 0
  let denied = new Set<string>()

  const faults: Faults = {
    capacity: options.capacity,
    get unwritable() { return denied },
    denyWrite: (path) => void denied.add(normalize(path)),
    allowWrite: (path) => void denied.delete(normalize(path)),
    inject: undefined
  }

  const meta = (mode: number, now = new Date()): Meta => ({ ino: nextIno++, mode, mtime: now, atime: now, birthtime: now })
  const newDir = (): DirNode => ({ type: "Directory", ...meta(0o40755) })
  const newFile = (): FileNode => ({ type: "File", data: new Uint8Array(0), size: 0, ...meta(0o100644) })

  // -- lookups; they throw Faults the way the matching syscall would
  const need = (p: string): Node => {
    const node = nodes.get(p)
    if (node) return node
    let up = parentOf(p)
    while (!nodes.has(up)) up = parentOf(up)
    return fault(nodes.get(up)!.type === "File" ? "ENOTDIR" : "ENOENT", p)
  }
  const needFile = (p: string): FileNode => { const n = need(p); return n.type === "File" ? n : fault("EISDIR", p) }
  const needDir = (p: string): DirNode => { const n = need(p); return n.type === "Directory" ? n : fault("ENOTDIR", p) }
  const deny = (p: string) => { if (denied.has(p)) fault("EACCES", p) }
  /** Entries strictly below `p`, sorted so parents come before children. */
  const subtree = (p: string): Array<[string, Node]> => {
    const prefix = childPrefix(p)
    return [...nodes].filter(([key]) => key !== p && key.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1))
  }
  const children = (p: string, recursive = false) =>
    subtree(p).map(([key]) => key.slice(childPrefix(p).length)).filter((rel) => recursive || !rel.includes("/"))
  const usedBytes = () => [...nodes.values()].reduce((total, n) => total + (n.type === "File" ? n.size : 0), 0)

  // -- mutations
  const createDir = (p: string) => {
    needDir(parentOf(p))
    deny(parentOf(p))
    nodes.set(p, newDir())
  }
  const mkdirp = (p: string, target = p): void => {
    const node = nodes.get(p)
    if (node?.type === "File") fault(p === target ? "EEXIST" : "ENOTDIR", target)
    if (node) return
    mkdirp(parentOf(p), target)
    createDir(p)
  }
  const resize = (f: FileNode, size: number) => {
    if (size > f.data.length) {
      const data = new Uint8Array(Math.max(size, f.data.length * 2))
      data.set(f.data.subarray(0, f.size))
      f.data = data
    } else if (size < f.size) {
      f.data.fill(0, size, f.size)
    }
    f.size = size
    f.mtime = new Date()
  }
  const writeAt = (f: FileNode, position: number, bytes: Uint8Array, p: string) => {
    if (bytes.length === 0) return
    const end = position + bytes.length
    const cap = faults.capacity
    if (cap !== undefined && usedBytes() + Math.max(0, end - f.size) > cap) fault("ENOSPC", p)
    if (end > f.size) resize(f, end)
    f.data.set(bytes, position)
    f.mtime = new Date()
  }
  /** open(2): find or create the node for `flag`, checking permissions. */
  const openNode = (p: string, flag: FileSystem.OpenFlag): Node => {
    const writable = flag !== "r"
    let node = nodes.get(p)
    if (node && flag.includes("x")) fault("EEXIST", p)
    if (!node) {
      if (flag.startsWith("r")) need(p)
      needDir(parentOf(p))
      deny(parentOf(p))
      node = newFile()
      nodes.set(p, node)
    } else if (node.type === "Directory") {
      if (writable) fault("EISDIR", p)
    } else if (writable) {
      deny(p)
      if (flag.startsWith("w")) resize(node, 0)
    }
    return node
  }
  const writeWhole = (p: string, bytes: Uint8Array, flag: FileSystem.OpenFlag) => {
    if (flag === "r") fault("EBADF", p)
    const node = openNode(p, flag) as FileNode // a writable open never yields a directory
    writeAt(node, flag.startsWith("a") ? node.size : 0, bytes, p)
  }
  const contents = (f: FileNode) => f.data.slice(0, f.size)
  const removeTree = (p: string) => {
    for (const [key] of subtree(p)) nodes.delete(key)
    nodes.delete(p)
  }

  /** Runs a synchronous operation, turning Faults into Node-like SystemErrors. */
  const exec = <A>(method: string, path: string, f: (p: string) => A, fd?: number) =>
    Effect.suspend((): Effect.Effect<A, PlatformError.PlatformError> => {
      const p = normalize(path)
      try {
        const injected = faults.inject?.(method, p)
        if (injected !== undefined) fault(injected, p)
        return Effect.succeed(f(p))
      } catch (e) {
        if (!(e instanceof Fault)) throw e
        const [reason, text] = ERRNO[e.code]
        const description = `${e.code}: ${text}, ${method} '${e.path}'` // Node's err.message format
        return Effect.fail(
          // as @effect/platform-node does: the Node error, with its errno code, is the cause
          new PlatformError.SystemError({ reason, module: "FileSystem", method, syscall: method, pathOrDescriptor: fd ?? e.path, description, cause: Object.assign(new Error(description), { code: e.code }) })
        )
      }
    })

  const info = (node: Node): FileSystem.File.Info => {
    const size = node.type === "File" ? node.size : 0
    const { some, none } = Option
    return {
      type: node.type, mtime: some(node.mtime), atime: some(node.atime), birthtime: some(node.birthtime),
      dev: 1, ino: some(node.ino), mode: node.mode, nlink: some(1), uid: none(), gid: none(), rdev: none(),
      size: FileSystem.Size(size), blksize: some(FileSystem.Size(4096)), blocks: some(Math.ceil(size / 512))
    }
  }

  const makeHandle = (path: string, flag: FileSystem.OpenFlag) => {
    const node = openNode(path, flag)
    const fd = FileSystem.FileDescriptor(nextFd++)
    const readable = flag.startsWith("r") || flag.includes("+")
    const writable = flag !== "r"
    // Like platform-node: appends go to the end and leave the position alone.
    const append = flag.startsWith("a")
    let position = 0
    let closed = false
    openHandles++
    const run = <A>(method: string, f: () => A) =>
      exec(method, path, () => (closed ? fault("EBADF", path) : f()), fd)
    const readInto = (buffer: Uint8Array): number => {
      if (node.type === "Directory") return fault("EISDIR", path)
      if (!readable) return fault("EBADF", path)
      const n = Math.max(0, Math.min(buffer.length, node.size - position))
      buffer.set(node.data.subarray(position, position + n))
      position += n
      node.atime = new Date()
      return n
    }
    const writeBytes = (buffer: Uint8Array): number => {
      if (!writable || node.type === "Directory") return fault("EBADF", path)
      writeAt(node, append ? node.size : position, buffer, path)
      if (!append) position += buffer.length
      return buffer.length
    }
    const file: FileSystem.File = {
      [FileSystem.FileTypeId]: FileSystem.FileTypeId,
      fd,
      stat: run("stat", () => info(node)),
      sync: run("sync", () => undefined),
      seek: (offset, from) =>
        Effect.sync(() => {
          position = Math.max(0, (from === "start" ? 0 : position) + Number(offset))
        }),
      read: (buffer) => run("read", () => FileSystem.Size(readInto(buffer))),
      readAlloc: (size) =>
        run("readAlloc", () => {
          const buffer = new Uint8Array(Number(size))
          const n = readInto(buffer)
          return n === 0 ? Option.none() : Option.some(n === buffer.length ? buffer : buffer.slice(0, n))
        }),
      truncate: (length) =>
        run("truncate", () => {
          if (!writable || node.type === "Directory") return fault("EINVAL", path)
          const len = Number(length ?? 0)
          resize(node, len)
          if (!append && position > len) position = len
        }),
      write: (buffer) => run("write", () => FileSystem.Size(writeBytes(buffer))),
      writeAll: (buffer) => run("writeAll", () => void writeBytes(buffer))
    }
    const close = () => { if (!closed) openHandles--; closed = true }
    return { file, close }
  }

  const tempPath = (dir: string, prefix: string, suffix = "") => {
    needDir(dir)
    let p: string
    do p = `${childPrefix(dir)}${prefix}${(nextTemp++).toString(36).padStart(6, "0")}${suffix}`
    while (nodes.has(p))
    return p
  }
  const tmpDir = normalize(options.tmpDir ?? "/tmp")

  const impl: Parameters<typeof FileSystem.make>[0] = {
    access: (path, opts) => exec("access", path, (p) => { need(p); if (opts?.writable) deny(p) }),
    copy: (from, to, opts) =>
      exec("copy", from, (src) => {
        const dst = normalize(to)
        const root = need(src)
        if (dst === src || dst.startsWith(childPrefix(src))) fault("EINVAL", dst)
        mkdirp(parentOf(dst))
        for (const [p, node] of [[src, root] as [string, Node], ...subtree(src)]) {
          const target = dst + p.slice(src.length)
          const existing = nodes.get(target)
          if (node.type === "Directory") {
            if (!existing) createDir(target)
            else if (existing.type === "File") fault("EEXIST", target)
          } else if (!existing || opts?.overwrite) {
            // fs.cp with force: false skips existing files silently
            writeWhole(target, contents(node), "w")
          }
        }
      }),
    copyFile: (from, to) => exec("copyFile", from, (src) => writeWhole(normalize(to), contents(needFile(src)), "w")),
    chmod: (path, mode) => exec("chmod", path, (p) => { const n = need(p); n.mode = (n.mode & ~0o7777) | (mode & 0o7777) }),
    chown: (path) => exec("chown", path, (p) => void need(p)),
    link: (from) => exec("link", from, (p) => fault("ENOSYS", p)),
    symlink: (from) => exec("symlink", from, (p) => fault("ENOSYS", p)),
    // There are no links here: like Node, readLink of anything else is EINVAL.
    readLink: (path) => exec("readLink", path, (p): string => (need(p), fault("EINVAL", p))),
    realPath: (path) => exec("realPath", path, (p) => (need(p), p)),
    makeDirectory: (path, opts) =>
      exec("makeDirectory", path, (p) => {
        if (opts?.recursive) return mkdirp(p)
        if (nodes.has(p)) fault("EEXIST", p)
        createDir(p)
      }),
    makeTempDirectory: (opts) =>
      exec("makeTempDirectory", opts?.directory ?? tmpDir, (dir) => {
        const p = tempPath(dir, opts?.prefix ?? "")
        createDir(p)
        return p
      }),
    makeTempDirectoryScoped: (opts) =>
      Effect.acquireRelease(impl.makeTempDirectory(opts), (dir) => Effect.orDie(impl.remove(dir, { recursive: true }))),
    // Like Node: a fresh directory holding one empty file.
    makeTempFile: (opts) =>
      exec("makeTempFile", opts?.directory ?? tmpDir, (dir) => {
        const holder = tempPath(dir, opts?.prefix ?? "")
        createDir(holder)
        const p = tempPath(holder, "", opts?.suffix ?? "")
        openNode(p, "w+")
        return p
      }),
    makeTempFileScoped: (opts) =>
      Effect.acquireRelease(impl.makeTempFile(opts), (p) => Effect.orDie(impl.remove(parentOf(p), { recursive: true }))),
    open: (path, opts) =>
      Effect.map(
        Effect.acquireRelease(exec("open", path, (p) => makeHandle(p, opts?.flag ?? "r")), (h) => Effect.sync(h.close)),
        (h) => h.file
      ),
    readDirectory: (path, opts) => exec("readDirectory", path, (p) => (needDir(p), children(p, opts?.recursive))),
    readFile: (path) => exec("readFile", path, (p) => contents(needFile(p))),
    remove: (path, opts) =>
      exec("remove", path, (p) => {
        const node = nodes.get(p) ?? (opts?.force ? undefined : need(p))
        if (!node) return
        if (p === "/") fault("EBUSY", p)
        if (node.type === "Directory" && !opts?.recursive) fault("EISDIR", p)
        // check every affected directory first so a refused remove changes nothing
        for (const key of [p, ...subtree(p).map(([k]) => k)]) deny(parentOf(key))
        removeTree(p)
      }),
    rename: (from, to) =>
      exec("rename", from, (src) => {
        const dst = normalize(to)
        const node = need(src)
        needDir(parentOf(dst))
        deny(parentOf(src))
        deny(parentOf(dst))
        if (src === dst) return
        if (src === "/") fault("EBUSY", src)
        if (dst.startsWith(childPrefix(src))) fault("EINVAL", dst)
        const existing = nodes.get(dst)
        if (existing?.type === "Directory") {
          if (node.type === "File") fault("EISDIR", dst)
          if (subtree(dst).length > 0) fault("ENOTEMPTY", dst)
        } else if (existing && node.type === "Directory") fault("ENOTDIR", dst)
        const moving: Array<[string, Node]> = [[src, node], ...subtree(src)]
        for (const [key] of moving) nodes.delete(key)
        nodes.delete(dst)
        for (const [key, n] of moving) nodes.set(dst + key.slice(src.length), n)
      }),
    stat: (path) => exec("stat", path, (p) => info(need(p))),
    truncate: (path, length) => exec("truncate", path, (p) => { const f = needFile(p); deny(p); resize(f, Number(length ?? 0)) }),
    utimes: (path, atime, mtime) =>
      exec("utimes", path, (p) => {
        const toDate = (t: Date | number) => (typeof t === "number" ? new Date(t * 1000) : t) // Node: numbers are seconds
        Object.assign(need(p), { atime: toDate(atime), mtime: toDate(mtime) })
      }),
    watch: (path) => Stream.unwrap(Effect.as(exec("watch", path, (p) => (need(p), fault("ENOSYS", p))), Stream.empty)),
    writeFile: (path, data, opts) => exec("writeFile", path, (p) => writeWhole(p, data, opts?.flag ?? "w"))
  }
  const fs = FileSystem.make(impl)

  /** Runs a helper with faults switched off; Faults become plain Errors. */
  const direct = <A>(f: () => A): A => {
    const [capacity, saved] = [faults.capacity, denied]
    faults.capacity = undefined
    denied = new Set()
    try {
      return f()
    } catch (e) {
      throw e instanceof Fault ? new Error(`MemoryFileSystem: ${e.code} ${e.path}`) : e
    } finally {
      faults.capacity = capacity
      denied = saved
    }
  }
  const files: MemoryFiles = {
    read: (path) => { const n = nodes.get(normalize(path)); return n?.type === "File" ? contents(n) : undefined },
    readText: (path) => {
      const bytes = files.read(path)
      if (bytes === undefined) throw new Error(`MemoryFileSystem: no file at ${path}`)
      return decoder.decode(bytes)
    },
    write: (path, content) =>
      direct(() => {
        const p = normalize(path)
        mkdirp(parentOf(p))
        writeWhole(p, typeof content === "string" ? encoder.encode(content) : content, "w")
      }),
    mkdir: (path) => direct(() => mkdirp(normalize(path))),
    list: (dir) => (nodes.get(normalize(dir))?.type === "Directory" ? children(normalize(dir)) : []),
    exists: (path) => nodes.has(normalize(path)),
    remove: (path) => { if (normalize(path) !== "/") removeTree(normalize(path)) },
    paths: () => [...nodes.keys()].sort(),
    usedBytes,
    openHandles: () => openHandles
  }

  nodes.set("/", newDir())
  files.mkdir(tmpDir)
  for (const [path, content] of Object.entries(options.files ?? {})) files.write(path, content)

  const layer = Layer.merge(Layer.succeed(FileSystem.FileSystem, fs), Path.layer)
  return { fs, layer, files, faults }
}

/** Just the layer (FileSystem + Path) of a fresh in-memory filesystem. */
export const MemoryFileSystem = (options?: MemoryFileSystemOptions): Layer.Layer<FileSystem.FileSystem | Path.Path> =>
  makeMemoryFileSystem(options).layer
