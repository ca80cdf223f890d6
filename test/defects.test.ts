/**
 * Issue 9, point by point, through the built `bin/ferry` over loopback: each
 * test sets up the situation the defect was about and checks what a user
 * sees (exit code, stdout, stderr) and what is on disk.
 */
import { execFileSync } from "node:child_process"
import { cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs"
import * as net from "node:net"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { encodeControl, Hi, PROTOCOL_VERSION } from "../src/domain/Protocol.js"
import { ferry, sha256File, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { heldPieces, linesOf, type Made, makeFake, startJsonServer, stateOf, loggedRun, until } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

const isRoot = process.getuid?.() === 0

describe("1. a symlink planted in the server's state folder is never followed", () => {
  let sample: Made
  beforeAll(async () => {
    // pieces go in batches of about 2 MiB: enough of them that a client killed after the first is surely half way
    sample = await makeFake(dirs.make("src"), "planted", ["--size", "16MiB", "--slice", "4KiB", "--seed", "9"])
  })

  /** A transfer interrupted (client killed) once the server holds some pieces: its state is left on disk, unleased. */
  const interrupted = async (dest: string, address: string) => {
    // a slow client, so that it is surely killed half way
    const client = spawnFerry(["send", "--path", sample.dir, "--address", address, "--bwlimit", "4MiB/s", "--quiet"])
    try {
      await until(() => heldPieces(dest, "planted") > 0, 20_000, "some pieces held")
    } finally {
      client.child.kill("SIGKILL")
      await client.exited
    }
    // the server notices the client is gone and gives up its lease; the epoch folder stays for a resume
    await until(() => !stateOf(dest, "planted").leased, 10_000, "lease released")
    const { epoch } = stateOf(dest, "planted")
    expect(epoch).toBeDefined()
    expect(heldPieces(dest, "planted")).toBeLessThan(sample.size / 4096)
    return epoch!
  }

  const fingerprint = (file: string) => ({ sha: sha256File(file), mtime: statSync(file).mtimeMs, size: statSync(file).size })

  const resendIsExact = async (dest: string, address: string) => {
    const r = await ferry(["send", "--path", sample.dir, "--address", address, "--quiet"])
    expect(r.stderr).not.toMatch(/^ferry: (error|internal)/m)
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(new RegExp(`^planted: committed ${sample.size} bytes .*crc32 ${sample.crc}$`, "m"))
    expect(lstatSync(join(dest, "planted")).isFile()).toBe(true)
    expect(sha256File(join(dest, "planted"))).toBe(sample.sha)
    expect(readFileSync(join(dest, "planted.done"), "utf8")).toBe(`${sample.size}\n`)
  }

  for (const target of ["data", "bitmap"] as const) {
    it(`epoch.N/${target} replaced by a link to a file outside --dest: the file is untouched, the result exact`, async () => {
      const dest = dirs.make("dest")
      const server = await startServer(dest)
      try {
        const epoch = await interrupted(dest, server.address)
        // the outside file looks like the real one (same size; for the bitmap, the same bits): a server that
        // followed the link would resume from it and write into it
        const outside = join(dirs.make("outside"), "victim")
        if (target === "data") writeFileSync(outside, Buffer.alloc(sample.size, 0x5a))
        else cpSync(join(epoch, "bitmap"), outside)
        const before = fingerprint(outside)
        rmSync(join(epoch, target))
        symlinkSync(outside, join(epoch, target))
        await resendIsExact(dest, server.address)
        expect(fingerprint(outside)).toEqual(before)
      } finally {
        await server.stop()
      }
    })
  }

  it("the whole epoch.N folder replaced by a link to a copy of it outside --dest: nothing there is touched, the result exact", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const epoch = await interrupted(dest, server.address)
      // a complete, resumable copy of the state, outside, with its own data
      const outside = join(dirs.make("outside"), "state")
      cpSync(epoch, outside, { recursive: true })
      writeFileSync(join(outside, "data"), Buffer.alloc(sample.size, 0x5a))
      const files = readdirSync(outside).sort()
      const before = files.map((f) => fingerprint(join(outside, f)))
      rmSync(epoch, { recursive: true })
      symlinkSync(outside, epoch)
      await resendIsExact(dest, server.address)
      expect(server.output().stderr).toMatch(/planted: \S+\/epoch\.\d+ in the destination is a link, not a folder; removing it/)
      expect(readdirSync(outside).sort()).toEqual(files)
      expect(files.map((f) => fingerprint(join(outside, f)))).toEqual(before)
    } finally {
      await server.stop()
    }
  })
})

