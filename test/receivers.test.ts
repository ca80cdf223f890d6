/**
 * Several receivers over one shared destination, through the built
 * `bin/ferry` on loopback: three servers on one `--dest` and four senders
 * given all three addresses, one server killed mid-transfer; a dataset held
 * by one server is Busy on another; a lease holder paused past its lease can
 * never commit after another server took over (even when the dataset was
 * committed, consumed and started again meanwhile); a server down at start is
 * not an error while another is up.
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs"
import { join } from "node:path"
import { gunzipSync } from "node:zlib"
import * as zlib from "node:zlib"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { pieceFileName } from "../src/domain/Dataset.js"
import { encodeLease, type LeaseRecord } from "../src/domain/Lease.js"
import { ferry, sha256File, shaOf, spawnFerry, tempDirs } from "./support/cli.js"
import { freePort, popcount } from "./support/datasets.js"
import { openMessage, piecesMessage, type RawConnection, rawHandshake, sealMessage } from "./support/raw.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** Short, to keep the takeover tests fast; the lease time itself is the only wait they have. */
const LEASE_SECONDS = 3

/** `ferry serve` on a free loopback port with --json events on stdout; resolves once it listens. */
const startReceiver = async (dest: string, extra: ReadonlyArray<string> = []) => {
  const server = spawnFerry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, "--json", "--lease-time", String(LEASE_SECONDS), ...extra])
  const m = await server.waitFor(/"event":"listening","address":"([^"]+)"/)
  const events = () =>
    server.output().stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { event: string; dataset?: string; code?: string })
  return {
    ...server,
    address: m[1]!,
    pid: server.child.pid!,
    events,
    stop: async () => {
      if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill("SIGTERM")
      return server.exited
    }
  }
}

const numbered = (names: ReadonlyArray<string>, kind: "lease" | "epoch") =>
  names.filter((n) => new RegExp(`^${kind}\\.\\d+$`).test(n)).sort((a, b) => Number(a.split(".")[1]) - Number(b.split(".")[1]))

/** What the shared state says of one dataset in progress: who holds its lease, and the pieces recorded. */
interface StateOf {
  readonly dataset: string
  readonly holder: number | undefined
  readonly held: number
  readonly count: number
}

const stateOf = (dest: string, dataset: string): StateOf | undefined => {
  try {
    const dir = join(dest, ".ferry", dataset)
    const names = readdirSync(dir)
    const lease = numbered(names, "lease").at(-1)
    const epoch = numbered(names, "epoch").at(-1)
    if (epoch === undefined) return undefined
    const holder = lease === undefined ? undefined : (JSON.parse(readFileSync(join(dir, lease), "utf8").trim()) as { owner: { pid: number } }).owner.pid
    const count = (JSON.parse(readFileSync(join(dir, epoch, "manifest.json"), "utf8")) as { count: number }).count
    return { dataset, holder, held: popcount(readFileSync(join(dir, epoch, "bitmap"))), count }
  } catch {
    // caught between two steps of a server's work (a lease being created, a folder renamed)
    return undefined
  }
}

const inProgress = (dest: string): Array<StateOf> => {
  const root = join(dest, ".ferry")
  if (!existsSync(root)) return []
  return readdirSync(root).filter((n) => /^[a-z]+$/.test(n) && n !== "committed").flatMap((n) => stateOf(dest, n) ?? [])
}

