/**
 * The pipeline features of issue 11 through the built `bin/ferry` over
 * loopback: --watch, --on-commit, --json events, exit codes, a server
 * stopped mid-transfer, the marker timeout, fast failure on a peer that is
 * not what we expect, and --bwlimit.
 */
import { execFileSync } from "node:child_process"
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import { join } from "node:path"
import * as Schema from "effect/Schema"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { FerryEvent } from "../src/domain/Events.js"
import { ferry, sha256File, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { freePort, heldPieces, linesOf, type Made, makeFake, pieceBytes, startJsonServer, loggedRun, until } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

const decodeEvent = Schema.decodeUnknownSync(Schema.parseJson(FerryEvent))

/** Every line of a --json stdout, decoded with the published schema (throws on the first that does not decode). */
const eventsOf = (stdout: string): ReadonlyArray<FerryEvent> => linesOf(stdout).map((line) => decodeEvent(line))

const committedLine = (m: Made) => new RegExp(`^${m.name}: committed ${m.size} bytes in \\d+ pieces \\(\\d+ sent\\), crc32 ${m.crc}$`, "m")

/** Moves a dataset made elsewhere into `dir` as a producer would: pieces first, the marker last. */
const deliver = (from: string, name: string, dir: string) => {
  const names = readdirSync(from).filter((n) => n.startsWith(`${name}-`)).sort()
  for (const n of names) renameSync(join(from, n), join(dir, n))
  renameSync(join(from, `${name}.done`), join(dir, `${name}.done`))
}

const datasetFiles = (dir: string, name: string) => readdirSync(dir).filter((n) => n.startsWith(`${name}-`) || n === `${name}.done` || n === `.${name}.done.moving`).sort()

describe("send --watch", () => {
  it("commits datasets as they appear, stops on SIGTERM (143) or SIGINT (130), and never sends a committed one twice", async () => {
    const src = dirs.make("watched")
    const dest = dirs.make("dest")
    const server = await startJsonServer(dest)
    const made: Array<Made> = []
    const watchers: Array<ReturnType<typeof spawnFerry>> = []
    try {
      const watcher = spawnFerry(["send", "--watch", "--path", src, "--address", server.address, "--quiet"])
      watchers.push(watcher)
      for (const [name, seed] of [["wa", "81"], ["wb", "82"]] as const) {
        const staging = dirs.make("staging")
        const m = await makeFake(staging, name, ["--size", "300000", "--slice", "4KiB", "--seed", seed])
        made.push(m)
        deliver(staging, name, src)
        // printed as it happens, while the watcher goes on
        await watcher.waitFor(committedLine(m))
        expect(sha256File(join(dest, name))).toBe(m.sha)
        expect(watcher.child.exitCode).toBeNull()
      }
      watcher.child.kill("SIGTERM")
      expect(await watcher.exited).toBe(143)
      expect(watcher.output().stderr).toMatch(/^ferry: warning: stopped by SIGTERM: 2 dataset\(s\) committed; running the same command again sends only what is missing$/m)

      // run again on the same folder, datasets kept: each is found committed, nothing is sent again
      const again = spawnFerry(["send", "--watch", "--path", src, "--address", server.address, "--on-commit", "keep", "--quiet"])
      watchers.push(again)
      for (const m of made) await again.waitFor(new RegExp(`^${m.name}: already committed on the server \\(${m.size} bytes, crc32 ${m.crc}\\), nothing sent$`, "m"))
      again.child.kill("SIGINT")
      expect(await again.exited).toBe(130)
      expect(again.output().stderr).toMatch(/^ferry: warning: stopped by SIGINT: 2 dataset\(s\) committed; running the same command again sends only what is missing$/m)
      expect(again.output().stdout).not.toMatch(/: committed /)
      for (const m of made) {
        const committed = server.events().filter((e) => e["event"] === "dataset-committed" && e["dataset"] === m.name)
        expect(committed).toHaveLength(1)
      }
    } finally {
      for (const w of watchers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill("SIGKILL")
      await server.stop()
    }
  })
})

describe("send --on-commit", () => {
  let server: Awaited<ReturnType<typeof startJsonServer>>
  let dest: string
  beforeAll(async () => {
    dest = dirs.make("dest")
    server = await startJsonServer(dest)
  })
  afterAll(async () => {
    await server.stop()
  })

  it("delete: after the commit the source holds neither pieces nor marker", async () => {
    const src = dirs.make("src")
    const m = await makeFake(src, "del", ["--size", "200000", "--slice", "4KiB", "--seed", "83"])
    const r = await ferry(["send", "--path", src, "--address", server.address, "--on-commit", "delete", "--quiet"])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(committedLine(m))
    expect(sha256File(join(dest, "del"))).toBe(m.sha)
    expect(readdirSync(src)).toEqual([])
  })

  it("move:DIR: every piece and the marker land in DIR, the marker last; the source is empty", async () => {
    const src = dirs.make("src")
    const to = join(dirs.make("archive"), "sent")
    const m = await makeFake(src, "mov", ["--size", "200000", "--slice", "4KiB", "--seed", "84"])
    const files = datasetFiles(src, "mov")
    const shas = files.map((f) => sha256File(join(src, f)))
    const r = await ferry(["send", "--path", src, "--address", server.address, "--on-commit", `move:${to}`, "--quiet"])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(committedLine(m))
    expect(readdirSync(src)).toEqual([])
    expect(readdirSync(to).sort()).toEqual(files)
    expect(files.map((f) => sha256File(join(to, f)))).toEqual(shas)
    // renames keep mtimes (the producer wrote the marker last) and set ctimes: the marker was moved last
    const marker = statSync(join(to, "mov.done"))
    for (const piece of files.filter((f) => f.endsWith(".gz"))) {
      const s = statSync(join(to, piece))
      expect(marker.mtimeMs).toBeGreaterThanOrEqual(s.mtimeMs)
      expect(marker.ctimeMs).toBeGreaterThanOrEqual(s.ctimeMs)
    }
  })

  it("a move a crash interrupted (hidden marker, pieces on both sides) is finished, and that dataset is not sent again", async () => {
    const src = dirs.make("src")
    const to = dirs.make("archive")
    const half = await makeFake(src, "half", ["--size", "100000", "--slice", "4KiB", "--seed", "85"])
    const whole = await makeFake(src, "whole", ["--size", "50000", "--slice", "4KiB", "--seed", "86"])
    const files = datasetFiles(src, "half")
    const shas = files.map((f) => sha256File(join(src, f)))
    // what a crash after the first steps of a move leaves: the marker hidden, some pieces already moved
    renameSync(join(src, "half.done"), join(src, ".half.done.moving"))
    for (const piece of files.filter((f) => f.endsWith(".gz")).slice(0, 10)) renameSync(join(src, piece), join(to, piece))
    const r = await ferry(["send", "--path", src, "--address", server.address, "--on-commit", `move:${to}`, "--quiet"])
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(/^ferry: half: finishing its move to .*, which an earlier run left half done$/m)
    expect(r.stdout).toMatch(committedLine(whole))
    expect(r.stdout).not.toMatch(/^half:/m)
    expect(readdirSync(src)).toEqual([])
    expect(datasetFiles(to, "half")).toEqual(files)
    expect(files.map((f) => sha256File(join(to, f)))).toEqual(shas)
    expect(readFileSync(join(to, "half.done"), "utf8")).toBe(`${half.size}\n`)
    // the server never heard of it
    expect(server.events().filter((e) => e["dataset"] === "half")).toEqual([])
    expect(existsSync(join(dest, "half"))).toBe(false)
  })
})

describe("--json", () => {
  it("send: every stdout line is a FerryEvent; committed, failed (with its code) and finished (with the exit code)", async () => {
    const src = dirs.make("src")
    const good = await makeFake(src, "good", ["--size", "100000", "--slice", "1000", "--seed", "87"])
    await makeFake(src, "junk", ["--size", "10000", "--slice", "1000"])
    writeFileSync(join(src, "junk-0000003.gz"), "this is not gzip")
    const dest = dirs.make("dest")
    const server = await startJsonServer(dest)
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--json", "--progress-interval", "50 millis"])
      expect(r.code).toBe(1)
      const events = eventsOf(r.stdout)
      const committed = events.filter((e) => e.event === "committed")
      expect(committed).toEqual([expect.objectContaining({ dataset: "good", bytes: good.size, pieces: 100, sent: 100, crc32: good.crc, alreadyCommitted: false })])
      expect(committed[0]!.event === "committed" && committed[0]!.seconds).toBeGreaterThan(0)
      expect(events.filter((e) => e.event === "failed")).toEqual([expect.objectContaining({ dataset: "junk", code: "BadPiece" })])
      expect(events.at(-1)).toEqual(expect.objectContaining({ event: "finished", committed: 1, failed: 1, exitCode: 1 }))
      expect(events.filter((e) => e.event === "finished")).toHaveLength(1)

      const served = eventsOf(server.output().stdout)
      const kinds = new Set(served.map((e) => e.event))
      for (const kind of ["listening", "connection-accepted", "dataset-opened", "dataset-committed", "dataset-failed"]) expect(kinds).toContain(kind)
      expect(served.filter((e) => e.event === "dataset-committed")).toEqual([expect.objectContaining({ dataset: "good", bytes: good.size, crc32: good.crc })])
      // every connection accepted is closed once the sender is done, each with its reason
      const accepted = served.filter((e) => e.event === "connection-accepted").map((e) => e.event === "connection-accepted" && e.peer)
      await until(() => eventsOf(server.output().stdout).filter((e) => e.event === "connection-closed").length === accepted.length, 10_000, "connection-closed events")
      const closed = eventsOf(server.output().stdout).filter((e) => e.event === "connection-closed")
      expect(closed.map((e) => e.event === "connection-closed" && e.peer).sort()).toEqual(accepted.sort())
      for (const e of closed) expect(e.event === "connection-closed" && e.reason).toMatch(/\w/)
    } finally {
      await server.stop()
    }
    // and the server's closing events decode too, saying why it stopped
    expect(eventsOf(server.output().stdout).slice(-2)).toEqual([
      expect.objectContaining({ event: "stopping", reason: "SIGTERM" }),
      expect.objectContaining({ event: "stopped", reason: "SIGTERM" })
    ])
  })
})

describe("exit codes of send", () => {
  let server: Awaited<ReturnType<typeof startServer>>
  beforeAll(async () => {
    server = await startServer(dirs.make("dest"))
  })
  afterAll(async () => {
    await server.stop()
  })

  it("0 when all is committed, 1 when a dataset fails on its data", async () => {
    const src = dirs.make("src")
    await makeFake(src, "fine", ["--size", "20000", "--slice", "1000"])
    expect((await ferry(["send", "--path", src, "--address", server.address, "--quiet"])).code).toBe(0)
    const bad = dirs.make("src")
    await makeFake(bad, "rotten", ["--size", "20000", "--slice", "1000"])
    const piece = join(bad, "rotten-0000005.gz")
    const bytes = readFileSync(piece)
    bytes[bytes.length - 6]! ^= 0xff // its CRC32
    writeFileSync(piece, bytes)
    const r = await ferry(["send", "--path", bad, "--address", server.address, "--quiet"])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^ferry: dataset rotten: server refused it \(BadPiece\): rotten-0000005\.gz is corrupt \(CRC32 mismatch\)$/m)
  })

  it("3 when no server answers within --retry-for", async () => {
    const src = dirs.make("src")
    await makeFake(src, "lonely", ["--size", "2000", "--slice", "1000"])
    const port = await freePort()
    const r = await ferry(["send", "--path", src, "--address", `127.0.0.1:${port}`, "--retry-for", "1", "--quiet"])
    expect(r.code).toBe(3)
    // given up on by --retry-for, said so (no wall-clock bound here: the suite asserts no timings)
    expect(r.stderr).toMatch(new RegExp(`^ferry: 127\\.0\\.0\\.1:${port}: connection refused .*\\(gave up after \\d+ retries or 1s\\)$`, "m"))
  })

  it("4 for a folder with nothing to send, 0 with --allow-empty", async () => {
    const empty = dirs.make("empty")
    const r = await ferry(["send", "--path", empty, "--address", server.address])
    expect(r.code).toBe(4)
    expect(r.stderr).toMatch(/no dataset found/)
    expect((await ferry(["send", "--path", empty, "--address", server.address, "--allow-empty"])).code).toBe(0)
  })
})

