/**
 * `ferry send --early` through the built `bin/ferry` over loopback: pieces
 * renamed in and written in place while the sender runs, the first piece
 * late, a sender killed and a server killed and restarted before the
 * marker, and `--early --watch` with several datasets one after another.
 */
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { sha256File, spawnFerry, tempDirs } from "./support/cli.js"
import { freePort, heldPieces, linesOf, makeFake, startJsonServer, until } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** `ferry serve --json` on a given port (to be started again on it). */
const serveOn = async (dest: string, port: string) => {
  const server = spawnFerry(["serve", "--port", port, "--host", "127.0.0.1", "--dest", dest, "--json"])
  const m = await server.waitFor(/"event":"listening".*?"address":"([^"]+)"/)
  return {
    ...server,
    address: m[1]!,
    events: () => linesOf(server.output().stdout).map((l) => JSON.parse(l) as Record<string, unknown>),
    stop: async () => {
      if (server.child.exitCode === null) server.child.kill("SIGTERM")
      return server.exited
    }
  }
}

const pieceName = (name: string, i: number) => `${name}-${String(i).padStart(7, "0")}.gz`

describe("send --early", () => {
  it("sends pieces as they appear, resumes across a killed sender and a killed server, and commits once the marker is there", async () => {
    const staging = dirs.make("staging")
    const src = dirs.make("src")
    const dest = dirs.make("dest")
    const made = await makeFake(staging, "ea", ["--size", "400000", "--slice", "4KiB", "--seed", "91"]) // 98 pieces, the last of 2688 bytes
    const move = (i: number) => renameSync(join(staging, pieceName("ea", i)), join(src, pieceName("ea", i)))
    const port = String(await freePort())
    let server = await serveOn(dest, port)
    const address = server.address
    const senders: Array<ReturnType<typeof spawnFerry>> = []
    try {
      // piece 0 comes late: nothing is sent before it
      for (let i = 1; i <= 40; i++) move(i)
      const first = spawnFerry(["send", "--early", "--path", src, "--address", address, "--quiet"])
      senders.push(first)
      move(0)
      await until(() => heldPieces(dest, "ea") >= 41, 30_000, "41 pieces on the server")
      first.child.kill("SIGKILL")
      await first.exited
      // pieces 41..60 written in place, their first halves only for now
      const whole = (i: number) => readFileSync(join(staging, pieceName("ea", i)))
      for (let i = 41; i <= 60; i++) writeFileSync(join(src, pieceName("ea", i)), whole(i).subarray(0, whole(i).length >> 1))
      server.child.kill("SIGKILL")
      await server.exited
      server = await serveOn(dest, port)
      const second = spawnFerry(["send", "--path", src, "--address", address, "--quiet"], { env: { FERRY_EARLY: "1" } })
      senders.push(second)
      await until(() => server.events().some((e) => e.event === "dataset-opened" && e.dataset === "ea"), 30_000, "the dataset opened again")
      expect(heldPieces(dest, "ea")).toBe(41)
      for (let i = 41; i <= 60; i++) writeFileSync(join(src, pieceName("ea", i)), whole(i))
      for (let i = 61; i < 98; i++) move(i)
      // every whole slice before the marker; the last piece, shorter, waits for it
      await until(() => heldPieces(dest, "ea") >= 97, 30_000, "97 pieces on the server")
      expect(readdirSync(dest)).not.toContain("ea")
      renameSync(join(staging, "ea.done"), join(src, "ea.done"))
      expect(await second.exited).toBe(0)
      const sent = Number(new RegExp(`^ea: committed ${made.size} bytes in 98 pieces \\((\\d+) sent\\), crc32 ${made.crc}$`, "m").exec(second.output().stdout)?.[1])
      // the second sender sent only what the server did not hold
      expect(sent).toBe(98 - 41)
      expect(sha256File(join(dest, "ea"))).toBe(made.sha)
      expect(readFileSync(join(dest, "ea.done"), "utf8")).toBe(`${made.size}\n`)
    } finally {
      for (const s of senders) if (s.child.exitCode === null) s.child.kill("SIGKILL")
      await server.stop()
    }
  }, 120_000)

  it("--early --watch commits several datasets one after another, each once", async () => {
    const src = dirs.make("watched")
    const dest = dirs.make("dest")
    const server = await startJsonServer(dest)
    const watcher = spawnFerry(["send", "--early", "--watch", "--json", "--path", src, "--address", server.address, "--quiet"])
    try {
      const made = []
      for (const [name, seed] of [["wa", "71"], ["wb", "72"], ["wc", "73"]] as const) {
        const staging = dirs.make("staging")
        const m = await makeFake(staging, name, ["--size", "200000", "--slice", "4KiB", "--seed", seed])
        made.push(m)
        const pieces = readdirSync(staging).filter((n) => n.endsWith(".gz")).sort()
        // all but the last ten pieces, wait for them to be on the server, then the rest and the marker
        for (const n of pieces.slice(0, -10)) renameSync(join(staging, n), join(src, n))
        await until(() => heldPieces(dest, name) >= pieces.length - 10, 30_000, `${name}'s first pieces on the server`)
        for (const n of pieces.slice(-10)) renameSync(join(staging, n), join(src, n))
        renameSync(join(staging, `${name}.done`), join(src, `${name}.done`))
        await watcher.waitFor(new RegExp(`"event":"committed","dataset":"${name}"`))
      }
      watcher.child.kill("SIGTERM")
      expect(await watcher.exited).toBe(143)
      const committed = linesOf(watcher.output().stdout).map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.event === "committed")
      expect(committed.map((e) => e.dataset)).toEqual(["wa", "wb", "wc"])
      for (const m of made) expect(sha256File(join(dest, m.name))).toBe(m.sha)
      expect(server.events().filter((e) => e.event === "dataset-committed").map((e) => e.dataset)).toEqual(["wa", "wb", "wc"])
    } finally {
      if (watcher.child.exitCode === null) watcher.child.kill("SIGKILL")
      await server.stop()
      rmSync(src, { recursive: true, force: true })
    }
  }, 120_000)

  it("a marker that disagrees with the pieces sent early fails the dataset by name, exit 1, no .done", async () => {
    const src = dirs.make("src")
    const dest = dirs.make("dest")
    await makeFake(src, "dx", ["--size", "40960", "--slice", "4KiB", "--seed", "93", "--no-marker"]) // 10 whole slices
    const server = await startJsonServer(dest)
    try {
      const sender = spawnFerry(["send", "--early", "--path", src, "--address", server.address, "--quiet"])
      await until(() => heldPieces(dest, "dx") >= 10, 30_000, "10 pieces on the server")
      writeFileSync(join(src, "dx.done"), "38000\n")
      expect(await sender.exited).toBe(1)
      expect(sender.output().stdout).toContain("dx: failed (BadManifest): dataset dx: server refused it (BadManifest): dx.done says 38000 bytes, so the last piece dx-0000009.gz must hold 1136 bytes, but it was sent and verified with 4096")
      expect(readdirSync(dest)).not.toContain("dx.done")
      expect(readdirSync(dest)).not.toContain("dx")
    } finally {
      await server.stop()
    }
  }, 60_000)
})
