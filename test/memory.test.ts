/**
 * The server's memory is bounded across connections (issue 18, point 6): a budget for every
 * connection's frames (--memory), small control messages, a limit on handles per connection.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { FrameKind } from "../src/domain/Frame.js"
import { ferry, sha256File, shaOf, startServer, tempDirs } from "./support/cli.js"
import { openMessage, rawHandshake } from "./support/raw.js"
import { join } from "node:path"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

let sample: { dir: string; sha: string }
beforeAll(async () => {
  const dir = dirs.make("sample")
  const made = await ferry(["fake", "--path", dir, "--name", "safe", "--size", "300000", "--slice", "4096", "--seed", "7"])
  sample = { dir, sha: shaOf(made.stdout, "safe")! }
})

const MiB = 1024 * 1024

/** The header of a pieces frame of `length` bytes (kind included), and `sent` bytes of its body. */
const partialPieces = (length: number, sent: number) => {
  const frame = Buffer.alloc(5 + sent)
  frame.writeUInt32BE(length, 0)
  frame[4] = FrameKind.Pieces
  return frame
}

describe("server memory", () => {
  it("a transfer many times larger than --memory goes through without a stall: every frame's charge is given back", async () => {
    // the bodies go to the gunzip threads, where the main thread's copy is detached: what is given back must
    // be what was charged as the frame arrived (a leak here stalled the link once --memory was used up)
    const src = dirs.make("src")
    const made = await ferry(["fake", "--path", src, "--name", "big", "--size", "48MiB", "--slice", "16KiB", "--seed", "5"])
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--memory", "6MiB", "--max-frame", "2MiB", "--connection-memory", "4MiB", "--idle-timeout", "30"])
    try {
      // one connection: a busy machine can make loopback look far, and four connections' 2 MiB batches
      // at once are more than this --memory holds (a MemoryFull drop, by design, not the leak looked for)
      const r = await ferry(["send", "--path", src, "--address", server.address, "--connections", "1", "--quiet", "--retries", "0", "--debug"], { timeout: 120_000 })
      expect(r.stderr).not.toMatch(/reconnecting|refused|nothing received/)
      expect(r.code, r.stderr.slice(-2000)).toBe(0)
      expect(sha256File(join(dest, "big"))).toBe(shaOf(made.stdout, "big"))
    } finally {
      await server.stop()
    }
  })

  it("connections holding large unfinished frames cannot fill a small --memory: another client still commits", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--memory", "8MiB", "--max-frame", "4MiB", "--connection-memory", "4MiB"])
    try {
      const hogs = await Promise.all(Array.from({ length: 6 }, () => rawHandshake(server.address)))
      // each starts a 4 MiB frame and sends all of it but the last byte, then waits
      for (const hog of hogs) hog.write(partialPieces(4 * MiB, 4 * MiB - 2))
      const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--quiet", "--retries", "3"])
      expect(r.code).toBe(0)
      expect(sha256File(join(dest, "safe"))).toBe(sample.sha)
      // the room was made by dropping hogs, each told why
      const reasons = await Promise.all(hogs.map((h) => h.next(5_000).then((m) => m, () => undefined)))
      expect(reasons.some((m) => m?._tag === "Refused" && m.code === "MemoryFull")).toBe(true)
      for (const h of hogs) h.socket.destroy()
    } finally {
      await server.stop()
    }
  })

  it("a control message over 1 MiB is refused at once, with its reason, and the connection dropped", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const c = await rawHandshake(server.address)
      // only the header: the server must not wait for (nor allocate) the 48 MiB body
      const header = Buffer.alloc(5)
      header.writeUInt32BE(48 * MiB + 1, 0)
      header[4] = FrameKind.Control
      c.write(header)
      const m = await c.next()
      expect(m._tag).toBe("Refused")
      expect(m._tag === "Refused" && m.code).toBe("FrameTooLarge")
      expect(m._tag === "Refused" && m.message).toMatch(/^control message of 50331649 bytes is over the limit of 1048576 \(control messages carry no piece data\)$/)
      await c.closed
      await server.waitFor(/dropped: control message of 50331649 bytes/)
    } finally {
      await server.stop()
    }
  })

  it("past --max-handles datasets open on one connection, it is refused as TooManyHandles", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-handles", "2"])
    try {
      const c = await rawHandshake(server.address)
      for (const handle of [1, 2]) {
        c.write(openMessage(handle, { dataset: ["da", "db"][handle - 1]!, size: 8192, sliceSize: 4096, first: 0, count: 2 }))
        expect((await c.next())._tag).toBe("Opened")
      }
      c.write(openMessage(3, { dataset: "dc", size: 8192, sliceSize: 4096, first: 0, count: 2 }))
      const m = await c.next()
      expect(m._tag === "Refused" && m.code).toBe("TooManyHandles")
      expect(m._tag === "Refused" && m.message).toMatch(/2 datasets are open on this connection/)
      await c.closed
    } finally {
      await server.stop()
    }
  })

  it("--memory smaller than one frame is a usage error", async () => {
    const r = await ferry(["serve", "--port", "0", "--dest", dirs.make("dest"), "--max-frame", "2MiB", "--memory", "1MiB"])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^ferry: --memory \(1048576\) must hold one frame of --max-frame \(2097152\)$/m)
  })
})
