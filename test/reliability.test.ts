/**
 * Crashes and cuts: the server killed mid-transfer and restarted, the client
 * killed and run again, connections cut at random points by a proxy, the same
 * dataset from two clients. Whatever happens, a `.done` never stands beside
 * an incomplete or wrong file, and the transfer finishes on its own.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs"
import * as net from "node:net"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { prng } from "../src/domain/Sample.js"
import { ferry, sha256File, shaOf, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { freePort, popcount } from "./support/datasets.js"
import { openMessage, rawHandshake } from "./support/raw.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** Pieces recorded so far in the server's state for `name` (0 when there is no state yet): its current epoch's bitmap. */
const held = (dest: string, name: string) => {
  try {
    const epoch = readdirSync(join(dest, ".ferry", name)).filter((n) => /^epoch\.\d+$/.test(n)).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6))).at(-1)
    return epoch === undefined ? 0 : popcount(readFileSync(join(dest, ".ferry", name, epoch, "bitmap")))
  } catch {
    return 0
  }
}

const until = async (condition: () => boolean, timeoutMs = 30_000) => {
  const started = Date.now()
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error("condition not met in time")
    await new Promise((r) => setTimeout(r, 5))
  }
}

const sentOf = (stdout: string, name: string) => Number(new RegExp(`^${name}: committed \\d+ bytes in \\d+ pieces \\((\\d+) sent\\)`, "m").exec(stdout)?.[1])

/** Every .done in dest stands beside a complete, correct file. */
const checkMarkers = (dest: string, expected: Record<string, string>) => {
  for (const name of readdirSync(dest)) {
    if (!name.endsWith(".done")) continue
    const dataset = name.slice(0, -5)
    expect(sha256File(join(dest, dataset)), `${dataset} has a .done`).toBe(expected[dataset])
  }
}

let big: { dir: string; sha: string; pieces: number }
beforeAll(async () => {
  const dir = dirs.make("big")
  const made = await ferry(["fake", "--path", dir, "--name", "big", "--size", "160MiB", "--slice", "8KiB", "--seed", "3"])
  big = { dir, sha: shaOf(made.stdout, "big")!, pieces: 20480 }
})

describe("resume", () => {
  it("the server is killed (SIGKILL) at half way and restarted: the client finishes by itself, sending little again", async () => {
    const dest = dirs.make("dest")
    const port = await freePort()
    let server = await startServer(dest, ["--port", String(port)])
    const client = spawnFerry(["send", "--path", big.dir, "--address", `127.0.0.1:${port}`, "--retries", "10", "--quiet"])
    await until(() => held(dest, "big") >= big.pieces / 2)
    server.child.kill("SIGKILL")
    await server.exited
    const atKill = held(dest, "big")
    expect(atKill).toBeLessThan(big.pieces)
    expect(existsSync(join(dest, "big.done"))).toBe(false)
    server = await startServer(dest, ["--port", String(port)])
    try {
      expect(await client.exited).toBe(0)
      expect(sha256File(join(dest, "big"))).toBe(big.sha)
      expect(readFileSync(join(dest, "big.done"), "utf8")).toBe(`${160 * 1024 * 1024}\n`)
      const sent = sentOf(client.output().stdout, "big")
      expect(sent).toBeLessThanOrEqual(big.pieces - atKill)
      expect(sent).toBeLessThanOrEqual(0.6 * big.pieces)
      expect(client.output().stderr).toMatch(/; reconnecting$/m)
    } finally {
      await server.stop()
    }
  })

  it("the client is killed and run again: only what is missing is sent", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const first = spawnFerry(["send", "--path", big.dir, "--address", server.address, "--quiet"])
      await until(() => held(dest, "big") >= big.pieces / 2)
      first.child.kill("SIGKILL")
      await first.exited
      const again = await ferry(["send", "--path", big.dir, "--address", server.address, "--quiet"])
      expect(again.code).toBe(0)
      expect(sentOf(again.stdout, "big")).toBeLessThanOrEqual(0.6 * big.pieces)
      expect(sha256File(join(dest, "big"))).toBe(big.sha)
    } finally {
      await server.stop()
    }
  })
})