describe("serve stopped by SIGTERM in the middle of a transfer", () => {
  it("exits 0 at once with one line; the client resumes on the server started again and the file is exact", async () => {
    const src = dirs.make("src")
    const m = await makeFake(src, "stop", ["--size", "16MiB", "--slice", "16KiB", "--seed", "88"])
    const dest = dirs.make("dest")
    const port = String(await freePort())
    let server = await startServer(dest, ["--port", port])
    const client = spawnFerry(["send", "--path", src, "--address", `127.0.0.1:${port}`, "--retry-for", "30", "--bwlimit", "4MiB/s", "--quiet"])
    try {
      await until(() => heldPieces(dest, "stop") > 0, 20_000, "a transfer under way")
      const before = linesOf(server.output().stderr).length
      const signalled = Date.now()
      server.child.kill("SIGTERM")
      expect(await server.exited).toBe(0)
      expect(Date.now() - signalled).toBeLessThan(5_000)
      const { stderr } = server.output()
      expect(linesOf(stderr).slice(before)).toEqual([expect.stringMatching(/^ferry: stopped by SIGTERM; datasets in progress are kept in .*\/\.ferry for their senders to resume$/)])
      expect(stderr).not.toMatch(/EBADF|warning|error/i)
      expect(existsSync(join(dest, "stop.done"))).toBe(false)

      server = await startServer(dest, ["--port", port])
      expect(await client.exited).toBe(0)
      expect(client.output().stdout).toMatch(committedLine(m))
      expect(client.output().stderr).toMatch(/the server is stopping; try again, or another server; reconnecting$/m)
      expect(sha256File(join(dest, "stop"))).toBe(m.sha)
    } finally {
      if (client.child.exitCode === null) client.child.kill("SIGKILL")
      await server.stop()
    }
  })
})

