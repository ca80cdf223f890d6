/**
 * The piece store's defects of issue 18, through the built `bin/ferry serve`
 * and a hand-driven client over loopback: batches still in the gunzip
 * threads when their dataset is closed or fails must never land in another
 * dataset's files; a dataset that can never fit fails at once; a user's own
 * file at `DEST/NAME` is left alone.
 */
import { execFileSync, spawn } from "node:child_process"
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as zlib from "node:zlib"
import { afterAll, describe, expect, it } from "vitest"
import { Close, type ControlMessage, encodeControl } from "../src/domain/Protocol.js"
import { FERRY, ferry, startServer, tempDirs } from "./support/cli.js"
import { makeFake, until } from "./support/datasets.js"
import { openMessage, piecesMessage, type RawConnection, rawHandshake, sealMessage } from "./support/raw.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** Seeded bytes that gzip at level 1 to about half: the threads have real work on each slice. */
const contentOf = (size: number, seed: number) => {
  const bytes = Buffer.alloc(size)
  let x = seed >>> 0 || 1
  for (let i = 0; i < size; i += 2) {
    x = (x * 1103515245 + 12345) >>> 0
    bytes[i] = x >>> 24
    bytes[i + 1] = 0x20
  }
  return bytes
}

const datasetOf = (name: string, size: number, sliceSize: number, seed: number) => {
  const original = contentOf(size, seed)
  const count = Math.ceil(size / sliceSize)
  const pieces = Array.from({ length: count }, (_, k) => ({ index: k, bytes: zlib.gzipSync(original.subarray(k * sliceSize, Math.min(size, (k + 1) * sliceSize)), { level: 1 }) }))
  const manifest = { dataset: name, size, sliceSize, first: 0, count, firstSliceCrc: zlib.crc32(original.subarray(0, sliceSize)) }
  return { original, pieces, manifest, crc: zlib.crc32(original).toString(16).padStart(8, "0") }
}

/** The next control message of one of the given kinds for `handle` (acks and other handles' messages are skipped). */
const answerFor = async (c: RawConnection, handle: number, tags: ReadonlyArray<ControlMessage["_tag"]>) => {
  for (;;) {
    const m = await c.next(30_000)
    if (tags.includes(m._tag) && "handle" in m && m.handle === handle) return m
  }
}

describe("18.1: batches in flight never land in another dataset's files", () => {
  // X: large slices, so that its batches are still in the gunzip threads when it is closed or fails
  const x = datasetOf("x", 150 * 256 * 1024, 256 * 1024, 7)
  const y = datasetOf("y", 40 * 64 * 1024 - 1000, 64 * 1024, 11)
  const corrupt = x.pieces.map((p) => p.index === 149 ? { index: p.index, bytes: Buffer.from(p.bytes).fill(0x41, 20, 60) } : p)

  for (const how of ["Close", "a corrupt piece"] as const) {
    it(`X ended by ${how} while its batches are in the threads, then Y opened: Y is exact, its .done true (8 rounds)`, async () => {
      const dest = dirs.make("dest")
      const server = await startServer(dest, ["--workers", "2"])
      try {
        for (let round = 0; round < 8; round++) {
          const c = await rawHandshake(server.address)
          const xName = `x${"abcdefgh"[round]}`
          const yName = `y${"abcdefgh"[round]}`
          c.write(openMessage(1, { ...x.manifest, dataset: xName }))
          expect((await answerFor(c, 1, ["Opened", "Failed"]))._tag).toBe("Opened")
          // batches of 50 pieces (12.5 MiB of slices each), and X ends while they are in the threads:
          // closed by its client, or failed by a one-piece batch that comes back first
          if (how === "Close") {
            c.write(piecesMessage(1, 0, x.pieces.slice(0, 50)))
            c.write(piecesMessage(1, 1, x.pieces.slice(50, 100)))
            c.write(encodeControl(new Close({ handle: 1 })))
          } else {
            c.write(piecesMessage(1, 0, corrupt.slice(149, 150)))
            c.write(piecesMessage(1, 1, x.pieces.slice(0, 50)))
            c.write(piecesMessage(1, 2, x.pieces.slice(50, 100)))
            expect(await answerFor(c, 1, ["Failed"])).toMatchObject({ code: "BadPiece" })
          }
          // Y on a new handle, opened while X's batches may still be in the threads
          c.write(openMessage(2, { ...y.manifest, dataset: yName }))
          const opened = await answerFor(c, 2, ["Opened", "Failed"])
          expect(opened._tag, JSON.stringify(opened)).toBe("Opened")
          c.write(piecesMessage(2, 0, y.pieces.slice(0, 20)))
          c.write(piecesMessage(2, 1, y.pieces.slice(20)))
          c.write(sealMessage(2, y.crc))
          const committed = await answerFor(c, 2, ["Committed", "Failed"])
          expect(committed, JSON.stringify(committed)).toMatchObject({ _tag: "Committed", size: y.original.length, crc32: y.crc })
          c.socket.destroy()
          await c.closed
          expect(statSync(join(dest, yName)).size).toBe(y.original.length)
          expect(readFileSync(join(dest, yName)).equals(y.original), `${yName} is exactly Y's bytes`).toBe(true)
          expect(readFileSync(join(dest, `${yName}.done`), "utf8")).toBe(`${y.original.length}\n`)
        }
        // nothing of X was committed, and no state grew past what a dataset of its size needs
        expect(readdirSync(dest).filter((n) => n.startsWith("x"))).toEqual([])
      } finally {
        await server.stop()
      }
    })
  }
})