describe("crash anywhere", () => {
  let folder: string
  const expected: Record<string, string> = {}
  beforeAll(async () => {
    folder = dirs.make("many")
    for (const [name, size, slice] of [["aa", "6MiB", "4KiB"], ["bb", "100000", "1000"], ["cc", "12MiB", "16KiB"], ["dd", "1", "1"]] as const) {
      const made = await ferry(["fake", "--path", folder, "--name", name, "--size", size, "--slice", slice, "--seed", String(name.charCodeAt(0))])
      expected[name] = shaOf(made.stdout, name)!
    }
  })

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`server killed at a random moment (seed ${seed}): no .done without its complete file, and the transfer completes`, async () => {
      const next = prng(seed)
      const dest = dirs.make("dest")
      const port = await freePort()
      let server = await startServer(dest, ["--port", String(port)])
      const client = spawnFerry(["send", "--path", folder, "--address", `127.0.0.1:${port}`, "--retries", "10", "--quiet"])
      // once the transfer has begun, a seeded moment within it
      await until(() => existsSync(join(dest, ".ferry")) && readdirSync(join(dest, ".ferry")).length > 0)
      await new Promise((r) => setTimeout(r, next() % 300))
      server.child.kill("SIGKILL")
      await server.exited
      checkMarkers(dest, expected)
      server = await startServer(dest, ["--port", String(port)])
      try {
        expect(await client.exited).toBe(0)
        checkMarkers(dest, expected)
        expect(readdirSync(dest).filter((n) => n.endsWith(".done")).sort()).toEqual(["aa.done", "bb.done", "cc.done", "dd.done"])
      } finally {
        await server.stop()
      }
    })
  }
})

/** Forwards to `target`, cutting the first `cuts` connections after a seeded number of bytes. */
const cuttingProxy = async (target: number, seed: number, cuts: number) => {
  const next = prng(seed)
  let cut = 0
  const proxy = net.createServer((inbound) => {
    const outbound = net.connect(target, "127.0.0.1")
    const limit = cut < cuts ? 1 + (next() % 3_000_000) : Infinity
    cut++
    let passed = 0
    inbound.on("data", (chunk) => {
      passed += chunk.length
      if (passed > limit) {
        inbound.destroy()
        outbound.destroy()
        return
      }
      outbound.write(chunk)
    })
    outbound.on("data", (chunk) => inbound.write(chunk))
    inbound.on("error", () => outbound.destroy())
    outbound.on("error", () => inbound.destroy())
    inbound.on("close", () => outbound.destroy())
    outbound.on("close", () => inbound.destroy())
  })
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()))
  return { port: (proxy.address() as net.AddressInfo).port, close: () => proxy.close(), cuts: () => cut }
}

describe("cut connections", () => {
  for (const seed of [11, 12, 13]) {
    it(`connections cut at random points (seed ${seed}) are re-made and the file is exact`, async () => {
      const dest = dirs.make("dest")
      const server = await startServer(dest)
      const proxy = await cuttingProxy(Number(server.address.split(":")[1]), seed, 6)
      try {
        const r = await ferry(["send", "--path", big.dir, "--address", `127.0.0.1:${proxy.port}`, "--retries", "10", "--quiet"])
        expect(r.code).toBe(0)
        expect(proxy.cuts()).toBeGreaterThan(2)
        expect(sha256File(join(dest, "big"))).toBe(big.sha)
      } finally {
        proxy.close()
        await server.stop()
      }
    })
  }

  it("with no retries left, the failure is one clear line", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    const proxy = await cuttingProxy(Number(server.address.split(":")[1]), 5, 1000)
    try {
      const r = await ferry(["send", "--path", big.dir, "--address", `127.0.0.1:${proxy.port}`, "--retries", "2", "--quiet"])
      expect(r.code).toBe(3)
      expect(r.stderr).toMatch(/^ferry: 127\.0\.0\.1:\d+: .*\(gave up after 2 retries or 5m\)$/m)
      expect(existsSync(join(dest, "big.done"))).toBe(false)
    } finally {
      proxy.close()
      await server.stop()
    }
  })
})

describe("the same dataset from two clients", () => {
  it("identical manifests share the work and the result is exact", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const [a, b] = await Promise.all([
        ferry(["send", "--path", big.dir, "--address", server.address, "--quiet"]),
        ferry(["send", "--path", big.dir, "--address", server.address, "--quiet"])
      ])
      expect([a.code, b.code]).toEqual([0, 0])
      expect(sha256File(join(dest, "big"))).toBe(big.sha)
    } finally {
      await server.stop()
    }
  })

  it("a different manifest while one is in progress is a conflict", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      // a transfer of `big` with another slice size is in progress (and stays so)
      const holder = await rawHandshake(server.address)
      holder.write(openMessage(1, { dataset: "big", size: 160 * 1024 * 1024, sliceSize: 16384, first: 0, count: 10240 }))
      expect((await holder.next())._tag).toBe("Opened")
      const r = await ferry(["send", "--path", big.dir, "--address", server.address, "--quiet"])
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/^ferry: dataset big: server refused it \(Conflict\): another transfer of big is in progress with slices of 16384 bytes, not 8192$/m)
      holder.socket.destroy()
    } finally {
      await server.stop()
    }
  })
})
