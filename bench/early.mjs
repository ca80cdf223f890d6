#!/usr/bin/env node
// `send --early` against the default: a producer releases PIECES pieces of SLICE bytes (renamed
// into the sender's folder) evenly over SECONDS, then writes the marker; measured is the time from
// the marker to NAME.done on the server, for `ferry send` with and without --early.
// Usage: node bench/early.mjs [--pieces 100000] [--slice 16KiB] [--seconds 60] [--runs 1]
import { spawn, execFileSync } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? fallback : process.argv[i + 1]
}
const pieces = Number(arg("pieces", "100000"))
const slice = arg("slice", "16KiB")
const sliceBytes = Number(/^(\d+)KiB$/.exec(slice)?.[1] ?? NaN) * 1024
const seconds = Number(arg("seconds", "60"))
const runs = Number(arg("runs", "1"))
const ferry = new URL("../bin/ferry", import.meta.url).pathname
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const work = mkdtempSync(join(tmpdir(), "ferry-early-bench-"))
const made = join(work, "made")
execFileSync(ferry, ["fake", "--path", made, "--name", "bench", "--size", String(pieces * sliceBytes), "--slice", slice, "--seed", "5"], { stdio: "ignore" })
const names = readdirSync(made).filter((n) => n.endsWith(".gz")).sort()
const marker = readFileSync(join(made, "bench.done"))

const run = async (early) => {
  const staging = join(work, "staging")
  const src = join(work, "src")
  const dest = join(work, "dest")
  for (const d of [staging, src, dest]) rmSync(d, { recursive: true, force: true })
  execFileSync("cp", ["-r", made, staging])
  rmSync(join(staging, "bench.done"))
  execFileSync("mkdir", ["-p", src, dest])
  const server = spawn(ferry, ["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest], { stdio: ["ignore", "pipe", "inherit"] })
  const address = await new Promise((resolve) => {
    let out = ""
    server.stdout.on("data", (d) => {
      out += d
      const m = /listening on (\S+)/.exec(out)
      if (m) resolve(m[1])
    })
  })
  // the first piece is there when the sender starts, as a producer's would be
  renameSync(join(staging, names[0]), join(src, names[0]))
  const sender = spawn(ferry, ["send", "--path", src, "--address", address, "--quiet", ...(early ? ["--early"] : [])], { stdio: ["ignore", "pipe", "inherit"] })
  const exited = new Promise((r) => sender.once("exit", r))
  const started = Date.now()
  for (let k = 1; k < names.length; k++) {
    renameSync(join(staging, names[k]), join(src, names[k]))
    const due = started + (seconds * 1000 * k) / names.length
    if (due > Date.now() + 5) await sleep(due - Date.now())
  }
  writeFileSync(join(src, "bench.done.tmp"), marker)
  renameSync(join(src, "bench.done.tmp"), join(src, "bench.done"))
  const markedAt = Date.now()
  while (!existsSync(join(dest, "bench.done"))) await sleep(5)
  const took = (Date.now() - markedAt) / 1000
  await exited
  server.kill("SIGTERM")
  await new Promise((r) => server.once("exit", r))
  return { released: (markedAt - started) / 1000, took }
}

for (let r = 0; r < runs; r++) {
  for (const early of [false, true]) {
    const { released, took } = await run(early)
    console.log(`${early ? "--early " : "default "} ${pieces} pieces of ${slice} released over ${released.toFixed(1)} s: marker to bench.done ${took.toFixed(2)} s`)
  }
}
rmSync(work, { recursive: true, force: true })