describe("2. two servers on one --dest", () => {
  it("the second answers Busy while the first writes, never writes alongside, and says Conflict once the first committed", async () => {
    const [big, other] = [dirs.make("src"), dirs.make("src")]
    const [first, second] = await Promise.all([
      makeFake(big, "abc", ["--size", "16MiB", "--slice", "8KiB", "--seed", "21"]),
      makeFake(other, "abc", ["--size", "1MiB", "--slice", "8KiB", "--seed", "22"])
    ])
    const dest = dirs.make("dest")
    const [one, two] = await Promise.all([startJsonServer(dest), startJsonServer(dest)])
    const clients: Array<ReturnType<typeof spawnFerry>> = []
    try {
      // slowed (and paused below) so that the second surely asks while the first is in the middle of it
      const client1 = spawnFerry(["send", "--path", big, "--address", one.address, "--quiet", "--bwlimit", "4MiB/s"])
      clients.push(client1)
      await until(() => heldPieces(dest, "abc") > 0, 20_000, "the first server writing abc")
      client1.child.kill("SIGSTOP")
      const client2 = spawnFerry(["send", "--path", other, "--address", two.address, "--quiet"])
      clients.push(client2)
      await client2.waitFor(/abc: \S+ cannot take it now \(Busy: another server on this destination is writing it/)
      expect(existsSync(join(dest, "abc.done"))).toBe(false)
      expect(heldPieces(dest, "abc")).toBeLessThan(2048)
      // one lease, the first server's: the second did not take the dataset beside it
      expect(stateOf(dest, "abc").names.filter((n) => n.startsWith("lease."))).toHaveLength(1)
      client1.child.kill("SIGCONT")
      expect(await client1.exited).toBe(0)
      expect(client1.output().stdout).toMatch(new RegExp(`^abc: committed ${first.size} bytes in 2048 pieces \\(2048 sent\\), crc32 ${first.crc}$`, "m"))
      expect(await client2.exited).toBe(1)
      expect(client2.output().stderr).toMatch(/^ferry: dataset abc: server refused it \(Conflict\): abc is already committed on the server with a different size \(16777216 bytes, not 1048576\)$/m)
      expect(readFileSync(join(dest, "abc.done"), "utf8")).toBe(`${first.size}\n`)
      expect(sha256File(join(dest, "abc"))).toBe(first.sha)
      expect(second.size).toBe(1048576)
      // the second server never opened the dataset: it was turned away before touching its files
      const seen = two.events().filter((e) => e["dataset"] === "abc")
      expect(seen.map((e) => e["event"])).not.toContain("dataset-opened")
      expect(seen.filter((e) => e["event"] === "dataset-failed").map((e) => e["code"])).toEqual(expect.arrayContaining(["Busy", "Conflict"]))
      expect(one.events().filter((e) => e["event"] === "dataset-committed").map((e) => [e["dataset"], e["crc32"]])).toEqual([["abc", first.crc]])
    } finally {
      for (const c of clients) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill("SIGKILL")
      await Promise.all([one.stop(), two.stop()])
    }
  })
})

describe("3. two senders, different content under one name, at once", () => {
  for (const round of [1, 2]) {
    it(`one commits its own bytes, the other gets a Conflict (round ${round})`, async () => {
      const [a, b] = [dirs.make("src"), dirs.make("src")]
      const made = await Promise.all([
        makeFake(a, "abc", ["--size", "4MiB", "--slice", "8KiB", "--seed", String(30 + round)]),
        makeFake(b, "abc", ["--size", "4MiB", "--slice", "8KiB", "--seed", String(40 + round)])
      ])
      const dest = dirs.make("dest")
      const server = await startServer(dest)
      try {
        const runs = await Promise.all([a, b].map((dir) => ferry(["send", "--path", dir, "--address", server.address, "--quiet"])))
        expect(runs.map((r) => r.code).sort()).toEqual([0, 1])
        const winner = runs.findIndex((r) => r.code === 0)
        const loser = 1 - winner
        expect(runs[winner]!.stdout).toMatch(new RegExp(`^abc: committed ${made[winner]!.size} bytes .*crc32 ${made[winner]!.crc}$`, "m"))
        expect(runs[loser]!.stderr).toMatch(/^ferry: dataset abc: server refused it \(Conflict\)/m)
        // its line is a failure, never a success (its reason may mention the other's committed file)
        expect(runs[loser]!.stdout).toMatch(/^abc: failed \(Conflict\): /m)
        expect(runs[loser]!.stdout).not.toMatch(/^abc: committed/m)
        // the .done stands beside exactly one sender's original: the committed one's
        expect(readFileSync(join(dest, "abc.done"), "utf8")).toBe(`${made[winner]!.size}\n`)
        expect(sha256File(join(dest, "abc"))).toBe(made[winner]!.sha)
        expect(made[0]!.sha).not.toBe(made[1]!.sha)
      } finally {
        await server.stop()
      }
    })
  }
})

/**
 * A tmpfs of `size` mounted on a new temporary folder: a small disk to fill, or to turn read-only.
 * These tests need root (as CI has); without it they fail saying so, they are not skipped.
 */
const tmpfs = (size: string): { dir: string } => {
  if (!isRoot) throw new Error("this test mounts a tmpfs, which needs root: run the suite as root (as CI does)")
  const dir = dirs.make("tmpfs")
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { stdio: "pipe" })
  mounted.push(dir)
  return { dir }
}
const mounted: Array<string> = []
afterAll(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync("umount", ["-l", dir], { stdio: "ignore" })
})

