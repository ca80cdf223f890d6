/**
 * The client and server pipelines wired together in one process, over the
 * in-memory transport and filesystem, with the in-process reader and gunzip
 * (the same reading, inflating and placing code as the worker threads):
 * several datasets, several clients, pieces arriving in any order, resume,
 * seals, space, leases.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, TestClock } from "effect"
import fc from "fast-check"
import * as zlib from "node:zlib"
import { Manifest, markerFileName, pieceFileName } from "../src/domain/Dataset.js"
import { PieceStore } from "../src/services/PieceStore.js"
import { make, manifestOf, piecesOf, sendAll, sha256, startServer, storeLayer, world, writeBatch } from "./support/world.js"
import { makeMemoryFileSystem } from "./support/MemoryFileSystem.js"

fc.configureGlobal({ seed: 77, numRuns: 25 })

const crcHex = (bytes: Uint8Array) => zlib.crc32(bytes).toString(16).padStart(8, "0")

describe("client and server pipelines in memory", () => {
  it.scopedLive("several datasets from several clients at once are rebuilt exactly", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const a = yield* make("/out/one", "alpha", 20_000, 1000, 1)
      const b = yield* make("/out/one", "beta", 12_345, 512, 2, 5)
      const c = yield* make("/out/two", "gamma", 30_000, 4096, 3)
      memory.files.write("/out/one/alpha.done", "20000\n")
      memory.files.write("/out/one/beta.done", "12345")
      memory.files.write("/out/two/gamma.done", "30000 \n")
      memory.files.write("/out/two/notes.txt", "ignored")
      const address = yield* startServer()
      const [r1, r2] = yield* Effect.all([sendAll("/out/one", address), sendAll("/out/two", address, { connections: 3 })], { concurrency: 2 })
      expect(r1.committed.map((r) => r.dataset).sort()).toEqual(["alpha", "beta"])
      expect(r2.committed.map((r) => [r.dataset, r.sent])).toEqual([["gamma", 8]])
      expect(r1.failed).toEqual([])
      expect(sha256(memory.files.read("/dest/alpha"))).toBe(a.sha256)
      expect(sha256(memory.files.read("/dest/beta"))).toBe(b.sha256)
      expect(sha256(memory.files.read("/dest/gamma"))).toBe(c.sha256)
      expect(memory.files.readText("/dest/beta.done")).toBe("12345\n")
      // the server's CRC, combined from slices, is the original's, and the one the sender vouched for
      expect(r1.committed.find((r) => r.dataset === "alpha")!.crc32).toBe(a.crc32.toString(16).padStart(8, "0"))
      expect(memory.files.list("/dest/.ferry").filter((n) => n !== "committed")).toEqual([])
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a bad piece fails its dataset only, names the piece, and leaves no .done", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      yield* make("/out", "good", 5000, 500, 1)
      yield* make("/out", "bad", 5000, 500, 2)
      memory.files.write("/out/good.done", "5000\n")
      memory.files.write("/out/bad.done", "5000\n")
      memory.files.write(`/out/${pieceFileName("bad", 7)}`, zlib.gzipSync(Buffer.alloc(499)))
      const address = yield* startServer()
      const r = yield* sendAll("/out", address)
      expect(r.committed.map((c) => c.dataset)).toEqual(["good"])
      expect(r.failed.map((f) => f.error.message)).toEqual([
        "dataset bad: server refused it (BadPiece): bad-0000007.gz decompresses to 499 bytes, but the slice is 500"
      ])
      expect(memory.files.exists("/dest/good.done")).toBe(true)
      expect(memory.files.exists("/dest/bad.done")).toBe(false)
      expect(memory.files.exists("/dest/bad")).toBe(false)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a second send of a committed dataset sends nothing; a different size or content is a conflict", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      yield* make("/out", "same", 3000, 1000)
      memory.files.write("/out/same.done", "3000\n")
      const address = yield* startServer()
      yield* sendAll("/out", address)
      const again = yield* sendAll("/out", address)
      expect(again.committed[0]).toMatchObject({ dataset: "same", alreadyCommitted: true, sent: 0 })
      const before = sha256(memory.files.read("/dest/same"))
      yield* make("/other", "same", 4000, 1000, 9)
      memory.files.write("/other/same.done", "4000\n")
      const bigger = yield* sendAll("/other", address)
      expect(bigger.failed[0]!.error.message).toMatch(/Conflict.*already committed on the server with a different size \(3000 bytes, not 4000\)/)
      // same size, other content: the client's CRC from the trailers tells them apart
      yield* make("/third", "same", 3000, 1000, 5)
      memory.files.write("/third/same.done", "3000\n")
      const other = yield* sendAll("/third", address)
      expect(other.committed).toEqual([])
      expect(other.failed[0]!.error.message).toMatch(/Conflict.*already holds a committed same of the same size, but with crc32 [0-9a-f]{8}/)
      expect(sha256(memory.files.read("/dest/same"))).toBe(before)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("pieces the server already holds are not sent again, and still count in the sender's seal", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const made = yield* make("/out", "half", 10_000, 100)
      memory.files.write("/out/half.done", "10000\n")
      const original = Buffer.concat(Array.from({ length: 100 }, (_, k) => zlib.gunzipSync(memory.files.read(`/out/${pieceFileName("half", k)}`)!)))
      // a first transfer got 40 of the 100 pieces onto disk, then stopped
      const store = yield* PieceStore
      yield* Effect.scoped(
        Effect.gen(function*() {
          const session = yield* store.open(manifestOf("half", original, 100))
          const pieces = Array.from({ length: 40 }, (_, k) => ({ index: k * 2, bytes: memory.files.read(`/out/${pieceFileName("half", k * 2)}`)! }))
          yield* writeBatch(session, pieces)
        })
      )
      const address = yield* startServer()
      const { committed } = yield* sendAll("/out", address)
      expect(committed[0]!.sent).toBe(60)
      expect(sha256(memory.files.read("/dest/half"))).toBe(made.sha256)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("two senders with different content under one name: no .done beside a mixed file", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      // the same size, slice and first slice, different bytes after it
      const base = Buffer.alloc(8000, 1)
      const other = Buffer.from(base)
      other.fill(2, 1000)
      for (const [dir, bytes] of [["/a", base], ["/b", other]] as const) {
        for (const p of piecesOf(bytes, 1000)) memory.files.write(`${dir}/${pieceFileName("abc", p.index)}`, p.bytes)
        memory.files.write(`${dir}/abc.done`, "8000\n")
      }
      const address = yield* startServer()
      const [ra, rb] = yield* Effect.all([sendAll("/a", address, { batchBytes: 1 }), sendAll("/b", address, { batchBytes: 1 })], { concurrency: 2 })
      const outcomes = [...ra.committed, ...rb.committed]
      if (memory.files.exists("/dest/abc.done")) {
        // whoever was committed, the file is exactly one sender's, and that sender's crc is the one printed
        expect(outcomes).toHaveLength(1)
        const file = Buffer.from(memory.files.read("/dest/abc")!)
        expect([sha256(base), sha256(other)]).toContain(sha256(file))
        expect(outcomes[0]!.crc32).toBe(crcHex(file))
      } else {
        expect(outcomes).toEqual([])
      }
      // and whoever was not committed was told why
      for (const f of [...ra.failed, ...rb.failed]) expect(f.error.message).toMatch(/Conflict/)
      expect(ra.failed.length + rb.failed.length + outcomes.length).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a dataset refused as Busy waits its turn and is sent once the server has room", () => {
    const { layer, memory } = world({ limits: { maxDatasets: 1 } })
    return Effect.gen(function*() {
      const a = yield* make("/out", "aa", 40_000, 1000, 1)
      const b = yield* make("/out", "bb", 40_000, 1000, 2)
      memory.files.write("/out/aa.done", "40000\n")
      memory.files.write("/out/bb.done", "40000\n")
      const address = yield* startServer()
      const r = yield* sendAll("/out", address, { batchBytes: 1 })
      expect(r.failed).toEqual([])
      expect(r.committed.map((c) => c.dataset).sort()).toEqual(["aa", "bb"])
      expect(sha256(memory.files.read("/dest/aa"))).toBe(a.sha256)
      expect(sha256(memory.files.read("/dest/bb"))).toBe(b.sha256)
    }).pipe(Effect.provide(layer))
  })
})

describe("piece store", () => {
  it.effect("rebuilds the file whatever the order and batching of arrival, and commits once sealed", () =>
    Effect.promise(() =>
      fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 40 }),
          fc.integer({ min: 1, max: 300 }),
          fc.integer({ min: 0, max: 50 }),
          fc.integer({ min: 1, max: 8 }),
          fc.nat(),
          async (count, sliceSize, first, batchSize, seed) => {
            const { layer, memory } = world()
            const size = (count - 1) * sliceSize + 1 + (seed % sliceSize)
            const original = Buffer.alloc(size)
            for (let i = 0; i < size; i++) original[i] = (i * 31 + seed) & 0xff
            const pieces = piecesOf(original, sliceSize, first)
            const order = fc.sample(fc.shuffledSubarray(pieces, { minLength: count, maxLength: count }), { seed, numRuns: 1 })[0]!
            const batches: Array<typeof pieces> = []
            for (let k = 0; k < order.length; k += batchSize) batches.push(order.slice(k, k + batchSize))
            const program = Effect.gen(function*() {
              const store = yield* PieceStore
              const session = yield* store.open(manifestOf("prop", original, sliceSize, first))
              yield* Effect.forEach(batches, (b, seq) => writeBatch(session, b, seq), { concurrency: 3, discard: true })
              const commit = yield* session.seal(zlib.crc32(original))
              expect(commit.crc32).toBe(crcHex(original))
            }).pipe(Effect.scoped, Effect.provide(layer))
            await Effect.runPromise(program)
            expect(Buffer.from(memory.files.read("/dest/prop")!)).toEqual(original)
            expect(memory.files.readText(`/dest/${markerFileName("prop")}`)).toBe(`${size}\n`)
          }
        )
      )
    ))

  it.scopedLive("a seal with another CRC32 is a conflict: no .done, and the unvouched state is discarded", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const original = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 13) & 0xff))
      const r = yield* Effect.scoped(
        Effect.gen(function*() {
          const session = yield* store.open(manifestOf("seal", original, 1000))
          yield* writeBatch(session, piecesOf(original, 1000))
          return yield* Effect.either(session.seal((zlib.crc32(original) ^ 1) >>> 0))
        })
      )
      expect(Either.isLeft(r) && r.left.code).toBe("Conflict")
      expect(Either.isLeft(r) && r.left.reason).toMatch(/this sender's make .*discarded/)
      expect(memory.files.exists("/dest/seal.done")).toBe(false)
      expect(memory.files.exists("/dest/seal")).toBe(false)
      // a new transfer starts afresh
      const again = yield* Effect.scoped(Effect.map(store.open(manifestOf("seal", original, 1000)), (s) => s.held))
      expect(again).toBe(0)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a batch that would decompress to more than a worker may hold is refused before inflating", () => {
    const { layer } = world()
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const slice = 64 * 1024 * 1024
      const session = yield* store.open(new Manifest({ dataset: "bomb", size: slice * 10, sliceSize: slice, first: 0, count: 10, firstSliceCrc: 0 }))
      const r = yield* Effect.either(writeBatch(session, [0, 1, 2].map((index) => ({ index, bytes: zlib.gzipSync(Buffer.alloc(10)) }))))
      expect(Either.isLeft(r) && [r.left.code, r.left.reason]).toEqual(["BadFrame", "a batch of 3 pieces would decompress to 201326592 bytes, over the limit of 134217728"])
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("the data file is flushed in the background every `flushEvery` bytes; a failed flush is left to the commit", () => {
    // 100 pieces of 100 bytes in batches of 5: 10,000 bytes, a flush-behind due every 1,000
    const { layer, memory } = world({ flushEvery: 1000 })
    const dataSyncs: Array<string> = []
    let failFirst = true
    memory.faults.inject = (method, path) => {
      if (method !== "sync" || !/\/\.ferry\/flushed\/epoch\.\d+\/data$/.test(path)) return undefined
      dataSyncs.push(path)
      if (failFirst) {
        failFirst = false
        return "EIO"
      }
      return undefined
    }
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const original = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7) & 0xff))
      const session = yield* store.open(manifestOf("flushed", original, 100))
      const pieces = piecesOf(original, 100)
      for (let seq = 0; seq < 20; seq++) {
        yield* writeBatch(session, pieces.slice(seq * 5, seq * 5 + 5), seq)
        yield* Effect.yieldNow()
      }
      yield* session.seal(zlib.crc32(original))
      // the commit's own fsync, plus at least one flush-behind before it (the first one failed,
      // quietly), and never more than one per `flushEvery` bytes
      expect(dataSyncs.length).toBeGreaterThanOrEqual(2)
      expect(dataSyncs.length).toBeLessThanOrEqual(10 + 1)
      expect(Buffer.from(memory.files.read("/dest/flushed")!)).toEqual(original)
      expect(memory.files.readText(`/dest/${markerFileName("flushed")}`)).toBe("10000\n")
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a full disk fails the dataset clearly and keeps what was written", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const original = Buffer.alloc(10_000, 7)
      const session = yield* store.open(manifestOf("full", original, 1000))
      const pieces = piecesOf(original, 1000)
      yield* writeBatch(session, pieces.slice(0, 3))
      memory.faults.inject = (method) => (method === "writeAll" || method === "write" ? "ENOSPC" : undefined)
      const full = yield* Effect.either(writeBatch(session, pieces.slice(3, 6), 1))
      expect(Either.isLeft(full) && [full.left.code, full.left.message]).toEqual(["NoSpace", "dataset full: the destination disk is full"])
      memory.faults.inject = undefined
      const folder = memory.files.list("/dest/.ferry/full").find((n) => n.startsWith("epoch."))!
      const bitmap = memory.files.read(`/dest/.ferry/full/${folder}/bitmap`)!
      expect(bitmap[0]! & 0b111).toBe(0b111)
      expect(memory.files.exists("/dest/full.done")).toBe(false)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("admission counts what datasets in progress still have to write: two that fit alone but not together", () => {
    // 100 kB free: each dataset needs about 60 kB; the second must wait, not fail half way
    const memory = makeMemoryFileSystem()
    const layer = storeLayer(memory, { space: Effect.sync(() => 100_000 - memory.files.usedBytes()) })
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const a = Buffer.alloc(40_000, 1)
      const b = Buffer.alloc(40_000, 2)
      const first = yield* store.open(manifestOf("aa", a, 1000))
      const second = yield* Effect.either(store.open(manifestOf("bb", b, 1000)))
      expect(Either.isLeft(second) && second.left.code).toBe("NoSpace")
      expect(Either.isLeft(second) && second.left.reason).toMatch(/needs \d+ more bytes, but of the \d+ free, \d+ are promised to datasets in progress/)
      yield* writeBatch(first, piecesOf(a, 1000))
      yield* first.seal(zlib.crc32(a))
      expect(memory.files.exists("/dest/aa.done")).toBe(true)
    }).pipe(Effect.scoped, Effect.provide(layer))
  })
  it.scopedLive("a dataset bigger than the whole filesystem is refused for good (TooLarge), before any state is made; one that fits later is NoSpace", () => {
    const memory = makeMemoryFileSystem()
    const layer = storeLayer(memory, { space: 30_000, capacity: 100_000 })
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const never = yield* Effect.either(Effect.scoped(store.open(manifestOf("big", Buffer.alloc(150_000, 1), 1000))))
      expect(Either.isLeft(never) && never.left.code).toBe("TooLarge")
      expect(Either.isLeft(never) && never.left.reason).toMatch(/^needs \d+ bytes, more than the whole filesystem of \/dest holds \(100000 bytes\): it can never fit there$/)
      expect(memory.files.exists("/dest/.ferry/big")).toBe(false)
      const later = yield* Effect.either(Effect.scoped(store.open(manifestOf("mid", Buffer.alloc(50_000, 1), 1000))))
      expect(Either.isLeft(later) && later.left.code).toBe("NoSpace")
      expect(memory.files.exists("/dest/.ferry/mid")).toBe(false)
    }).pipe(Effect.provide(layer))
  })
})

describe("two servers on one destination", () => {
  it.scopedLive("a dataset held by one server is Busy on the other, and free again when the first lets go", () => {
    const memory = makeMemoryFileSystem()
    const one = storeLayer(memory, { leaseMs: 60_000 })
    const two = storeLayer(memory, { leaseMs: 60_000 })
    return Effect.gen(function*() {
      const original = Buffer.alloc(5000, 3)
      const storeOne = Context.get(yield* Layer.build(one), PieceStore)
      const storeTwo = Context.get(yield* Layer.build(two), PieceStore)
      const held = yield* Effect.scoped(
        Effect.gen(function*() {
          const session = yield* storeOne.open(manifestOf("abc", original, 1000))
          yield* writeBatch(session, piecesOf(original, 1000).slice(0, 2))
          const other = yield* Effect.either(Effect.scoped(storeTwo.open(manifestOf("abc", original, 1000))))
          expect(Either.isLeft(other) && other.left.code).toBe("Busy")
          return session.held
        })
      )
      expect(held).toBe(0)
      // the first server closed the dataset: the second resumes it where the first stopped
      const resumed = yield* Effect.scoped(
        Effect.gen(function*() {
          const session = yield* storeTwo.open(manifestOf("abc", original, 1000))
          const count = session.held
          yield* writeBatch(session, piecesOf(original, 1000).slice(2))
          yield* session.seal(zlib.crc32(original))
          return count
        })
      )
      expect(resumed).toBe(2)
      expect(Buffer.from(memory.files.read("/dest/abc")!)).toEqual(original)
    })
  })

  it.scoped("a holder that lost its lease while stalled can never commit after another server took over (on the test clock)", () => {
    const memory = makeMemoryFileSystem()
    // a short lease; the first server's heartbeats are stopped by failing its lease writes
    const one = storeLayer(memory, { leaseMs: 300 })
    const two = storeLayer(memory, { leaseMs: 300 })
    return Effect.gen(function*() {
      const original = Buffer.alloc(4000, 5)
      const storeOne = Context.get(yield* Layer.build(one), PieceStore)
      const storeTwo = Context.get(yield* Layer.build(two), PieceStore)
      const stale = yield* storeOne.open(manifestOf("abc", original, 1000))
      yield* writeBatch(stale, piecesOf(original, 1000))
      // the first server stalls: its lease stops beating
      memory.faults.inject = (method, path) => (/lease\.1$/.test(path) && (method === "write" || method === "writeAll" || method === "sync") ? "EIO" : undefined)
      // the second server sees a beat, and judges silence only by its own clock
      const early = yield* Effect.either(Effect.scoped(storeTwo.open(manifestOf("abc", original, 1000))))
      expect(Either.isLeft(early) && early.left.code).toBe("Busy")
      yield* TestClock.adjust("200 millis")
      const still = yield* Effect.either(Effect.scoped(storeTwo.open(manifestOf("abc", original, 1000))))
      expect(Either.isLeft(still) && still.left.code).toBe("Busy")
      // a whole lease without a beat: taken over
      yield* TestClock.adjust("200 millis")
      yield* storeTwo.open(manifestOf("abc", original, 1000))
      memory.faults.inject = undefined
      // the stale holder's seal cannot commit: its epoch is gone
      const r = yield* Effect.either(stale.seal(zlib.crc32(original)))
      expect(Either.isLeft(r) && r.left.code).toBe("LeaseLost")
      expect(memory.files.exists("/dest/abc.done")).toBe(false)
    })
  })
})
