/**
 * The live layers under the tests, in one process: the real TCP transport on
 * port 0 (scoped, the way @effect/platform-node's socket tests run), the
 * reader and gunzip worker threads (bundled from source by the test setup),
 * and the real disk through Destination, which never follows a link.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Logger, LogLevel } from "effect"
import { createHash } from "node:crypto"
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as zlib from "node:zlib"
import { defaultSendOptions, send } from "../src/client/Client.js"
import { ClientLive, SampleLive, ServerLive } from "../src/Layers.js"
import { defaultServeOptions, serve } from "../src/server/Server.js"
import { Destination } from "../src/services/Destination.js"
import { DestinationLive } from "../src/services/destination/Live.js"
import { makeDataset } from "../src/services/SampleMaker.js"
import { PieceStore } from "../src/services/PieceStore.js"
import { manifestOf, piecesOf, writeBatch } from "./support/world.js"

const temp = (name: string) => mkdtempSync(join(tmpdir(), `ferry-live-${name}-`))
const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex")
const quiet = Logger.minimumLogLevel(LogLevel.Warning)

describe("the live layers, over loopback TCP", () => {
  it.scopedLive("a transfer through real sockets, reader threads, gunzip threads and the disk is exact", () => {
    const root = temp("tcp")
    return Effect.gen(function*() {
      const made = yield* makeDataset({ dir: join(root, "out"), name: "abc", size: 5_000_003, sliceSize: 16 * 1024, seed: 9 })
      const address = yield* serve({ ...defaultServeOptions, host: "127.0.0.1", port: 0 })
      expect(address.port).toBeGreaterThan(0)
      const summary = yield* Effect.scoped(send({ ...defaultSendOptions, dir: join(root, "out"), addresses: [address], connections: 2 }))
      expect(summary.failed).toEqual([])
      expect(summary.committed.map((c) => [c.dataset, c.sent, c.crc32])).toEqual([["abc", 306, made.crc32.toString(16).padStart(8, "0")]])
      expect(sha256(join(root, "in", "abc"))).toBe(made.sha256)
      expect(readFileSync(join(root, "in", "abc.done"), "utf8")).toBe("5000003\n")
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest: join(root, "in") }), ClientLive(), SampleLive, quiet)))
  })
})

describe("Destination never follows a link", () => {
  const layer = (root: string) => DestinationLive(root)

  it.effect("opening, creating, reading or listing through a planted link is refused; renaming over one replaces the link", () => {
    const root = temp("dest")
    const outside = temp("outside")
    writeFileSync(join(outside, "secret"), "keep me")
    mkdirSync(join(root, "dir"))
    symlinkSync(join(outside, "secret"), join(root, "dir", "file"))
    symlinkSync(outside, join(root, "linked"))
    return Effect.gen(function*() {
      const dest = yield* Destination
      for (const mode of ["existing", "truncate", "read"] as const) {
        const r = yield* Effect.either(Effect.scoped(dest.open("dir/file", mode)))
        expect(Either.isLeft(r) && r.left.code).toBe("ELOOP")
      }
      const write = yield* Effect.either(dest.writeFile("dir/file", Buffer.from("overwritten")))
      expect(Either.isLeft(write) && write.left.code).toBe("ELOOP")
      // a link as a folder on the way
      const through = yield* Effect.either(dest.writeFile("linked/new", Buffer.from("x")))
      expect(Either.isLeft(through) && through.left.code).toBe("ELOOP")
      const made = yield* Effect.either(dest.ensureDir("linked/sub"))
      expect(Either.isLeft(made) && made.left.code).toBe("ELOOP")
      expect(yield* dest.kind("dir/file")).toBe("link")
      // a rename onto the link replaces the link itself
      yield* dest.writeFile("dir/real", Buffer.from("data"))
      yield* dest.rename("dir/real", "dir/file")
      expect(lstatSync(join(root, "dir", "file")).isFile()).toBe(true)
      const outsideCheck = yield* Effect.either(dest.open("../escape", "truncate").pipe(Effect.scoped))
      expect(Either.isLeft(outsideCheck) && outsideCheck.left.code).toBe("OUTSIDE")
      expect(readFileSync(join(outside, "secret"), "utf8")).toBe("keep me")
      expect(readdirSync(outside)).toEqual(["secret"])
    }).pipe(Effect.provide(layer(root)))
  })

  it.scopedLive("a link planted as a dataset's data file is replaced, never written through; the result is a regular file", () => {
    const root = temp("store")
    const dest = join(root, "in")
    const outside = join(temp("victim"), "victim")
    const original = Buffer.from(Array.from({ length: 20_000 }, (_, i) => (i * 7) & 0xff))
    writeFileSync(outside, Buffer.alloc(original.length, 0x55))
    const before = statSync(outside).mtimeMs
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const manifest = manifestOf("abc", original, 1000)
      // a first transfer leaves half of the dataset in its state folder
      yield* Effect.scoped(Effect.flatMap(store.open(manifest), (s) => writeBatch(s, piecesOf(original, 1000).slice(0, 10))))
      const state = join(dest, ".ferry", "abc")
      const epoch = readdirSync(state).find((n) => n.startsWith("epoch."))!
      rmSync(join(state, epoch, "data"))
      symlinkSync(outside, join(state, epoch, "data"))
      // the resend: the planted link makes the state unusable, so it starts afresh
      const session = yield* store.open(manifest)
      expect(session.held).toBe(0)
      yield* writeBatch(session, piecesOf(original, 1000))
      const commit = yield* session.seal(zlib.crc32(original))
      expect(commit.crc32).toBe(zlib.crc32(original).toString(16).padStart(8, "0"))
      expect(lstatSync(join(dest, "abc")).isFile()).toBe(true)
      expect(readFileSync(join(dest, "abc"))).toEqual(original)
      expect(readFileSync(outside)).toEqual(Buffer.alloc(original.length, 0x55))
      expect(statSync(outside).mtimeMs).toBe(before)
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest }), quiet)))
  })
})

describe("the commit checks the file as it is on disk", () => {
  it.scopedLive("bytes changed in the data file after they were written (their CRC records intact): no commit, no .done, state discarded", () => {
    const dest = temp("reread")
    const original = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7 + (i >> 9)) & 0xff))
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const session = yield* store.open(manifestOf("abc", original, 16 * 1024))
      yield* writeBatch(session, piecesOf(original, 16 * 1024))
      // a stray write, as a descriptor reused under a write in flight once made
      const folder = join(dest, ".ferry", "abc", readdirSync(join(dest, ".ferry", "abc")).find((n) => n.startsWith("epoch."))!)
      const data = readFileSync(join(folder, "data"))
      data.fill(0x5a, 1000, 1100)
      writeFileSync(join(folder, "data"), data)
      const r = yield* Effect.either(session.seal(zlib.crc32(original)))
      expect(Either.isLeft(r) && r.left.code).toBe("CommitFailed")
      expect(Either.isLeft(r) && r.left.reason).toMatch(/^the file written has crc32 [0-9a-f]{8} on disk, but its pieces make [0-9a-f]{8}; it is discarded/)
      expect(readdirSync(dest).filter((n) => n.startsWith("abc"))).toEqual([])
    }).pipe(Effect.provide(Layer.mergeAll(ServerLive({ dest }), quiet)))
  })
})
