/**
 * Issue 18, the sending side: a server that dies while the client says hello (3), FIFOs named like
 * pieces or markers (5), a marker noticed late while a producer is still writing pieces (11).
 * Through the built `bin/ferry` where a real sender is the point; the scanner service on a real folder.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { execFileSync } from "node:child_process"
import { copyFileSync, rmSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import * as net from "node:net"
import { join } from "node:path"
import { afterAll } from "vitest"
import { DatasetScanner, DatasetScannerLive } from "../src/services/DatasetScanner.js"
import { ferry, sha256File, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { linesOf, makeFake } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

describe("11. a marker that appears is noticed, however many pieces arrive before it", () => {
  /** Waits for `abc.done` with the scanner, while `produce` fills the folder; then renames the marker into place. */
  const waitsThrough = (events: boolean, produce: (dir: string) => void) => {
    const dir = dirs.make("appears")
    return Effect.gen(function*() {
      const scanner = yield* DatasetScanner
      const waiting = yield* Effect.fork(scanner.appears(dir, "abc.done"))
      produce(dir)
      writeFileSync(join(dir, ".abc.done.tmp"), "5\n")
      renameSync(join(dir, ".abc.done.tmp"), join(dir, "abc.done"))
      yield* Fiber.join(waiting)
      expect(readdirSync(dir)).toContain("abc.done")
    }).pipe(Effect.provide(DatasetScannerLive("50 millis", { events })))
  }

  it.live("with filesystem events off, the poll finds it", () => waitsThrough(false, () => {}))

  it.live("after 40,000 renames beside it (more events than inotify queues), the watch or the poll finds it", () =>
    waitsThrough(true, (dir) => {
      for (let i = 0; i < 40_000; i++) {
        const name = `abc-${String(i).padStart(7, "0")}.gz`
        writeFileSync(join(dir, `.${name}`), "x")
        renameSync(join(dir, `.${name}`), join(dir, name))
      }
    }))

  it("send started beside a producer still writing pieces commits the dataset once its marker is renamed into place", async () => {
    const made = await makeFake(dirs.make("src"), "abc", ["--size", "8MiB", "--slice", "1KiB", "--seed", "3"])
    const pieces = readdirSync(made.dir).filter((n) => n.endsWith(".gz")).sort()
    const outbox = dirs.make("outbox")
    const dest = dirs.make("dest")
    const put = (n: string) => {
      copyFileSync(join(made.dir, n), join(outbox, `.${n}.tmp`))
      renameSync(join(outbox, `.${n}.tmp`), join(outbox, n))
    }
    const server = await startServer(dest)
    try {
      put(pieces[0]!)
      const sender = spawnFerry(["send", "--path", outbox, "--address", server.address, "--quiet"])
      await sender.waitFor(/waiting for abc\.done/)
      for (const n of pieces.slice(1)) put(n)
      writeFileSync(join(outbox, ".abc.done.tmp"), readFileSync(join(made.dir, "abc.done")))
      renameSync(join(outbox, ".abc.done.tmp"), join(outbox, "abc.done"))
      expect(await sender.exited).toBe(0)
      expect(sender.output().stderr).toMatch(/found abc\.done/)
      expect(linesOf(sender.output().stdout)).toEqual([expect.stringMatching(`^abc: committed ${made.size} bytes in ${pieces.length} pieces`)])
      expect(sha256File(join(dest, "abc"))).toBe(made.sha)
    } finally {
      await server.stop()
    }
  })
})

describe("5. FIFOs named like a piece or a marker", () => {
  it("a FIFO as a piece, as a first piece and as a marker: each fails by name, the good dataset beside them commits, exit 1", async () => {
    const outbox = dirs.make("fifo")
    const good = await makeFake(outbox, "good", ["--size", "20000", "--slice", "1000", "--seed", "1"])
    for (const name of ["pa", "pb", "pc"]) await makeFake(outbox, name, ["--size", "20000", "--slice", "1000", "--seed", "2"])
    const fifo = (file: string) => {
      rmSync(join(outbox, file))
      execFileSync("mkfifo", [join(outbox, file)])
    }
    fifo("pa-0000003.gz")
    fifo("pb-0000000.gz")
    fifo("pc.done")
    const dest = dirs.make("dest")
    const server = await startServer(dest)
    try {
      const r = await ferry(["send", "--path", outbox, "--address", server.address, "--quiet"], { timeout: 30_000 })
      expect(r.code, r.stderr).toBe(1)
      expect(linesOf(r.stdout).sort()).toEqual([
        expect.stringMatching(`^good: committed ${good.size} bytes`),
        expect.stringMatching(/^pa: failed \(\w+\): .*pa-0000003\.gz .*not a regular file: a FIFO/),
        expect.stringMatching(/^pb: failed \(BadDataset\): .*pb-0000000\.gz is not a regular file \(a FIFO\)/),
        expect.stringMatching(/^pc: failed \(BadDataset\): .*pc\.done is not a regular file \(a FIFO\)/)
      ])
      expect(sha256File(join(dest, "good"))).toBe(good.sha)
    } finally {
      await server.stop()
    }
  })
})

describe("3. a server that hangs up without a word when the client says hello", () => {
  it("is a lost connection, retried: the sender commits once a real server takes the port", async () => {
    const made = await makeFake(dirs.make("src"), "hup", ["--size", "20000", "--slice", "1000", "--seed", "4"])
    // a server that dies as the client says hello: it reads the hello and closes, without a byte
    let hungUp = 0
    const dying = net.createServer((socket) => {
      socket.once("data", () => {
        hungUp++
        socket.destroy()
      })
    })
    await new Promise<void>((resolve) => dying.listen(0, "127.0.0.1", resolve))
    const port = (dying.address() as net.AddressInfo).port
    const sender = spawnFerry(["send", "--path", made.dir, "--address", `127.0.0.1:${port}`, "--quiet", "--debug"])
    let server: Awaited<ReturnType<typeof startServer>> | undefined
    try {
      // the first hello is hung up on; then the port goes to a real server, as a restarted one would take it
      await sender.waitFor(/hung up|connection (closed|reset)|closed the connection/)
      expect(hungUp).toBeGreaterThan(0)
      await new Promise((resolve) => dying.close(resolve))
      const dest = dirs.make("dest")
      server = await startServer(dest, ["--port", String(port)])
      expect(await sender.exited, sender.output().stderr).toBe(0)
      expect(linesOf(sender.output().stdout)).toEqual([expect.stringMatching(`^hup: committed ${made.size} bytes`)])
      expect(sender.output().stderr).not.toMatch(/TLS server/)
      expect(sha256File(join(dest, "hup"))).toBe(made.sha)
    } finally {
      if (sender.child.exitCode === null) sender.child.kill("SIGKILL")
      dying.close()
      await server?.stop()
    }
  })
})
