// The optional ISA-L gunzip addon (native/): checks it against node:zlib, which is the
// reference and the fallback. These tests FAIL (not skip) when the addon is not built:
// the project's test command builds it first with `node native/build.mjs`.
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import { join } from "node:path"
import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"
import * as zlib from "node:zlib"
import { describe, expect, it } from "vitest"
import { makeInflater } from "../src/node/Inflate.js"

type Result = [status: number, produced: number, consumed: number]
interface IsalInflate {
  inflateInto(input: Uint8Array, out: Uint8Array, outOffset: number, outLength: number): Result
  crc32(bytes: Uint8Array, crc?: number): number
  readPieces(paths: string, out: Uint8Array, at: number, gap: number, max: number, sizes: Float64Array, done: (count: number) => void): void
}

const require = createRequire(import.meta.url)
const indexPath = require.resolve("../native/index.cjs")
const native = require("../native/index.cjs") as IsalInflate | null

const NOT_BUILT =
  "The ISA-L gunzip addon is not available: native/build/Release/isal_inflate.node is missing or does not load. " +
  "Build it with `node native/build.mjs` (it installs libisal-dev when needed and prints why it could not build)."

const addon = (): IsalInflate => {
  if (native === null) throw new Error(NOT_BUILT)
  return native
}

const OK = 0
const OUT_FULL = 1
const TRUNCATED = 2
const NOT_GZIP = 3
const CORRUPT = 4
const BAD_CRC = 5
const BAD_ISIZE = 6

// ---------------------------------------------------------------- helpers

/** mulberry32: small seeded PRNG, so failures reproduce. */
const rng = (seed: number) => {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (n: number) => Math.floor(next() * n)
  return { next, int }
}
type Rng = ReturnType<typeof rng>

const WORDS = "the quick brown fox jumps over lazy dog piece chunk slice dataset ferry gzip member window ".split(" ")

/** Mixed content: random stretches, text, byte runs and long-distance repeats. */
const mixed = (r: Rng, size: number): Buffer => {
  const b = Buffer.alloc(size)
  let i = 0
  while (i < size) {
    const n = Math.min(size - i, 1 + r.int(4096))
    switch (r.int(4)) {
      case 0:
        for (let k = 0; k < n; k++) b[i + k] = r.int(256)
        break
      case 1: {
        let k = 0
        while (k < n) {
          const w = WORDS[r.int(WORDS.length)]! + " "
          k += b.write(w, i + k, Math.min(w.length, n - k), "latin1")
        }
        break
      }
      case 2:
        b.fill(r.int(256), i, i + n)
        break
      default:
        if (i > 0) {
          const from = Math.max(0, i - 1 - r.int(32768))
          for (let k = 0; k < n; k++) b[i + k] = b[from + (k % (i - from))]!
        } else b.fill(0x20, i, i + n)
    }
    i += n
  }
  return b
}

type ZlibVerdict = { ok: true; out: Buffer } | { ok: false; message: string }
const gunzipVerdict = (input: Uint8Array): ZlibVerdict => {
  try {
    return { ok: true, out: zlib.gunzipSync(input) }
  } catch (e) {
    return { ok: false, message: (e as Error).message }
  }
}

/** The status that corresponds to node:zlib's verdict on the same input. */
const expectedStatus = (v: ZlibVerdict): number => {
  if (v.ok) return OK
  if (v.message === "unexpected end of file") return TRUNCATED
  if (/incorrect header check|unknown compression method|unknown header flags set|header crc mismatch/.test(v.message))
    return NOT_GZIP
  if (v.message === "incorrect data check") return BAD_CRC
  if (v.message === "incorrect length check") return BAD_ISIZE
  return CORRUPT
}

const SENTINEL = 0xa5
const PAD = 64

/**
 * Runs inflateInto with the window at out[PAD, PAD + windowLength) of a buffer whose
 * other bytes hold a sentinel, and checks that nothing outside the window changed.
 */
const inflateChecked = (input: Uint8Array, windowLength: number, pad = PAD) => {
  const out = Buffer.alloc(pad + windowLength + pad, SENTINEL)
  const result = addon().inflateInto(input, out, pad, windowLength)
  expect(result).toHaveLength(3)
  const before = out.subarray(0, pad)
  const after = out.subarray(pad + windowLength)
  expect(before.every((x) => x === SENTINEL), "bytes before outOffset were written").toBe(true)
  expect(after.every((x) => x === SENTINEL), "bytes after outOffset + outLength were written").toBe(true)
  return { result, window: out.subarray(pad, pad + windowLength) }
}

