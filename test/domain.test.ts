import { describe, expect, it } from "@effect/vitest"
import fc from "fast-check"
import * as zlib from "node:zlib"
import { PieceBitmap } from "../src/domain/Bitmap.js"
import { checkBatch } from "../src/domain/Batch.js"
import { combine, ContentCrc, FileCrc, shiftBy } from "../src/domain/Crc32.js"
import {
  expectedCount,
  lastIndex,
  lengthOf,
  Manifest,
  manifestProblem,
  offsetOf,
  parseEntry,
  parseMarker,
  pieceFileName
} from "../src/domain/Dataset.js"
import { Inventory, isContiguous } from "../src/domain/Inventory.js"
import { parseAddress, parseBytes } from "../src/domain/Units.js"

fc.configureGlobal({ seed: 20261123, numRuns: 200 })

const PIECE = /^[a-z]+-[0-9]{7}\.gz$/

describe("piece and marker names", () => {
  it("a name is a piece exactly when it matches NAME-NNNNNNN.gz", () => {
    const alphabet = fc.constantFrom(..."abcxyzAZ09-._/ ".split(""))
    const near = fc.oneof(
      fc.string({ unit: alphabet, maxLength: 20 }),
      fc.tuple(fc.string({ unit: fc.constantFrom(..."abcZ1".split("")), minLength: 0, maxLength: 5 }), fc.integer({ min: 0, max: 99_999_999 }), fc.constantFrom(".gz", ".GZ", ".gzip", "", ".gz.tmp"))
        .map(([n, i, ext]) => `${n}-${String(i).padStart(7, "0")}${ext}`)
    )
    fc.assert(
      fc.property(near, (name) => {
        const entry = parseEntry(name)
        expect(entry._tag === "Piece").toBe(PIECE.test(name))
        if (entry._tag === "Piece") expect(pieceFileName(entry.dataset, entry.index)).toBe(name)
      })
    )
  })

  it("round-trips every valid dataset name and index", () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[a-z]{1,64}$/), fc.integer({ min: 0, max: 9_999_999 }), (name, index) => {
        expect(parseEntry(pieceFileName(name, index))).toEqual({ _tag: "Piece", dataset: name, index })
        expect(parseEntry(`${name}.done`)).toEqual({ _tag: "Marker", dataset: name })
      })
    )
  })

  it("ignores 6 or 8 digits, capitals and other files", () => {
    for (const name of ["abc-000001.gz", "abc-00000001.gz", "Abc-0000001.gz", "ABC.done", "abc-0000001.gz.part", ".abc.done.tmp", "abc.done.bak", "abc_0000001.gz", "-0000001.gz"]) {
      expect(parseEntry(name)).toEqual({ _tag: "Other" })
    }
  })

  it("reads markers: a size with optional trailing whitespace, nothing else", () => {
    expect(parseMarker("1234\n")).toEqual({ size: 1234 })
    expect(parseMarker("0")).toEqual({ size: 0 })
    expect(parseMarker("42  \r\n")).toEqual({ size: 42 })
    expect(parseMarker("0007\n")).toEqual({ size: 7 })
    for (const bad of ["", "\n", "-5\n", "12 bytes", "1.5", "abc", " 12", "0x10", "99999999999999999999"]) {
      expect(parseMarker(bad)).toHaveProperty("problem")
    }
  })
})

