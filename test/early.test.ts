/**
 * `send --early` on the in-memory layers: pieces that appear while the
 * dataset is being sent (written whole, or in place in parts), out of
 * order with the first one late, a piece the server finds broken before
 * the marker, and markers that disagree with the pieces already sent.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Schedule } from "effect"
import * as zlib from "node:zlib"
import { markerFileName, pieceFileName } from "../src/domain/Dataset.js"
import { highestHeld } from "../src/services/store/Growing.js"
import { PieceBitmap } from "../src/domain/Bitmap.js"
import { GrowingSpec, growingBound, markerDisagreement, readiness } from "../src/domain/Growing.js"
import { make, sendAll, sha256, startServer, world } from "./support/world.js"
import type { MemoryFileSystemHandle } from "./support/MemoryFileSystem.js"

const timing = { look: 15, settle: 5 }

/** The pieces the server holds of a dataset in progress, from its bitmap file (none when there is no state yet). */
const heldOnServer = (memory: MemoryFileSystemHandle, name: string): ReadonlyArray<number> => {
  const folder = `/dest/.ferry/${name}`
  const epoch = memory.files.list(folder).find((n) => n.startsWith("epoch."))
  const bits = epoch === undefined ? undefined : memory.files.read(`${folder}/${epoch}/bitmap`)
  if (bits === undefined) return []
  const bitmap = new PieceBitmap(bits.length * 8, bits)
  const held: Array<number> = []
  for (let i = 0; i < bitmap.count; i++) if (bitmap.has(i)) held.push(i)
  return held
}

/** Waits (looking every few milliseconds) until the server holds every one of these pieces. */
const untilHeld = (memory: MemoryFileSystemHandle, name: string, pieces: ReadonlyArray<number>) =>
  Effect.sync(() => heldOnServer(memory, name)).pipe(
    Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (held) => pieces.every((p) => held.includes(p)) }),
    Effect.timeout("20 seconds"),
    Effect.orDie
  )

/** Moves a piece from the staging folder into the sender's, whole (as a rename would). */
const release = (memory: MemoryFileSystemHandle, name: string, index: number) =>
  memory.files.write(`/out/${pieceFileName(name, index)}`, memory.files.read(`/stage/${pieceFileName(name, index)}`)!)

