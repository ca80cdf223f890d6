#!/usr/bin/env node
// Several receivers on one shared destination: aggregate throughput of 1 server against N servers
// on one --dest, with the same senders (each given every server's address), on loopback, warm
// page cache. Runs alternate (1, N, 1, N, ...); every output is checked against its sha256.
// Node 20 built-ins only. See bench/README.md.
//
//   node bench/receivers.mjs [--runs 3] [--servers 3] [--senders 3] [--datasets 2] [--size-mib 100] [--slice-kib 16]

import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { mkdtemp } from "node:fs/promises"
import os from "node:os"
import { join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "")
const FERRY = join(ROOT, "bin", "ferry")
const TICKS = 100 // clock ticks per second in /proc/PID/stat (USER_HZ)

const options = { runs: 3, servers: 3, senders: 3, datasets: 2, sizeMib: 100, sliceKib: 16 }
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase())
  if (!(key in options) || !(Number(process.argv[i + 1]) > 0)) {
    console.error(`usage: node bench/receivers.mjs [--runs N] [--servers N] [--senders N] [--datasets N] [--size-mib N] [--slice-kib N]`)
    process.exit(2)
  }
  options[key] = Number(process.argv[i + 1])
}

const DATA = join(ROOT, "bench", "data", `receivers-${options.senders}x${options.datasets}x${options.sizeMib}MiB-${options.sliceKib}KiB`)
const size = options.sizeMib * 1024 * 1024
const log = (text) => process.stderr.write(`bench: ${text}\n`)

/** Runs a command to its end; resolves with its stdout and stderr, rejects on a non-zero exit. */
const run = (cmd, args) =>
  new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d) => (out += d))
    child.stderr.on("data", (d) => (err += d))
    child.on("exit", (code) => (code === 0 ? resolve({ out, err }) : reject(new Error(`${cmd} ${args.join(" ")}: exit ${code}\n${err}`))))
  })

/** The datasets, made once and kept in bench/data (git-ignored): one folder per sender. */
const prepare = async () => {
  const specFile = join(DATA, "spec.json")
  if (existsSync(specFile)) return JSON.parse(readFileSync(specFile, "utf8"))
  rmSync(DATA, { recursive: true, force: true })
  const spec = { folders: [], sha256: {} }
  for (let s = 0; s < options.senders; s++) {
    const folder = join(DATA, `sender${s}`)
    spec.folders.push(folder)
    for (let d = 0; d < options.datasets; d++) {
      const name = `s${String.fromCharCode(97 + s)}d${String.fromCharCode(97 + d)}`
      log(`making ${name} (${options.sizeMib} MiB in slices of ${options.sliceKib} KiB)`)
      const { out } = await run(FERRY, ["fake", "--path", folder, "--name", name, "--size", String(size), "--slice", `${options.sliceKib}KiB`, "--seed", String(100 + s * 10 + d)])
      spec.sha256[name] = /^sha256 ([0-9a-f]{64}) /m.exec(out)[1]
    }
  }
  writeFileSync(specFile, JSON.stringify(spec, null, 2))
  return spec
}

const sha256 = (file) =>
  new Promise((resolve, reject) => {
    const hash = createHash("sha256")
    createReadStream(file).on("data", (d) => hash.update(d)).on("end", () => resolve(hash.digest("hex"))).on("error", reject)
  })

/** user+system seconds of a live process, all its threads. */
const cpuOf = (pid) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / TICKS
}

const startServer = (dest) =>
  new Promise((resolve, reject) => {
    const child = spawn(FERRY, ["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    child.stdout.on("data", (d) => {
      out += d
      const m = /listening on (\S+)/.exec(out)
      if (m !== null) resolve({ child, address: m[1] })
    })
    child.on("exit", (code) => reject(new Error(`serve exited with ${code}`)))
  })

