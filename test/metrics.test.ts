/**
 * `--metrics HOST:PORT` through the built `bin/ferry` on loopback: /metrics
 * scraped during a real transfer and after it, its counters against what was
 * sent, the exposition checked by Prometheus's own parser (promtool, from
 * scripts/promtool.mjs) when it can be had; /healthz on both sides, the
 * server's with a destination that turns read-only; anything else 404.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { spawnSync } from "node:child_process"
import { chmodSync, readdirSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { ferry, type Running, spawnFerry, startServer, tempDirs } from "./support/cli.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** promtool's path, or why there is none. */
let promtool: { readonly path: string } | { readonly problem: string }
beforeAll(() => {
  const r = spawnSync(process.execPath, [fileURLToPath(new URL("../scripts/promtool.mjs", import.meta.url))], { encoding: "utf8", timeout: 300_000 })
  promtool = r.status === 0 ? { path: r.stdout.trim() } : { problem: r.stderr.trim() || `exit ${r.status}` }
}, 300_000)

/** Prometheus's parser and lint accept the exposition without a remark. */
const promtoolAccepts = (text: string) => {
  if (!("path" in promtool)) throw new Error(`promtool is needed to check the exposition: ${promtool.problem}`)
  const r = spawnSync(promtool.path, ["check", "metrics"], { input: text, encoding: "utf8" })
  expect(r.stdout + r.stderr, text).toBe("")
  expect(r.status).toBe(0)
}

const fake = async (dir: string, args: ReadonlyArray<string>) => {
  const r = await ferry(["fake", "--path", dir, ...args])
  expect(r.code).toBe(0)
}

/** The pieces of a folder: how many, and their bytes (compressed). */
const piecesIn = (dir: string) => {
  const files = readdirSync(dir).filter((f) => f.endsWith(".gz"))
  return { count: files.length, bytes: files.reduce((n, f) => n + statSync(join(dir, f)).size, 0) }
}

const metricsAddress = async (running: Running) => (await running.waitFor(/metrics on http:\/\/(\S+)\/metrics/))[1]!

const get = async (address: string, path: string, init?: RequestInit) => {
  const r = await fetch(`http://${address}${path}`, init)
  return { status: r.status, body: await r.text(), type: r.headers.get("content-type") }
}

/** One scrape: its text, and each sample by name and labels as written (`ferry_x_total`, `ferry_y_total{code="BadPiece"}`). */
const scrape = async (address: string) => {
  const r = await get(address, "/metrics")
  expect(r.status).toBe(200)
  expect(r.type).toBe("text/plain; version=0.0.4; charset=utf-8")
  const samples = new Map<string, number>()
  for (const line of r.body.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const at = line.lastIndexOf(" ")
    samples.set(line.slice(0, at), Number(line.slice(at + 1).replace("+Inf", "Infinity")))
  }
  return { text: r.body, value: (series: string) => samples.get(series), samples }
}

type Scrape = Awaited<ReturnType<typeof scrape>>