describe("18.1 with the real sender: datasets with a corrupt piece interleaved with good ones", () => {
  /** A dataset written the producer's way, optionally with one piece corrupted in its middle. */
  const writeDataset = (dir: string, name: string, size: number, sliceSize: number, seed: number, corruptIndex?: number) => {
    const d = datasetOf(name, size, sliceSize, seed)
    for (const p of d.pieces) {
      const bytes = p.index === corruptIndex ? Buffer.from(p.bytes).fill(0x41, 30, 90) : p.bytes
      writeFileSync(join(dir, `${name}-${String(p.index).padStart(7, "0")}.gz`), bytes)
    }
    writeFileSync(join(dir, `${name}.done`), `${size}\n`)
    return d
  }

  for (const [parallel, connections] of [["6", "2"]] as const) {
    it(`--parallel ${parallel} --connections ${connections}: every good dataset exact with a true .done, every bad one failed`, async () => {
      const src = dirs.make("src")
      const dest = dirs.make("dest")
      const letters = "abcdefghijklmnop"
      // sent in name order: each bad one followed by two good ones
      const bad = Array.from({ length: 6 }, (_, k) => `set${letters[k]}a`)
      const good = Array.from({ length: 12 }, (_, k) => `set${letters[k >> 1]}${"bc"[k & 1]}`)
      bad.forEach((name, k) => writeDataset(src, name, 24 * 1024 * 1024, 1024 * 1024, 100 + k, 5))
      const made = good.map((name, k) => writeDataset(src, name, 40_000 + k * 4097, 4096, 200 + k))
      const server = await startServer(dest)
      try {
        const r = await ferry(["send", "--path", src, "--address", server.address, "--parallel", parallel, "--connections", connections, "--quiet"], { timeout: 120_000 })
        expect(r.code, r.stdout + r.stderr).toBe(1)
        for (const name of bad) expect(r.stdout).toMatch(new RegExp(`^${name}: failed \\(BadPiece\\)`, "m"))
        good.forEach((name, k) => {
          expect(r.stdout).toMatch(new RegExp(`^${name}: committed ${made[k]!.original.length} bytes`, "m"))
          expect(readFileSync(join(dest, name)).equals(made[k]!.original), `${name} is exact`).toBe(true)
          expect(readFileSync(join(dest, `${name}.done`), "utf8")).toBe(`${made[k]!.original.length}\n`)
        })
        for (const name of bad) expect(existsSync(join(dest, `${name}.done`))).toBe(false)
      } finally {
        await server.stop()
      }
    })
  }
})

