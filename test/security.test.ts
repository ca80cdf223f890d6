/**
 * Only trusted clients write, nothing leaves the destination, limits hold
 * under abuse, and after each abuse the server still completes a real transfer.
 */
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, statfsSync, symlinkSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ferry, sha256File, shaOf, startServer, tempDirs } from "./support/cli.js"
import { openMessage, rawConnect, rawHandshake, rawHi, rawOpen } from "./support/raw.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

let sample: { dir: string; sha: string }
beforeAll(async () => {
  const dir = dirs.make("sample")
  const made = await ferry(["fake", "--path", dir, "--name", "safe", "--size", "300000", "--slice", "4096", "--seed", "5"])
  sample = { dir, sha: shaOf(made.stdout, "safe")! }
})

/** Polls an async condition (a server frees a slot a moment after a client leaves). */
const until = async (condition: () => Promise<boolean>, tries = 20) => {
  for (let k = 0; k < tries; k++) {
    if (await condition()) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error("condition not met")
}

/** A real transfer must still work: the proof that the server was not harmed. */
const stillServes = async (address: string, dest: string, extra: ReadonlyArray<string> = []) => {
  const r = await ferry(["send", "--path", sample.dir, "--address", address, "--quiet", "--retries", "0", ...extra])
  expect(r.stderr).not.toMatch(/error|warning|refused/i)
  expect(r.code).toBe(0)
  expect(sha256File(join(dest, "safe"))).toBe(sample.sha)
}

describe("authentication", () => {
  let server: Awaited<ReturnType<typeof startServer>>
  let dest: string
  let tokenFile: string
  beforeAll(async () => {
    dest = dirs.make("dest")
    tokenFile = join(dirs.make("secret"), "token")
    writeFileSync(tokenFile, "correct horse battery staple\n")
    server = await startServer(dest, ["--token-file", tokenFile])
  })
  afterAll(async () => {
    await server.stop()
  })

  it("a client without the token is refused before anything is written", async () => {
    const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--retries", "0"])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/^ferry: .*the server requires a token: give --token-file or set FERRY_TOKEN$/m)
    expect(readdirSync(dest).filter((n) => !n.startsWith("."))).toEqual([])
  })

  it("a wrong token is refused, and the refusal is logged with the peer address", async () => {
    const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--retries", "0"], { env: { FERRY_TOKEN: "wrong" } })
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/server refused: authentication failed: wrong token/)
    await server.waitFor(/127\.0\.0\.1:\d+: refused \(AuthFailed\)/)
    expect(existsSync(join(dest, "safe"))).toBe(false)
  })

  it("a raw client that skips the handshake cannot open a dataset", async () => {
    const c = await rawConnect(server.address)
    expect((await rawHi(c))._tag).toBe("Welcome")
    c.write(openMessage(1, { dataset: "sneaky", size: 10, sliceSize: 10, first: 0, count: 1 }))
    expect(await c.next()).toMatchObject({ _tag: "Refused", code: "NotReady" })
    await c.closed
    expect(existsSync(join(dest, ".ferry", "sneaky"))).toBe(false)
  })

  it("the right token, from the file or from FERRY_TOKEN, is accepted", async () => {
    await stillServes(server.address, dest, ["--token-file", tokenFile])
    const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--quiet"], { env: { FERRY_TOKEN: "correct horse battery staple" } })
    expect(r.code).toBe(0)
  })
})