const gz = (data: Uint8Array, level = 6) => zlib.gzipSync(data, { level })
const text = Buffer.from("ferry moves chunked gzip datasets between machines. ".repeat(400))

// ---------------------------------------------------------------- tests

/**
 * Where ISA-L is installed (native/build.mjs installs it with apt when it can), the addon
 * must be built and right: these tests fail otherwise. Where it could not be installed,
 * ferry runs on zlib, and that is what is checked instead.
 */
const isalInstalled = existsSync("/usr/include/isa-l.h") || existsSync("/usr/include/isa-l/igzip_lib.h")

if (native === null && !isalInstalled) {
  describe("without ISA-L on this machine", () => {
    it("the gunzip workers fall back to zlib and still verify pieces", () => {
      const inflater = makeInflater(indexPath)
      expect(inflater.name).toBe("zlib")
      const slice = Buffer.alloc(1000, 7)
      const gz = zlib.gzipSync(slice)
      const r = inflater.inflate({
        geometry: { dataset: "abc", size: 1000, sliceSize: 1000, first: 0, count: 1 },
        body: gz,
        indices: Uint32Array.of(0),
        starts: Uint32Array.of(0),
        lengths: Uint32Array.of(gz.length)
      })
      expect(r._tag === "Inflated" && Buffer.from(r.slices.subarray(0, 1000)).equals(slice)).toBe(true)
    })
  })
}

