/**
 * The Node private fields ferry relies on, one adapter each (src/services/node/): these tests
 * fail when a Node release changes them, so that a fallback is never taken silently.
 */
import { describe, expect, it } from "vitest"
import * as zlib from "node:zlib"
import { openZlibHandle } from "../src/services/node/ZlibHandle.js"

describe("zlib's native handle behind a Gunzip stream (node/ZlibHandle.ts)", () => {
  it("is there, and inflates a gzip member into a buffer we give, telling bytes produced and consumed", () => {
    const engine = openZlibHandle()
    expect(engine, `Node ${process.version} changed zlib's _handle/_writeState: ferry would fall back to gunzipSync`).toBeDefined()
    const slice = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff))
    const piece = zlib.gzipSync(slice)
    const out = Buffer.alloc(6000, 0xee)
    let error: string | undefined
    engine!.handle.onerror = (message) => (error = message)
    engine!.handle.writeSync(zlib.constants.Z_FINISH, piece, 0, piece.length, out, 100, 5001)
    expect(error).toBeUndefined()
    expect(5001 - engine!.writeState[0]!).toBe(5000)
    expect(piece.length - engine!.writeState[1]!).toBe(piece.length)
    expect(out.subarray(100, 5100).equals(slice)).toBe(true)
    expect(out[99]).toBe(0xee)
    // reset: the same engine takes the next piece
    engine!.handle.reset()
    const next = zlib.gzipSync(Buffer.from("hello"))
    engine!.handle.writeSync(zlib.constants.Z_FINISH, next, 0, next.length, out, 0, 6)
    expect(out.subarray(0, 5).toString()).toBe("hello")
  })
})
