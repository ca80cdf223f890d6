#!/usr/bin/env node
// Four senders at once against one, on one long-running server: W3 (four `ferry send` of 25,000 x
// 16 KiB each, started together) and W1 (one `ferry send` of 100,000 x 16 KiB, the same bytes)
// alternate on a single warm `ferry serve`, as a production server sees both; the server's CPU
// over each transfer is read from /proc/PID/stat (user+sys, all its threads) and, per thread
// group, from /proc/PID/task. Prints each pair and the median of the pairs' W3 / W1 ratios: the
// receiver's CPU per byte with four senders against one. The first pair warms the server up (V8
// compiling its hot code) and is shown but not counted. Every output is checked (sha256).
// Uses the datasets `node bench/run.mjs` makes (bench/data/W1 and W3). Node 20 built-ins only.
//
//   node bench/senders.mjs [--pairs 5]

import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { createReadStream, existsSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { mkdtemp } from "node:fs/promises"
import os from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "")
const FERRY = join(ROOT, "bin", "ferry")
const DATA = join(ROOT, "bench", "data")
const TICKS = 100 // clock ticks per second in /proc/PID/stat (USER_HZ)

let pairs = 5
if (process.argv.length > 2) {
  pairs = Number(process.argv[3])
  if (process.argv[2] !== "--pairs" || !Number.isInteger(pairs) || pairs < 1 || process.argv.length > 4) {
    console.error("usage: node bench/senders.mjs [--pairs N]")
    process.exit(2)
  }
}
const W1 = { name: "W1", folders: [join(DATA, "W1", "large")] }
const W3 = { name: "W3", folders: ["parta", "partb", "partc", "partd"].map((p) => join(DATA, "W3", p)) }
for (const f of [...W1.folders, ...W3.folders]) {
  if (!existsSync(`${f}.sha256`)) {
    console.error(`bench: ${f} is not there; make the datasets first: node bench/run.mjs --only W1,W3 --runs 1`)
    process.exit(2)
  }
}

const log = (text) => process.stderr.write(`bench: ${text}\n`)
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Runs `ferry send` to its end; rejects on a non-zero exit. */
const send = (folder, address) =>
  new Promise((resolve, reject) => {
    const child = spawn(FERRY, ["send", "--path", folder, "--address", address, "--quiet"], { stdio: ["ignore", "ignore", "pipe"] })
    let err = ""
    child.stderr.on("data", (c) => (err += c))
    child.on("error", reject)
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`ferry send ${folder} exited ${code}: ${err.trim()}`))))
  })

/** utime + stime of a process or one of its threads, in seconds. */
const cpuOf = (statPath) => {
  const s = readFileSync(statPath, "utf8")
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ")
  return (Number(f[11]) + Number(f[12])) / TICKS
}
const threads = (pid) => {
  const out = new Map()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(tid, cpuOf(`/proc/${pid}/task/${tid}/stat`))
    } catch {
      // ended meanwhile
    }
  }
  return out
}

const sha256 = (file) =>
  new Promise((resolve, reject) => {
    const h = createHash("sha256")
    createReadStream(file).on("data", (c) => h.update(c)).on("end", () => resolve(h.digest("hex"))).on("error", reject)
  })
const expectedSha = (folder) => readFileSync(`${folder}.sha256`, "utf8").trim().split(/\s+/)[0]

const dest = await mkdtemp(join(os.tmpdir(), "ferry-senders-"))
const server = spawn(FERRY, ["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest], { stdio: ["ignore", "pipe", "pipe"] })
const address = await new Promise((resolve, reject) => {
  let seen = ""
  server.stdout.on("data", (c) => {
    seen += c
    const m = /listening on (\S+)/.exec(seen)
    if (m) resolve(m[1])
  })
  server.on("exit", (code) => reject(new Error(`ferry serve exited ${code}`)))
})
log(`ferry serve ${server.pid} on ${address}, writing to ${dest}; ${pairs} pairs after one to warm up`)

const measure = async (w) => {
  // the outputs of the run before go (as a consumer would take them); the server's own .ferry stays
  for (const e of readdirSync(dest)) if (!e.startsWith(".")) rmSync(join(dest, e), { force: true })
  const before = threads(server.pid)
  const cpu0 = cpuOf(`/proc/${server.pid}/stat`)
  const t0 = performance.now()
  await Promise.all(w.folders.map((f) => send(f, address)))
  const wall = (performance.now() - t0) / 1000
  const cpu = cpuOf(`/proc/${server.pid}/stat`) - cpu0
  const after = threads(server.pid)
  const main = (after.get(String(server.pid)) ?? 0) - (before.get(String(server.pid)) ?? 0)
  for (const f of w.folders) {
    const name = f.split("/").pop()
    if ((await sha256(join(dest, name))) !== expectedSha(f)) throw new Error(`${w.name}: ${name} differs from its source`)
  }
  return { wall, cpu, main }
}

const ratios = []
try {
  for (let i = 0; i <= pairs; i++) {
    const a = await measure(W1)
    const b = await measure(W3)
    const r = b.cpu / a.cpu
    if (i > 0) ratios.push(r)
    console.log(
      `${i === 0 ? "warm-up" : `pair ${i}`}: W1 ${a.cpu.toFixed(2)} CPU-s (main ${a.main.toFixed(2)}, wall ${a.wall.toFixed(2)} s), ` +
        `W3 ${b.cpu.toFixed(2)} CPU-s (main ${b.main.toFixed(2)}, wall ${b.wall.toFixed(2)} s): W3 / W1 ${r.toFixed(3)}`
    )
  }
  console.log(`receiver CPU per byte, four senders against one: median of ${ratios.length} pairs ${median(ratios).toFixed(3)} (pairs: ${ratios.map((r) => r.toFixed(3)).join(", ")})`)
} finally {
  server.kill("SIGTERM")
  await new Promise((r) => server.once("exit", r))
  rmSync(dest, { recursive: true, force: true })
}