describe("TLS", () => {
  let cert: string
  let key: string
  beforeAll(() => {
    const dir = dirs.make("tls")
    cert = join(dir, "cert.pem")
    key = join(dir, "key.pem")
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" })
  })

  it("a client that trusts the server's certificate sends over TLS", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--tls-cert", cert, "--tls-key", key])
    try {
      await stillServes(server.address, dest, ["--tls-ca", cert])
    } finally {
      await server.stop()
    }
  })

  it("NODE_EXTRA_CA_CERTS is honoured as Node.js honours it: --tls alone trusts the certificates it names", async () => {
    // bin/ferry hands the variable over (Node.js would parse it at every start) and ferry adds its
    // certificates to Node.js's roots for a connection without --tls-ca: with it the send commits,
    // without it the same send is refused, and an unreadable file is a warning, not a failure
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--tls-cert", cert, "--tls-key", key])
    try {
      const args = ["send", "--path", sample.dir, "--address", server.address, "--quiet", "--retries", "0", "--tls", "--tls-servername", "localhost"]
      const without = await ferry(args, { env: { NODE_EXTRA_CA_CERTS: "" } })
      expect(without.code).toBe(3)
      expect(without.stderr).toMatch(/TLS certificate not trusted/)
      const missing = await ferry(args, { env: { NODE_EXTRA_CA_CERTS: join(dest, "no-such.pem") } })
      expect(missing.code).toBe(3)
      expect(missing.stderr).toMatch(/Ignoring extra certs from `.*no-such\.pem`, load failed/)
      const trusted = await ferry(args, { env: { NODE_EXTRA_CA_CERTS: cert } })
      expect(trusted.stderr).not.toMatch(/warning|error|not trusted/i)
      expect(trusted.code).toBe(0)
      expect(sha256File(join(dest, "safe"))).toBe(sample.sha)
    } finally {
      await server.stop()
    }
  })

  it("verification is on: an unknown certificate is refused", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--tls-cert", cert, "--tls-key", key])
    try {
      // a certificate that cannot be trusted is not a fault that retrying cures: one attempt, exit 3
      const r = await ferry(["send", "--path", sample.dir, "--address", server.address, "--tls"])
      expect(r.code).toBe(3)
      expect(r.stderr).toMatch(/TLS certificate not trusted/)
      expect(r.stderr.match(/TLS certificate not trusted/g)!.length).toBeLessThanOrEqual(3)
      await stillServes(server.address, dest, ["--tls-ca", cert])
    } finally {
      await server.stop()
    }
  })

  it("a plain client against a TLS server, and a TLS client against a plain one, fail clearly", async () => {
    const tlsDest = dirs.make("dest")
    const tlsServer = await startServer(tlsDest, ["--tls-cert", cert, "--tls-key", key, "--handshake-timeout", "1"])
    const plainDest = dirs.make("dest")
    const plainServer = await startServer(plainDest, ["--handshake-timeout", "1"])
    try {
      // no retries to give up first: a mismatch is told apart at once, and not retried (exit 3)
      const started = Date.now()
      const plain = await ferry(["send", "--path", sample.dir, "--address", tlsServer.address])
      expect(plain.code).toBe(3)
      expect(plain.stderr).toMatch(/^ferry: .*answers TLS: it is a TLS server \(add --tls or --tls-ca FILE\)/m)
      const secure = await ferry(["send", "--path", sample.dir, "--address", plainServer.address, "--tls-ca", cert])
      expect(secure.code).toBe(3)
      expect(secure.stderr).toMatch(/^ferry: .*the server does not speak TLS/m)
      expect(Date.now() - started).toBeLessThan(4000)
      await stillServes(tlsServer.address, tlsDest, ["--tls-ca", cert])
      await stillServes(plainServer.address, plainDest)
    } finally {
      await tlsServer.stop()
      await plainServer.stop()
    }
  })
})