describe("--marker-timeout", () => {
  it("a dataset whose marker never comes fails with a line naming the marker, exit 1", async () => {
    const src = dirs.make("src")
    await makeFake(src, "late", ["--size", "20000", "--slice", "1000", "--no-marker"])
    const server = await startServer(dirs.make("dest"))
    try {
      const r = await ferry(["send", "--path", src, "--address", server.address, "--marker-timeout", "1", "--quiet"])
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/^ferry: waiting for late\.done in /m)
      expect(r.stderr).toMatch(/^ferry: dataset late: late\.done did not appear within 1s$/m)
    } finally {
      await server.stop()
    }
  })
})

describe("a peer that is not what the client expects: one clear line, exit 3, no retry", () => {
  let cert: string
  let key: string
  let sample: Made
  beforeAll(async () => {
    const dir = dirs.make("tls")
    cert = join(dir, "cert.pem")
    key = join(dir, "key.pem")
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" })
    sample = await makeFake(dirs.make("src"), "probe", ["--size", "20000", "--slice", "1000"])
  })

  /** Sends `sample`; the run must fail at once (no retry, no reconnection) with exactly one line, about `problem`. */
  const failsFast = async (address: string, extra: ReadonlyArray<string>, problem: RegExp) => {
    const r = await loggedRun(["send", "--path", sample.dir, "--address", address, "--quiet", ...extra])
    expect(r.code).toBe(3)
    expect(r.lines.filter((l) => /retry|reconnect|gave up after [1-9]/i.test(l.message))).toEqual([])
    const told = r.shown.filter((l) => !/^done: /.test(l.message))
    expect(told).toEqual([expect.objectContaining({ level: "ERROR", exit: 3, message: expect.stringMatching(problem) })])
    return r
  }

  it("a plain client against a TLS server", async () => {
    const server = await startServer(dirs.make("dest"), ["--tls-cert", cert, "--tls-key", key])
    try {
      await failsFast(server.address, [], /^127\.0\.0\.1:\d+: .*answers TLS: it is a TLS server \(add --tls or --tls-ca FILE\)/)
      await server.waitFor(/TLS handshake failed/)
      expect(server.output().stderr.match(/TLS handshake failed/g)).toHaveLength(1)
    } finally {
      await server.stop()
    }
  })

  it("a TLS client against a plain server", async () => {
    const server = await startServer(dirs.make("dest"))
    try {
      await failsFast(server.address, ["--tls-ca", cert], /^127\.0\.0\.1:\d+: TLS handshake failed: the server does not speak TLS/)
      await server.waitFor(/dropped:/)
      expect(server.output().stderr.match(/dropped:/g)).toHaveLength(1)
    } finally {
      await server.stop()
    }
  })

  it("a client against something that is not ferry (an HTTP server)", async () => {
    let connections = 0
    const web = http.createServer((_req, res) => res.end("hello\n"))
    web.on("connection", () => connections++)
    await new Promise<void>((resolve) => web.listen(0, "127.0.0.1", resolve))
    try {
      const port = (web.address() as net.AddressInfo).port
      await failsFast(`127.0.0.1:${port}`, [], /^127\.0\.0\.1:\d+: this is not a ferry server \(it answered "HTTP\/1\.1 400 Bad Request/)
      expect(connections).toBe(1)
    } finally {
      web.closeAllConnections()
      await new Promise((resolve) => web.close(resolve))
    }
  })

  it("a client against a line-based server that says nothing until it has a whole line (as Python's http.server)", async () => {
    let connections = 0
    const lineServer = net.createServer((socket) => {
      connections++
      let seen = ""
      socket.on("data", (d) => {
        seen += d.toString("latin1")
        if (seen.includes("\n")) socket.end("HTTP/1.0 400 Bad request syntax\r\n\r\n")
      })
      socket.on("error", () => {})
    })
    await new Promise<void>((resolve) => lineServer.listen(0, "127.0.0.1", resolve))
    try {
      const port = (lineServer.address() as net.AddressInfo).port
      await failsFast(`127.0.0.1:${port}`, [], /^127\.0\.0\.1:\d+: this is not a ferry server \(it answered "HTTP\/1\.0 400 Bad request syntax/)
      expect(connections).toBe(1)
    } finally {
      await new Promise((resolve) => lineServer.close(resolve))
    }
  })
})

describe("send --bwlimit", () => {
  // The feature is a rate. Its exact arithmetic is checked on Effect's TestClock (test/timetable.test.ts: a
  // constant rate waits exactly its time). Here, through a real process: never faster than the rate (within
  // the first burst), and not grossly slower. A process starved of CPU on a loaded machine loses that time for
  // good (a limiter lets only a short burst catch up), so the upper bound is loose on purpose.
  it("1MiB/s: about 5 MB of pieces take their size over the rate, never less", async () => {
    const src = dirs.make("src")
    const m = await makeFake(src, "rate", ["--size", "8MiB", "--slice", "16KiB", "--seed", "89"])
    const wire = pieceBytes(src, "rate")
    expect(wire).toBeGreaterThan(4_500_000)
    expect(wire).toBeLessThan(5_500_000)
    const expected = wire / (1024 * 1024)
    const dest = dirs.make("dest")
    // frames of at most 128 KiB of pieces, so that the bytes go out smoothly, not in a few 1 MB steps
    const server = await startServer(dest, ["--max-frame", "256KiB", "--connection-memory", "1MiB"])
    try {
      const started = Date.now()
      const r = await ferry(["send", "--path", src, "--address", server.address, "--bwlimit", "1MiB/s", "--json", "--progress-interval", "20 millis"])
      const wall = (Date.now() - started) / 1000
      expect(r.code).toBe(0)
      const events = eventsOf(r.stdout)
      expect(events.find((e) => e.event === "committed")).toEqual(expect.objectContaining({ dataset: "rate", crc32: m.crc }))
      // the time the client spent sending, by its own progress events (every 20 ms): from the first one of the
      // dataset to the first that has every piece acknowledged. Starting node (a second or more on a loaded
      // machine) and the commit's fsyncs are not part of the rate.
      const progress = events.filter((e) => e.event === "progress" && e.dataset === "rate")
      const done = progress.find((e) => e.event === "progress" && e.ackedPieces === e.pieces)
      expect(done).toBeDefined()
      const sending = (Date.parse(done!.time) - Date.parse(progress[0]!.time)) / 1000
      expect(sending, `${sending.toFixed(3)} s to send, ${expected.toFixed(3)} s expected`).toBeGreaterThan(expected * 0.95)
      expect(sending, `${sending.toFixed(3)} s to send, ${expected.toFixed(3)} s expected`).toBeLessThan(expected * 1.5)
      // from the outside: never faster than the rate allows
      expect(wall).toBeGreaterThan(expected)
      expect(sha256File(join(dest, "rate"))).toBe(m.sha)
    } finally {
      await server.stop()
    }
  })
})
