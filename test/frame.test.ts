import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import fc from "fast-check"
import { Manifest } from "../src/domain/Dataset.js"
import {
  decodeAck,
  decodePieces,
  encodeAck,
  encodePieces,
  FrameDecoder,
  FrameKind,
  isFrameProblem,
  type RawFrame
} from "../src/domain/Frame.js"
import { DatasetFailureCode, RefusalCode } from "../src/domain/Codes.js"
import { Close, Committed, type ControlMessage, decodeControl, encodeControl, Failed, Hello, Hi, Open, Opened, Refused, Seal, Welcome } from "../src/domain/Protocol.js"

fc.configureGlobal({ seed: 424242, numRuns: 150 })

const crc32 = fc.stringMatching(/^[0-9a-f]{8}$/)
const controlMessages: fc.Arbitrary<ControlMessage> = fc.oneof(
  fc.record({ protocol: fc.nat(9), client: fc.string({ maxLength: 50 }) }).map((r) => new Hi(r)),
  fc.record({ protocol: fc.nat(9), server: fc.string(), nonce: fc.stringMatching(/^[0-9a-f]{0,16}$/), auth: fc.constantFrom("none" as const, "hmac-sha256" as const), idle: fc.nat(3600), maxFrame: fc.nat() }).map((r) => new Welcome(r)),
  fc.record({ proof: fc.option(fc.stringMatching(/^[0-9a-f]{0,64}$/), { nil: null }) }).map((r) => new Hello(r)),
  fc.record({ handle: fc.nat(), dataset: fc.stringMatching(/^[a-z]{1,64}$/), size: fc.nat(), sliceSize: fc.nat(), first: fc.nat(9_999_999), count: fc.nat(10_000_000), firstSliceCrc: fc.nat() })
    .map(({ handle, ...m }) => new Open({ handle, manifest: new Manifest(m) })),
  fc.record({ handle: fc.nat(), held: fc.nat(), bitmap: fc.option(fc.base64String(), { nil: null }), committed: fc.option(crc32, { nil: null }) }).map((r) => new Opened(r)),
  fc.record({ handle: fc.nat(), crc32 }).map((r) => new Seal(r)),
  fc.record({ handle: fc.nat(), dataset: fc.stringMatching(/^[a-z]{1,8}$/), size: fc.nat(), crc32 }).map((r) => new Committed(r)),
  fc.record({ handle: fc.nat(), dataset: fc.string(), code: fc.constantFrom(...DatasetFailureCode.literals), message: fc.string() }).map((r) => new Failed(r)),
  fc.record({ handle: fc.nat() }).map((r) => new Close(r)),
  fc.record({ code: fc.constantFrom(...RefusalCode.literals), message: fc.string() }).map((r) => new Refused(r))
)

const pieceBatches = fc.record({
  handle: fc.nat(),
  seq: fc.nat(),
  pieces: fc.array(fc.record({ index: fc.nat(9_999_999), bytes: fc.uint8Array({ maxLength: 200 }) }), { maxLength: 20 })
})

/** Frames as bytes, and cut points that split the concatenation anywhere. */
const streams = fc
  .array(fc.oneof(controlMessages.map(encodeControl), pieceBatches.map((b) => encodePieces(b.handle, b.seq, b.pieces)), fc.tuple(fc.nat(), fc.nat()).map(([h, s]) => encodeAck(h, s))), { maxLength: 12 })
  .chain((frames) => {
    const total = frames.reduce((n, f) => n + f.length, 0)
    return fc.tuple(fc.constant(frames), fc.uniqueArray(fc.integer({ min: 0, max: total }), { maxLength: 30 }))
  })

const decodeAll = (bytes: Buffer, cuts: Array<number>): Array<RawFrame> => {
  const decoder = new FrameDecoder()
  const points = [0, ...[...cuts].sort((a, b) => a - b), bytes.length]
  const out: Array<RawFrame> = []
  for (let k = 1; k < points.length; k++) {
    const r = decoder.push(bytes.subarray(points[k - 1], points[k]))
    if (isFrameProblem(r)) throw new Error(r._tag)
    out.push(...r)
  }
  expect(decoder.finish()).toBeUndefined()
  return out
}

