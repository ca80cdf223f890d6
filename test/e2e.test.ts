/**
 * The built `bin/ferry` over real loopback TCP: fake, serve, send, and the
 * error cases a user meets, each with its exit code and message.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { gunzipSync, gzipSync } from "node:zlib"
import { ferry, sha256File, shaOf, spawnFerry, startServer, tempDirs } from "./support/cli.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

const fake = async (dir: string, args: ReadonlyArray<string>) => {
  const r = await ferry(["fake", "--path", dir, ...args])
  expect(r.stderr + r.stdout).not.toMatch(/error/i)
  expect(r.code).toBe(0)
  return shaOf(r.stdout, args.includes("--name") ? args[args.indexOf("--name") + 1] : "abc")!
}

describe("ferry send / serve over loopback", () => {
  let dest: string
  let server: Awaited<ReturnType<typeof startServer>>
  beforeAll(async () => {
    dest = dirs.make("dest")
    server = await startServer(dest)
  })
  afterAll(async () => {
    await server.stop()
  })

  it("rebuilds a dataset byte for byte and writes its marker", async () => {
    const src = dirs.make("src")
    const sha = await fake(src, ["--name", "alpha", "--size", "3000000", "--slice", "4096", "--seed", "7"])
    const r = await ferry(["send", "--path", src, "--address", server.address])
    expect(r.code).toBe(0)
    // the summary, and nothing that went wrong on the way
    expect(r.stderr).toMatch(/^ferry: done: 1 dataset\(s\) committed, 0 failed, 3\.00 MB in [\d.]+ s \(.+\/s\) sent$/m)
    expect(r.stderr).not.toMatch(/^ferry: (warning|error):/m)
    expect(r.stdout).toMatch(/^alpha: committed 3000000 bytes in 733 pieces \(733 sent\), crc32 [0-9a-f]{8}$/m)
    expect(sha256File(join(dest, "alpha"))).toBe(sha)
    expect(readFileSync(join(dest, "alpha.done"), "utf8")).toBe("3000000\n")
    // nothing of the work in progress is left beside the result, only the record of the commit
    expect(readdirSync(join(dest, ".ferry"))).toEqual(["committed"])
  })

  it("reports the same crc32 as the original", async () => {
    const src = dirs.make("src")
    const made = await ferry(["fake", "--path", src, "--name", "crc", "--size", "100000", "--slice", "1000"])
    const crc = /^crc32 ([0-9a-f]{8})  crc$/m.exec(made.stdout)![1]
    const r = await ferry(["send", "--path", src, "--address", server.address])
    expect(r.stdout).toContain(`crc32 ${crc}`)
  })

  it("sends several datasets of one folder, pieces numbered from any start", async () => {
    const src = dirs.make("src")
    const a = await fake(src, ["--name", "one", "--size", "500000", "--slice", "10000"])
    const b = await fake(src, ["--name", "two", "--size", "123457", "--slice", "1000", "--first", "17"])
    writeFileSync(join(src, "README.txt"), "not a piece")
    writeFileSync(join(src, "one-000001.gz"), "six digits: ignored")
    const r = await ferry(["send", "--path", src, "--address", server.address, "--debug"])
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(/ignoring README\.txt/)
    // --connections left to "auto": one connection when the first was set up within 20 ms, 4 otherwise
    const auto = /(\d+) connection\(s\) to \S+ \(auto: round trip ([\d.]+) ms, (near|far)/.exec(r.stderr)
    expect(auto).not.toBeNull()
    expect(Number(auto![1])).toBe(Number(auto![2]) < 20 ? 1 : 4)
    expect(auto![3]).toBe(Number(auto![2]) < 20 ? "near" : "far")
    expect(sha256File(join(dest, "one"))).toBe(a)
    expect(sha256File(join(dest, "two"))).toBe(b)
  })

  it("two clients sending different datasets at once both succeed", async () => {
    const [s1, s2] = [dirs.make("src"), dirs.make("src")]
    const [h1, h2] = await Promise.all([
      fake(s1, ["--name", "left", "--size", "4000000", "--slice", "8192", "--seed", "1"]),
      fake(s2, ["--name", "right", "--size", "4000000", "--slice", "8192", "--seed", "2"])
    ])
    const [r1, r2] = await Promise.all([
      ferry(["send", "--path", s1, "--address", server.address, "--connections", "3", "--debug"]),
      ferry(["send", "--path", s2, "--address", server.address])
    ])
    expect([r1.code, r2.code]).toEqual([0, 0])
    expect(r1.stderr).toMatch(/ 3 connection\(s\) to \S+, window /)
    expect(sha256File(join(dest, "left"))).toBe(h1)
    expect(sha256File(join(dest, "right"))).toBe(h2)
  })

  it("waits for a marker written after the client started", async () => {
    const src = dirs.make("src")
    const sha = await fake(src, ["--name", "late", "--size", "200000", "--slice", "4096", "--no-marker"])
    expect(existsSync(join(src, "late.done"))).toBe(false)
    const client = spawnFerry(["send", "--path", src, "--address", server.address])
    await client.waitFor(/waiting for late\.done/)
    writeFileSync(join(src, "late.done"), "200000\n")
    expect(await client.exited).toBe(0)
    expect(sha256File(join(dest, "late"))).toBe(sha)
  })

  it("an empty file (marker 0, no piece) is a valid dataset", async () => {
    const src = dirs.make("src")
    writeFileSync(join(src, "empty.done"), "0\n")
    const r = await ferry(["send", "--path", src, "--address", server.address])
    expect(r.code).toBe(0)
    expect(readFileSync(join(dest, "empty")).length).toBe(0)
    expect(readFileSync(join(dest, "empty.done"), "utf8")).toBe("0\n")
  })

  it("sending a committed dataset again succeeds at once and rewrites nothing", async () => {
    const src = dirs.make("src")
    await fake(src, ["--name", "again", "--size", "50000", "--slice", "1000"])
    expect((await ferry(["send", "--path", src, "--address", server.address])).code).toBe(0)
    const r = await ferry(["send", "--path", src, "--address", server.address])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/again: already committed on the server/)
  })

  describe("bad input: one clear line, non-zero exit, and the server keeps serving", () => {
    const sendExpectingFailure = async (src: string) => {
      const r = await ferry(["send", "--path", src, "--address", server.address])
      expect(r.code).toBe(1)
      const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("ferry: ") && !l.startsWith("ferry: warning"))
      expect(lines.length).toBeGreaterThan(0)
      expect(r.stderr).not.toMatch(/\n\s+at /) // no stack trace
      return r.stderr
    }

    it("a folder with no dataset: nothing to send is exit 4, or 0 with --allow-empty", async () => {
      const empty = dirs.make("empty")
      const r = await ferry(["send", "--path", empty, "--address", server.address])
      expect(r.code).toBe(4)
      expect(r.stderr).toMatch(/^ferry: .*: no dataset found \(expected files named like abc-0000000\.gz and abc\.done\)$/m)
      expect((await ferry(["send", "--path", empty, "--address", server.address, "--allow-empty"])).code).toBe(0)
    })

    it("a folder that does not exist", async () => {
      expect(await sendExpectingFailure("/nonexistent/ferry/folder")).toMatch(/\/nonexistent\/ferry\/folder: no such folder/)
    })

    it("a missing piece, named", async () => {
      const src = dirs.make("src")
      await fake(src, ["--name", "gap", "--size", "100000", "--slice", "1000"])
      rmSync(join(src, "gap-0000042.gz"))
      expect(await sendExpectingFailure(src)).toMatch(/dataset gap: piece gap-0000042\.gz is missing/)
    })

    it("a marker that is not a number", async () => {
      const src = dirs.make("src")
      await fake(src, ["--name", "word", "--size", "10000", "--slice", "1000"])
      writeFileSync(join(src, "word.done"), "ten thousand\n")
      expect(await sendExpectingFailure(src)).toMatch(/dataset word: word\.done does not hold a size in bytes/)
    })

    it("a marker that disagrees with the pieces", async () => {
      const src = dirs.make("src")
      await fake(src, ["--name", "liar", "--size", "10000", "--slice", "1000"])
      writeFileSync(join(src, "liar.done"), "20000\n")
      expect(await sendExpectingFailure(src)).toMatch(/dataset liar: the marker says 20000 bytes, which with slices of 1000 bytes needs 20 pieces, but there are 10/)
    })

    it("a piece that is not gzip, named by the server; nothing is committed", async () => {
      const src = dirs.make("src")
      await fake(src, ["--name", "junk", "--size", "10000", "--slice", "1000"])
      writeFileSync(join(src, "junk-0000003.gz"), "this is not gzip at all")
      expect(await sendExpectingFailure(src)).toMatch(/dataset junk: server refused it \(BadPiece\): junk-0000003\.gz is not gzip data/)
      expect(existsSync(join(dest, "junk.done"))).toBe(false)
      expect(existsSync(join(dest, "junk"))).toBe(false)
    })

    it("a piece that decompresses to the wrong size", async () => {
      const src = dirs.make("src")
      await fake(src, ["--name", "short", "--size", "10000", "--slice", "1000"])
      const other = dirs.make("src")
      await fake(other, ["--name", "short", "--size", "500", "--slice", "500"])
      writeFileSync(join(src, "short-0000004.gz"), readFileSync(join(other, "short-0000000.gz")))
      expect(await sendExpectingFailure(src)).toMatch(/short-0000004\.gz decompresses to 500 bytes, but the slice is 1000/)
      expect(existsSync(join(dest, "short.done"))).toBe(false)
    })

    const corruptPiece = async (name: string, mutate: (gz: Buffer) => Buffer) => {
      const src = dirs.make("src")
      await fake(src, ["--name", name, "--size", "10000", "--slice", "1000"])
      const file = join(src, `${name}-0000002.gz`)
      writeFileSync(file, mutate(readFileSync(file)))
      return src
    }

    it("a truncated piece", async () => {
      const src = await corruptPiece("trunc", (gz) => gz.subarray(0, gz.length - 5))
      expect(await sendExpectingFailure(src)).toMatch(/trunc-0000002\.gz is truncated/)
      expect(existsSync(join(dest, "trunc.done"))).toBe(false)
    })

    it("a piece with trailing garbage", async () => {
      const src = await corruptPiece("tail", (gz) => Buffer.concat([gz, Buffer.alloc(7)]))
      expect(await sendExpectingFailure(src)).toMatch(/tail-0000002\.gz has 7 bytes of trailing garbage/)
    })

    it("a piece whose CRC does not match", async () => {
      const src = await corruptPiece("crcbad", (gz) => {
        const copy = Buffer.from(gz)
        copy[copy.length - 6]! ^= 0xff
        return copy
      })
      expect(await sendExpectingFailure(src)).toMatch(/crcbad-0000002\.gz is corrupt \(CRC32 mismatch\)/)
    })

    it("a piece made of several gzip members is accepted", async () => {
      const src = dirs.make("src")
      const sha = await fake(src, ["--name", "members", "--size", "10000", "--slice", "1000"])
      const file = join(src, "members-0000004.gz")
      const slice = gunzipSync(readFileSync(file))
      writeFileSync(file, Buffer.concat([gzipSync(slice.subarray(0, 300)), gzipSync(slice.subarray(300))]))
      expect((await ferry(["send", "--path", src, "--address", server.address])).code).toBe(0)
      expect(sha256File(join(dest, "members"))).toBe(sha)
    })

    for (const [label, text, message] of [
      ["empty", "", /empty\.done is empty/],
      ["negative", "-5\n", /negative\.done does not hold a size in bytes/],
      ["absurd", "99999999999999999999999\n", /absurd\.done holds a size too large to be real/]
    ] as const) {
      it(`a marker that is ${label}`, async () => {
        const src = dirs.make("src")
        await fake(src, ["--name", label, "--size", "1000", "--slice", "100"])
        writeFileSync(join(src, `${label}.done`), text)
        expect(await sendExpectingFailure(src)).toMatch(message)
      })
    }

    it("after all that, the server still serves", async () => {
      const src = dirs.make("src")
      const sha = await fake(src, ["--name", "after", "--size", "30000", "--slice", "1000"])
      expect((await ferry(["send", "--path", src, "--address", server.address])).code).toBe(0)
      expect(sha256File(join(dest, "after"))).toBe(sha)
      expect(server.child.exitCode).toBeNull()
    })
  })
})

describe("command-line errors", () => {
  it("a bad address is a usage error (exit 2)", async () => {
    const r = await ferry(["send", "--path", "/tmp", "--address", "nowhere"])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^ferry: --address must be HOST:PORT, or several separated by commas, not "nowhere"$/m)
  })

  it("nobody listening is a clear failure once the retry budget is spent (exit 3)", async () => {
    const src = dirs.make("src")
    await fake(src, ["--size", "1000", "--slice", "100"])
    const r = await ferry(["send", "--path", src, "--address", "127.0.0.1:1", "--retry-for", "1"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/^ferry: 127\.0\.0\.1:1: connection refused \(is `ferry serve` running there\?\) \(gave up after 20 retries or 1s\)$/m)
  })

  it("a bad size for fake is a usage error", async () => {
    const r = await ferry(["fake", "--path", dirs.make("x"), "--size", "lots"])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/--size must be a size in bytes/)
  })

  it("a flag of the wrong type is a usage error", async () => {
    const r = await ferry(["serve", "--port", "abc", "--dest", dirs.make("d")])
    expect(r.code).toBe(2)
    expect(r.stderr).toBe('ferry: --port must be a port number from 0 to 65535, not "abc"\n')
    expect(r.stdout).toBe("")
  })

  it("a missing flag is a usage error", async () => {
    const r = await ferry(["send", "--path", "/tmp"])
    expect(r.code).toBe(2)
    expect(r.stderr).toBe("ferry: missing --address (or FERRY_ADDRESS)\n")
  })
})