/** Probes until `ok` holds, every 100 ms; fails with the last value after `timeoutMs`. */
const until = async <A>(probe: () => Promise<A>, ok: (a: A) => boolean, timeoutMs = 30_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const a = await probe()
    if (ok(a)) return a
    if (Date.now() > deadline) throw new Error(`not so after ${timeoutMs} ms: ${typeof a === "object" && a !== null && "text" in a ? (a as { text: string }).text : JSON.stringify(a)}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const sum = (s: Scrape, prefix: string) => [...s.samples].filter(([k]) => k.startsWith(prefix)).reduce((n, [, v]) => n + v, 0)

describe("--metrics", () => {
  it("promtool is there to check the exposition (scripts/promtool.mjs)", () => {
    expect("problem" in promtool ? promtool.problem : "").toBe("")
    if (!("path" in promtool)) return
    const r = spawnSync(promtool.path, ["--version"], { encoding: "utf8" })
    expect(r.status).toBe(0)
    expect(r.stdout + r.stderr).toMatch(/^promtool, version \d+\.\d+/)
  })

  it("serve and send: the counters follow a transfer, scraped during it and after, and agree with what was sent", async () => {
    const size = 24 * 1024 * 1024
    const src = dirs.make("src")
    await fake(src, ["--size", String(size), "--slice", "16KiB", "--seed", "3"])
    const pieces = piecesIn(src)
    expect(pieces.count).toBe(1536)
    const dest = dirs.make("dest")
    const server = await startServer(dest, ["--metrics", "127.0.0.1:0"])
    try {
      const atServer = await metricsAddress(server)
      const before = await scrape(atServer)
      expect(before.value("ferry_serve_received_bytes_total")).toBe(0)
      expect(before.value("ferry_serve_datasets_committed_total")).toBe(0)
      expect(before.value("ferry_serve_connections_open")).toBe(0)
      expect(before.value("ferry_serve_batch_seconds_count")).toBe(0)
      expect(before.value("ferry_serve_destination_free_bytes")).toBeGreaterThan(0)
      expect(before.value("ferry_worker_threads{pool=\"inflate\"}")).toBeGreaterThanOrEqual(1)
      expect(Math.abs(before.value("process_start_time_seconds")! - Date.now() / 1000)).toBeLessThan(300)
      promtoolAccepts(before.text)

      // slowed down, so that it is still going on while we look
      const sender = spawnFerry(["send", "--path", src, "--address", server.address, "--connections", "1", "--bwlimit", "4MiB/s", "--quiet", "--metrics", "127.0.0.1:0"])
      const atSender = await metricsAddress(sender)
      const during = await until(() => scrape(atServer), (s) => s.value("ferry_serve_received_bytes_total")! > 0)
      expect(during.value("ferry_serve_received_bytes_total")).toBeLessThan(pieces.bytes)
      expect(during.value("ferry_serve_written_bytes_total")).toBeLessThan(size)
      expect(during.value("ferry_serve_datasets_in_progress")).toBe(1)
      expect(during.value("ferry_serve_datasets_opened_total")).toBe(1)
      expect(during.value("ferry_serve_datasets_committed_total")).toBe(0)
      expect(during.value("ferry_serve_connections_open")).toBe(1)
      expect(during.value("ferry_serve_connections_accepted_total")).toBe(1)
      promtoolAccepts(during.text)
      // the rate is sampled every second: it shows once a second of acks has gone by
      const sending = await until(() => scrape(atSender), (s) => s.value("ferry_send_rate_bytes_per_second")! > 0)
      expect(sending.value("ferry_send_rate_bytes_per_second")).toBeLessThan(64 * 1024 * 1024)
      expect(sending.value("ferry_send_bytes_total")).toBeGreaterThan(0)
      expect(sending.value("ferry_send_bytes_total")).toBeLessThan(pieces.bytes)
      expect(sending.value("ferry_send_servers_up")).toBe(1)
      expect(sending.value("ferry_send_bwlimit_bytes_per_second")).toBe(4 * 1024 * 1024)
      expect(sending.value("ferry_send_datasets_committed_total")).toBe(0)
      // the addon reads the batches on libuv's pool: no reader thread starts
      expect(sending.value("ferry_worker_threads{pool=\"read\"}")).toBe(0)
      expect(await get(atSender, "/healthz")).toMatchObject({ status: 200, body: "ok\n" })
      promtoolAccepts(sending.text)
      expect(await sender.exited).toBe(0)

      const after = await until(() => scrape(atServer), (s) => s.value("ferry_serve_connections_open") === 0)
      expect(after.value("ferry_serve_received_bytes_total")).toBe(pieces.bytes)
      expect(after.value("ferry_serve_written_bytes_total")).toBe(size)
      expect(after.value("ferry_serve_pieces_verified_total")).toBe(pieces.count)
      expect(after.value("ferry_serve_datasets_opened_total")).toBe(1)
      expect(after.value("ferry_serve_datasets_committed_total")).toBe(1)
      expect(after.value("ferry_serve_datasets_in_progress")).toBe(0)
      expect(after.value("ferry_serve_connections_accepted_total")).toBe(1)
      expect(after.value("ferry_serve_handshakes_failed_total")).toBe(0)
      expect(sum(after, "ferry_serve_connections_refused_total")).toBe(0)
      const batches = after.value("ferry_serve_batches_total")!
      // batches of about 2 MiB of pieces (sized on the first piece), of at most 4096 pieces
      expect(batches).toBeGreaterThanOrEqual(Math.ceil(pieces.bytes / (4 * 1024 * 1024)))
      expect(batches).toBeLessThanOrEqual(pieces.count)
      expect(after.value("ferry_serve_batch_seconds_count")).toBe(batches)
      expect(after.value("ferry_serve_batch_seconds_bucket{le=\"+Inf\"}")).toBe(batches)
      expect(after.value("ferry_serve_batch_seconds_sum")).toBeGreaterThan(0)
      expect(sum(after, "ferry_worker_busy_seconds_total{pool=\"inflate\"")).toBeGreaterThan(0)
      promtoolAccepts(after.text)

      // a bad piece: the labelled counters
      const bad = dirs.make("src")
      await fake(bad, ["--name", "bad", "--size", "10000", "--slice", "1000"])
      writeFileSync(join(bad, "bad-0000003.gz"), "this is not gzip at all")
      expect((await ferry(["send", "--path", bad, "--address", server.address, "--connections", "1"])).code).toBe(1)
      const failed = await scrape(atServer)
      expect(failed.value("ferry_serve_bad_pieces_total{reason=\"BadPiece\"}")).toBe(1)
      expect(failed.value("ferry_serve_datasets_failed_total{code=\"BadPiece\"}")).toBe(1)
      expect(failed.value("ferry_serve_datasets_opened_total")).toBe(2)
      expect(failed.value("ferry_serve_datasets_committed_total")).toBe(1)
      promtoolAccepts(failed.text)
    } finally {
      await server.stop()
    }
  })

  it("send --watch: what it sent, its reconnections, and /healthz while its server is away", async () => {
    const src = dirs.make("src")
    await fake(src, ["--name", "one", "--size", "2000000", "--slice", "8KiB"])
    const one = piecesIn(src)
    const dest = dirs.make("dest")
    let server = await startServer(dest)
    const port = server.address.slice(server.address.lastIndexOf(":") + 1)
    const sender = spawnFerry(["send", "--watch", "--path", src, "--address", server.address, "--quiet", "--metrics", "127.0.0.1:0"])
    try {
      const at = await metricsAddress(sender)
      const sent = await until(() => scrape(at), (s) => s.value("ferry_send_datasets_committed_total") === 1)
      expect(sent.value("ferry_send_pieces_total")).toBe(one.count)
      expect(sent.value("ferry_send_bytes_total")).toBe(one.bytes)
      expect(sent.value("ferry_send_acked_bytes_total")).toBe(2000000)
      expect(sent.value("ferry_send_servers_up")).toBe(1)
      expect(sent.value("ferry_send_bwlimit_bytes_per_second")).toBe(0)
      expect(sent.value(`ferry_send_reconnections_total{server="${server.address}"}`)).toBeUndefined()
      promtoolAccepts(sent.text)
      expect(await get(at, "/healthz")).toMatchObject({ status: 200, body: "ok\n" })

      // the server goes away: nothing to send, so still healthy
      await server.stop()
      await until(() => scrape(at), (s) => s.value("ferry_send_servers_up") === 0)
      expect((await get(at, "/healthz")).status).toBe(200)
      // something to send and no server: not healthy, and it says why
      await fake(src, ["--name", "two", "--size", "100000", "--slice", "8KiB"])
      const unhealthy = await until(() => get(at, "/healthz"), (r) => r.status === 503)
      expect(unhealthy.body).toBe("no server is up, and 1 dataset(s) wait to be sent\n")

      // back on the same port: one reconnection, the dataset goes, healthy again
      server = await startServer(dest, ["--port", port])
      const back = await until(() => scrape(at), (s) => s.value("ferry_send_datasets_committed_total") === 2, 45_000)
      expect(back.value(`ferry_send_reconnections_total{server="127.0.0.1:${port}"}`)).toBe(1)
      expect(back.value("ferry_send_servers_up")).toBe(1)
      expect(back.value("ferry_send_pieces_total")).toBe(piecesIn(src).count)
      expect(await get(at, "/healthz")).toMatchObject({ status: 200, body: "ok\n" })
      promtoolAccepts(back.text)
    } finally {
      sender.child.kill("SIGTERM")
      await sender.exited
      await server.stop()
    }
  }, 90_000)

  it("serve /healthz: ok while listening with a writable destination, 503 with the reason when it is not; anything else 404", async () => {
    const dest = dirs.make("dest")
    const root = process.getuid?.() === 0
    // as root every folder is writable: make the destination a filesystem of its own, and turn it read-only
    if (root) {
      const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", dest], { encoding: "utf8" })
      expect(mounted.stderr, "as root, a tmpfs is mounted to be made read-only").toBe("")
      expect(mounted.status).toBe(0)
    }
    const remount = (mode: "ro" | "rw") => {
      const r = spawnSync("mount", ["-o", `remount,${mode}`, dest], { encoding: "utf8" })
      expect(r.stderr).toBe("")
      expect(r.status).toBe(0)
    }
    // from the environment, as every flag can be
    const server = await startServer(dest, [], { FERRY_METRICS: "127.0.0.1:0" })
    try {
      const at = await metricsAddress(server)
      expect(await get(at, "/healthz")).toEqual({ status: 200, body: "ok\n", type: "text/plain; charset=utf-8" })
      if (root) remount("ro")
      else chmodSync(join(dest, ".ferry"), 0o555)
      const sick = await get(at, "/healthz")
      expect(sick.status).toBe(503)
      expect(sick.body).toBe(root ? `${dest}: is on a read-only filesystem; ferry needs to write there\n` : `${dest}: cannot create state folder .ferry (permission denied)\n`)
      expect(sick.body.split("\n")).toHaveLength(2)
      if (root) remount("rw")
      else chmodSync(join(dest, ".ferry"), 0o755)
      expect(await get(at, "/healthz")).toMatchObject({ status: 200, body: "ok\n" })

      expect((await get(at, "/")).status).toBe(404)
      expect((await get(at, "/metrics/extra")).status).toBe(404)
      expect((await get(at, "/healthz?verbose=1")).status).toBe(200)
      const post = await get(at, "/metrics", { method: "POST", body: "x" })
      expect(post.status).toBe(405)

      // a port that is taken: one line, exit 1
      const taken = await ferry(["serve", "--port", "0", "--dest", dirs.make("dest"), "--host", "127.0.0.1", "--metrics", at])
      expect(taken.code).toBe(1)
      expect(taken.stderr).toContain(`ferry: ${at}: cannot serve metrics: the address is in use`)
      const wrong = await ferry(["serve", "--port", "0", "--dest", dirs.make("dest"), "--metrics", "nowhere"])
      expect(wrong.code).toBe(2)
      expect(wrong.stderr).toMatch(/^ferry: --metrics must be HOST:PORT \(port 0 picks a free one\), not "nowhere"$/m)
    } finally {
      await server.stop()
      if (root) spawnSync("umount", [dest])
    }
  })
})