describe("4. free space is counted with the datasets in progress", () => {
  it("two datasets that each fit a 16 MiB disk but not together: the second waits, then goes; no disk-full failure", async () => {
    const disk = tmpfs("16m")
    const src = dirs.make("src")
    const made = await Promise.all([
      makeFake(src, "first", ["--size", "10MiB", "--slice", "64KiB", "--seed", "51"]),
      makeFake(src, "second", ["--size", "10MiB", "--slice", "64KiB", "--seed", "52"])
    ])
    const server = await startServer(disk.dir)
    // the limit keeps the one admitted in progress while the other asks, however the two opens are spaced on a busy machine
    const client = spawnFerry(["send", "--path", src, "--address", server.address, "--parallel", "2", "--bwlimit", "4MiB/s", "--quiet"])
    try {
      // one is admitted; the other is told there is no room beside it, and waits
      const waiting = await client.waitFor(/(first|second): \S+ cannot take it now \(NoSpace: needs \d+ more bytes, but of the \d+ free, \d+ are promised to datasets in progress/)
      const [goes, waits] = waiting[1] === "first" ? [made[1]!, made[0]!] : [made[0]!, made[1]!]
      await client.waitFor(new RegExp(`^${goes.name}: committed`, "m"))
      expect(sha256File(join(disk.dir, goes.name))).toBe(goes.sha)
      // a consumer takes the committed file away: now the second fits
      rmSync(join(disk.dir, `${goes.name}.done`))
      rmSync(join(disk.dir, goes.name))
      expect(await client.exited).toBe(0)
      const { stdout, stderr } = client.output()
      expect(stdout).toMatch(new RegExp(`^${waits.name}: committed ${waits.size} bytes .*crc32 ${waits.crc}$`, "m"))
      expect(sha256File(join(disk.dir, waits.name))).toBe(waits.sha)
      expect(stderr + server.output().stderr).not.toMatch(/disk is full|ENOSPC/)
      expect(stderr.match(/cannot take it now/g)).toHaveLength(1)
    } finally {
      if (client.child.exitCode === null) client.child.kill("SIGKILL")
      await server.stop()
    }
  })
})

describe("5. serve --max-datasets 1", () => {
  it("a folder of two datasets: both committed, and the client says once that it waits", async () => {
    const src = dirs.make("src")
    const made = await Promise.all([
      makeFake(src, "one", ["--size", "2MiB", "--slice", "16KiB", "--seed", "61"]),
      makeFake(src, "two", ["--size", "2MiB", "--slice", "16KiB", "--seed", "62"])
    ])
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-datasets", "1"])
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--parallel", "2", "--quiet"])
      expect(r.code).toBe(0)
      for (const m of made) {
        expect(r.stdout).toMatch(new RegExp(`^${m.name}: committed ${m.size} bytes .*crc32 ${m.crc}$`, "m"))
        expect(sha256File(join(dest, m.name))).toBe(m.sha)
      }
      expect(r.stderr.match(/cannot take it now \(Busy: the server already has 1 datasets in progress, its limit/g)).toHaveLength(1)
      expect(r.stderr).not.toMatch(/^ferry: (error|warning)/m)
    } finally {
      await server.stop()
    }
  })
})

describe("6. more connections asked than the server allows", () => {
  it("send --connections 4 against serve --max-connections 2: carries on with 2, the file is exact", async () => {
    const src = dirs.make("src")
    const made = await makeFake(src, "conn", ["--size", "4MiB", "--slice", "8KiB", "--seed", "63"])
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-connections", "2"])
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--connections", "4", "--quiet", "--debug"])
      expect(r.code).toBe(0)
      expect(r.stderr).toMatch(/: 2 of 4 connections accepted \(.*TooManyConnections|the server has 2 connections, its limit/)
      expect(r.stderr).not.toMatch(/ (ERROR|WARN) /)
      expect(r.stdout).toMatch(new RegExp(`^conn: committed ${made.size} bytes .*crc32 ${made.crc}$`, "m"))
      expect(sha256File(join(dest, "conn"))).toBe(made.sha)
    } finally {
      await server.stop()
    }
  })
})

describe("7. large slices", () => {
  it("a dataset of 32 MiB slices goes through with default flags on both sides", async () => {
    const src = dirs.make("src")
    const made = await makeFake(src, "wide", ["--size", "96MiB", "--slice", "32MiB", "--seed", "71"])
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--quiet"])
      expect(r.stderr).not.toMatch(/^ferry: (error|warning)/m)
      expect(r.code).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`^wide: committed ${made.size} bytes in 3 pieces \\(3 sent\\), crc32 ${made.crc}$`, "m"))
      expect(sha256File(join(dest, "wide"))).toBe(made.sha)
    } finally {
      await server.stop()
    }
  })
})