/** One run: `servers` servers on a fresh destination, every sender at once; wall time from the senders' start to the last exit. */
const once = async (spec, servers) => {
  const dest = await mkdtemp(join(os.tmpdir(), "ferry-receivers-bench-"))
  const started = await Promise.all(Array.from({ length: servers }, () => startServer(dest)))
  const addresses = started.map((s) => s.address).join(",")
  const cpuBefore = started.reduce((n, s) => n + cpuOf(s.child.pid), 0)
  const load = os.loadavg()[0]
  const t0 = performance.now()
  // each sender under /usr/bin/time, whose last line on stderr is its user and system seconds
  const results = await Promise.all(spec.folders.map((folder) =>
    run("/usr/bin/time", ["-f", "%U %S", FERRY, "send", "--path", folder, "--address", addresses, "--quiet"]).catch((e) => e)
  ))
  const wall = (performance.now() - t0) / 1000
  const serverCpu = started.reduce((n, s) => n + cpuOf(s.child.pid), 0) - cpuBefore
  for (const s of started) s.child.kill("SIGTERM")
  await Promise.all(started.map((s) => new Promise((r) => (s.child.exitCode !== null ? r() : s.child.once("exit", r)))))
  const failed = results.filter((r) => r instanceof Error)
  if (failed.length > 0) throw failed[0]
  for (const [name, expected] of Object.entries(spec.sha256)) {
    if ((await sha256(join(dest, name))) !== expected) throw new Error(`${name}: wrong sha256`)
    if (readFileSync(join(dest, `${name}.done`), "utf8") !== `${size}\n`) throw new Error(`${name}: wrong marker`)
  }
  const senderCpu = results.reduce((n, r) => n + r.err.trim().split("\n").at(-1).split(" ").reduce((a, b) => a + Number(b), 0), 0)
  rmSync(dest, { recursive: true, force: true })
  return { servers, wall, load, serverCpu, senderCpu }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const main = async () => {
  const spec = await prepare()
  const total = Object.keys(spec.sha256).length * size
  // warm the page cache: read every piece once, untimed
  for (const folder of spec.folders) for (const f of readdirSync(folder)) readFileSync(join(folder, f))
  const order = [1, options.servers]
  const runs = []
  for (let r = 0; r < options.runs; r++) {
    for (const servers of r % 2 === 0 ? order : [...order].reverse()) {
      const result = await once(spec, servers)
      runs.push(result)
      log(`run ${r + 1}, ${servers} server(s): ${result.wall.toFixed(2)} s, ${(total / result.wall / 1e6).toFixed(0)} MB/s, CPU ${result.serverCpu.toFixed(1)} s servers + ${result.senderCpu.toFixed(1)} s senders, load ${result.load.toFixed(1)}`)
    }
  }
  const lines = [
    `${spec.folders.length} senders, ${Object.keys(spec.sha256).length} datasets of ${options.sizeMib} MiB (slices of ${options.sliceKib} KiB), ${(total / 1e6).toFixed(0)} MB in all; ${os.cpus().length} cores (${os.cpus()[0].model}), Node ${process.version}`,
    "",
    "| servers on one --dest | runs | wall s (each) | wall s (median) | MB/s (median) | CPU s servers (median) | CPU s senders (median) | load avg at start (each) |",
    "| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"
  ]
  for (const servers of order) {
    const mine = runs.filter((r) => r.servers === servers)
    const wall = median(mine.map((r) => r.wall))
    lines.push(`| ${servers} | ${mine.length} | ${mine.map((r) => r.wall.toFixed(2)).join(", ")} | ${wall.toFixed(2)} | ${(total / wall / 1e6).toFixed(0)} | ${median(mine.map((r) => r.serverCpu)).toFixed(1)} | ${median(mine.map((r) => r.senderCpu)).toFixed(1)} | ${mine.map((r) => r.load.toFixed(1)).join(", ")} |`)
  }
  console.log(lines.join("\n"))
}

main().catch((e) => {
  console.error(`bench: ${e.message}`)
  process.exit(1)
})