describe("send --early", () => {
  it.scopedLive("pieces that appear out of order, the first one late, are sent before the marker and rebuilt exactly", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const made = yield* make("/stage", "alpha", 40_000, 1000, 3) // 40 pieces
      const address = yield* startServer()
      // piece 0 comes late: nothing can be opened before it
      for (const i of [7, 3, 5, 1]) release(memory, "alpha", i)
      const sending = yield* Effect.fork(sendAll("/out", address, { early: true, earlyTiming: timing }))
      for (const i of [2, 0, 4, 6]) release(memory, "alpha", i)
      yield* untilHeld(memory, "alpha", [0, 1, 2, 3, 4, 5, 6, 7])
      for (const i of [20, 9, 8, 30, 11, 10, 12]) release(memory, "alpha", i)
      yield* untilHeld(memory, "alpha", [8, 9, 10, 11, 12, 20, 30])
      for (let i = 13; i < 40; i++) if (!memory.files.exists(`/out/${pieceFileName("alpha", i)}`)) release(memory, "alpha", i)
      // before the marker, the server holds every whole slice it was sent, in a data file that grows
      yield* untilHeld(memory, "alpha", Array.from({ length: 39 }, (_, i) => i))
      expect(memory.files.list("/dest/.ferry/alpha").some((n) => n.startsWith("epoch."))).toBe(true)
      memory.files.write(`/out/${markerFileName("alpha")}`, "40000\n")
      const r = yield* Fiber.join(sending)
      expect(r.failed).toEqual([])
      expect(r.committed.map((c) => [c.dataset, c.pieces, c.sent])).toEqual([["alpha", 40, 40]])
      expect(sha256(memory.files.read("/dest/alpha"))).toBe(made.sha256)
      expect(memory.files.readText("/dest/alpha.done")).toBe("40000\n")
      expect(memory.files.exists("/dest/.ferry/alpha")).toBe(false)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a piece written in place in parts is sent only once it is whole", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const made = yield* make("/stage", "beta", 10_500, 1000, 4) // 11 pieces, the last of 500 bytes
      const address = yield* startServer()
      for (const i of [0, 1]) release(memory, "beta", i)
      const whole = memory.files.read(`/stage/${pieceFileName("beta", 2)}`)!
      // the first part of piece 2: a gzip header, no trailer yet
      memory.files.write(`/out/${pieceFileName("beta", 2)}`, whole.subarray(0, Math.floor(whole.length / 2)))
      const sending = yield* Effect.fork(sendAll("/out", address, { early: true, earlyTiming: timing }))
      release(memory, "beta", 3)
      yield* untilHeld(memory, "beta", [0, 1, 3])
      expect(heldOnServer(memory, "beta")).not.toContain(2)
      memory.files.write(`/out/${pieceFileName("beta", 2)}`, whole)
      for (let i = 4; i < 11; i++) release(memory, "beta", i)
      yield* untilHeld(memory, "beta", [2, 4, 5, 6, 7, 8, 9])
      // the last piece, shorter than a slice, waits for the marker
      expect(heldOnServer(memory, "beta")).not.toContain(10)
      memory.files.write(`/out/${markerFileName("beta")}`, "10500\n")
      const r = yield* Fiber.join(sending)
      expect(r.failed).toEqual([])
      expect(r.committed.map((c) => [c.dataset, c.sent])).toEqual([["beta", 11]])
      expect(sha256(memory.files.read("/dest/beta"))).toBe(made.sha256)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a piece the server finds broken before the marker is tried again once it changes", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      const made = yield* make("/stage", "gamma", 8000, 1000, 5)
      const address = yield* startServer()
      for (const i of [0, 1, 2]) release(memory, "gamma", i)
      // a piece that looks finished (header, trailer with ISIZE = S) but is not the gzip of a slice
      const good = memory.files.read(`/stage/${pieceFileName("gamma", 3)}`)!
      const broken = Buffer.from(good)
      for (let k = 12; k < broken.length - 8; k++) broken[k] = 0xff
      memory.files.write(`/out/${pieceFileName("gamma", 3)}`, broken)
      release(memory, "gamma", 4)
      const sending = yield* Effect.fork(sendAll("/out", address, { early: true, earlyTiming: timing }))
      yield* untilHeld(memory, "gamma", [0, 1, 2, 4])
      expect(heldOnServer(memory, "gamma")).not.toContain(3)
      memory.files.write(`/out/${pieceFileName("gamma", 3)}`, good)
      for (const i of [5, 6, 7]) release(memory, "gamma", i)
      yield* untilHeld(memory, "gamma", [3, 5, 6, 7])
      memory.files.write(`/out/${markerFileName("gamma")}`, "8000\n")
      const r = yield* Fiber.join(sending)
      expect(r.failed).toEqual([])
      expect(sha256(memory.files.read("/dest/gamma"))).toBe(made.sha256)
    }).pipe(Effect.provide(layer))
  })

  it.scopedLive("a marker that disagrees with the pieces already sent fails the dataset by name, with no .done", () => {
    const { layer, memory } = world()
    return Effect.gen(function*() {
      yield* make("/stage", "delta", 10_000, 1000, 6) // 10 whole slices
      yield* make("/stage", "omega", 10_000, 1000, 7)
      const address = yield* startServer()
      for (let i = 0; i < 10; i++) {
        release(memory, "delta", i)
        release(memory, "omega", i)
      }
      const sending = yield* Effect.fork(sendAll("/out", address, { early: true, earlyTiming: timing }))
      yield* untilHeld(memory, "delta", Array.from({ length: 10 }, (_, i) => i))
      yield* untilHeld(memory, "omega", Array.from({ length: 10 }, (_, i) => i))
      // delta: its last piece cannot be a whole slice; omega: fewer pieces than were sent (5..9 gone)
      memory.files.write(`/out/${markerFileName("delta")}`, "9500\n")
      for (let i = 5; i < 10; i++) memory.files.remove(`/out/${pieceFileName("omega", i)}`)
      memory.files.write(`/out/${markerFileName("omega")}`, "5000\n")
      const r = yield* Fiber.join(sending)
      expect(r.committed).toEqual([])
      expect(r.failed.map((f) => f.error.message).sort()).toEqual([
        "dataset delta: server refused it (BadManifest): delta.done says 9500 bytes, so the last piece delta-0000009.gz must hold 500 bytes, but it was sent and verified with 1000",
        "dataset omega: server refused it (BadManifest): omega.done says 5000 bytes, which with slices of 1000 bytes makes 5 pieces (omega-0000000.gz to omega-0000004.gz), but omega-0000009.gz was sent and verified"
      ])
      expect(memory.files.exists("/dest/delta.done")).toBe(false)
      expect(memory.files.exists("/dest/omega.done")).toBe(false)
      // the state no sender can vouch for is discarded: sending again starts afresh
      expect(memory.files.list("/dest/.ferry/delta").filter((n) => n.startsWith("epoch."))).toEqual([])
      expect(memory.files.list("/dest/.ferry/omega").filter((n) => n.startsWith("epoch."))).toEqual([])
    }).pipe(Effect.provide(layer))
  })

  it("the readiness rule and what a marker must agree with", () => {
    const look = (size: number, mtimeMs: number, at: number) => ({ size, mtimeMs, at })
    // unseen, grown, touched, or not still long enough: not yet; still, whole slice: ready; smaller: waits for the marker
    expect(readiness(undefined, look(100, 1, 0), 200, 1000, 1000, true)).toBe("unsettled")
    expect(readiness(look(90, 1, 0), look(100, 1, 300), 200, 1000, 1000, true)).toBe("unsettled")
    expect(readiness(look(100, 1, 0), look(100, 2, 300), 200, 1000, 1000, true)).toBe("unsettled")
    expect(readiness(look(100, 1, 0), look(100, 1, 100), 200, 1000, 1000, true)).toBe("unsettled")
    expect(readiness(look(100, 1, 0), look(100, 1, 300), 200, 1000, 1000, true)).toBe("ready")
    expect(readiness(look(100, 1, 0), look(100, 1, 300), 200, 400, 1000, true)).toBe("short")
    expect(readiness(look(100, 1, 0), look(100, 1, 300), 200, 1000, 1000, false)).toBe("not-gzip")
    const spec = new GrowingSpec({ dataset: "abc", sliceSize: 1000, first: 0, firstSliceCrc: 0 })
    expect(growingBound(spec, 10_000_000, 2 ** 44)).toBe(10_000_000)
    expect(growingBound(spec, 10_000_000, 5_500)).toBe(5)
    expect(markerDisagreement(spec, 100, 10_000, 9, true)).toBeUndefined()
    expect(markerDisagreement(spec, 100, 9_500, 8, false)).toBeUndefined()
    expect(markerDisagreement(spec, 100, 9_500, 9, true)).toMatch(/last piece abc-0000009.gz must hold 500 bytes/)
    expect(markerDisagreement(spec, 100, 5_000, 9, false)).toMatch(/makes 5 pieces .* but abc-0000009.gz was sent/)
    expect(markerDisagreement(spec, 100, 200_000, 9, false)).toMatch(/needs 200 pieces, over this server's limit of 100/)
    expect(markerDisagreement(spec, 100, 0, 0, false)).toMatch(/says 0 bytes/)
  })

  it("highestHeld finds the last bit", () => {
    const b = new PieceBitmap(20)
    expect(highestHeld(b)).toBe(-1)
    b.set(0)
    b.set(13)
    expect(highestHeld(b)).toBe(13)
    expect(zlib.crc32(Buffer.alloc(0))).toBe(0)
  })
})
