/** Sample datasets, the server's state folder and its events, as the end-to-end tests look at them. */
import { readdirSync, readFileSync, statSync } from "node:fs"
import * as net from "node:net"
import { join } from "node:path"
import { expect } from "vitest"
import { ferry, spawnFerry } from "./cli.js"

export interface Made {
  readonly dir: string
  readonly name: string
  readonly size: number
  readonly sha: string
  readonly crc: string
}

/** `ferry fake` into `dir`: the dataset's sha256 and crc32 as the command printed them. */
export const makeFake = async (dir: string, name: string, args: ReadonlyArray<string>): Promise<Made> => {
  const r = await ferry(["fake", "--path", dir, "--name", name, ...args])
  expect(r.stderr, r.stderr).not.toMatch(/error|warning/i)
  expect(r.code).toBe(0)
  const sha = new RegExp(`^sha256 ([0-9a-f]{64})  ${name}$`, "m").exec(r.stdout)?.[1]
  const crc = new RegExp(`^crc32 ([0-9a-f]{8})  ${name}$`, "m").exec(r.stdout)?.[1]
  expect(sha).toBeDefined()
  expect(crc).toBeDefined()
  const marker = args.includes("--no-marker") ? undefined : readFileSync(join(dir, `${name}.done`), "utf8")
  return { dir, name, size: marker === undefined ? NaN : Number(marker.trim()), sha: sha!, crc: crc! }
}

/** Waits for a condition on disk (or anything else polled), failing after `timeoutMs`. */
export const until = async (condition: () => boolean, timeoutMs = 30_000, what = "condition") => {
  const started = Date.now()
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what} not met within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

export const popcount = (bytes: Uint8Array) => {
  let n = 0
  for (const b of bytes) for (let v = b; v !== 0; v &= v - 1) n++
  return n
}

/** The server's state folder for a dataset, and its current epoch folder (undefined when there is none). */
export const stateOf = (dest: string, name: string) => {
  const dir = join(dest, ".ferry", name)
  let names: Array<string> = []
  try {
    names = readdirSync(dir)
  } catch {
    // no state yet
  }
  const epoch = names.filter((n) => /^epoch\.\d+$/.test(n)).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6))).at(-1)
  return { dir, names, epoch: epoch === undefined ? undefined : join(dir, epoch), leased: names.some((n) => /^lease\.\d+$/.test(n)) }
}

/** Pieces recorded in the server's state for `name` (0 when there is no state). */
export const heldPieces = (dest: string, name: string): number => {
  const { epoch } = stateOf(dest, name)
  if (epoch === undefined) return 0
  try {
    return popcount(readFileSync(join(epoch, "bitmap")))
  } catch {
    return 0
  }
}

/** The compressed bytes of a dataset's pieces on disk. */
export const pieceBytes = (dir: string, name: string): number => {
  let total = 0
  for (const n of readdirSync(dir)) if (n.startsWith(`${name}-`) && n.endsWith(".gz")) total += statSync(join(dir, n)).size
  return total
}

/** Lines of a text, without the empty ones. */
export const linesOf = (text: string) => text.split("\n").filter((l) => l !== "")

/** A loopback port free a moment ago: for a server that must come back on the same port. */
export const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer()
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })

/** A JSON-speaking server (`serve --json`): its events as they come, and its address. */
export const startJsonServer = async (dest: string, extra: ReadonlyArray<string> = []) => {
  const server = spawnFerry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, "--json", ...extra])
  const m = await server.waitFor(/"event":"listening".*?"address":"([^"]+)"/)
  const events = () => linesOf(server.output().stdout).map((l) => JSON.parse(l) as Record<string, unknown>)
  return {
    ...server,
    address: m[1]!,
    events,
    stop: async () => {
      if (server.child.exitCode === null) server.child.kill("SIGTERM")
      return server.exited
    }
  }
}

export interface LogLine {
  readonly time: string
  readonly level: string
  readonly message: string
  readonly [field: string]: unknown
}

/**
 * `ferry` run with `--debug --log-format json`: all its log lines, and those a user sees without --debug.
 */
export const loggedRun = async (args: ReadonlyArray<string>) => {
  const r = await ferry([...args, "--debug", "--log-format", "json"])
  const lines = linesOf(r.stderr).map((l) => JSON.parse(l) as LogLine)
  return { ...r, lines, shown: lines.filter((l) => l.level !== "DEBUG") }
}
