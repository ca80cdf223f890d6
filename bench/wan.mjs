#!/usr/bin/env node
// ferry on emulated long links, against plain TCP streams on the same link in the same run.
//
//   sudo node bench/wan.mjs [--links 100:0:400,100:1:400,10:0.1:400] [--runs 2] [--size 400MB]
//                           [--streams 1,4,16] [--wanlab PATH] [--ferry-args "..."]
//
// Root only: the link is made by wanlab (two network namespaces joined by a user-space delay line;
// by default ../shared/wanlab/wanlab beside the repository, or --wanlab PATH / WANLAB). A link is
// ONE_WAY_DELAY_MS:LOSS_PERCENT:MBIT (100:1:400 is 200 ms round trip, 1% loss each way, 400 Mbit/s).
// For each link, each run: 1, 4 and 16 plain TCP streams (bench/tcp-streams.mjs) carry as many
// bytes as the dataset's pieces, then `ferry send` with automatic settings sends the dataset to
// one long-running `ferry serve` (its output removed between runs). Figures are Mbit/s of piece
// bytes over the whole sending process (start to exit, handshakes and commit included); the
// plain streams time themselves from their first connection to the sink's last answer (Node's
// start and exit excluded); the ratio is ferry's median over the best plain median, and a second
// ratio takes the plain streams timed from outside as ferry is (both whole processes). RSS: the sender's peak (/usr/bin/time) and
// the server's peak over the link's runs (VmHWM). Results go to bench/results/wan-*.json.
// Never part of the test suite.

import { spawn, spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import os from "node:os"
import { join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "")
const FERRY = join(ROOT, "bin", "ferry")
const STREAMS = join(ROOT, "bench", "tcp-streams.mjs")
const A = "10.88.0.1"
const B = "10.88.0.2"

const args = process.argv.slice(2)
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 ? args[i + 1] : fallback
}
const links = flag("links", "100:0:400,100:1:400,10:0.1:400").split(",").map((l) => {
  const [delay, loss, mbit] = l.split(":").map(Number)
  return { delay, loss, mbit, name: `${2 * delay} ms RTT, ${loss}% loss, ${mbit} Mbit/s` }
})
const runs = Number(flag("runs", "2"))
const size = flag("size", "400MB")
const streamCounts = flag("streams", "1,4,16").split(",").map(Number)
const ferryArgs = flag("ferry-args", "").split(" ").filter((a) => a !== "")
const wanlab = flag("wanlab", process.env.WANLAB ?? join(ROOT, "..", "shared", "wanlab", "wanlab"))