const until = async (condition: () => boolean, what: string, timeoutMs = 30_000) => {
  const started = Date.now()
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not in time`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/** What a sender printed for each dataset: pieces sent by the run that committed it (0 when already committed). */
const sentBy = (stdout: string): Map<string, number> => {
  const out = new Map<string, number>()
  for (const m of stdout.matchAll(/^([a-z]+): committed \d+ bytes in \d+ pieces \((\d+) sent\)/gm)) out.set(m[1]!, Number(m[2]))
  for (const m of stdout.matchAll(/^([a-z]+): already committed on the server/gm)) out.set(m[1]!, 0)
  return out
}

interface Made {
  readonly dir: string
  readonly name: string
  readonly sha: string
  readonly crc: string
  readonly size: number
}

const fake = async (dir: string, name: string, size: number, slice: number, seed: number): Promise<Made> => {
  const r = await ferry(["fake", "--path", dir, "--name", name, "--size", String(size), "--slice", String(slice), "--seed", String(seed)])
  expect(r.code).toBe(0)
  return { dir, name, sha: shaOf(r.stdout, name)!, crc: new RegExp(`^crc32 ([0-9a-f]{8})  ${name}$`, "m").exec(r.stdout)![1]!, size }
}

describe("several receivers over one shared destination", () => {
  describe("three servers, four senders, one server killed mid-transfer", () => {
    const senders = ["a", "b", "c", "d"]
    const made: Array<Made> = []
    beforeAll(async () => {
      // 4 folders of 3 datasets: 12 datasets of 4 MiB in pieces of 16 KiB (256 each)
      await Promise.all(senders.map(async (s, k) => {
        const dir = dirs.make(`src${s}`)
        for (const [j, d] of ["x", "y", "z"].entries()) made.push(await fake(dir, `${s}${d}`, 4 * 1024 * 1024, 16 * 1024, 10 * k + j + 1))
      }))
    })

    it("every sender finishes by itself, every dataset is committed once and exact, and the killed server's datasets resend only what the shared state lacks", async () => {
      const dest = dirs.make("dest")
      const servers = await Promise.all([0, 1, 2].map(() => startReceiver(dest)))
      const addresses = servers.map((s) => s.address).join(",")
      try {
        // each sender is slowed down, so that the kill finds transfers in progress
        const sending = senders.map((s) =>
          spawnFerry(["send", "--path", made.find((m) => m.name.startsWith(s))!.dir, "--address", addresses, "--quiet", "--bwlimit", "4MiB/s"])
        )
        // the victim: the first server to open a dataset, once it holds part of one
        const victim = await Promise.race(servers.map((s) => s.waitFor(/"event":"dataset-opened"/).then(() => s)))
        await until(() => inProgress(dest).some((d) => d.holder === victim.pid && d.held >= 16 && d.held < d.count), "the victim holds part of a dataset")
        // the state at the moment of the kill: frozen first (its lease still stands), read, then killed
        victim.child.kill("SIGSTOP")
        const atKill = inProgress(dest).filter((d) => d.holder === victim.pid)
        victim.child.kill("SIGKILL")
        await victim.exited
        expect(atKill.some((d) => d.held > 0)).toBe(true)

        const codes = await Promise.all(sending.map((s) => s.exited))
        expect(codes, sending.map((s) => s.output().stderr).join("\n")).toEqual([0, 0, 0, 0])

        // one .done each, beside the exact file; nothing left in progress
        for (const m of made) {
          expect(sha256File(join(dest, m.name)), m.name).toBe(m.sha)
          expect(readFileSync(join(dest, `${m.name}.done`), "utf8")).toBe(`${m.size}\n`)
        }
        expect(readdirSync(dest).filter((n) => n.endsWith(".done")).length).toBe(made.length)
        expect(readdirSync(join(dest, ".ferry")).filter((n) => !n.startsWith(".probe"))).toEqual(["committed"])
        // committed once: no dataset has two commits among the servers' events, and each sender reports each of its own once
        const commits = servers.flatMap((s) => s.events()).filter((e) => e.event === "dataset-committed").map((e) => e.dataset!)
        expect(commits.length).toBe(new Set(commits).size)
        const sent = new Map<string, number>()
        for (const s of sending) {
          const lines = s.output().stdout.split("\n").filter((l) => / committed /.test(l))
          expect(lines.length).toBe(3)
          for (const [name, n] of sentBy(s.output().stdout)) sent.set(name, n)
        }
        expect([...sent.keys()].sort()).toEqual(made.map((m) => m.name).sort())
        // the killed server's datasets: at most what the shared state said was missing was sent again
        // (one it held whole may have been half way through its commit, which a new holder starts again)
        for (const d of atKill.filter((d) => d.held < d.count)) {
          expect(sent.get(d.dataset), `${d.dataset}: ${d.held} of ${d.count} held at the kill`).toBeLessThanOrEqual(d.count - d.held)
        }
        // taken over at once: the holder was a process of this machine that is gone
        const survivors = servers.filter((s) => s !== victim)
        expect(survivors.map((s) => s.output().stderr).join("")).toMatch(/taking over from .*, which is no longer running/)
      } finally {
        await Promise.all(servers.map((s) => s.stop()))
      }
    })
  })

  it("a dataset open on one server is Busy on another server of the same destination, and free once the first lets go", async () => {
    const dest = dirs.make("dest")
    const [one, two] = await Promise.all([startReceiver(dest), startReceiver(dest)])
    const manifest = { dataset: "shared", size: 1_000_000, sliceSize: 10_000, first: 0, count: 100 }
    let first: RawConnection | undefined
    let second: RawConnection | undefined
    try {
      first = await rawHandshake(one!.address)
      first.write(openMessage(1, manifest))
      expect((await first.next())._tag).toBe("Opened")
      second = await rawHandshake(two!.address)
      second.write(openMessage(1, manifest))
      const refused = await second.next()
      expect(refused).toMatchObject({ _tag: "Failed", code: "Busy" })
      expect((refused as { message: string }).message).toMatch(/^another server on this destination is writing it \(.+, pid \d+\); if that server has stopped, it is free within [1-3] s$/)
      // the first lets go (its client went away): the dataset is free at once, its lease removed
      first.socket.destroy()
      await until(() => !readdirSync(join(dest, ".ferry", "shared")).some((n) => n.startsWith("lease.")), "the lease is given up")
      second.write(openMessage(2, manifest))
      expect((await second.next())._tag).toBe("Opened")
    } finally {
      first?.socket.destroy()
      second?.socket.destroy()
      await Promise.all([one!.stop(), two!.stop()])
    }
  })

  describe("a lease holder paused past its lease", () => {
    const PIECES = 256
    const SLICE = 16 * 1024
    let data: Made
    let pieces: Array<{ index: number; bytes: Buffer }>
    let manifest: { dataset: string; size: number; sliceSize: number; first: number; count: number; firstSliceCrc: number }
    beforeAll(async () => {
      data = await fake(dirs.make("src"), "paused", PIECES * SLICE, SLICE, 5)
      pieces = Array.from({ length: PIECES }, (_, index) => ({ index, bytes: readFileSync(join(data.dir, pieceFileName("paused", index))) }))
      manifest = { dataset: "paused", size: data.size, sliceSize: SLICE, first: 0, count: PIECES, firstSliceCrc: zlib.crc32(gunzipSync(pieces[0]!.bytes)) }
    })

    /** Sends pieces [from, to) on handle 1 in batches of 32, starting at batch number `seq`. */
    const sendPieces = (c: RawConnection, from: number, to: number, seq = 0) => {
      for (let at = from; at < to; at += 32) c.write(piecesMessage(1, seq++, pieces.slice(at, Math.min(to, at + 32))))
    }

    /** Server A holds 200 of the 256 pieces, then is paused (SIGSTOP); B takes the dataset over once A's lease ran out, and commits it. */
    const pauseAndTakeOver = async (dest: string) => {
      const [a, b] = await Promise.all([startReceiver(dest), startReceiver(dest)])
      const holder = await rawHandshake(a!.address)
      holder.write(openMessage(1, manifest))
      expect((await holder.next())._tag).toBe("Opened")
      sendPieces(holder, 0, 200)
      await until(() => stateOf(dest, "paused")?.held === 200, "A holds 200 pieces")
      a!.child.kill("SIGSTOP")
      const started = Date.now()
      const taker = await ferry(["send", "--path", data.dir, "--address", b!.address, "--quiet"])
      expect(taker.code, taker.stderr).toBe(0)
      // B waited for A's lease to run out by its own clock, then resumed A's state: only the rest was sent
      expect(Date.now() - started).toBeGreaterThanOrEqual(LEASE_SECONDS * 1000)
      expect(taker.stdout).toMatch(new RegExp(`^paused: committed ${data.size} bytes in ${PIECES} pieces \\(56 sent\\), crc32 ${data.crc}$`, "m"))
      expect(b!.output().stderr).toMatch(/paused: taking over from .*, pid \d+, silent for 3 s/)
      expect(sha256File(join(dest, "paused"))).toBe(data.sha)
      return { a: a!, b: b!, holder }
    }

    it("cannot commit after another server took over: the file and its .done stay the other server's", async () => {
      const dest = dirs.make("dest")
      const { a, b, holder } = await pauseAndTakeOver(dest)
      try {
        const before = { ino: statSync(join(dest, "paused")).ino, done: statSync(join(dest, "paused.done")).ino }
        a.child.kill("SIGCONT")
        // A is sent the rest and the seal: everything it needs to commit, had it kept its lease
        sendPieces(holder, 200, PIECES, 100)
        holder.write(sealMessage(1, data.crc))
        expect(await holder.next()).toMatchObject({ _tag: "Failed", dataset: "paused", code: "LeaseLost" })
        await a.waitFor(/paused: lost to another server on the same destination/)
        expect(a.events().filter((e) => e.event === "dataset-committed")).toEqual([])
        expect(sha256File(join(dest, "paused"))).toBe(data.sha)
        expect(readFileSync(join(dest, "paused.done"), "utf8")).toBe(`${data.size}\n`)
        expect({ ino: statSync(join(dest, "paused")).ino, done: statSync(join(dest, "paused.done")).ino }).toEqual(before)
        expect(readdirSync(join(dest, ".ferry")).filter((n) => !n.startsWith(".probe"))).toEqual(["committed"])
        // A carries on serving: sending again finds the dataset committed
        const again = await ferry(["send", "--path", data.dir, "--address", a.address, "--quiet"])
        expect(again.code).toBe(0)
        expect(again.stdout).toMatch(/^paused: already committed on the server/m)
      } finally {
        holder.socket.destroy()
        a.child.kill("SIGCONT")
        await Promise.all([a.stop(), b.stop()])
      }
    })

    it("cannot commit, nor disturb, a new transfer of the same name started after the commit was consumed", async () => {
      const dest = dirs.make("dest")
      const { a, b, holder } = await pauseAndTakeOver(dest)
      let fresh: RawConnection | undefined
      try {
        // a consumer takes the result away; the same name comes again, on B: a new state folder, a new lease
        rmSync(join(dest, "paused.done"))
        rmSync(join(dest, "paused"))
        fresh = await rawHandshake(b.address)
        fresh.write(openMessage(1, manifest))
        expect(await fresh.next()).toMatchObject({ _tag: "Opened", held: 0 })
        sendPieces(fresh, 0, 100)
        await until(() => stateOf(dest, "paused")?.held === 100, "B holds 100 pieces of the new transfer")
        const leaseOfB = numbered(readdirSync(join(dest, ".ferry", "paused")), "lease")
        a.child.kill("SIGCONT")
        sendPieces(holder, 200, PIECES, 100)
        holder.write(sealMessage(1, data.crc))
        expect(await holder.next()).toMatchObject({ _tag: "Failed", dataset: "paused", code: "LeaseLost" })
        expect(existsSync(join(dest, "paused.done"))).toBe(false)
        expect(existsSync(join(dest, "paused"))).toBe(false)
        // A let go of its own lease only: B's lease and state are untouched
        expect(numbered(readdirSync(join(dest, ".ferry", "paused")), "lease")).toEqual(leaseOfB)
        expect(stateOf(dest, "paused")).toMatchObject({ holder: b.pid, held: 100 })
        // and the new transfer completes on B
        sendPieces(fresh, 100, PIECES, 100)
        fresh.write(sealMessage(1, data.crc))
        expect(await fresh.next()).toMatchObject({ _tag: "Committed", dataset: "paused", crc32: data.crc })
        expect(sha256File(join(dest, "paused"))).toBe(data.sha)
        expect(a.events().filter((e) => e.event === "dataset-committed")).toEqual([])
      } finally {
        holder.socket.destroy()
        fresh?.socket.destroy()
        a.child.kill("SIGCONT")
        await Promise.all([a.stop(), b.stop()])
      }
    })
  })

  it("a holder on another machine gone silent: its state is not trusted, and the dataset starts afresh", async () => {
    // What a shared filesystem can hold after the holder's machine crashed: its bitmap and CRC
    // records reached the storage, some of the data they describe did not (dirty pages are
    // written back in any order). Simulated on one machine: the holder is stopped, its lease
    // made to name another host, and ten slices it recorded zeroed.
    const dest = dirs.make("dest")
    const src = dirs.make("src")
    const data = await fake(src, "remote", 256 * 16384, 16384, 9)
    const [a, b] = await Promise.all([startReceiver(dest), startReceiver(dest)])
    const holder = await rawHandshake(a!.address)
    try {
      const pieces = Array.from({ length: 200 }, (_, index) => ({ index, bytes: readFileSync(join(src, pieceFileName("remote", index))) }))
      holder.write(openMessage(1, { dataset: "remote", size: data.size, sliceSize: 16384, first: 0, count: 256, firstSliceCrc: zlib.crc32(gunzipSync(pieces[0]!.bytes)) }))
      expect((await holder.next())._tag).toBe("Opened")
      for (let at = 0; at < 200; at += 50) holder.write(piecesMessage(1, at, pieces.slice(at, at + 50)))
      await until(() => stateOf(dest, "remote")?.held === 200, "A holds 200 pieces")
      a!.child.kill("SIGSTOP")
      const dir = join(dest, ".ferry", "remote")
      const lease = join(dir, numbered(readdirSync(dir), "lease").at(-1)!)
      const record = JSON.parse(readFileSync(lease, "utf8").trim()) as LeaseRecord
      writeFileSync(lease, encodeLease({ ...record, owner: { ...record.owner, host: "elsewhere.example" } }))
      const fd = openSync(join(dir, numbered(readdirSync(dir), "epoch").at(-1)!, "data"), "r+")
      writeSync(fd, Buffer.alloc(10 * 16384), 0, 10 * 16384, 10 * 16384)
      closeSync(fd)
      const taker = await ferry(["send", "--path", src, "--address", b!.address, "--quiet"])
      expect(taker.code, taker.stderr).toBe(0)
      expect(taker.stdout).toMatch(/^remote: committed \d+ bytes in 256 pieces \(256 sent\)/m)
      expect(b!.output().stderr).toMatch(/remote: taking over from elsewhere\.example, pid \d+, silent for 3 s/)
      expect(sha256File(join(dest, "remote"))).toBe(data.sha)
    } finally {
      holder.socket.destroy()
      a!.child.kill("SIGKILL")
      await Promise.all([a!.exited, b!.stop()])
    }
  })

  it("a server of the --address list down at start is not an error while another is up", async () => {
    const dest = dirs.make("dest")
    const src = dirs.make("src")
    const one = await fake(src, "one", 1_000_000, 16 * 1024, 1)
    const server = await startReceiver(dest)
    const down = `127.0.0.1:${await freePort()}`
    try {
      const r = await ferry(["send", "--path", src, "--address", `${down},${server.address}`, "--quiet"])
      expect(r.code, r.stderr).toBe(0)
      expect(sha256File(join(dest, "one"))).toBe(one.sha)
      // even when the sender gives up on the one that is down before it is done
      const two = await fake(src, "two", 1_000_000, 16 * 1024, 2)
      const again = await ferry(["send", "--path", src, "--address", `${server.address},${down}`, "--quiet", "--retry-for", "500 millis"])
      expect(again.code, again.stderr).toBe(0)
      expect(sha256File(join(dest, "two"))).toBe(two.sha)
    } finally {
      await server.stop()
    }
  })
})
