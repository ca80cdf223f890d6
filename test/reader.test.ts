/**
 * The sender's reader reads a batch of piece files into a frame the same way with the native
 * addon's batch read (`readPieces`, on libuv's thread pool) as in a reader thread over node:fs
 * alone: same frame, same CRCs, same refusals by name (a piece over the limit, a FIFO, a folder, a
 * missing piece), and frames that grow past a small first guess.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as zlib from "node:zlib"
import { pieceFileName } from "../src/domain/Layout.js"
import { nativeAddon } from "../src/node/Assets.js"
import { FramePoolLive } from "../src/services/BufferPool.js"
import { PieceReader, PieceReaderLive } from "../src/services/PieceReader.js"

const SLICE = 16 * 1024
const geometry = { dataset: "abc", size: 8 * SLICE, sliceSize: SLICE, first: 0, count: 8 }

/** Eight pieces of seeded bytes (poorly compressible, so they differ in size), then the odd ones. */
const folder = () => {
  const dir = mkdtempSync(join(tmpdir(), "ferry-reader-"))
  let seed = 42
  for (let i = 0; i < 8; i++) {
    const slice = Buffer.alloc(SLICE)
    for (let b = 0; b < SLICE; b++) slice[b] = (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 24 & (i % 2 === 0 ? 0xff : 0x0f)
    writeFileSync(join(dir, pieceFileName("abc", i)), zlib.gzipSync(slice))
  }
  mkdirSync(join(dir, pieceFileName("dir", 0)))
  execFileSync("mkfifo", [join(dir, pieceFileName("fifo", 0))])
  return dir
}

const read = (nativeAddon: string | null, dir: string, dataset: string, indices: Array<number>, maxPieceBytes: number, expectBytes: number) =>
  Effect.gen(function*() {
    const reader = yield* PieceReader
    const outcome = yield* Effect.either(reader.read({ dir, geometry: { ...geometry, dataset }, handle: 7, seq: 3, indices: Uint32Array.from(indices), maxPieceBytes, expectBytes }))
    return Either.isLeft(outcome)
      ? { error: outcome.left.message }
      : { frame: Buffer.from(outcome.right.frame).toString("base64"), crcs: [...outcome.right.crcs], pieceBytes: outcome.right.pieceBytes }
  }).pipe(Effect.scoped, Effect.provide(PieceReaderLive({ nativeAddon }).pipe(Layer.provide(FramePoolLive))))

describe("the sender's reader, with and without the native addon", () => {
  const dir = folder()

  it("the addon with readPieces loads here (the test command builds it), so the cases below compare two paths", () => {
    const loaded = createRequire(import.meta.url)(nativeAddon) as { readPieces?: unknown } | null
    expect(typeof loaded?.readPieces, "native/ is not built: `node native/build.mjs` builds it").toBe("function")
  })
  const cases: Array<[string, string, Array<number>, number, number]> = [
    ["a whole batch", "abc", [0, 1, 2, 3, 4, 5, 6, 7], 64 * 1024, 8 * SLICE],
    ["a frame that must grow past a small first guess", "abc", [0, 2, 4, 6], 64 * 1024, 100],
    ["a piece over the limit", "abc", [1, 0], 2000, 8 * SLICE],
    ["a missing piece", "abc", [6, 7, 8], 64 * 1024, 8 * SLICE],
    ["a FIFO named like a piece", "fifo", [0], 64 * 1024, 1000],
    ["a folder named like a piece", "dir", [0], 64 * 1024, 1000]
  ]
  for (const [what, dataset, indices, max, expect_] of cases) {
    it.live(`${what}: the same outcome`, () =>
      Effect.gen(function*() {
        const withAddon = yield* read(nativeAddon, dir, dataset, indices, max, expect_)
        const withoutAddon = yield* read(null, dir, dataset, indices, max, expect_)
        expect(withAddon).toEqual(withoutAddon)
        if (dataset === "abc" && max > 10_000 && !indices.includes(8)) expect("frame" in withAddon).toBe(true)
        else expect("error" in withAddon).toBe(true)
      }))
  }

  it.live("the CRCs are the slices' own, from the trailer or, for a piece of two gzip members, by inflating it", () =>
    Effect.gen(function*() {
      const two = mkdtempSync(join(tmpdir(), "ferry-reader-members-"))
      const slices = [0, 1].map((i) => Buffer.alloc(SLICE, 97 + i).fill(120 + i, 5000))
      writeFileSync(join(two, pieceFileName("abc", 0)), zlib.gzipSync(slices[0]!))
      // the last member's trailer covers half the slice: only inflating the piece gives its CRC
      writeFileSync(join(two, pieceFileName("abc", 1)), Buffer.concat([zlib.gzipSync(slices[1]!.subarray(0, SLICE / 2)), zlib.gzipSync(slices[1]!.subarray(SLICE / 2))]))
      const truth = slices.map((slice) => zlib.crc32(slice))
      for (const addon of [nativeAddon, null]) {
        const outcome = yield* read(addon, two, "abc", [0, 1], 64 * 1024, 2 * SLICE)
        expect(outcome).toMatchObject({ crcs: truth })
      }
    }))

  it.live("names what is wrong in the words node:fs gives", () =>
    Effect.gen(function*() {
      expect(yield* read(nativeAddon, dir, "fifo", [0], 64 * 1024, 1000)).toEqual({ error: expect.stringContaining("not a regular file: a FIFO") })
      expect(yield* read(nativeAddon, dir, "abc", [8], 64 * 1024, 1000)).toEqual({ error: expect.stringContaining("cannot be read (ENOENT)") })
      expect(yield* read(nativeAddon, dir, "abc", [1], 2000, 1000)).toEqual({ error: expect.stringContaining("over the limit of 2000 bytes") })
    }))
})
