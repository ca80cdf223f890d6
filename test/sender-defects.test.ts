/**
 * Issue 18, the sending side: a server that dies while the client says hello (3), FIFOs named like
 * pieces or markers (5), a marker noticed late while a producer is still writing pieces (11).
 * Through the built `bin/ferry` where a real sender is the point; the scanner service on a real folder.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { copyFileSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll } from "vitest"
import { DatasetScanner, DatasetScannerLive } from "../src/services/DatasetScanner.js"
import { sha256File, spawnFerry, startServer, tempDirs } from "./support/cli.js"
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
