/**
 * The client and server pipelines wired together in one process, over the
 * in-memory transport and filesystem, with the in-process gunzip and reader:
 * several datasets, several clients, pieces arriving in any order, resume.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer, Logger, LogLevel } from "effect"
import fc from "fast-check"
import { createHash } from "node:crypto"
import * as zlib from "node:zlib"
import { defaultSendOptions, send, type SendOptions } from "../src/client/Client.js"
import { Manifest, markerFileName, pieceFileName } from "../src/domain/Dataset.js"
import { decodePieces, encodePieces } from "../src/domain/Frame.js"
import { defaultServeOptions, serve } from "../src/server/Server.js"
import { DatasetScannerInProcess } from "../src/services/DatasetScanner.js"
import { DiskSpaceFixed } from "../src/services/DiskSpace.js"
import { GunzipPoolInProcess } from "../src/services/GunzipPool.js"
import { PieceReaderInProcess } from "../src/services/PieceReader.js"
import { PieceStore, PieceStoreLayer } from "../src/services/PieceStore.js"
import { SampleMaker, SampleMakerInProcess } from "../src/services/SampleMaker.js"
import { type Address, MemoryTransport } from "../src/services/Transport.js"
import { makeMemoryFileSystem } from "./support/MemoryFileSystem.js"

fc.configureGlobal({ seed: 77, numRuns: 25 })

const world = (flushEvery?: number) => {
  const memory = makeMemoryFileSystem()
  const layer = Layer.mergeAll(
    MemoryTransport,
    PieceReaderInProcess,
    DatasetScannerInProcess,
    SampleMakerInProcess,
    PieceStoreLayer("/dest", undefined, flushEvery).pipe(Layer.provide(Layer.mergeAll(GunzipPoolInProcess, DiskSpaceFixed(1e12)))),
    Logger.minimumLogLevel(LogLevel.Warning)
  ).pipe(Layer.provideMerge(memory.layer))
  return { memory, layer }
}

const sha256 = (bytes: Uint8Array | undefined) => createHash("sha256").update(bytes ?? new Uint8Array()).digest("hex")

const make = (dir: string, name: string, size: number, sliceSize: number, seed = 1, firstNumber = 0) =>
  Effect.gen(function*() {
    const maker = yield* SampleMaker
    const made = yield* maker.make({ dir, name, size, sliceSize, seed, firstNumber, level: 1 })
    return made
  })

const startServer = serve({ ...defaultServeOptions, host: "memory", port: 0 })

const sendAll = (dir: string, address: Address, extra: Partial<SendOptions> = {}) =>
  Effect.scoped(send({ ...defaultSendOptions, dir, address, connections: 2, ...extra }))

describe("client and server pipelines in memory", () => {
  it.scoped("several datasets from several clients at once are rebuilt exactly", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const a = yield* make("/out/one", "alpha", 20_000, 1000, 1)
      const b = yield* make("/out/one", "beta", 12_345, 512, 2, 5)
      const c = yield* make("/out/two", "gamma", 30_000, 4096, 3)
      memory.files.write("/out/one/alpha.done", "20000\n")
      memory.files.write("/out/one/beta.done", "12345")
      memory.files.write("/out/two/gamma.done", "30000 \n")
      memory.files.write("/out/two/notes.txt", "ignored")
      const address = yield* startServer
      const [r1, r2] = yield* Effect.all([sendAll("/out/one", address), sendAll("/out/two", address, { connections: 3 })], { concurrency: 2 })
      expect(r1.map((r) => r.dataset)).toEqual(["alpha", "beta"])
      expect(r2.map((r) => [r.dataset, r.sent])).toEqual([["gamma", 8]])
      expect(sha256(memory.files.read("/dest/alpha"))).toBe(a.sha256)
      expect(sha256(memory.files.read("/dest/beta"))).toBe(b.sha256)
      expect(sha256(memory.files.read("/dest/gamma"))).toBe(c.sha256)
      expect(memory.files.readText("/dest/beta.done")).toBe("12345\n")
      // the server's CRC, combined from slices, is the original's
      expect(r1[0]!.crc32).toBe(a.crc32.toString(16).padStart(8, "0"))
      expect(memory.files.list("/dest/.ferry")).toEqual([])
    }).pipe(Effect.provide(layer))
  })

  it.scoped("a bad piece fails its dataset only, names the piece, and leaves no .done", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      yield* make("/out", "good", 5000, 500, 1)
      yield* make("/out", "bad", 5000, 500, 2)
      memory.files.write("/out/good.done", "5000\n")
      memory.files.write("/out/bad.done", "5000\n")
      memory.files.write(`/out/${pieceFileName("bad", 7)}`, zlib.gzipSync(Buffer.alloc(499)))
      const address = yield* startServer
      const r = yield* Effect.either(sendAll("/out", address))
      expect(Either.isLeft(r)).toBe(true)
      expect(Either.isLeft(r) && r.left.message).toMatch(/dataset bad: server refused it \(BadPiece\): bad-0000007\.gz decompresses to 499 bytes, but the slice is 500/)
      expect(memory.files.exists("/dest/good.done")).toBe(true)
      expect(memory.files.exists("/dest/bad.done")).toBe(false)
      expect(memory.files.exists("/dest/bad")).toBe(false)
    }).pipe(Effect.provide(layer))
  })

  it.scoped("a second send of a committed dataset sends nothing; a different size is a conflict", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      yield* make("/out", "same", 3000, 1000)
      memory.files.write("/out/same.done", "3000\n")
      const address = yield* startServer
      yield* sendAll("/out", address)
      const again = yield* sendAll("/out", address)
      expect(again[0]).toMatchObject({ dataset: "same", alreadyCommitted: true, sent: 0 })
      yield* make("/other", "same", 4000, 1000, 9)
      memory.files.write("/other/same.done", "4000\n")
      const before = sha256(memory.files.read("/dest/same"))
      const conflict = yield* Effect.either(sendAll("/other", address))
      expect(Either.isLeft(conflict) && conflict.left.message).toMatch(/Conflict.*already committed on the server with a different size \(3000 bytes, not 4000\)/)
      expect(sha256(memory.files.read("/dest/same"))).toBe(before)
    }).pipe(Effect.provide(layer))
  })

  it.scoped("pieces the server already holds are not sent again", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const made = yield* make("/out", "half", 10_000, 100)
      memory.files.write("/out/half.done", "10000\n")
      // a first transfer got 40 of the 100 pieces onto disk, then stopped
      const store = yield* PieceStore
      const manifest = new Manifest({ dataset: "half", size: 10_000, sliceSize: 100, first: 0, count: 100 })
      yield* Effect.scoped(
        Effect.gen(function*() {
          const session = yield* store.open(manifest)
          const pieces = Array.from({ length: 40 }, (_, k) => ({ index: k * 2, bytes: memory.files.read(`/out/${pieceFileName("half", k * 2)}`)! }))
          const frame = encodePieces(1, 0, pieces).subarray(5)
          const batch = decodePieces(frame)
          if ("problem" in batch) throw new Error(batch.problem)
          yield* session.write(batch, Buffer.from(frame))
        })
      )
      const address = yield* startServer
      const [report] = yield* sendAll("/out", address)
      expect(report!.sent).toBe(60)
      expect(sha256(memory.files.read("/dest/half"))).toBe(made.sha256)
    }).pipe(Effect.provide(layer))
  })
})

describe("piece store", () => {
  it.effect("rebuilds the file whatever the order and batching of arrival, and commits once", () =>
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
            const pieces = Array.from({ length: count }, (_, k) => ({
              index: first + k,
              bytes: zlib.gzipSync(original.subarray(k * sliceSize, Math.min(size, (k + 1) * sliceSize)))
            }))
            const order = fc.sample(fc.shuffledSubarray(pieces, { minLength: count, maxLength: count }), { seed, numRuns: 1 })[0]!
            const batches: Array<typeof pieces> = []
            for (let k = 0; k < order.length; k += batchSize) batches.push(order.slice(k, k + batchSize))
            const program = Effect.gen(function*() {
              const store = yield* PieceStore
              const manifest = new Manifest({ dataset: "prop", size, sliceSize, first, count })
              const session = yield* store.open(manifest)
              yield* Effect.forEach(batches, (b, seq) => {
                const frame = encodePieces(1, seq, b).subarray(5)
                const batch = decodePieces(frame)
                if ("problem" in batch) return Effect.die(batch.problem)
                return session.write(batch, Buffer.from(frame))
              }, { concurrency: 3, discard: true })
              const commit = yield* session.commit
              expect(commit.crc32).toBe(zlib.crc32(original).toString(16).padStart(8, "0"))
            }).pipe(Effect.scoped, Effect.provide(layer))
            await Effect.runPromise(program)
            expect(Buffer.from(memory.files.read("/dest/prop")!)).toEqual(original)
            expect(memory.files.readText(`/dest/${markerFileName("prop")}`)).toBe(`${size}\n`)
          }
        )
      )
    ))

  it.scoped("a batch that would decompress to more than a worker may hold is refused before inflating", () => {
    const { layer } = world()
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const slice = 64 * 1024 * 1024
      const session = yield* store.open(new Manifest({ dataset: "bomb", size: slice * 10, sliceSize: slice, first: 0, count: 10 }))
      const frame = encodePieces(1, 0, [0, 1, 2].map((index) => ({ index, bytes: zlib.gzipSync(Buffer.alloc(10)) }))).subarray(5)
      const batch = decodePieces(frame)
      if ("problem" in batch) throw new Error(batch.problem)
      const r = yield* Effect.either(session.write(batch, Buffer.from(frame)))
      expect(Either.isLeft(r) && [r.left.code, r.left.reason]).toEqual(["BadFrame", "a batch of 3 pieces would decompress to 201326592 bytes, over the limit of 134217728"])
    }).pipe(Effect.provide(layer))
  })

  it.scoped("the data file is flushed in the background every `flushEvery` bytes; a failed flush is left to the commit", () => {
    // 100 pieces of 100 bytes in batches of 5: 10,000 bytes, a flush-behind due every 1,000
    const { layer, memory } = world(1000)
    const dataSyncs: Array<string> = []
    let failFirst = true
    memory.faults.inject = (method, path) => {
      if (method !== "sync" || !path.endsWith("/.ferry/flushed/data")) return undefined
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
      const manifest = new Manifest({ dataset: "flushed", size: 10_000, sliceSize: 100, first: 0, count: 100 })
      const session = yield* store.open(manifest)
      for (let seq = 0; seq < 20; seq++) {
        const pieces = Array.from({ length: 5 }, (_, k) => {
          const index = seq * 5 + k
          return { index, bytes: zlib.gzipSync(original.subarray(index * 100, index * 100 + 100)) }
        })
        const frame = encodePieces(1, seq, pieces).subarray(5)
        const batch = decodePieces(frame)
        if ("problem" in batch) throw new Error(batch.problem)
        yield* session.write(batch, Buffer.from(frame))
        yield* Effect.yieldNow()
      }
      yield* session.commit
      // the commit's own fsync, plus at least one flush-behind before it (the first one failed,
      // quietly), and never more than one per `flushEvery` bytes
      expect(dataSyncs.length).toBeGreaterThanOrEqual(2)
      expect(dataSyncs.length).toBeLessThanOrEqual(10 + 1)
      expect(Buffer.from(memory.files.read("/dest/flushed")!)).toEqual(original)
      expect(memory.files.readText(`/dest/${markerFileName("flushed")}`)).toBe("10000\n")
    }).pipe(Effect.provide(layer))
  })

  it.scoped("a full disk fails the dataset clearly and keeps what was written", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const store = yield* PieceStore
      const original = Buffer.alloc(10_000, 7)
      const manifest = new Manifest({ dataset: "full", size: 10_000, sliceSize: 1000, first: 0, count: 10 })
      const session = yield* store.open(manifest)
      const write = (from: number, to: number) => {
        const pieces = Array.from({ length: to - from }, (_, k) => ({ index: from + k, bytes: zlib.gzipSync(original.subarray((from + k) * 1000, (from + k + 1) * 1000)) }))
        const frame = encodePieces(1, from, pieces).subarray(5)
        const batch = decodePieces(frame)
        if ("problem" in batch) return Effect.die(batch.problem)
        return session.write(batch, Buffer.from(frame))
      }
      yield* write(0, 3)
      memory.faults.capacity = memory.files.usedBytes()
      memory.faults.inject = (method) => (method === "writeAll" || method === "write" ? "ENOSPC" : undefined)
      const full = yield* Effect.either(write(3, 6))
      expect(Either.isLeft(full) && [full.left.code, full.left.message]).toEqual(["NoSpace", "dataset full: the destination disk is full"])
      memory.faults.inject = undefined
      memory.faults.capacity = undefined
      const bitmap = memory.files.read("/dest/.ferry/full/bitmap")!
      expect(bitmap[0]! & 0b111).toBe(0b111)
      expect(memory.files.exists("/dest/full.done")).toBe(false)
    }).pipe(Effect.provide(layer))
  })
})