describe("abuse and limits", () => {
  let server: Awaited<ReturnType<typeof startServer>>
  let dest: string
  beforeAll(async () => {
    dest = dirs.make("dest")
    server = await startServer(dest, [
      "--handshake-timeout", "1",
      "--idle-timeout", "1",
      "--max-pending", "8",
      "--max-frame", "2MiB",
      "--max-pieces", "500000",
      "--max-dataset-size", "1TB"
    ])
  })
  afterAll(async () => {
    await server.stop()
  })

  it("a flood of connections that never authenticate does not lock others out", async () => {
    const flood = await Promise.all(Array.from({ length: 40 }, () => rawConnect(server.address)))
    await stillServes(server.address, dest)
    // the oldest ones were dropped to make room, the rest time out
    await Promise.all(flood.map((c) => c.closed))
  })

  it("garbage bytes get the connection dropped", async () => {
    const c = await rawConnect(server.address)
    await rawHi(c)
    c.write(Buffer.from("GET / HTTP/1.1\r\nHost: example\r\n\r\n"))
    await c.closed
    await stillServes(server.address, dest)
  })

  it("a client trickling its hello byte by byte is dropped at the handshake deadline", async () => {
    const c = await rawConnect(server.address)
    await rawHi(c)
    const started = Date.now()
    const hello = Buffer.from('\u0000\u0000\u0000\u001d\u0001{"_tag":"Hello","proof":null}')
    let k = 0
    const trickle = setInterval(() => (k < hello.length ? c.write(hello.subarray(k, ++k)) : clearInterval(trickle)), 200)
    await c.closed
    clearInterval(trickle)
    expect(Date.now() - started).toBeLessThan(5000)
    await stillServes(server.address, dest)
  })

  it("a protocol version mismatch is refused with both versions named", async () => {
    const c = await rawConnect(server.address)
    const body = Buffer.from(JSON.stringify({ _tag: "Hi", protocol: 3, client: "future" }))
    const header = Buffer.alloc(5)
    header.writeUInt32BE(body.length + 1, 0)
    header[4] = 1
    c.write(Buffer.concat([header, body]))
    expect(await c.next()).toMatchObject({ _tag: "Refused", code: "VersionMismatch", message: "client speaks protocol 3, this server speaks 2; upgrade the older side" })
    await c.closed
  })

  it("a connection closed in the middle of a frame harms nothing", async () => {
    const c = await rawHandshake(server.address)
    c.write(openMessage(1, { dataset: "half", size: 10, sliceSize: 10, first: 0, count: 1 }))
    expect((await c.next())._tag).toBe("Opened")
    const header = Buffer.alloc(5 + 12)
    header.writeUInt32BE(1000, 0)
    header[4] = 2
    c.write(header)
    c.socket.end()
    await c.closed
    await server.waitFor(/connection closed in the middle of a frame/)
    expect(existsSync(join(dest, "half.done"))).toBe(false)
    await stillServes(server.address, dest)
  })

  it("a client that says nothing after the handshake is dropped as idle", async () => {
    const c = await rawHandshake(server.address)
    expect(await c.next(5000)).toMatchObject({ _tag: "Refused", code: "IdleTimeout" })
    await c.closed
  })

  it("before the handshake, only small frames are read", async () => {
    const c = await rawConnect(server.address)
    const header = Buffer.alloc(5)
    header.writeUInt32BE(1024 * 1024, 0) // 1 MiB: under --max-frame, over what a stranger may send
    header[4] = 1
    c.write(header)
    await c.closed
    await server.waitFor(/frame of 1048576 bytes is over the limit of 65536/)
  })

  it("a frame over the limit is refused", async () => {
    const c = await rawHandshake(server.address)
    const header = Buffer.alloc(5)
    header.writeUInt32BE(3 * 1024 * 1024, 0)
    header[4] = 2
    c.write(header)
    await c.closed
    await stillServes(server.address, dest)
  })

  it("a dataset announced larger than the limit, or than the disk, is refused with the numbers", async () => {
    const c = await rawHandshake(server.address)
    c.write(openMessage(1, { dataset: "huge", size: 2e12, sliceSize: 1e6, first: 0, count: 2e6 }))
    expect(await c.next()).toMatchObject({ _tag: "Failed", code: "TooLarge", message: "2000000000000 bytes is over this server's limit of 1000000000000" })
    // --max-frame 2MiB lowers the largest slice accepted to what fits in a frame; sizes from this disk's own numbers
    const disk = statfsSync(dest)
    const free = disk.bavail * disk.bsize
    const whole = (disk.blocks - disk.bfree + disk.bavail) * disk.bsize
    const slices = (bytes: number) => ({ size: bytes, sliceSize: 2e6, first: 0, count: Math.ceil(bytes / 2e6) })
    // more than the whole filesystem: never, at once
    c.write(openMessage(2, { dataset: "disk", ...slices(Math.ceil(whole / 2e6) * 2e6 + 2e6) }))
    const never = await c.next()
    expect(never).toMatchObject({ _tag: "Failed", code: "TooLarge" })
    expect(never._tag === "Failed" && never.message).toMatch(/^needs \d+ bytes, more than the whole filesystem of .* holds \(\d+ bytes\): it can never fit there$/)
    // more than is free now, less than the filesystem: not now
    if (whole - free > 4e6) {
      c.write(openMessage(5, { dataset: "later", ...slices(Math.floor((free + (whole - free) / 2) / 2e6) * 2e6) }))
      const answer = await c.next()
      expect(answer).toMatchObject({ _tag: "Failed", code: "NoSpace" })
      expect(answer._tag === "Failed" && answer.message).toMatch(/^needs \d+ more bytes but only \d+ are free in /)
    }
    c.write(openMessage(3, { dataset: "many", size: 600000, sliceSize: 1, first: 0, count: 600000 }))
    expect(await c.next()).toMatchObject({ _tag: "Failed", code: "TooManyPieces" })
    c.write(openMessage(4, { dataset: "wide", size: 2e8, sliceSize: 1e8, first: 0, count: 2 }))
    expect(await c.next()).toMatchObject({ _tag: "Failed", code: "TooLarge", message: "slices of 100000000 bytes are over this server's limit of 2090940" })
    expect(existsSync(join(dest, ".ferry", "huge"))).toBe(false)
    expect(existsSync(join(dest, ".ferry", "disk"))).toBe(false)
    expect(existsSync(join(dest, ".ferry", "later"))).toBe(false)
    c.socket.destroy()
  })

  it("names that try to leave the destination are refused before any disk write", async () => {
    const before = readdirSync(join(dest, ".ferry"))
    for (const dataset of ["../x", "/etc/x", "", "a".repeat(65), "ABC", "a/b"]) {
      const c = await rawHandshake(server.address)
      c.write(rawOpen(1, { dataset, size: 10, sliceSize: 10, first: 0, count: 1 }))
      expect(await c.next()).toMatchObject({ _tag: "Refused", code: "BadMessage" })
      await c.closed
    }
    expect(readdirSync(join(dest, ".ferry"))).toEqual(before)
    expect(existsSync(join(dest, "..", "x"))).toBe(false)
  })
})