describe("frames", () => {
  it("control messages round-trip through encode and decode", () => {
    fc.assert(
      fc.property(controlMessages, (message) => {
        const frame = encodeControl(message)
        const [raw] = decodeAll(frame, [])
        expect(raw!.kind).toBe(FrameKind.Control)
        const back = decodeControl(raw!.body)
        expect(Either.isRight(back)).toBe(true)
        expect(Either.getOrThrow(back)).toEqual(message)
      })
    )
  })

  it("piece batches and acks round-trip", () => {
    fc.assert(
      fc.property(pieceBatches, ({ handle, pieces, seq }) => {
        const [raw] = decodeAll(encodePieces(handle, seq, pieces), [])
        const batch = decodePieces(raw!.body)
        if ("problem" in batch) throw new Error(batch.problem)
        expect([batch.handle, batch.seq]).toEqual([handle, seq])
        expect(Array.from(batch.indices)).toEqual(pieces.map((p) => p.index))
        pieces.forEach((p, k) => {
          expect(Buffer.from(raw!.body.subarray(batch.starts[k], batch.starts[k]! + batch.lengths[k]!))).toEqual(Buffer.from(p.bytes))
        })
        const [ack] = decodeAll(encodeAck(handle, seq), [])
        expect(decodeAck(ack!.body)).toEqual({ handle, seq })
      })
    )
  })

  it("the decoder gives the same frames however the bytes are split", () => {
    fc.assert(
      fc.property(streams, ([frames, cuts]) => {
        const bytes = Buffer.concat(frames)
        const whole = decodeAll(bytes, [])
        const split = decodeAll(bytes, cuts)
        expect(split.length).toBe(frames.length)
        expect(split.map((f) => [f.kind, Buffer.from(f.body)])).toEqual(whole.map((f) => [f.kind, Buffer.from(f.body)]))
      })
    )
  })

  it("random and mutated bytes give frames or a typed problem, never a throw or a huge allocation", () => {
    const mutated = streams.chain(([frames]) =>
      fc.tuple(fc.constant(Buffer.concat(frames)), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }))
    ).map(([bytes, flips]) => {
      const copy = Buffer.from(bytes)
      for (const [at, v] of flips) if (copy.length > 0) copy[at % copy.length] = v
      return copy
    })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 2000 }).map((u) => Buffer.from(u)), mutated), fc.integer({ min: 1, max: 64 }), (bytes, step) => {
        const decoder = new FrameDecoder(4096)
        for (let at = 0; at < bytes.length; at += step) {
          const r = decoder.push(bytes.subarray(at, at + step))
          if (isFrameProblem(r)) {
            expect(["FrameTooLarge", "UnknownFrameKind", "EmptyFrame"]).toContain(r._tag)
            return
          }
          for (const f of r) {
            expect(f.body.length).toBeLessThan(4096)
            if (f.kind === FrameKind.Control) decodeControl(f.body) // must not throw
            if (f.kind === FrameKind.Pieces) decodePieces(f.body)
          }
          expect(decoder.pending).toBeLessThanOrEqual(4096 + 5)
        }
      })
    )
  })

  it("names each framing problem", () => {
    const tooBig = Buffer.from([0x10, 0, 0, 0, 1])
    expect(new FrameDecoder(1024).push(tooBig)).toMatchObject({ _tag: "FrameTooLarge", length: 0x10000000, max: 1024 })
    expect(new FrameDecoder().push(Buffer.from([0, 0, 0, 2, 9, 0]))).toMatchObject({ _tag: "UnknownFrameKind", kind: 9 })
    expect(new FrameDecoder().push(Buffer.from([0, 0, 0, 0, 1]))).toMatchObject({ _tag: "EmptyFrame" })
    const half = new FrameDecoder()
    expect(half.push(encodeAck(1, 2).subarray(0, 7))).toEqual([])
    expect(half.finish()).toMatchObject({ _tag: "TruncatedFrame", missing: 6 })
  })

  it("rejects piece tables that do not add up", () => {
    const good = encodePieces(1, 2, [{ index: 5, bytes: new Uint8Array([1, 2, 3]) }]).subarray(5)
    expect(decodePieces(good.subarray(0, good.length - 1))).toHaveProperty("problem")
    expect(decodePieces(Buffer.concat([good, Buffer.from([0])]))).toHaveProperty("problem")
    expect(decodePieces(good.subarray(0, 8))).toHaveProperty("problem")
    const lying = Buffer.from(good)
    lying.writeUInt32BE(1_000_000, 8)
    expect(decodePieces(lying)).toHaveProperty("problem")
  })

  it("control frames that are not valid messages are refused with a reason", () => {
    const bad = decodeControl(Buffer.from(JSON.stringify({ _tag: "Open", handle: 1, manifest: { dataset: "../etc", size: 1, sliceSize: 1, first: 0, count: 1 } })))
    expect(Either.isLeft(bad)).toBe(true)
    expect(Either.isLeft(decodeControl(Buffer.from("not json")))).toBe(true)
    const long = decodeControl(Buffer.from(JSON.stringify({ _tag: "Open", handle: 1, manifest: { dataset: "a".repeat(65), size: 1, sliceSize: 1, first: 0, count: 1 } })))
    expect(Either.isLeft(long)).toBe(true)
  })
})