if (process.getuid?.() !== 0) {
  console.error("bench/wan.mjs: needs root (network namespaces)")
  process.exit(2)
}
if (!existsSync(wanlab)) {
  console.error(`bench/wan.mjs: no wanlab at ${wanlab}; give --wanlab PATH`)
  process.exit(2)
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const sh = (cmd, cmdArgs) => {
  const r = spawnSync(cmd, cmdArgs, { encoding: "utf8" })
  if (r.status !== 0) throw new Error(`${cmd} ${cmdArgs.join(" ")}: ${r.stderr || r.stdout}`)
  return r.stdout
}
/** A long-running process in a namespace, resolved once its output matches `ready`. */
const background = (ns, command, ready) =>
  new Promise((resolve, reject) => {
    const child = spawn(wanlab, ["run", ns, ...command], { stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    const look = (d) => {
      out += d
      if (ready.test(out)) resolve({ child, output: () => out })
    }
    child.stdout.on("data", look)
    child.stderr.on("data", look)
    child.once("exit", (code) => reject(new Error(`${command.join(" ")} exited ${code}: ${out}`)))
  })
const timed = (ns, command) => {
  const started = performance.now()
  const r = spawnSync(wanlab, ["run", ns, "/usr/bin/time", "-f", "RSS %M", ...command], { encoding: "utf8", maxBuffer: 64 << 20 })
  const seconds = (performance.now() - started) / 1000
  if (r.status !== 0) throw new Error(`${command.join(" ")} exited ${r.status}: ${r.stderr.slice(-2000)}`)
  const rss = Number(/RSS (\d+)/.exec(r.stderr)?.[1] ?? NaN) / 1024
  return { seconds, rss, stdout: r.stdout, stderr: r.stderr }
}
const hwm = (pid) => {
  // the server is the node process under `wanlab run` (ip netns exec execs it in place)
  try {
    return Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN) / 1024
  } catch {
    return NaN
  }
}

const work = join(os.tmpdir(), `ferry-wan-${process.pid}`)
const out = join(work, "out")
const dest = join(work, "in")
mkdirSync(dest, { recursive: true })
console.log(`making a dataset of ${size} in ${out}`)
sh(FERRY, ["fake", "--path", out, "--size", size])
const pieceBytes = readdirSync(out).filter((f) => f.endsWith(".gz")).reduce((n, f) => n + statSync(join(out, f)).size, 0)
console.log(`${(pieceBytes / 1e6).toFixed(1)} MB of pieces; ${runs} run(s) per link; plain streams ${streamCounts.join(", ")}; ferry ${["send", ...ferryArgs].join(" ")}`)

const results = []
try {
  for (const link of links) {
    sh(wanlab, ["up", String(link.delay), String(link.loss), String(link.mbit)])
    const sink = await background("b", [process.execPath, STREAMS, "sink", "7500", B], /listening/)
    const server = await background("b", [FERRY, "serve", "--host", B, "--port", "7400", "--dest", dest], /listening on/)
    const figures = Object.fromEntries([...streamCounts.map((n) => [`tcp${n}`, []]), ["ferry", []]])
    const whole = Object.fromEntries(streamCounts.map((n) => [`tcp${n}`, []]))
    const senderRss = []
    try {
      for (let run = 0; run < runs; run++) {
        for (const n of streamCounts) {
          const r = timed("a", [process.execPath, STREAMS, "send", `${B}:7500`, String(n), String(pieceBytes)])
          figures[`tcp${n}`].push(JSON.parse(r.stdout.trim().split("\n").pop()).mbit)
          // the same stream timed as ferry is, from outside: its process start and exit included
          whole[`tcp${n}`].push((pieceBytes * 8) / r.seconds / 1e6)
        }
        for (const f of readdirSync(dest)) if (!f.startsWith(".")) rmSync(join(dest, f), { force: true })
        const r = timed("a", [FERRY, "send", "--path", out, "--address", `${B}:7400`, ...ferryArgs])
        figures.ferry.push((pieceBytes * 8) / r.seconds / 1e6)
        senderRss.push(r.rss)
        console.log(`  ${link.name}, run ${run + 1}: ${Object.entries(figures).map(([k, v]) => `${k} ${v.at(-1).toFixed(0)}`).join(", ")} Mbit/s`)
      }
    } finally {
      const serverRss = hwm(server.child.pid)
      server.child.kill("SIGTERM")
      sink.child.kill("SIGTERM")
      const medians = Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, median(v)]))
      const bestPlain = Math.max(...streamCounts.map((n) => medians[`tcp${n}`]))
      const bestWhole = Math.max(...streamCounts.map((n) => median(whole[`tcp${n}`])))
      results.push({ link, figures, plainWholeProcess: whole, medians, bestPlain, ratio: medians.ferry / bestPlain, ratioWholeProcess: medians.ferry / bestWhole, senderRssMiB: Math.max(...senderRss), serverRssMiB: serverRss })
      sh(wanlab, ["down"])
    }
  }
} finally {
  spawnSync(wanlab, ["down"])
  rmSync(work, { recursive: true, force: true })
}

console.log("")
console.log(`| link | ${streamCounts.map((n) => `${n} plain stream${n === 1 ? "" : "s"}`).join(" | ")} | ferry (auto) | ferry / best plain | the same, plain timed as a whole process too | RSS sender, server |`)
console.log(`|---|${streamCounts.map(() => "---|").join("")}---|---|---|---|`)
for (const r of results) {
  console.log(`| ${r.link.name} | ${streamCounts.map((n) => r.medians[`tcp${n}`].toFixed(0)).join(" | ")} | ${r.medians.ferry.toFixed(0)} | ${r.ratio.toFixed(2)} | ${r.ratioWholeProcess.toFixed(2)} | ${r.senderRssMiB.toFixed(0)} MiB, ${r.serverRssMiB.toFixed(0)} MiB |`)
}
const resultsDir = join(ROOT, "bench", "results")
mkdirSync(resultsDir, { recursive: true })
const file = join(resultsDir, `wan-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}Z.json`)
writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, kernel: os.release(), size, pieceBytes, runs, ferryArgs, results }, null, 2))
console.log(`\n(Mbit/s of piece bytes, medians of ${runs}; written to ${file})`)