describe("more limits", () => {
  it("past --max-connections, a client is refused; when one leaves, others get in", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-connections", "1"])
    try {
      const first = await rawHandshake(server.address)
      await expect(rawHandshake(server.address)).rejects.toThrow(/TooManyConnections/)
      first.socket.destroy()
      await first.closed
      await until(async () => (await ferry(["send", "--path", sample.dir, "--address", server.address, "--connections", "1", "--retries", "0", "--quiet"])).code === 0)
      expect(sha256File(join(dest, "safe"))).toBe(sample.sha)
    } finally {
      await server.stop()
    }
  })

  it("past --max-datasets in progress, a new dataset is refused as busy", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-datasets", "1"])
    try {
      const c = await rawHandshake(server.address)
      c.write(openMessage(1, { dataset: "one", size: 10, sliceSize: 10, first: 0, count: 1 }))
      expect((await c.next())._tag).toBe("Opened")
      c.write(openMessage(2, { dataset: "two", size: 10, sliceSize: 10, first: 0, count: 1 }))
      expect(await c.next()).toMatchObject({ _tag: "Failed", code: "Busy" })
      c.socket.destroy()
      await c.closed
      await until(async () => (await ferry(["send", "--path", sample.dir, "--address", server.address, "--retries", "0", "--quiet"])).code === 0)
    } finally {
      await server.stop()
    }
  })

  it("a small --max-frame and --connection-memory still carry a transfer: the client sizes its batches to the server", async () => {
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--max-frame", "64KiB", "--connection-memory", "256KiB"])
    try {
      await stillServes(server.address, dest)
    } finally {
      await server.stop()
    }
  })

  it("--max-frame larger than --connection-memory is a usage error", async () => {
    const r = await ferry(["serve", "--port", "0", "--dest", dirs.make("dest"), "--max-frame", "2MiB", "--connection-memory", "1MiB"])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^ferry: --max-frame \(2097152\) cannot be larger than --connection-memory \(1048576\)$/m)
  })
})

describe("containment", () => {
  it("a symlink planted as the state folder stops the server with a clear error", async () => {
    const dest = dirs.make("dest")
    const elsewhere = dirs.make("elsewhere")
    symlinkSync(elsewhere, join(dest, ".ferry"))
    const r = await ferry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/\.ferry is a symbolic link; ferry keeps its work inside --dest and will not follow it/)
    expect(readdirSync(elsewhere)).toEqual([])
  })

  it("a symlink planted as a dataset's state folder or marker is not followed", async () => {
    const dest = dirs.make("dest")
    const elsewhere = dirs.make("elsewhere")
    mkdirSync(join(dest, ".ferry"))
    symlinkSync(elsewhere, join(dest, ".ferry", "safe"))
    const server = await startServer(dest)
    try {
      await stillServes(server.address, dest)
      expect(readdirSync(elsewhere)).toEqual([])
      symlinkSync("/etc/hostname", join(dest, "other.done"))
      const c = await rawHandshake(server.address)
      c.write(openMessage(1, { dataset: "other", size: 10, sliceSize: 10, first: 0, count: 1 }))
      expect(await c.next()).toMatchObject({ _tag: "Failed", code: "Conflict" })
      c.socket.destroy()
    } finally {
      await server.stop()
    }
  })

  it("an unusable destination is one clear line", async () => {
    const file = join(dirs.make("x"), "plain-file")
    writeFileSync(file, "not a folder")
    const r = await ferry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", join(file, "inbox")])
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toMatch(/^ferry: .*cannot create state folder/)
  })
})