describe("manifest arithmetic", () => {
  const manifests = fc
    .record({ sliceSize: fc.integer({ min: 1, max: 1 << 20 }), count: fc.integer({ min: 1, max: 5000 }), first: fc.integer({ min: 0, max: 1000 }), cut: fc.double({ min: 0, max: 1, noNaN: true }) })
    .map(({ count, cut, first, sliceSize }) => {
      const last = Math.max(1, Math.ceil(cut * sliceSize))
      return new Manifest({ dataset: "abc", size: (count - 1) * sliceSize + last, sliceSize, first, count, firstSliceCrc: 0 })
    })

  it("slices tile the file: offsets follow lengths and the last slice is the remainder", () => {
    fc.assert(
      fc.property(manifests, (m) => {
        expect(manifestProblem(m)).toBeUndefined()
        expect(expectedCount(m.size, m.sliceSize)).toBe(m.count)
        const last = lastIndex(m)
        expect(offsetOf(m, m.first)).toBe(0)
        expect(offsetOf(m, last) + lengthOf(m, last)).toBe(m.size)
        expect(lengthOf(m, last)).toBeGreaterThan(0)
        expect(lengthOf(m, last)).toBeLessThanOrEqual(m.sliceSize)
        if (m.count > 1) {
          const i = m.first + Math.floor(m.count / 2) - 1
          expect(offsetOf(m, i) + lengthOf(m, i)).toBe(offsetOf(m, i + 1))
          expect(lengthOf(m, i)).toBe(m.sliceSize)
        }
      })
    )
  })

  it("a count that disagrees with the size is a problem naming both", () => {
    fc.assert(
      fc.property(manifests, fc.integer({ min: 1, max: 3 }), (m, off) => {
        const wrong = new Manifest({ ...m, count: m.count + off, firstSliceCrc: 0 })
        expect(manifestProblem(wrong)).toMatch(new RegExp(`needs ${m.count} pieces, but there are ${m.count + off}`))
      })
    )
  })

  it("a size of 0 is an empty file: no piece, or one empty piece", () => {
    expect(manifestProblem(new Manifest({ dataset: "e", size: 0, sliceSize: 0, first: 0, count: 0, firstSliceCrc: 0 }))).toBeUndefined()
    expect(manifestProblem(new Manifest({ dataset: "e", size: 0, sliceSize: 0, first: 3, count: 1, firstSliceCrc: 0 }))).toBeUndefined()
    expect(manifestProblem(new Manifest({ dataset: "e", size: 0, sliceSize: 10, first: 0, count: 1, firstSliceCrc: 0 }))).toBeDefined()
    expect(manifestProblem(new Manifest({ dataset: "e", size: 10, sliceSize: 0, first: 0, count: 1, firstSliceCrc: 0 }))).toMatch(/decompresses to 0 bytes/)
  })
})

describe("inventory", () => {
  it("finds gaps by counting: contiguous exactly when no index is missing", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 100 }), (indices) => {
        const inv = new Inventory()
        for (const i of indices) inv.add(pieceFileName("abc", i))
        inv.add("abc.done")
        inv.add("notes.txt")
        const h = inv.datasets.get("abc")!
        const lo = Math.min(...indices)
        const hi = Math.max(...indices)
        expect([h.lowest, h.highest, h.pieces, h.marker]).toEqual([lo, hi, indices.length, true])
        expect(isContiguous(h)).toBe(hi - lo + 1 === indices.length)
        expect(inv.ignored).toBe(1)
      })
    )
  })
})

describe("piece bitmap", () => {
  it("behaves like a set and lists the missing runs", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200 }).chain((n) => fc.tuple(fc.constant(n), fc.array(fc.integer({ min: 0, max: Math.max(0, n - 1) }), { maxLength: 300 }))), ([n, sets]) => {
        const bitmap = new PieceBitmap(n)
        const model = new Set<number>()
        for (const i of n === 0 ? [] : sets) {
          expect(bitmap.set(i)).toBe(!model.has(i))
          model.add(i)
        }
        expect(bitmap.held).toBe(model.size)
        expect(bitmap.complete).toBe(model.size === n)
        const missing: Array<number> = []
        for (const [a, b] of bitmap.missing()) for (let i = a; i < b; i++) missing.push(i)
        expect(missing).toEqual(Array.from({ length: n }, (_, i) => i).filter((i) => !model.has(i)))
        const copy = PieceBitmap.fromBase64(n, bitmap.toBase64())!
        expect(copy.held).toBe(bitmap.held)
      })
    )
  })

  it("refuses a bitmap of the wrong length or with bits past the end", () => {
    expect(PieceBitmap.fromBase64(9, Buffer.from([0xff]).toString("base64"))).toBeUndefined()
    expect(PieceBitmap.fromBase64(3, Buffer.from([0xff]).toString("base64"))).toBeUndefined()
    expect(PieceBitmap.fromBase64(3, Buffer.from([0x07]).toString("base64"))?.complete).toBe(true)
  })
})

describe("crc32 of a file from the crc32 of its slices", () => {
  it("combine(crc(a), crc(b), |b|) = crc(a ++ b)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), (a, b) => {
        expect(combine(zlib.crc32(a), zlib.crc32(b), b.length)).toBe(zlib.crc32(Buffer.concat([a, b])))
      })
    )
  })

  it("folding equal slices and a short last one gives the whole file's crc", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.uint8Array({ minLength: 1, maxLength: 2000 }), (slice, data) => {
        const file = new FileCrc(slice)
        const count = Math.ceil(data.length / slice)
        for (let i = 0; i < count; i++) {
          const piece = data.subarray(i * slice, Math.min(data.length, (i + 1) * slice))
          if (i === count - 1) file.addLast(zlib.crc32(piece), piece.length)
          else file.add(zlib.crc32(piece))
        }
        expect(file.value).toBe(zlib.crc32(data))
      })
    )
  })
})