describe("8. a read-only destination", () => {
  let sample: Made
  beforeAll(async () => {
    sample = await makeFake(dirs.make("src"), "ro", ["--size", "100000", "--slice", "4KiB"])
  })

  it("serve on a read-only filesystem fails at start with one line saying so, exit 1", async () => {
    const disk = tmpfs("4m")
    mkdirSync(join(disk.dir, "inbox"))
    execFileSync("mount", ["-o", "remount,ro", disk.dir])
    // the mount point itself, a folder in it, and a folder still to be made in it
    for (const dest of [disk.dir, join(disk.dir, "inbox"), join(disk.dir, "new", "inbox")]) {
      const r = await ferry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest])
      expect(r.code).toBe(1)
      expect(linesOf(r.stderr)).toHaveLength(1)
      expect(r.stderr).toMatch(/^ferry: .*read-only/)
      expect(r.stderr).not.toMatch(/no such file/)
      expect(r.stdout).toBe("")
    }
  })

  it("a destination remounted read-only under a running server: a new dataset is refused as read-only", async () => {
    const disk = tmpfs("4m")
    const server = await startServer(disk.dir)
    try {
      execFileSync("mount", ["-o", "remount,ro", disk.dir])
      const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--quiet"])
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/^ferry: dataset ro: server refused it \(ReadOnly\): .*read-only/m)
      expect(existsSync(join(disk.dir, "ro.done"))).toBe(false)
      expect(server.child.exitCode).toBeNull()
    } finally {
      await server.stop()
    }
  })
})

describe("9. a bad dataset name beside a good dataset", () => {
  it("the good one is committed and printed, the bad one reported by name, exit 1", async () => {
    const src = dirs.make("src")
    const good = await makeFake(src, "good", ["--size", "50000", "--slice", "1000"])
    const bad = "b".repeat(65)
    const other = dirs.make("src")
    await makeFake(other, "bad", ["--size", "5000", "--slice", "1000"])
    for (const name of readdirSync(other)) renameSync(join(other, name), join(src, name.replace(/^bad/, bad)))
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--quiet"])
      expect(r.code).toBe(1)
      expect(r.stdout).toMatch(new RegExp(`^good: committed ${good.size} bytes .*crc32 ${good.crc}$`, "m"))
      expect(r.stderr).toMatch(new RegExp(`^ferry: (error: )?dataset ${bad}: its name is longer than 64 characters$`, "m"))
      expect(sha256File(join(dest, "good"))).toBe(good.sha)
      expect(readdirSync(dest).filter((n) => n.startsWith("b"))).toEqual([])
    } finally {
      await server.stop()
    }
  })
})