if (native !== null || isalInstalled) describe("native ISA-L inflate addon", () => {
  it("is built and loads (run `node native/build.mjs`)", () => {
    expect(native, NOT_BUILT).not.toBeNull()
    expect(typeof addon().inflateInto).toBe("function")
  })

  it("computes the CRC32 zlib computes, continuing from a given one, and refuses what is not bytes", () => {
    let seed = 20261206
    const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0)
    for (const length of [1, 3, 15, 16, 17, 63, 64, 65, 255, 4096, 65_537, 1_000_003]) {
      const bytes = Buffer.alloc(length)
      for (let i = 0; i < length; i++) bytes[i] = next() & 0xff
      const from = next()
      expect(addon().crc32(bytes)).toBe(zlib.crc32(bytes))
      expect(addon().crc32(bytes, from)).toBe(zlib.crc32(bytes, from))
      // in parts, as the commit's read-back goes
      const cut = length >> 1
      expect(addon().crc32(bytes.subarray(cut), addon().crc32(bytes.subarray(0, cut)))).toBe(zlib.crc32(bytes))
    }
    expect(addon().crc32(Buffer.alloc(0), 1234)).toBe(1234)
    expect(() => addon().crc32("text" as unknown as Uint8Array)).toThrow(TypeError)
    expect(() => addon().crc32(Buffer.alloc(1), -1)).toThrow(TypeError)
    expect(() => addon().crc32(Buffer.alloc(1), 2 ** 32)).toThrow(TypeError)
  })

  /** readPieces over one piece: `out` cut to offset + room, no gap. */
  const readOne = (path: string, out: Buffer, offset: number, room: number, max: number) =>
    new Promise<number>((resolve) => {
      const sizes = new Float64Array(1)
      addon().readPieces(`${path}\0`, out.subarray(0, offset + room), offset, 0, max, sizes, () => resolve(sizes[0]!))
    })

  it("reads whole piece files off the main thread, and says what one is not: too large, in need of room, no file, not a regular file", async () => {
    const dir = mkdtempSync(join(os.tmpdir(), "ferry-readpiece-"))
    const bytes = Buffer.alloc(5000)
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) & 0xff
    writeFileSync(join(dir, "p"), bytes)
    writeFileSync(join(dir, "empty"), "")
    mkdirSync(join(dir, "folder"))
    execFileSync("mkfifo", [join(dir, "fifo")])
    const out = Buffer.alloc(8000, SENTINEL)
    // whole, at an offset, nothing written past it
    expect(await readOne(join(dir, "p"), out, 100, 6000, 10_000)).toBe(5000)
    expect(out.subarray(100, 5100).equals(bytes)).toBe(true)
    expect(out[99]).toBe(SENTINEL)
    expect(out[5100]).toBe(SENTINEL)
    // an exact fit, and one byte short of it
    expect(await readOne(join(dir, "p"), out, 0, 5000, 5000)).toBe(5000)
    expect(await readOne(join(dir, "p"), out, 0, 4999, 10_000)).toBe(-2)
    // over the limit, whatever the room
    expect(await readOne(join(dir, "p"), out, 0, 8000, 4999)).toBe(-1)
    expect(await readOne(join(dir, "p"), out, 0, 4999, 4999)).toBe(-1)
    expect(await readOne(join(dir, "empty"), out, 0, 0, 10)).toBe(0)
    expect(await readOne(join(dir, "missing"), out, 0, 10, 10)).toBe(-(1000 + os.constants.errno.ENOENT))
    // a FIFO is refused without waiting for a writer
    expect(await readOne(join(dir, "fifo"), out, 0, 10, 10)).toBe(-101)
    expect(await readOne(join(dir, "folder"), out, 0, 10, 10)).toBe(-102)

    // a batch: each piece `gap` bytes past the one before, room kept for the gaps still to come, a stop at the first refusal
    const batch = Buffer.alloc(3 * 5000 + 3 * 8 + 10, SENTINEL)
    const sizes = new Float64Array(4)
    const paths = ["p", "empty", "p", "missing"].map((n) => `${join(dir, n)}\0`).join("")
    const count = await new Promise<number>((resolve) => addon().readPieces(paths, batch, 2, 8, 10_000, sizes, resolve))
    expect(count).toBe(3)
    expect([...sizes]).toEqual([5000, 0, 5000, -(1000 + os.constants.errno.ENOENT)])
    expect(batch.subarray(10, 5010).equals(bytes)).toBe(true)
    expect(batch.subarray(2, 10).every((b) => b === SENTINEL)).toBe(true)
    expect(batch.subarray(5026, 10026).equals(bytes)).toBe(true)
    expect(batch.subarray(10026).every((b) => b === SENTINEL)).toBe(true)
    // the last piece's room is what is left after the gaps of those after it: 5000 bytes do not fit in 4999
    const tight = Buffer.alloc(8 + 5000 + 8 + 4999 + 8)
    const short = await new Promise<number>((resolve) => addon().readPieces(`${join(dir, "p")}\0${join(dir, "p")}\0${join(dir, "empty")}\0`, tight, 0, 8, 10_000, sizes, resolve))
    expect([short, sizes[0], sizes[1]]).toEqual([1, 5000, -2])
    expect(await new Promise<number>((resolve) => addon().readPieces("", out, 0, 8, 10, sizes, resolve))).toBe(0)

    expect(() => addon().readPieces(`${join(dir, "p")}\0${join(dir, "p")}\0`, out, 0, 0, 10, new Float64Array(1), () => {})).toThrow(RangeError)
    expect(() => addon().readPieces(`${join(dir, "p")}\0`, "out" as unknown as Uint8Array, 0, 0, 1, sizes, () => {})).toThrow(TypeError)
    expect(() => addon().readPieces(`${join(dir, "p")}\0`, out, 0, 0, 1, new Float32Array(1) as unknown as Float64Array, () => {})).toThrow(TypeError)
    rmSync(dir, { recursive: true, force: true })
  })

  it("inflates a correct piece exactly like zlib", () => {
    const piece = gz(text)
    const { result, window } = inflateChecked(piece, text.length + 100)
    expect(result).toEqual([OK, text.length, piece.length])
    expect(window.subarray(0, text.length).equals(zlib.gunzipSync(piece))).toBe(true)
  })

  it("inflates into a window that fits exactly, at a non-zero offset", () => {
    const piece = gz(text, 1)
    const { result, window } = inflateChecked(piece, text.length, 3)
    expect(result).toEqual([OK, text.length, piece.length])
    expect(window.equals(text)).toBe(true)
  })

  it("inflates empty members", () => {
    const empty = gz(Buffer.alloc(0))
    expect(inflateChecked(empty, 0).result).toEqual([OK, 0, empty.length])
    const two = Buffer.concat([empty, gz(text), empty])
    const { result, window } = inflateChecked(two, text.length)
    expect(result).toEqual([OK, text.length, two.length])
    expect(window.equals(text)).toBe(true)
  })

  it("inflates two (and three) concatenated members like zlib", () => {
    const a = mixed(rng(1), 5000)
    const b = mixed(rng(2), 9000)
    const c = mixed(rng(3), 1)
    const input = Buffer.concat([gz(a, 1), gz(b, 9), gz(c, 0)])
    const expected = zlib.gunzipSync(input)
    expect(expected.equals(Buffer.concat([a, b, c]))).toBe(true)
    const { result, window } = inflateChecked(input, expected.length + 7)
    expect(result).toEqual([OK, expected.length, input.length])
    expect(window.subarray(0, expected.length).equals(expected)).toBe(true)
  })

  it("accepts trailing zero bytes like zlib: status 0 with consumed < input.length", () => {
    const piece = gz(text)
    for (const tail of [Buffer.alloc(1), Buffer.alloc(512), Buffer.from([0, 0x1f, 0x8b, 0x41, 0x42])]) {
      const input = Buffer.concat([piece, tail])
      const z = gunzipVerdict(input)
      expect(z.ok).toBe(true)
      const { result, window } = inflateChecked(input, text.length)
      expect(result).toEqual([OK, text.length, piece.length])
      expect(window.equals(text)).toBe(true)
    }
  })

  it("reports trailing non-gzip garbage as 3 (not gzip), keeping the good prefix, like zlib's 'incorrect header check'", () => {
    const piece = gz(text)
    for (const tail of ["garbage", "\n\n", "\x1fX", "\x1f\x8b\x07\x00"]) {
      const input = Buffer.concat([piece, Buffer.from(tail, "latin1")])
      const z = gunzipVerdict(input)
      expect(z.ok).toBe(false)
      expect(expectedStatus(z)).toBe(NOT_GZIP)
      const { result, window } = inflateChecked(input, text.length + 10)
      expect(result).toEqual([NOT_GZIP, text.length, piece.length])
      expect(window.subarray(0, text.length).equals(text)).toBe(true)
    }
  })

  it("reports a truncated trailing member as 2 (truncated), like zlib", () => {
    const piece = gz(text)
    const input = Buffer.concat([piece, piece.subarray(0, 30)])
    expect(expectedStatus(gunzipVerdict(input))).toBe(TRUNCATED)
    expect(inflateChecked(input, 2 * text.length).result).toEqual([TRUNCATED, text.length, piece.length])
  })

  it("reports truncated input as 2 at every cut point, like zlib", () => {
    const small = gz(Buffer.from("hello, hello, hello ferry"), 9)
    const cases: Array<[Buffer, number]> = [
      [small, 1],
      [gz(mixed(rng(7), 40_000), 6), 37],
      [gz(mixed(rng(8), 20_000), 0), 53], // stored blocks
      [zlib.gzipSync(mixed(rng(9), 30_000), { strategy: zlib.constants.Z_FIXED }), 41]
    ]
    for (const [piece, step] of cases) {
      const size = zlib.gunzipSync(piece).length
      const cuts = new Set<number>()
      for (let n = 0; n < piece.length; n += step) cuts.add(n)
      for (let n = Math.max(0, piece.length - 24); n < piece.length; n++) cuts.add(n)
      for (const n of cuts) {
        const input = piece.subarray(0, n)
        expect(expectedStatus(gunzipVerdict(input)), `zlib on ${n}/${piece.length} bytes`).toBe(TRUNCATED)
        const [status, produced, consumed] = inflateChecked(input, size).result
        expect(status, `cut at ${n}/${piece.length}`).toBe(TRUNCATED)
        expect([produced, consumed]).toEqual([0, 0])
      }
    }
  })

  it("reports empty input as 2 (truncated), like zlib", () => {
    expect(expectedStatus(gunzipVerdict(Buffer.alloc(0)))).toBe(TRUNCATED)
    expect(inflateChecked(Buffer.alloc(0), 100).result).toEqual([TRUNCATED, 0, 0])
    expect(inflateChecked(new Uint8Array(0), 0).result).toEqual([TRUNCATED, 0, 0])
  })

  it("reports non-gzip input as 3, like zlib", () => {
    const piece = gz(text)
    const withFlags = (flags: number) => {
      const b = Buffer.from(piece)
      b[3] = flags
      return b
    }
    const withMethod = Buffer.from(piece)
    withMethod[2] = 7
    // A valid FHCRC header, then the same header with its CRC16 broken.
    const hdr = Buffer.from([0x1f, 0x8b, 8, 0x02, 0, 0, 0, 0, 0, 3])
    const crc16 = zlib.crc32(hdr) & 0xffff
    const hcrc = (delta: number) => {
      const c = Buffer.alloc(2)
      c.writeUInt16LE((crc16 + delta) & 0xffff)
      return Buffer.concat([hdr, c, piece.subarray(10)])
    }
    const inputs: Array<[string, Buffer]> = [
      ["plain text", Buffer.from("this is not gzip at all")],
      ["zlib stream", zlib.deflateSync(text)],
      ["raw deflate", zlib.deflateRawSync(text)],
      ["zero bytes", Buffer.alloc(100)],
      ["bad second magic byte", Buffer.concat([Buffer.from([0x1f, 0x8c]), piece.subarray(2)])],
      ["compression method 7", withMethod],
      ["reserved flag bits", withFlags(0x20)]
    ]
    inputs.push(["header CRC mismatch", hcrc(1)])
    for (const [name, input] of inputs) {
      const z = gunzipVerdict(input)
      expect(expectedStatus(z), `zlib on ${name}: ${z.ok ? "ok" : z.message}`).toBe(NOT_GZIP)
      expect(inflateChecked(input, 100_000).result, name).toEqual([NOT_GZIP, 0, 0])
    }
    // With the right header CRC it is accepted by both.
    const good = hcrc(0)
    expect(zlib.gunzipSync(good).equals(text)).toBe(true)
    const { result, window } = inflateChecked(good, text.length)
    expect(result).toEqual([OK, text.length, good.length])
    expect(window.equals(text)).toBe(true)
  })

  it("classifies short and odd inputs exactly like zlib (a lone non-gzip byte is 'truncated', as zlib needs two)", () => {
    const piece = gz(Buffer.from("short"))
    const heads = [
      piece,
      Buffer.concat([Buffer.from([0x1f, 0x8b, 7]), piece.subarray(3)]),
      Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0x40]), piece.subarray(4)]),
      Buffer.from("AB not gzip at all"),
      Buffer.from("\x1fX"),
      Buffer.from("\n")
    ]
    const inputs: Buffer[] = []
    for (const h of heads) for (let n = 0; n <= Math.min(h.length, 14); n++) inputs.push(h.subarray(0, n))
    for (const tail of ["\n", "A", "\x1f", "\x1f\x8b", "\x1f\x8b\x08", "\x1f\x8b\x07\x00", "AB", "\x00A"])
      inputs.push(Buffer.concat([piece, Buffer.from(tail, "latin1")]))
    for (const input of inputs) {
      const z = gunzipVerdict(input)
      const [status] = inflateChecked(input, 100).result
      expect(status, `${input.toString("hex")}: zlib says ${z.ok ? "ok" : z.message}`).toBe(expectedStatus(z))
    }
  })

  it("accepts headers with FEXTRA, FNAME and FCOMMENT like zlib", () => {
    const piece = gz(text)
    const extra = Buffer.from([4, 0, 0x41, 0x42, 0, 0]) // XLEN = 4: one subfield "AB" of length 0
    const b = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0x01 | 0x04 | 0x08 | 0x10, 1, 2, 3, 4, 0, 255]), // FTEXT FEXTRA FNAME FCOMMENT
      extra,
      Buffer.from("name.txt\0a comment\0", "latin1"),
      piece.subarray(10)
    ])
    expect(zlib.gunzipSync(b).equals(text)).toBe(true)
    const { result, window } = inflateChecked(b, text.length)
    expect(result).toEqual([OK, text.length, b.length])
    expect(window.equals(text)).toBe(true)
    // and truncated inside the file name
    expect(inflateChecked(b.subarray(0, 20), text.length).result).toEqual([TRUNCATED, 0, 0])
    expect(expectedStatus(gunzipVerdict(b.subarray(0, 20)))).toBe(TRUNCATED)
  })

  it("reports a corrupt CRC32 as 5, like zlib's 'incorrect data check'", () => {
    const piece = gz(text)
    for (const bit of [0, 9, 31]) {
      const bad = Buffer.from(piece)
      bad[bad.length - 8 + (bit >> 3)]! ^= 1 << (bit & 7)
      const z = gunzipVerdict(bad)
      expect(z.ok ? "ok" : z.message).toBe("incorrect data check")
      expect(inflateChecked(bad, text.length).result).toEqual([BAD_CRC, 0, 0])
    }
    // In a second member: the first one's output and length are reported.
    const bad = Buffer.concat([piece, piece])
    bad[bad.length - 5]! ^= 0x80
    expect(inflateChecked(bad, 2 * text.length).result).toEqual([BAD_CRC, text.length, piece.length])
  })

  it("reports a corrupt ISIZE as 6, like zlib's 'incorrect length check'", () => {
    const piece = gz(text)
    for (const delta of [1, -1, 0x10000, 0x1000000]) {
      const bad = Buffer.from(piece)
      bad.writeUInt32LE((bad.readUInt32LE(bad.length - 4) + delta) >>> 0, bad.length - 4)
      const z = gunzipVerdict(bad)
      expect(z.ok ? "ok" : z.message).toBe("incorrect length check")
      expect(inflateChecked(bad, text.length + 10).result).toEqual([BAD_ISIZE, 0, 0])
    }
  })

  it("reports invalid deflate data as 4 (corrupt), like zlib", () => {
    const piece = gz(text)
    const blockType3 = Buffer.from(piece)
    blockType3[10]! |= 0x06 // BTYPE = 11: reserved
    const storedLen = gz(Buffer.from("stored block"), 0)
    storedLen[13]! ^= 0xff // LEN no longer matches NLEN
    const farBack = Buffer.from([
      // fixed-Huffman block whose first symbol is a match (distance 1 with nothing before it)
      0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x03, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0
    ])
    for (const [name, input] of [
      ["reserved block type", blockType3],
      ["stored length mismatch", storedLen],
      ["distance too far back", farBack]
    ] as const) {
      const z = gunzipVerdict(input)
      expect(expectedStatus(z), `zlib on ${name}: ${z.ok ? "ok" : z.message}`).toBe(CORRUPT)
      expect(inflateChecked(input, 100_000).result[0], name).toBe(CORRUPT)
    }
  })

  it("rejects randomly corrupted pieces whenever zlib does, and agrees on the output otherwise", () => {
    const r = rng(99)
    let sameStatus = 0
    let runs = 0
    for (let i = 0; i < 300; i++) {
      const data = mixed(r, 200 + r.int(20_000))
      const bad = Buffer.from(gz(data, 1 + r.int(9)))
      const flips = 1 + r.int(3)
      for (let k = 0; k < flips; k++) bad[10 + r.int(bad.length - 18)]! ^= 1 << r.int(8)
      const z = gunzipVerdict(bad)
      const { result, window } = inflateChecked(bad, data.length + 64)
      runs++
      if (z.ok) {
        expect(result[0]).toBe(OK)
        expect(window.subarray(0, result[1]).equals(z.out)).toBe(true)
      } else {
        expect(result[0], `zlib said ${z.message}`).not.toBe(OK)
      }
      if (result[0] === expectedStatus(z)) sameStatus++
    }
    // ISA-L and zlib may name a different error for the same damage (zlib also rejects
    // incomplete Huffman codes, for instance), but most of the time they agree.
    expect(sameStatus / runs).toBeGreaterThan(0.9)
  })

  it("reports 1 (window too small) when the output does not fit, without writing outside the window", () => {
    const piece = gz(text)
    for (const w of [0, 1, 100, 4096, text.length - 1]) {
      const { result } = inflateChecked(piece, w)
      expect(result[0], `window ${w}`).toBe(OUT_FULL)
      expect([result[1], result[2]]).toEqual([0, 0])
    }
    // a stored (level 0) piece and a second member that overflows
    const stored = gz(text, 0)
    expect(inflateChecked(stored, text.length - 1).result).toEqual([OUT_FULL, 0, 0])
    const two = Buffer.concat([piece, piece])
    expect(inflateChecked(two, text.length + 5).result).toEqual([OUT_FULL, text.length, piece.length])
    expect(inflateChecked(two, text.length).result).toEqual([OUT_FULL, text.length, piece.length])
  })

  it("matches zlib.gunzipSync on hundreds of seeded random pieces (sizes 0..70 KB, mixed content, all levels)", () => {
    const r = rng(20240611)
    const strategies = [
      zlib.constants.Z_DEFAULT_STRATEGY,
      zlib.constants.Z_DEFAULT_STRATEGY,
      zlib.constants.Z_DEFAULT_STRATEGY,
      zlib.constants.Z_FILTERED,
      zlib.constants.Z_HUFFMAN_ONLY,
      zlib.constants.Z_RLE,
      zlib.constants.Z_FIXED
    ]
    for (let i = 0; i < 400; i++) {
      const size = r.next() < 0.05 ? r.int(16) : r.int(70 * 1024 + 1)
      const data = mixed(r, size)
      const level = r.int(10)
      const strategy = strategies[r.int(strategies.length)]!
      const windowBits = 9 + r.int(7)
      const members = r.next() < 0.25 ? 2 + r.int(2) : 1
      const parts: Buffer[] = []
      for (let m = 0; m < members; m++) {
        parts.push(zlib.gzipSync(m === 0 ? data : data.subarray(r.int(size + 1)), { level, strategy, windowBits }))
      }
      const piece = Buffer.concat(parts)
      const input = r.next() < 0.15 ? Buffer.concat([piece, Buffer.alloc(1 + r.int(100))]) : piece
      const expected = zlib.gunzipSync(input)
      const label = `#${i}: size ${size}, level ${level}, strategy ${strategy}, windowBits ${windowBits}, members ${members}`

      const slack = r.next() < 0.5 ? 0 : r.int(1000)
      const pad = 1 + r.int(40)
      const { result, window } = inflateChecked(input, expected.length + slack, pad)
      expect(result, label).toEqual([OK, expected.length, piece.length])
      expect(window.subarray(0, expected.length).equals(expected), label).toBe(true)
      // (window bytes past `produced` may be scratch: ISA-L's decoder stores in wide chunks)

      if (expected.length > 0) {
        const short = inflateChecked(input, expected.length - 1 - r.int(Math.min(expected.length, 100)), pad)
        expect(short.result[0], `${label}: smaller window`).toBe(OUT_FULL)
      }
    }
  })

  it("validates its arguments", () => {
    const { inflateInto } = addon()
    const piece = gz(text)
    const out = Buffer.alloc(10)
    const call = (...args: unknown[]) => () => (inflateInto as (...a: unknown[]) => unknown)(...args)
    expect(call("x", out, 0, 1)).toThrow(TypeError)
    expect(call(piece, new Uint16Array(4), 0, 1)).toThrow(TypeError)
    expect(call(piece, out, -1, 1)).toThrow(TypeError)
    expect(call(piece, out, 0.5, 1)).toThrow(TypeError)
    expect(call(piece, out, 0)).toThrow(TypeError)
    expect(call(piece, out, 5, 6)).toThrow(RangeError)
    expect(call(piece, out, 11, 0)).toThrow(RangeError)
    expect(inflateInto(piece, out, 10, 0)).toEqual([OUT_FULL, 0, 0])
    // Uint8Array views with a byteOffset are honoured for input and out.
    const big = new Uint8Array(piece.length + 10)
    big.set(piece, 7)
    const dest = new Uint8Array(text.length + 20)
    const view = new Uint8Array(dest.buffer, 11, text.length + 5)
    expect(inflateInto(big.subarray(7, 7 + piece.length), view, 2, text.length)).toEqual([OK, text.length, piece.length])
    expect(Buffer.from(dest.subarray(13, 13 + text.length)).equals(text)).toBe(true)
    expect(dest.subarray(0, 13).every((x) => x === 0)).toBe(true)
  })

  it("loads and runs in several worker_threads at once (context-aware, per-thread state)", async () => {
    addon()
    const source = `
      const { parentPort, workerData } = require("node:worker_threads")
      const zlib = require("node:zlib")
      const native = require(workerData.indexPath)
      if (native === null) throw new Error("addon did not load in a worker")
      let ok = 0
      for (let i = 0; i < 200; i++) {
        const data = Buffer.alloc(1000 + ((i * 7919 + workerData.id * 104729) % 60000), "w" + workerData.id + ":" + i + " ")
        const piece = zlib.gzipSync(data, { level: 1 + (i % 9) })
        const out = Buffer.alloc(data.length)
        const [status, produced, consumed] = native.inflateInto(piece, out, 0, out.length)
        if (status === 0 && produced === data.length && consumed === piece.length && out.equals(data)) ok++
      }
      parentPort.postMessage(ok)
    `
    const run = (id: number) =>
      new Promise<number>((resolve, reject) => {
        const w = new Worker(source, { eval: true, workerData: { indexPath, id } })
        w.once("message", (m: number) => resolve(m))
        w.once("error", reject)
        w.once("exit", (code) => (code === 0 ? undefined : reject(new Error(`worker exited with ${code}`))))
      })
    const results = await Promise.all([1, 2, 3, 4].map(run))
    expect(results).toEqual([200, 200, 200, 200])
  })
})
