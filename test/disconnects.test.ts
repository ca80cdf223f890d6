/**
 * Ordinary disconnects under --debug, through the built `bin/ferry`: a client
 * killed mid-transfer, a server that goes away under its sender. Each side
 * says what happened in its own words, and never with Effect's "Fiber
 * terminated with an unhandled error" (a failure left to the runtime).
 */
import { afterAll, describe, expect, it } from "vitest"
import { ferry, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { openMessage, rawHandshake } from "./support/raw.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const sample = async () => {
  const src = dirs.make("src")
  expect((await ferry(["fake", "--path", src, "--size", "8MiB", "--slice", "16KiB"])).code).toBe(0)
  return src
}

describe("--debug and a connection that goes away", () => {
  it("a client killed in the middle of a transfer: the server says so, carries on, and has no unhandled error", async () => {
    const src = await sample()
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--debug"])
    try {
      const client = spawnFerry(["send", "--path", src, "--address", server.address, "--connections", "2", "--bwlimit", "2MiB/s", "--quiet"])
      await server.waitFor(/opened abc as handle \d+/)
      await sleep(300)
      client.child.kill("SIGKILL")
      await client.exited
      // a clean end (FIN) or a reset (RST), whichever the kernel sent for the killed process
      await server.waitFor(/127\.0\.0\.1:\d+: (disconnected|127\.0\.0\.1:\d+: connection (closed|reset by peer)) peer=/)
      await sleep(500)
      expect(server.output().stderr).not.toMatch(/unhandled/i)
      // the server carries on: the same dataset goes through
      const again = await ferry(["send", "--path", src, "--address", server.address])
      expect(again.code).toBe(0)
      expect(again.stdout).toMatch(/^abc: committed 8388608 bytes in 512 pieces/m)
      expect(server.output().stderr).not.toMatch(/unhandled/i)
    } finally {
      await server.stop()
    }
  })

  it.each([
    ["reset (RST)", (socket: import("node:net").Socket) => socket.resetAndDestroy(), /127\.0\.0\.1:\d+: connection reset by peer peer=/],
    ["closed (FIN)", (socket: import("node:net").Socket) => socket.end(), /WARN +127\.0\.0\.1:\d+: dropped: connection closed in the middle of a frame \(\d+ bytes missing\)/]
  ] as const)("a connection %s in the middle of a frame: one line from the server, no unhandled error", async (_, cut, line) => {
    const server = await startServer(dirs.make("dest"), ["--debug"])
    try {
      const c = await rawHandshake(server.address)
      c.write(openMessage(1, { dataset: "cut", size: 1_000_000, sliceSize: 10_000, first: 0, count: 100 }))
      expect((await c.next())._tag).toBe("Opened")
      // the start of a pieces frame of 100,000 bytes, and no more
      const start = Buffer.alloc(5 + 1000)
      start.writeUInt32BE(100_001, 0)
      start[4] = 2
      c.write(start)
      await sleep(200)
      cut(c.socket)
      await server.waitFor(line)
      await sleep(300)
      expect(server.output().stderr).not.toMatch(/unhandled/i)
    } finally {
      await server.stop()
    }
  })

  it.each(["SIGKILL", "SIGTERM"] as const)("a sender whose server goes away (%s) says so and gives up, with no unhandled error", async (signal) => {
    const src = await sample()
    const server = await startServer(dirs.make("dest"))
    const sender = spawnFerry(["send", "--debug", "--path", src, "--address", server.address, "--bwlimit", "2MiB/s", "--retries", "1", "--retry-for", "2 seconds", "--quiet"])
    await sender.waitFor(/DEBUG +connected to 127\.0\.0\.1:\d+/)
    await sleep(300)
    server.child.kill(signal)
    await server.exited
    expect(await sender.exited).toBe(3)
    const { stderr } = sender.output()
    expect(stderr).toMatch(/WARN +127\.0\.0\.1:\d+: .*; reconnecting/)
    // one line for the failure, the last, with the exit code as a field
    expect(stderr).toMatch(/ERROR +127\.0\.0\.1:\d+: connection refused .*exit=3\n$/)
    expect(stderr).not.toMatch(/unhandled/i)
  })
})