describe("10. TLS failures", () => {
  let cert: string
  let key: string
  let otherCa: string
  let sample: Made
  beforeAll(async () => {
    const dir = dirs.make("tls")
    const selfSigned = (name: string) => {
      const pair = { cert: join(dir, `${name}-cert.pem`), key: join(dir, `${name}-key.pem`) }
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", pair.key, "-out", pair.cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" })
      return pair
    }
    ;({ cert, key } = selfSigned("server"))
    otherCa = selfSigned("other").cert
    sample = await makeFake(dirs.make("src"), "secret", ["--size", "20000", "--slice", "1000"])
  })

  it("a plain client is logged by the TLS server with its real address, never as ?:0", async () => {
    const server = await startServer(dirs.make("dest"), ["--tls-cert", cert, "--tls-key", key])
    try {
      const r = await ferry(["send", "--path", sample.dir, "--address", server.address])
      expect(r.code).toBe(3)
      const first = await server.waitFor(/^ferry: warning: (.+): TLS handshake failed/m)
      expect(first[1]).toMatch(/^127\.0\.0\.1:[1-9]\d*$/)
      // plain clients that reset the connection at once, after a hello or before a word: the server may find
      // them gone before it reads their address; it says so then, in words, never as "?:0"
      const [host, port] = [server.address.slice(0, server.address.lastIndexOf(":")), Number(server.address.slice(server.address.lastIndexOf(":") + 1))]
      const plainAndGone = (hello: boolean) =>
        new Promise<void>((resolve) => {
          const socket = net.connect({ host, port }, () => {
            if (hello) socket.write(encodeControl(new Hi({ protocol: PROTOCOL_VERSION, client: "plain" })))
            socket.resetAndDestroy()
          })
          socket.on("error", () => {})
          socket.once("close", () => resolve())
        })
      await plainAndGone(true)
      await plainAndGone(false)
      await server.waitFor(/(TLS handshake failed[^]*){3}/)
      const peers = [...server.output().stderr.matchAll(/^ferry: warning: (.+): TLS handshake failed/gm)].map((m) => m[1])
      expect(peers).toEqual(Array(3).fill(expect.stringMatching(/^(127\.0\.0\.1:[1-9]\d*|a client that hung up before its address could be read)$/)))
      expect(server.output().stderr).not.toMatch(/\?:0/)
    } finally {
      await server.stop()
    }
  })

  it("a TLS client with the wrong CA gives up after one attempt, exit 3, without retrying", async () => {
    const server = await startServer(dirs.make("dest"), ["--tls-cert", cert, "--tls-key", key])
    try {
      const r = await loggedRun(["send", "--path", sample.dir, "--address", server.address, "--tls-ca", otherCa])
      expect(r.code).toBe(3)
      // not a transient fault: no retry, no reconnection, not even one
      expect(r.lines.filter((l) => /retry|reconnect|gave up after [1-9]/i.test(l.message))).toEqual([])
      // told once on stderr (the line it stops on), once on stdout for the dataset it could not send
      expect(r.shown.filter((l) => /TLS certificate not trusted/.test(l.message))).toEqual([
        expect.objectContaining({ level: "ERROR", exit: 3, message: expect.stringMatching(/^127\.0\.0\.1:\d+: TLS certificate not trusted: .*\(give the server's CA with --tls-ca\)$/) })
      ])
      expect(linesOf(r.stdout)).toEqual([expect.stringMatching(/^secret: failed \(PeerMismatch\): .*TLS certificate not trusted/)])
      // one attempt: the server saw one failed handshake
      await server.waitFor(/TLS handshake failed/)
      expect(server.output().stderr.match(/TLS handshake failed/g)).toHaveLength(1)
    } finally {
      await server.stop()
    }
  })
})