describe("crc32 of a file from runs of slices added in any order", () => {
  it("shiftBy(crc(a), n) = combine(crc(a), 0, n) for any n", () => {
    fc.assert(
      fc.property(fc.integer(), fc.integer({ min: 0, max: 2 ** 40 }), (crc, n) => {
        expect(shiftBy(crc >>> 0, n)).toBe(combine(crc >>> 0, 0, n))
      })
    )
  })

  it("runs of consecutive slices, in a shuffled order, give the whole file's crc", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40 }),
        fc.uint8Array({ minLength: 0, maxLength: 1500 }),
        fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 30 }),
        fc.integer(),
        (slice, data, cuts, seed) => {
          const count = Math.ceil(data.length / slice)
          const crcs = Array.from({ length: count }, (_, i) => zlib.crc32(data.subarray(i * slice, Math.min(data.length, (i + 1) * slice))))
          const lengths = Array.from({ length: count }, (_, i) => Math.min(data.length, (i + 1) * slice) - i * slice)
          const runs: Array<[number, number]> = []
          for (let i = 0, c = 0; i < count; c++) {
            const n = Math.min(count - i, cuts[c % cuts.length]!)
            runs.push([i, i + n])
            i += n
          }
          // a seeded shuffle: the order runs arrive in must not matter
          let s = seed >>> 0
          for (let i = runs.length - 1; i > 0; i--) {
            s = (Math.imul(s, 1664525) + 1013904223) >>> 0
            const j = s % (i + 1)
            ;[runs[i], runs[j]] = [runs[j]!, runs[i]!]
          }
          const file = new ContentCrc(data.length, slice)
          for (const [a, b] of runs) file.addRun(a * slice, crcs, lengths, a, b)
          expect(file.value).toBe(zlib.crc32(data))
        }
      )
    )
  })
})

describe("command-line quantities", () => {
  it("parses sizes with units and addresses", () => {
    expect(parseBytes("16384")).toBe(16384)
    expect(parseBytes("16KiB")).toBe(16384)
    expect(parseBytes("1.5GB")).toBe(1_500_000_000)
    expect(parseBytes("12 parsecs")).toBeUndefined()
    expect(parseAddress("10.0.0.1:9000")).toEqual({ host: "10.0.0.1", port: 9000 })
    expect(parseAddress("[::1]:9000")).toEqual({ host: "::1", port: 9000 })
    for (const bad of ["host", "host:", ":80", "host:0", "host:70000", "a:b:80"]) expect(parseAddress(bad)).toBeUndefined()
  })
})


describe("what the server accepts of a batch", () => {
  /** The rule, written the plain way: each index in the dataset, once; held pieces skipped. */
  const model = (first: number, count: number, held: Set<number>, indices: Array<number>) => {
    const seen = new Set<number>()
    const keep: Array<number> = []
    for (let k = 0; k < indices.length; k++) {
      const i = indices[k]!
      if (i < first || i >= first + count) return "BadIndex"
      if (seen.has(i)) return "DuplicatePiece"
      seen.add(i)
      if (!held.has(i - first)) keep.push(k)
    }
    return keep
  }

  it("checkBatch agrees with the plain rule, for sorted and unsorted batches alike", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 20 }),
        fc.integer({ min: 1, max: 60 }),
        fc.array(fc.nat(80), { maxLength: 30 }),
        fc.array(fc.nat(90), { maxLength: 40 }),
        fc.boolean(),
        (first, count, heldRelative, raw, sorted) => {
          const bitmap = new PieceBitmap(count)
          const held = new Set<number>()
          for (const h of heldRelative) if (h < count) {
            bitmap.set(h)
            held.add(h)
          }
          const indices = sorted ? [...new Set(raw)].sort((a, b) => a - b) : raw
          const verdict = checkBatch({ dataset: "abc", size: count * 10, sliceSize: 10, first, count }, bitmap, Uint32Array.from(indices), 1e9)
          const expected = model(first, count, held, indices)
          if (typeof expected === "string") expect(verdict._tag === "Rejected" && verdict.code).toBe(expected)
          else {
            expect(verdict._tag).toBe("Accepted")
            const keep = verdict._tag === "Accepted" ? verdict.keep : []
            expect(keep === "all" ? indices.map((_, k) => k) : [...keep]).toEqual(expected)
          }
        }
      )
    )
  })

  it("a batch that would decompress to more than a worker may hold is refused whatever its pieces", () => {
    const verdict = checkBatch({ dataset: "abc", size: 1e9, sliceSize: 1e6, first: 0, count: 1000 }, new PieceBitmap(1000), Uint32Array.of(1, 2, 3), 2e6)
    expect(verdict).toMatchObject({ _tag: "Rejected", code: "BadFrame" })
  })
})