describe("18.2: a dataset larger than the whole destination filesystem", () => {
  it("fails at once with the numbers (exit 1), before any state file is made", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test mounts a tmpfs, which needs root: run the suite as root (as CI does)")
    const dest = dirs.make("tmpfs")
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", dest], { stdio: "pipe" })
    try {
      const src = dirs.make("src")
      await makeFake(src, "huge", ["--size", "6MiB", "--slice", "64KiB"])
      const server = await startServer(dest)
      try {
        // --retry-for would be waited out, were it taken for "not now"
        const r = await ferry(["send", "--path", src, "--address", server.address, "--quiet", "--retry-for", "600"], { timeout: 30_000 })
        expect(r.stdout).toMatch(/^huge: failed \(TooLarge\): .*needs \d+ bytes, more than the whole filesystem of .* holds \(\d+ bytes\): it can never fit there$/m)
        expect(r.code).toBe(1)
      } finally {
        await server.stop()
      }
      expect(existsSync(join(dest, ".ferry", "huge"))).toBe(false)
    } finally {
      execFileSync("umount", ["-l", dest], { stdio: "ignore" })
    }
  })
})

describe("18.9: a user's own file at DEST/NAME", () => {
  it("is refused as a Conflict naming it, and left alone", async () => {
    const dest = dirs.make("dest")
    const src = dirs.make("src")
    await makeFake(src, "mine", ["--size", "200KiB", "--slice", "16KiB"])
    writeFileSync(join(dest, "mine"), "the user's own file\n")
    const server = await startServer(dest)
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--quiet"])
      expect(r.stdout).toMatch(new RegExp(`^mine: failed \\(Conflict\\): .*${dest}/mine is already there and is not ferry's`, "m"))
      expect(r.code).toBe(1)
    } finally {
      await server.stop()
    }
    expect(readFileSync(join(dest, "mine"), "utf8")).toBe("the user's own file\n")
    expect(existsSync(join(dest, "mine.done"))).toBe(false)
  })
})

describe("18.7: out of file descriptors", () => {
  it("serve held to 64 descriptors, 3 senders x 8 datasets at --parallel 8: every dataset committed, the limit said at start", async () => {
    const dest = dirs.make("dest")
    const sources = ["x", "y", "z"].map((tag) => {
      const src = dirs.make("src")
      "abcdefgh".split("").forEach((letter, k) => {
        const d = datasetOf(`s${tag}${letter}`, 300_000 + k * 1000, 16 * 1024, k + 1)
        d.pieces.forEach((p) => writeFileSync(join(src, `s${tag}${letter}-${String(p.index).padStart(7, "0")}.gz`), p.bytes))
        writeFileSync(join(src, `s${tag}${letter}.done`), `${d.original.length}\n`)
      })
      return src
    })
    // a hard limit: the server cannot raise it
    const child = spawn("prlimit", ["--nofile=64:64", FERRY, "serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (d) => (output += d))
    child.stderr.on("data", (d) => (output += d))
    const exited = new Promise<void>((done) => child.once("exit", () => done()))
    try {
      await until(() => /listening on \S+/.test(output), 20_000, "the server listens")
      const address = /listening on (\S+)/.exec(output)![1]!
      expect(output).toMatch(/warning: --max-datasets 64 and --max-connections 256 need about \d+ file descriptors, but this process may open 64 \(ulimit -n\)/)
      const runs = await Promise.all(sources.map((src) => ferry(["send", "--path", src, "--address", address, "--parallel", "8", "--quiet"], { timeout: 120_000 })))
      for (const r of runs) {
        expect(r.stdout + r.stderr).not.toMatch(/StateUnusable|CommitFailed|failed \(/)
        expect(r.code, r.stdout + r.stderr).toBe(0)
        expect(r.stdout.match(/: committed \d+ bytes/g)).toHaveLength(8)
      }
      expect(readdirSync(dest).filter((n) => n.endsWith(".done"))).toHaveLength(24)
    } finally {
      child.kill("SIGTERM")
      await exited
    }
  })
})
