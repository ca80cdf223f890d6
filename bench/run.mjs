#!/usr/bin/env node
// ferry benchmark: ferry send/serve against the shell one-liners
//   receiver: nc -l 127.0.0.1 PORT | gzip -d > OUT        (and igzip -d; W4 adds `&& sync OUT`)
//   sender:   find DIR -maxdepth 1 -name 'NAME-*.gz' | LC_ALL=C sort | xargs cat | nc -N 127.0.0.1 PORT
// on loopback, warm page cache. One long-running `ferry serve` per ferry contender and workload
// (outputs removed between runs); wall time, and the CPU of the receiving side and of the sending
// side separately, each against the matching half of the igzip one-liner. ferry-tls is ferry over
// TLS (self-signed certificate made with openssl once per invocation), on W1 unless named in
// --contenders; ferry-metrics is ferry with `serve --metrics 127.0.0.1:0`, only when named (and
// only when this ferry has that flag). See bench/README.md. Node 20 built-ins only.
//
//   node bench/run.mjs [--quick] [--runs N] [--only W1,W2,W3,W4]
//                      [--contenders ferry,ferry-tls,ferry-metrics,gzip,igzip]
//                      [--timeout SECONDS] [--no-install]

import { spawn, spawnSync } from "node:child_process"
import { createHash } from "node:crypto"
import { createReadStream, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { mkdtemp, readFile, rm } from "node:fs/promises"
import net from "node:net"
import os from "node:os"
import { basename, join } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "")
const DATA = join(ROOT, "bench", "data")
const RESULTS = join(ROOT, "bench", "results")
const FERRY = join(ROOT, "bin", "ferry")
const TIME = "/usr/bin/time"
const TIME_FMT = "%e %U %S %M" // elapsed, user, sys (s), max RSS (KiB)
const SPEC_VERSION = 1 // bump to force regeneration of every cached workload
const QUICK_FACTOR = 20
const KiB = 1024
const MiB = 1024 * 1024
const ALL_WORKLOADS = ["W1", "W2", "W3", "W4"]
const ALL_CONTENDERS = ["ferry", "ferry-tls", "ferry-metrics", "gzip", "igzip"]
const DEFAULT_CONTENDERS = ["ferry", "ferry-tls", "gzip", "igzip"] // ferry-metrics only when named
const FERRY_CONTENDERS = new Set(["ferry", "ferry-tls", "ferry-metrics"]) // not one-liners: never the "best one-liner"
const ONE_LINERS = ["gzip", "igzip"]
const REF_LINE = "igzip" // the one-liner every ratio column is against (gzip's ratios are reported beside)
const TLS_DEFAULT_WORKLOADS = ["W1"] // ferry-tls runs only here unless --contenders names it
const METRICS_ARGS = ["--metrics", "127.0.0.1:0"] // what ferry-metrics adds to `ferry serve`
// The certificate of ferry-tls: self-signed P-256, valid for localhost and 127.0.0.1.
const tlsCertArgs = (key, cert) => [
  "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
  "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
]

// ---------------------------------------------------------------- options

function usage() {
  return `usage: node bench/run.mjs [options]     (or: npm run bench -- [options])
  --quick                 shrink every workload ${QUICK_FACTOR}x (to try the harness; numbers are not representative)
  --runs N                runs per contender and workload, alternating (default 5)
  --only W1,W2,W3,W4      workloads to run (default all; W3 also needs W1 as its 1-client reference)
  --contenders LIST       from ferry,ferry-tls,ferry-metrics,gzip,igzip (default all but ferry-metrics;
                          by default ferry-tls runs on W1 only, naming it here runs it on every
                          selected workload; ferry-metrics runs only when named, and only when
                          \`bin/ferry serve --help\` mentions --metrics)
  --timeout SECONDS       time limit of a single run (default 600)
  --no-install            do not try apt-get install for missing nc / igzip
  -h, --help              this text`
}

function die(msg) {
  console.error(`bench: ${msg}`)
  process.exit(2)
}

function parseArgs(argv) {
  const o = { quick: false, runs: 5, only: [...ALL_WORKLOADS], contenders: [...DEFAULT_CONTENDERS], contendersGiven: false, timeoutS: 600, install: true }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const eq = arg.indexOf("=")
    const key = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg
    const value = () => (arg.startsWith("--") && eq > 0 ? arg.slice(eq + 1) : argv[++i] ?? die(`${key} needs a value`))
    const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean)
    switch (key) {
      case "--quick": o.quick = true; break
      case "--no-install": o.install = false; break
      case "--runs": o.runs = Number(value()); break
      case "--timeout": o.timeoutS = Number(value()); break
      case "--only": o.only = list(value()).map((s) => s.toUpperCase()); break
      case "--contenders": o.contenders = list(value()).map((s) => s.toLowerCase()); o.contendersGiven = true; break
      case "-h": case "--help": console.log(usage()); process.exit(0)
      default: die(`unknown argument ${arg}\n${usage()}`)
    }
  }
  if (!Number.isInteger(o.runs) || o.runs < 1) die("--runs must be a positive integer")
  if (!(o.timeoutS > 0)) die("--timeout must be a positive number of seconds")
  for (const w of o.only) if (!ALL_WORKLOADS.includes(w)) die(`unknown workload ${w} (${ALL_WORKLOADS.join(", ")})`)
  for (const c of o.contenders) if (!ALL_CONTENDERS.includes(c)) die(`unknown contender ${c} (${ALL_CONTENDERS.join(", ")})`)
  if (o.only.length === 0 || o.contenders.length === 0) die("nothing to run")
  o.only = ALL_WORKLOADS.filter((w) => o.only.includes(w))
  o.contenders = ALL_CONTENDERS.filter((c) => o.contenders.includes(c))
  return o
}

// ---------------------------------------------------------------- workloads

const BASE_WORKLOADS = {
  W1: { clients: 1, datasets: [{ name: "large", pieces: 100_000, slice: 16 * KiB, seed: 1001 }] },
  W2: { clients: 1, datasets: [{ name: "small", pieces: 500_000, slice: 1 * KiB, seed: 2002 }] },
  W3: {
    clients: 4,
    datasets: ["parta", "partb", "partc", "partd"].map((name, i) => ({ name, pieces: 25_000, slice: 16 * KiB, seed: 3001 + i })),
  },
  // fsync: the one-liners' receivers end with `&& sync OUT/NAME`, as ferry fsyncs before it commits
  W4: { clients: 1, fsync: true, datasets: [{ name: "medium", pieces: 10_000, slice: 16 * KiB, seed: 4001 }] },
}

function makeWorkload(id, quick) {
  const base = BASE_WORKLOADS[id]
  const dir = join(DATA, quick ? `${id}-quick` : id)
  const datasets = base.datasets.map((d) => {
    const pieces = quick ? Math.ceil(d.pieces / QUICK_FACTOR) : d.pieces
    return { name: d.name, pieces, slice: d.slice, size: pieces * d.slice, seed: d.seed, dir: join(dir, d.name), sha256: null }
  })
  const d0 = datasets[0]
  const each = `${d0.pieces.toLocaleString("en-US")} pieces of ${d0.slice / KiB} KiB`
  const description =
    datasets.length === 1
      ? `${each}, one dataset`
      : `${datasets.length} datasets of ${each}, ${datasets.length} clients at once to one server`
  const bytes = datasets.reduce((s, d) => s + d.size, 0)
  const fsync = Boolean(base.fsync)
  return { id, dir, quick, clients: base.clients, datasets, description: description + (fsync ? "; the one-liners fsync the output (sync FILE)" : ""), bytes, fsync, referenceOnly: false }
}

function specOf(w) {
  return {
    specVersion: SPEC_VERSION,
    id: w.id,
    quick: w.quick,
    datasets: w.datasets.map(({ name, pieces, slice, size, seed }) => ({ name, pieces, slice, size, seed })),
  }
}

const PIECE_RE = (name) => new RegExp(`^${name}-\\d{7}\\.gz$`)

function datasetLooksComplete(d) {
  try {
    if (readFileSync(join(d.dir, `${d.name}.done`), "utf8").trim() !== String(d.size)) return false
    const re = PIECE_RE(d.name)
    let n = 0
    for (const f of readdirSync(d.dir)) if (re.test(f)) n++
    return n === d.pieces
  } catch {
    return false
  }
}

async function ensureData(w) {
  const specPath = join(w.dir, "spec.json")
  const spec = specOf(w)
  let cached = null
  try {
    cached = JSON.parse(readFileSync(specPath, "utf8"))
  } catch {}
  if (
    cached &&
    JSON.stringify(cached.spec) === JSON.stringify(spec) &&
    w.datasets.every((d) => /^[0-9a-f]{64}$/.test(cached.sha256?.[d.name] ?? "") && datasetLooksComplete(d))
  ) {
    for (const d of w.datasets) d.sha256 = cached.sha256[d.name]
    log(`${w.id}: using cached data in ${rel(w.dir)}`)
    return
  }
  log(`${w.id}: generating ${w.description} (${fmtBytes(w.bytes)}) in ${rel(w.dir)}${cached ? " (spec changed or data incomplete)" : ""}`)
  rmSync(w.dir, { recursive: true, force: true })
  mkdirSync(w.dir, { recursive: true })
  const sha256 = {}
  for (const d of w.datasets) {
    await haltIfStopping()
    const ctx = newCtx()
    const child = launch(FERRY, ["fake", "--path", d.dir, "--name", d.name, "--size", String(d.size), "--slice", String(d.slice), "--seed", String(d.seed)], ctx, { stderr: "inherit" })
    const r = await child.done
    const m = r.stdout.match(/^sha256 ([0-9a-f]{64})\s+(\S+)\s*$/m)
    if (r.code !== 0 || !m || m[2] !== d.name) throw new Error(`ferry fake for ${d.name} failed (exit ${r.code ?? r.signal}): ${lastLine(r.stderr || r.stdout)}`)
    if (!datasetLooksComplete(d)) throw new Error(`ferry fake for ${d.name} did not write ${d.pieces} pieces and ${d.name}.done`)
    d.sha256 = sha256[d.name] = m[1]
    writeFileSync(join(w.dir, `${d.name}.sha256`), `${m[1]}  ${d.name}\n`)
  }
  // spec.json last: its presence means the data is complete
  writeAtomic(specPath, JSON.stringify({ spec, sha256, generated: new Date().toISOString() }, null, 2) + "\n")
}

// ---------------------------------------------------------------- processes

let stopping = false // set on Ctrl-C / SIGTERM: start nothing new, wait for the exit timer
const haltIfStopping = () => (stopping ? new Promise(() => {}) : undefined)
const live = new Set() // every child we started and that has not closed yet
const tempDirs = new Set()

function killGroup(child, sig) {
  if (!child.pid) return
  try {
    process.kill(-child.pid, sig) // children are process-group leaders (detached)
  } catch {
    try { child.kill(sig) } catch {}
  }
}

function killAll(sig) {
  for (const c of live) killGroup(c, sig)
}

function newCtx() {
  return { children: new Set(), timedOut: false }
}

const keepTail = (s, n = 64 * 1024) => (s.length > n ? s.slice(s.length - n) : s)

// Starts a process in its own process group; child.done resolves (never rejects)
// with { code, signal, stdout, stderr, error } once it has exited and closed stdio.
function launch(cmd, args, ctx, { stderr = "pipe" } = {}) {
  if (stopping) throw new Error("interrupted")
  const child = spawn(cmd, args, { detached: true, stdio: ["ignore", "pipe", stderr] })
  const out = { stdout: "", stderr: "" }
  live.add(child)
  ctx?.children.add(child)
  child.stdout.setEncoding("utf8")
  child.stdout.on("data", (d) => (out.stdout = keepTail(out.stdout + d)))
  if (child.stderr) {
    child.stderr.setEncoding("utf8")
    child.stderr.on("data", (d) => (out.stderr = keepTail(out.stderr + d)))
  }
  child.done = new Promise((resolve) => {
    let settled = false
    const finish = (code, signal, error) => {
      if (settled) return
      settled = true
      live.delete(child)
      resolve({ code, signal, error, ...out })
    }
    child.on("error", (e) => finish(null, null, e))
    child.on("close", (code, signal) => finish(code, signal))
  })
  return child
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function stopProcess(child, graceMs = 10_000) {
  killGroup(child, "SIGTERM")
  const t = setTimeout(() => killGroup(child, "SIGKILL"), graceMs)
  await child.done
  clearTimeout(t)
}

function waitForLine(child, re, ms) {
  return new Promise((resolve, reject) => {
    let buf = ""
    let over = false
    const end = (f) => {
      if (over) return
      over = true
      clearTimeout(timer)
      child.stdout.off("data", onData)
      f()
    }
    const onData = (d) => {
      buf += d
      const m = buf.match(re)
      if (m) end(() => resolve(m))
    }
    const timer = setTimeout(() => end(() => reject(new Error(`no "listening on" line within ${ms / 1000} s`))), ms)
    child.stdout.on("data", onData)
    child.done.then((r) => end(() => reject(new Error(`server exited before listening (${r.code ?? r.signal}): ${lastLine(r.stderr)}`))))
  })
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

function isListening(port) {
  const hex = port.toString(16).toUpperCase().padStart(4, "0")
  for (const f of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = ""
    try { text = readFileSync(f, "utf8") } catch { continue }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/)
      if (cols.length > 3 && cols[1].endsWith(`:${hex}`) && cols[3] === "0A") return true
    }
  }
  return false
}

async function waitListening(port, child, ctx, ms = 15_000) {
  let exited = null
  child.done.then((r) => (exited = r))
  const t0 = Date.now()
  for (;;) {
    if (isListening(port)) return
    if (exited) throw new Error(`receiver exited before listening on ${port} (${exited.code ?? exited.signal}): ${lastLine(exited.stderr)}`)
    if (ctx.timedOut) throw new Error("timed out")
    if (Date.now() - t0 > ms) throw new Error(`receiver not listening on ${port} after ${ms / 1000} s`)
    await sleep(5)
  }
}

let CLK_TCK = 100
function procCpuS(pid) {
  const { userS, sysS } = procCpuSplit(pid)
  return userS + sysS
}
function procCpuSplit(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ") // f[0] is field 3 (state)
  return { userS: Number(f[11]) / CLK_TCK, sysS: Number(f[12]) / CLK_TCK } // utime, stime (fields 14, 15)
}
function procHwmKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmHWM:\s+(\d+)\s+kB/m)
  return m ? Number(m[1]) : null
}
// Resets the peak RSS (VmHWM) to the current RSS, so that a long-running server's peak is per run.
// Returns false when the kernel refuses (the peak then covers the server's life so far).
function resetHwm(pid) {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5")
    return true
  } catch {
    return false
  }
}

// The CPU of a process and of each of its threads, now:
// { cpuS, userS, sysS, threads: Map(tid -> { tid, comm, cpuS, wchan }) }.
// wchan (what a sleeping thread waits in) tells threads apart when they carry no name of their own.
function threadSnapshot(pid) {
  const { userS, sysS } = procCpuSplit(pid)
  const threads = new Map()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const base = `/proc/${pid}/task/${tid}`
    try {
      const stat = readFileSync(`${base}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      const comm = readFileSync(`${base}/comm`, "utf8").trim()
      let wchan = ""
      try { wchan = readFileSync(`${base}/wchan`, "utf8").trim() } catch {}
      threads.set(Number(tid), { tid: Number(tid), comm, cpuS: (Number(fields[11]) + Number(fields[12])) / CLK_TCK, wchan })
    } catch {} // the thread ended meanwhile
  }
  return { cpuS: userS + sysS, userS, sysS, threads }
}

// Groups a thread of a Node process: by its name when it has one of its own (newer Node names its
// threads "V8 DefaultWorke", "libuv-worker", "WorkerThread"...), otherwise (Node 20 names none:
// every thread shows the process name) by what it waits in when idle: a thread with its own event
// loop (epoll) is a worker_threads worker, one on a futex is a pool thread (V8 platform workers,
// libuv thread pool, the inspector's signal thread).
function threadGroup(pid, tid, comm, mainComm, wchans) {
  if (tid === pid) return "main"
  if (/^V8 /.test(comm)) return "V8 helpers"
  if (/^libuv-worker/.test(comm)) return "libuv pool"
  if (/^WorkerThread/i.test(comm)) return "workers"
  if (comm !== mainComm) return comm
  const w = wchans.find((x) => /epoll|futex/.test(x)) ?? ""
  if (/epoll/.test(w)) return "workers"
  if (/futex/.test(w)) return "pool threads"
  return "other"
}

// Per-thread CPU between two snapshots of process pid, grouped. "unattributed" is the process's CPU
// over the window minus the sum over its live threads: the CPU of threads that ended within the
// window, and the difference between the kernel's process and per-thread tick accounting (a few
// hundredths of a second either way).
function threadCpu(pid, before, after) {
  const mainComm = after.threads.get(pid)?.comm ?? before.threads.get(pid)?.comm ?? ""
  const threads = []
  for (const [tid, a] of after.threads) {
    const b = before.threads.get(tid)
    const group = threadGroup(pid, tid, a.comm, mainComm, [b?.wchan ?? "", a.wchan])
    threads.push({ tid, comm: a.comm, group, cpuS: +(a.cpuS - (b?.cpuS ?? 0)).toFixed(2), started: !b })
  }
  const groups = {}
  for (const t of threads) groups[t.group] = +((groups[t.group] ?? 0) + t.cpuS).toFixed(2)
  const rest = after.cpuS - before.cpuS - threads.reduce((s, t) => s + t.cpuS, 0)
  if (Math.abs(rest) > 0.015) groups.unattributed = +rest.toFixed(2) // one tick is rounding
  const ended = [...before.threads.keys()].filter((tid) => !after.threads.has(tid)).length
  return { groups, threads, endedThreads: ended }
}

// Parses a /usr/bin/time -f '%e %U %S %M' -o FILE output.
async function readTimeFile(path) {
  const text = await readFile(path, "utf8")
  const line = text.trim().split("\n").filter((l) => /^[\d.]+ [\d.]+ [\d.]+ \d+$/.test(l.trim())).pop()
  if (!line) throw new Error(`unreadable time output ${basename(path)}: ${lastLine(text)}`)
  const [e, u, s, m] = line.trim().split(" ").map(Number)
  return { elapsedS: e, cpuS: u + s, userS: u, sysS: s, maxRssKiB: m }
}

async function makeTemp(prefix) {
  const d = await mkdtemp(join(os.tmpdir(), prefix))
  tempDirs.add(d)
  return d
}
async function removeTemp(d) {
  await rm(d, { recursive: true, force: true })
  tempDirs.delete(d)
}

function sha256File(path) {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256")
    createReadStream(path, { highWaterMark: 4 * MiB })
      .on("data", (b) => h.update(b))
      .on("end", () => resolve(h.digest("hex")))
      .on("error", reject)
  })
}

// Runs fn(ctx) with a time limit: on expiry every child of the run is killed and the run fails.
async function timedRun(fn, timeoutS) {
  const ctx = newCtx()
  const timer = setTimeout(() => {
    ctx.timedOut = true
    for (const c of ctx.children) killGroup(c, "SIGKILL")
  }, timeoutS * 1000)
  try {
    const r = await fn(ctx)
    if (ctx.timedOut) throw new Error("timed out")
    return { ok: true, ...r }
  } catch (e) {
    return { ok: false, error: ctx.timedOut ? `timed out after ${timeoutS} s` : String(e?.message ?? e) }
  } finally {
    clearTimeout(timer)
    for (const c of ctx.children) killGroup(c, "SIGKILL")
  }
}

// ---------------------------------------------------------------- contenders

const q = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replace(/'/g, `'\\''`)}'`)

// The one-liners as stages; `timed` wraps every stage in /usr/bin/time.
function pipeline(stages, redirect, timing) {
  const parts = stages.map((s, j) => {
    const t = timing ? `${TIME} -f ${q(TIME_FMT)} -o ${q(join(timing.dir, `${timing.tag}-${j}-${s.label}`))} ` : ""
    return `${s.env ? s.env + " " : ""}${t}${s.cmd}`
  })
  return parts.join(" | ") + (redirect ? ` > ${redirect}` : "")
}
function receiverStages(tool, port, ncBin) {
  return [
    { label: "nc", cmd: `${ncBin} -l 127.0.0.1 ${port}` },
    { label: tool, cmd: `${tool === "igzip" ? TOOLS.igzip : TOOLS.gzip} -d` },
  ]
}
function senderStages(dir, name, port, ncBin) {
  return [
    { label: "find", cmd: `find ${dir} -maxdepth 1 -name ${q(`${name}-*.gz`)}` },
    { label: "sort", env: "LC_ALL=C", cmd: "sort" },
    { label: "xargs-cat", cmd: "xargs cat" },
    { label: "nc", cmd: `${ncBin} -N 127.0.0.1 ${port}` },
  ]
}
// The receiving half as one shell command; with fsync (W4) it ends with `&& sync OUT`, timed too
// (coreutils `sync FILE` fsyncs that file), so its time counts in the wall and its CPU in the half.
function receiverCommand(stages, out, fsync, timing) {
  const tail = !fsync ? "" : ` && ${timing ? `${TIME} -f ${q(TIME_FMT)} -o ${q(join(timing.dir, `${timing.tag}-${stages.length}-sync`))} ` : ""}sync ${out}`
  return pipeline(stages, out, timing) + tail
}
function displayCommands(tool, fsync = false) {
  const nc = TOOLS.ncDisplay ?? "nc"
  const recv = receiverStages(tool, "PORT", nc).map((s, j) => (j === 1 ? { ...s, cmd: `${tool} -d` } : s))
  return {
    receiver: receiverCommand(recv, "OUT/NAME", fsync),
    sender: pipeline(senderStages("DIR", "NAME", "PORT", nc)),
  }
}

const TOOLS = { nc: null, ncDisplay: null, gzip: null, igzip: null }

// ---- ferry: one long-running server per ferry contender and workload, one fresh `send` per dataset and run

// What `ferry serve` gets beyond the common flags, per contender; tls: { cert, key } (PEM paths).
function serverExtraArgs(c, tls) {
  if (c === "ferry-tls") return ["--tls-cert", tls.cert, "--tls-key", tls.key]
  if (c === "ferry-metrics") return [...METRICS_ARGS]
  return []
}
function clientExtraArgs(c, tls) {
  return c === "ferry-tls" ? ["--tls-ca", tls.cert] : []
}

// slot: { c, w, extra, server, dest, address, exited, starts, runsOnServer, history[] }
function newServerSlot(c, w, tls) {
  return { c, w, extra: serverExtraArgs(c, tls), server: null, dest: null, address: null, exited: null, starts: 0, runsOnServer: 0, history: [] }
}

async function startServer(slot) {
  slot.dest = await makeTemp(`ferry-bench-dest-${slot.w.id}-${slot.c}-`)
  // the server belongs to no run: a run's time limit kills its clients, not the server
  const server = launch(FERRY, ["serve", "--port", "0", "--dest", slot.dest, "--host", "127.0.0.1", ...slot.extra], newCtx())
  slot.server = server
  slot.exited = null
  slot.runsOnServer = 0
  slot.starts++
  server.done.then((r) => {
    if (slot.server === server) slot.exited = r
  })
  try {
    // "listening on" at the start of a line: any other address the server prints (metrics) is not it
    const m = await waitForLine(server, /^listening on ([\d.]+):(\d+)/m, 60_000)
    slot.address = `${m[1]}:${m[2]}`
  } catch (e) {
    await stopServer(slot)
    throw e
  }
  slot.cpuAtStartS = procCpuS(server.pid) // its startup, before any run
  log(`${slot.w.id} ${slot.c}: ferry serve (pid ${server.pid}) listening on ${slot.address}, --dest ${slot.dest}${slot.starts > 1 ? ` (server start ${slot.starts})` : ""}`)
}

async function stopServer(slot) {
  const server = slot.server
  if (!server) return
  let cpuS = null
  try { cpuS = procCpuS(server.pid) } catch {}
  const exitedItself = slot.exited !== null
  await stopProcess(server)
  const r = await server.done
  slot.history.push({ pid: server.pid, runs: slot.runsOnServer, cpuStartupS: slot.cpuAtStartS ?? null, cpuLifetimeS: cpuS, exit: r.code ?? r.signal, stoppedBy: exitedItself ? "itself" : "the benchmark (SIGTERM)" })
  slot.server = null
  slot.address = null
  slot.cpuAtStartS = null
  if (slot.dest) await removeTemp(slot.dest)
  slot.dest = null
}

// The client's stdout says for each dataset `NAME: committed N bytes in P pieces (S sent), crc32 X`,
// or `NAME: already committed on the server (N bytes), nothing sent`; a run must have sent every piece.
function checkSent(d, stdout) {
  const esc = d.name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
  if (new RegExp(`^${esc}: already committed`, "m").test(stdout)) throw new Error(`${d.name}: the server answered "already committed", nothing was sent (outputs of an earlier run left in --dest?)`)
  const m = stdout.match(new RegExp(`^${esc}: committed (\\d+) bytes in (\\d+) pieces \\((\\d+) sent\\)`, "m"))
  if (!m) throw new Error(`${d.name}: no "committed N bytes in P pieces (S sent)" line from ferry send: ${lastLine(stdout) || "no output"}`)
  const [n, p, sent] = m.slice(1).map(Number)
  if (n !== d.size || p !== d.pieces || sent !== p) throw new Error(`${d.name}: ferry send reports ${n} bytes in ${p} pieces (${sent} sent), expected ${d.size} bytes in ${d.pieces} pieces, all sent`)
  return sent
}

// Before a run, outside its time limit: the slot's server, started when there is none (first run,
// or after a failed run) or when it has exited on its own.
async function ensureServer(slot) {
  if (slot.server && slot.exited) {
    log(`${slot.w.id} ${slot.c}: ferry serve had exited (${slot.exited.code ?? slot.exited.signal}): ${lastLine(slot.exited.stderr)}; starting a new one`)
    await stopServer(slot)
  }
  if (!slot.server) await startServer(slot)
}

async function runFerry(w, c, ctx, slot, tls) {
  if (!slot.server || slot.exited) throw new Error("ferry serve is not running")
  const { server, dest, address } = slot
  for (const d of w.datasets)
    for (const f of [d.name, `${d.name}.done`]) if (existsSync(join(dest, f))) throw new Error(`${f} is still in --dest before the run`)
  const tdir = await makeTemp("ferry-bench-time-")
  slot.runsOnServer++
  const runOnServer = slot.runsOnServer
  try {
    const hwmReset = resetHwm(server.pid)
    const before = threadSnapshot(server.pid)
    const t0 = performance.now()
    const clients = w.datasets.map((d, i) =>
      launch(TIME, ["-f", TIME_FMT, "-o", join(tdir, `client-${i}`), FERRY, "send", "--path", d.dir, "--address", address, "--quiet", ...clientExtraArgs(c, tls)], ctx),
    )
    const results = await Promise.all(clients.map((c) => c.done))
    const wallS = (performance.now() - t0) / 1000
    let after = null
    let hwm = null
    try {
      after = threadSnapshot(server.pid)
      hwm = procHwmKiB(server.pid)
    } catch {}
    if (ctx.timedOut) throw new Error("timed out")
    results.forEach((r, i) => {
      if (r.code !== 0) throw new Error(`ferry send ${w.datasets[i].name} exited ${r.code ?? r.signal}: ${lastLine(r.stderr) || lastLine(r.stdout)}`)
    })
    if (!after) throw new Error(`ferry serve was gone before the clients finished: ${lastLine((await server.done).stderr)}`)
    const piecesSent = w.datasets.reduce((s, d, i) => s + checkSent(d, results[i].stdout), 0)
    const times = await Promise.all(w.datasets.map((_, i) => readTimeFile(join(tdir, `client-${i}`))))
    for (const d of w.datasets) {
      const out = join(dest, d.name)
      if (!existsSync(out)) throw new Error(`no rebuilt file ${d.name} in dest`)
      const sha = await sha256File(out)
      if (sha !== d.sha256) throw new Error(`${d.name}: wrong sha256 ${sha.slice(0, 16)}..., expected ${d.sha256.slice(0, 16)}...`)
      const doneOut = (await readFile(join(dest, `${d.name}.done`), "utf8").catch(() => null))?.trim()
      const doneIn = (await readFile(join(d.dir, `${d.name}.done`), "utf8")).trim()
      if (doneOut !== doneIn) throw new Error(`${d.name}.done in dest is ${JSON.stringify(doneOut)}, expected ${JSON.stringify(doneIn)}`)
    }
    const cpuReceiverS = after.cpuS - before.cpuS
    const cpuSenderS = times.reduce((s, t) => s + t.cpuS, 0)
    return {
      wallS,
      cpuS: cpuReceiverS + cpuSenderS,
      cpuReceiverS,
      cpuSenderS,
      cpuReceiverSysS: after.sysS - before.sysS,
      cpuSenderSysS: times.reduce((s, t) => s + t.sysS, 0),
      cpuSenderEachS: times.map((t) => t.cpuS),
      receiverThreads: threadCpu(server.pid, before, after),
      rssServerMiB: hwm / 1024,
      rssServerPerRun: hwmReset, // false: the peak since the server started
      rssClientMiB: Math.max(...times.map((t) => t.maxRssKiB)) / 1024,
      piecesSent,
      serverPid: server.pid,
      serverStart: slot.starts,
      runOnServer,
      serverCpuTotalS: after.cpuS,
    }
  } finally {
    await removeTemp(tdir)
    // the next run must send everything again: a dataset whose NAME.done is there is answered
    // "already committed" without a byte sent
    for (const d of w.datasets) {
      await rm(join(dest, d.name), { force: true })
      await rm(join(dest, `${d.name}.done`), { force: true })
    }
  }
}

async function runOneLiner(tool, w, ctx) {
  const outDir = await makeTemp(`ferry-bench-${tool}-`)
  const tdir = await makeTemp("ferry-bench-time-")
  try {
    const pairs = []
    for (const [i, d] of w.datasets.entries()) {
      const port = await freePort()
      const script = `set -o pipefail; ${receiverCommand(receiverStages(tool, port, TOOLS.nc), q(join(outDir, d.name)), w.fsync, { dir: tdir, tag: `r${i}` })}`
      pairs.push({ d, i, port, recv: launch("bash", ["-c", script], ctx) })
    }
    for (const p of pairs) await waitListening(p.port, p.recv, ctx)
    const t0 = performance.now()
    for (const p of pairs) {
      const script = `set -o pipefail; ${pipeline(senderStages(q(p.d.dir), p.d.name, p.port, TOOLS.nc), null, { dir: tdir, tag: `s${p.i}` })}`
      p.send = launch("bash", ["-c", script], ctx)
      // a sender that fails would leave its receiver waiting for ever
      p.send.done.then((r) => r.code !== 0 && killGroup(p.recv, "SIGTERM"))
      p.recvEnd = p.recv.done.then((r) => ({ r, at: performance.now() }))
    }
    const recvs = await Promise.all(pairs.map((p) => p.recvEnd))
    const wallS = (Math.max(...recvs.map((x) => x.at)) - t0) / 1000
    const sends = await Promise.all(pairs.map((p) => p.send.done))
    if (ctx.timedOut) throw new Error("timed out")
    for (const [k, p] of pairs.entries()) {
      if (sends[k].code !== 0) throw new Error(`sender ${p.d.name} exited ${sends[k].code ?? sends[k].signal}: ${lastLine(sends[k].stderr)}`)
      if (recvs[k].r.code !== 0) throw new Error(`receiver ${p.d.name} exited ${recvs[k].r.code ?? recvs[k].r.signal}: ${lastLine(recvs[k].r.stderr)}`)
    }
    const files = readdirSync(tdir)
    const times = await Promise.all(files.map(async (f) => ({ f, ...(await readTimeFile(join(tdir, f))) })))
    const side = (prefix) => times.filter((t) => t.f.startsWith(prefix))
    if (side("r").length !== (w.fsync ? 3 : 2) * pairs.length || side("s").length !== 4 * pairs.length) throw new Error("missing /usr/bin/time outputs")
    for (const p of pairs) {
      const sha = await sha256File(join(outDir, p.d.name))
      if (sha !== p.d.sha256) throw new Error(`${p.d.name}: wrong sha256 ${sha.slice(0, 16)}..., expected ${p.d.sha256.slice(0, 16)}...`)
    }
    const sum = (ts) => ts.reduce((s, t) => s + t.cpuS, 0)
    const maxRss = (ts) => Math.max(...ts.map((t) => t.maxRssKiB)) / 1024
    // CPU per stage (nc, igzip, sync; find, sort, xargs-cat, nc), summed over the pairs of W3
    const byStage = (ts) => {
      const o = {}
      for (const t of ts) {
        const label = t.f.replace(/^[rs]\d+-\d+-/, "")
        o[label] = +((o[label] ?? 0) + t.cpuS).toFixed(3)
      }
      return o
    }
    return {
      wallS,
      cpuS: sum(times),
      cpuReceiverS: sum(side("r")),
      cpuSenderS: sum(side("s")),
      cpuReceiverSysS: side("r").reduce((s, t) => s + t.sysS, 0),
      cpuSenderSysS: side("s").reduce((s, t) => s + t.sysS, 0),
      receiverStagesCpuS: byStage(side("r")),
      senderStagesCpuS: byStage(side("s")),
      rssServerMiB: maxRss(side("r")),
      rssClientMiB: maxRss(side("s")),
    }
  } finally {
    await removeTemp(outDir)
    await removeTemp(tdir)
  }
}

async function warmUp(w) {
  for (const d of w.datasets) {
    const script = `${pipeline(senderStages(q(d.dir), d.name, 0, "").slice(0, 3))} > /dev/null`
    const r = await launch("bash", ["-c", `set -o pipefail; ${script}`], null).done
    if (r.code !== 0) throw new Error(`warm-up read of ${d.dir} failed: ${lastLine(r.stderr)}`)
  }
}

// ---------------------------------------------------------------- tools

function which(cmd) {
  const r = spawnSync("bash", ["-c", `command -v ${q(cmd)}`], { encoding: "utf8" })
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : null
}
function openbsdNc() {
  for (const name of ["nc", "nc.openbsd"]) {
    const p = which(name)
    if (!p) continue
    const r = spawnSync(p, ["-h"], { encoding: "utf8", timeout: 5000 })
    if (/OpenBSD netcat/i.test(`${r.stdout}${r.stderr}`)) return { path: p, display: name }
  }
  return null
}
function resolveTools() {
  const nc = openbsdNc()
  TOOLS.nc = nc?.path ?? null
  TOOLS.ncDisplay = nc?.display ?? null
  TOOLS.gzip = which("gzip")
  TOOLS.igzip = which("igzip")
}
function missingFor(c) {
  if (FERRY_CONTENDERS.has(c)) return [] // openssl for ferry-tls: see makeTlsCert
  const m = []
  if (!TOOLS.nc) m.push("nc (netcat-openbsd)")
  if (!TOOLS[c]) m.push(c === "igzip" ? "igzip (isal)" : "gzip")
  return m
}
function aptInstall() {
  const pkgs = ["netcat-openbsd", "isal", "gzip"]
  const root = process.getuid?.() === 0
  if (!root && !which("sudo")) return "not root and no sudo"
  const pre = root ? [] : ["sudo", "-n"]
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
  const run = (args) => {
    const full = [...pre, ...args]
    log(`$ ${full.join(" ")}`)
    const r = spawnSync(full[0], full.slice(1), { env, stdio: ["ignore", process.stderr, process.stderr], timeout: 600_000 })
    return r.status === 0
  }
  if (run(["apt-get", "install", "-y", ...pkgs])) return null
  log("apt-get install failed; running apt-get update once and retrying")
  if (!run(["apt-get", "update"])) return "apt-get update failed"
  return run(["apt-get", "install", "-y", ...pkgs]) ? null : "apt-get install failed"
}

// Self-signed certificate for ferry-tls, made once per invocation in a temporary folder
// (removed at exit). Returns { dir, cert, key } or { error }.
async function makeTlsCert() {
  const openssl = which("openssl")
  if (!openssl) return { error: "openssl not found on PATH (needed for the self-signed certificate)" }
  const dir = await makeTemp("ferry-bench-tls-")
  const cert = join(dir, "cert.pem")
  const key = join(dir, "key.pem")
  const r = spawnSync(openssl, tlsCertArgs(key, cert), { encoding: "utf8", timeout: 60_000 })
  if (r.error || r.status !== 0 || !existsSync(cert) || !existsSync(key)) {
    await removeTemp(dir)
    const why = r.error ? r.error.message : `exit ${r.status ?? r.signal}`
    return { error: `openssl req failed to make the self-signed certificate (${why}): ${lastLine(r.stderr) || "no output"}` }
  }
  return { dir, cert, key }
}

// ferry-metrics needs a ferry whose `serve` has --metrics. Returns null when it has, else why not.
function metricsUnavailable() {
  const r = spawnSync(FERRY, ["serve", "--help"], { encoding: "utf8", timeout: 60_000 })
  const text = `${r.stdout ?? ""}${r.stderr ?? ""}`.replace(/\x1b\[[0-9;]*m/g, "") // help is coloured
  if (r.error) return `bin/ferry serve --help failed (${r.error.message})`
  if (/--metrics\b/.test(text)) return null
  return "this ferry's `serve --help` does not mention --metrics (the flag is not in this build yet)"
}

// ---------------------------------------------------------------- reporting helpers

function log(msg) {
  console.error(`bench: ${msg}`)
}
function lastLine(s) {
  return String(s ?? "").trim().split("\n").pop()?.trim() ?? ""
}
const rel = (p) => (p.startsWith(ROOT + "/") ? p.slice(ROOT.length + 1) : p)
function fmtBytes(n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`
}
function median(xs) {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const h = s.length >> 1
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2
}
const f = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : x.toFixed(d))
function writeAtomic(path, text) {
  writeFileSync(path + ".tmp", text)
  renameSync(path + ".tmp", path)
}
function mdTable(header, rows) {
  const all = [header, ...rows].map((r) => r.map(String))
  const width = header.map((_, i) => Math.max(3, ...all.map((r) => r[i].length)))
  const line = (r) => `| ${r.map((c, i) => (i < 2 ? c.padEnd(width[i]) : c.padStart(width[i]))).join(" | ")} |`
  const sep = `|${width.map((w, i) => (i < 2 ? ` ${"-".repeat(w)} ` : ` ${"-".repeat(w - 1)}: `)).join("|")}|`
  return [line(all[0]), sep, ...all.slice(1).map(line)].join("\n")
}

function machineInfo() {
  let cpuModel = "unknown"
  try {
    cpuModel = readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ?? os.cpus()[0]?.model ?? "unknown"
  } catch {}
  return {
    cpuModel,
    cores: os.availableParallelism?.() ?? os.cpus().length,
    memTotalGiB: +(os.totalmem() / 1024 ** 3).toFixed(1),
    node: process.version,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAvgAtStart: os.loadavg().map((x) => +x.toFixed(2)),
  }
}

// ---------------------------------------------------------------- main

async function main() {
  const opts = parseArgs(process.argv.slice(2))
  const started = new Date()
  CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout?.trim()) || 100
  if (!existsSync(TIME)) die(`${TIME} is missing (Debian package "time")`)
  if (!existsSync(join(ROOT, "dist", "ferry.cjs"))) die("ferry is not built: run `npm run build` (or `npm run bench`, which builds)")

  const machine = machineInfo()
  if (opts.quick) log(`QUICK RUN: every workload shrunk ${QUICK_FACTOR}x; numbers are for trying the harness only`)
  if (opts.runs < 3) log(`only ${opts.runs} run(s) per contender: medians of fewer than 3 runs are not meaningful`)
  if (machine.loadAvgAtStart[0] > 0.5 * machine.cores) log(`note: load average is ${machine.loadAvgAtStart.join(" ")} on ${machine.cores} cores; timings will be noisy`)

  // tools for the one-liners; install once if something is missing
  resolveTools()
  const skipped = {}
  const wanted = opts.contenders
  if (wanted.some((c) => missingFor(c).length > 0)) {
    const missing = [...new Set(wanted.flatMap(missingFor))]
    if (opts.install) {
      log(`missing ${missing.join(", ")}: trying apt-get install -y netcat-openbsd isal gzip`)
      const err = aptInstall()
      if (err) log(`install failed: ${err}`)
      resolveTools()
    } else {
      log(`missing ${missing.join(", ")} and --no-install given`)
    }
  }
  for (const c of wanted) {
    const m = missingFor(c)
    if (m.length) {
      skipped[c] = `${m.join(" and ")} not available${opts.install ? " (apt-get install failed)" : " (--no-install given)"}`
      log(`SKIPPED contender ${c}: ${skipped[c]}`)
    }
  }
  let contenders = wanted.filter((c) => !skipped[c])

  // workloads: W3's reference is W1 (one client, same total bytes)
  const plan = opts.only.map((id) => makeWorkload(id, opts.quick))
  if (opts.only.includes("W3") && !opts.only.includes("W1")) {
    const ref = makeWorkload("W1", opts.quick)
    ref.referenceOnly = true
    plan.unshift(ref)
    log("W3 needs its one-client reference: running W1 as well")
  }
  // ferry-metrics: only when named (it is not among the default contenders), and only when this
  // ferry's server has --metrics
  if (contenders.includes("ferry-metrics")) {
    const why = metricsUnavailable()
    if (why) {
      skipped["ferry-metrics"] = why
      log(`SKIPPED contender ferry-metrics: ${why}`)
      contenders = contenders.filter((c) => c !== "ferry-metrics")
    } else {
      log(`ferry-metrics: bin/ferry serve has --metrics; its server runs with ${METRICS_ARGS.join(" ")}`)
    }
  }
  // ferry-tls: on W1 only, unless --contenders names the contenders (then on every workload of the plan)
  const runsOn = (w, c) => c !== "ferry-tls" || opts.contendersGiven || (TLS_DEFAULT_WORKLOADS.includes(w.id) && !w.referenceOnly)
  const plannedFor = (c) => plan.filter((w) => runsOn(w, c)).map((w) => w.id)
  let tls = null
  if (contenders.includes("ferry-tls")) {
    if (plannedFor("ferry-tls").length === 0) {
      log(`ferry-tls runs on ${TLS_DEFAULT_WORKLOADS.join(", ")} only by default (name it in --contenders to run it on ${opts.only.join(", ")}): not run this time`)
      contenders = contenders.filter((c) => c !== "ferry-tls")
    } else {
      const made = await makeTlsCert()
      if (made.error) {
        skipped["ferry-tls"] = made.error
        log(`SKIPPED contender ferry-tls: ${made.error}`)
        contenders = contenders.filter((c) => c !== "ferry-tls")
      } else {
        tls = made
        log(`ferry-tls: self-signed certificate (P-256, CN=localhost, SAN localhost and 127.0.0.1) in ${made.dir}`)
      }
    }
  }
  if (contenders.length === 0) die(`no contender can run${Object.keys(skipped).length ? ` (skipped: ${Object.keys(skipped).join(", ")})` : ""}`)
  for (const w of plan) await ensureData(w)

  const results = new Map() // `${w.id}/${c}` -> runs[]
  const servers = [] // every ferry server started, for the JSON
  let failures = 0
  for (const w of plan) {
    log(`${w.id}: warm-up read of ${fmtBytes(w.bytes)} original (gzip pieces into the page cache)`)
    await warmUp(w)
    const cs = contenders.filter((c) => runsOn(w, c))
    for (const c of cs) results.set(`${w.id}/${c}`, [])
    // one long-running server per ferry contender on this workload, started before its first run
    // and kept across its runs (restarted only after a failed run); stopped when the workload ends
    const slots = Object.fromEntries(cs.filter((c) => FERRY_CONTENDERS.has(c)).map((c) => [c, newServerSlot(c, w, tls)]))
    try {
      for (let run = 1; run <= opts.runs; run++) {
        // the order rotates each round: the first run after a workload starts is often slower
        // (writeback, page allocation), and no contender should always be the one to pay for it
        const order = cs.map((_, k) => cs[(k + run - 1) % cs.length])
        for (const c of order) {
          await haltIfStopping()
          const go = (ctx) => (FERRY_CONTENDERS.has(c) ? runFerry(w, c, ctx, slots[c], tls) : runOneLiner(c, w, ctx))
          let r
          try {
            if (slots[c]) await ensureServer(slots[c])
            r = await timedRun(go, opts.timeoutS)
          } catch (e) {
            r = { ok: false, error: `ferry serve did not start: ${e?.message ?? e}` }
          }
          await haltIfStopping() // interrupted: not a result
          results.get(`${w.id}/${c}`).push({ run, ...r })
          if (r.ok) {
            log(`${w.id} run ${run}/${opts.runs} ${c.padEnd(13)}: ${f(r.wallS)} s wall, ${f(w.bytes / 1e6 / r.wallS, 1)} MB/s, CPU ${f(r.cpuReceiverS)} s receiver (sys ${f(r.cpuReceiverSysS)}) + ${f(r.cpuSenderS)} s sender (sys ${f(r.cpuSenderSysS)}), RSS ${f(r.rssServerMiB, 0)}/${f(r.rssClientMiB, 0)} MiB`)
          } else {
            failures++
            log(`${w.id} run ${run}/${opts.runs} ${c.padEnd(13)}: FAILED: ${r.error}`)
            if (slots[c]?.server) {
              log(`${w.id} ${c}: stopping its ferry serve after the failed run; the next run starts a new one`)
              await stopServer(slots[c])
            }
          }
        }
      }
    } finally {
      for (const slot of Object.values(slots)) {
        await stopServer(slot)
        servers.push(...slot.history.map((h) => ({ workload: w.id, contender: slot.c, ...h })))
      }
    }
  }

  await haltIfStopping()
  if (tls) await removeTemp(tls.dir)
  // summaries
  const summary = (w, c) => {
    const runs = results.get(`${w.id}/${c}`) ?? []
    const ok = runs.filter((r) => r.ok)
    const med = (k) => median(ok.map((r) => r[k]))
    const max = (k) => (ok.length ? Math.max(...ok.map((r) => r[k])) : null)
    // medians per key of an object-valued field (thread groups, pipeline stages); absent counts 0
    const medOf = (get) => {
      const keys = [...new Set(ok.flatMap((r) => Object.keys(get(r) ?? {})))]
      return ok.length ? Object.fromEntries(keys.map((k) => [k, +median(ok.map((r) => get(r)?.[k] ?? 0)).toFixed(3)])) : undefined
    }
    const wallS = med("wallS")
    const s = {
      runs: runs.length,
      okRuns: ok.length,
      failedRuns: runs.length - ok.length,
      wallMedianS: wallS,
      mbPerS: wallS ? w.bytes / 1e6 / wallS : null,
      cpuMedianS: med("cpuS"),
      cpuReceiverMedianS: med("cpuReceiverS"),
      cpuSenderMedianS: med("cpuSenderS"),
      cpuReceiverSysMedianS: med("cpuReceiverSysS"),
      cpuSenderSysMedianS: med("cpuSenderSysS"),
      rssServerMaxMiB: max("rssServerMiB"),
      rssClientMaxMiB: max("rssClientMiB"),
    }
    if (FERRY_CONTENDERS.has(c)) s.receiverThreadsMedianS = medOf((r) => r.receiverThreads?.groups)
    else {
      s.receiverStagesMedianCpuS = medOf((r) => r.receiverStagesCpuS)
      s.senderStagesMedianCpuS = medOf((r) => r.senderStagesCpuS)
    }
    return s
  }
  const ratio = (a, b) => (a > 0 && b > 0 ? a / b : null)
  const out = [] // { w, cs: contenders run on w, sums, best }
  for (const w of plan) {
    const cs = contenders.filter((c) => runsOn(w, c))
    const sums = Object.fromEntries(cs.map((c) => [c, summary(w, c)]))
    const oneLiners = cs.filter((c) => !FERRY_CONTENDERS.has(c) && sums[c].wallMedianS)
    const best = oneLiners.sort((a, b) => sums[a].wallMedianS - sums[b].wallMedianS)[0] ?? null
    for (const c of cs) {
      const s = sums[c]
      s.wallVsBestOneLiner = best ? ratio(s.wallMedianS, sums[best].wallMedianS) : null
      // against each one-liner: wall to wall, receiving side to its receiving half, sending side to its sending half
      s.vsLines = {}
      for (const line of ONE_LINERS) {
        const l = sums[line]
        if (!l?.okRuns) continue
        s.vsLines[line] = {
          wall: ratio(s.wallMedianS, l.wallMedianS),
          receiverCpu: ratio(s.cpuReceiverMedianS, l.cpuReceiverMedianS),
          senderCpu: ratio(s.cpuSenderMedianS, l.cpuSenderMedianS),
        }
      }
    }
    out.push({ w, cs, sums, best })
  }
  const labelOf = (w) => (w.referenceOnly ? `${w.id} (W3 reference)` : w.id)

  const header = [
    "Workload", "Contender", "OK runs", "Wall s (median)", "MB/s", "Receiver CPU s", "Sender CPU s", "RSS server MiB", "RSS client MiB",
    `wall / ${REF_LINE} line`, `receiver CPU / ${REF_LINE} receiving half`, "sender CPU / sending half", "wall / best one-liner",
  ]
  const rows = []
  for (const { w, cs, sums } of out) {
    for (const c of cs) {
      const s = sums[c]
      const v = s.vsLines[REF_LINE] ?? {}
      if (s.okRuns === 0) rows.push([labelOf(w), c, `0/${s.runs}`, "FAILED", ...Array(header.length - 4).fill("–")])
      else rows.push([labelOf(w), c, `${s.okRuns}/${s.runs}`, f(s.wallMedianS), f(s.mbPerS, 1), f(s.cpuReceiverMedianS), f(s.cpuSenderMedianS), f(s.rssServerMaxMiB, 0), f(s.rssClientMaxMiB, 0), f(v.wall), f(v.receiverCpu), f(v.senderCpu), f(s.wallVsBestOneLiner)])
    }
  }
  for (const c of Object.keys(skipped)) {
    const where = plannedFor(c)
    rows.push([where.length === plan.length ? "all" : where.join(","), c, "–", "SKIPPED", ...Array(header.length - 4).fill("–")])
  }
  const mainTable = mdTable(header, rows)

  // the same ratios against the gzip line, for every other contender
  let gzipTable = null
  const gzipRows = []
  for (const { w, cs, sums } of out) {
    if (!sums.gzip?.okRuns) continue
    for (const c of cs) {
      if (c === "gzip" || !sums[c].okRuns) continue
      const v = sums[c].vsLines.gzip
      gzipRows.push([labelOf(w), c, f(v.wall), f(v.receiverCpu), f(v.senderCpu)])
    }
  }
  if (gzipRows.length) gzipTable = mdTable(["Workload", "Contender", "wall / gzip line", "receiver CPU / gzip receiving half", "sender CPU / gzip sending half"], gzipRows)

  // per-thread CPU of the ferry servers (medians per run, grouped)
  const groupOrder = ["main", "workers", "V8 helpers", "libuv pool", "pool threads"]
  const rank = (g) => (g === "unattributed" ? 1e6 : groupOrder.includes(g) ? groupOrder.indexOf(g) : 100)
  const threadLines = []
  for (const { w, cs, sums } of out) {
    for (const c of cs) {
      const t = sums[c].receiverThreadsMedianS
      if (!FERRY_CONTENDERS.has(c) || !t) continue
      const parts = Object.entries(t)
        .filter(([g, v]) => g === "main" || v > 0)
        .sort(([a, x], [b, y]) => rank(a) - rank(b) || y - x)
        .map(([g, v]) => `${g} ${f(v)} s`)
      threadLines.push(`${labelOf(w)} ${c} receiver threads: ${parts.join(", ")} (receiver CPU ${f(sums[c].cpuReceiverMedianS)} s)`)
    }
  }

  // W3 scaling: 4 clients at once vs 1 client, same total bytes
  let w3Table = null
  const w3 = out.find((o) => o.w.id === "W3")
  const w1 = out.find((o) => o.w.id === "W1")
  const w3ratio = {}
  if (w3 && w1) {
    const r = w3.cs.filter((c) => w1.cs.includes(c)).map((c) => {
      const a = w3.sums[c].wallMedianS
      const b = w1.sums[c].wallMedianS
      w3ratio[c] = { w3WallMedianS: a, referenceWallMedianS: b, ratio: a && b ? a / b : null }
      return [c, `${w3.w.clients} clients`, f(a), f(b), f(w3ratio[c].ratio)]
    })
    w3Table = mdTable(["Contender", "W3", "W3 wall s (median)", "W1 reference wall s (1 client)", "W3 / reference"], r)
  }

  // the cost of a ferry variant: its medians / ferry's medians on each workload where both ran
  const costOf = (variant, what, fmt) => {
    const costs = {}
    const lines = []
    for (const { w, cs, sums } of out) {
      if (!cs.includes("ferry") || !cs.includes(variant)) continue
      const a = sums["ferry"]
      const b = sums[variant]
      const c = {
        ferryWallMedianS: a.wallMedianS,
        variantWallMedianS: b.wallMedianS,
        wallRatio: ratio(b.wallMedianS, a.wallMedianS),
        ferryCpuMedianS: a.cpuMedianS,
        variantCpuMedianS: b.cpuMedianS,
        cpuRatio: ratio(b.cpuMedianS, a.cpuMedianS),
        ferryReceiverCpuMedianS: a.cpuReceiverMedianS,
        variantReceiverCpuMedianS: b.cpuReceiverMedianS,
        receiverCpuRatio: ratio(b.cpuReceiverMedianS, a.cpuReceiverMedianS),
        ferrySenderCpuMedianS: a.cpuSenderMedianS,
        variantSenderCpuMedianS: b.cpuSenderMedianS,
        senderCpuRatio: ratio(b.cpuSenderMedianS, a.cpuSenderMedianS),
      }
      costs[labelOf(w)] = c
      const none = [a.okRuns ? null : "ferry", b.okRuns ? null : variant].filter(Boolean)
      lines.push(none.length ? `${what} cost on ${labelOf(w)}: not available (no successful run of ${none.join(" and ")})` : `${what} cost on ${labelOf(w)}: ${fmt(c)}`)
    }
    return { costs, lines }
  }
  const tls_ = costOf("ferry-tls", "TLS", (c) => `${f(c.wallRatio)}x wall, ${f(c.cpuRatio)}x CPU (receiver ${f(c.receiverCpuRatio)}x, sender ${f(c.senderCpuRatio)}x)`)
  const metrics_ = costOf("ferry-metrics", "metrics", (c) => `${f(c.wallRatio)}x wall, ${f(c.receiverCpuRatio)}x receiver CPU`)
  const costLines = [...tls_.lines, ...metrics_.lines]

  const failureLines = []
  for (const { w, cs } of out)
    for (const c of cs)
      for (const r of results.get(`${w.id}/${c}`)) if (!r.ok) failureLines.push(`- ${w.id} ${c} run ${r.run}: ${r.error}`)

  const title = opts.quick ? `QUICK RUN (workloads shrunk ${QUICK_FACTOR}x, not representative)` : "full-size run"
  const commands = {
    ferry: {
      server: "bin/ferry serve --port 0 --dest TMP_DIR --host 127.0.0.1",
      client: "bin/ferry send --path DIR --address 127.0.0.1:PORT --quiet",
    },
  }
  if (contenders.includes("ferry-tls") || skipped["ferry-tls"])
    commands["ferry-tls"] = {
      certificate: `openssl ${tlsCertArgs("KEY", "CERT").join(" ")}`,
      server: `${commands.ferry.server} --tls-cert CERT --tls-key KEY`,
      client: `${commands.ferry.client} --tls-ca CERT`,
    }
  if (contenders.includes("ferry-metrics") || skipped["ferry-metrics"])
    commands["ferry-metrics"] = { server: `${commands.ferry.server} ${METRICS_ARGS.join(" ")}`, client: commands.ferry.client }
  const hasFsync = plan.some((w) => w.fsync)
  for (const c of ONE_LINERS) {
    if (!contenders.includes(c) && !skipped[c]) continue
    commands[c] = displayCommands(c)
    if (hasFsync) commands[c].receiverWithFsync = displayCommands(c, true).receiver
  }

  const ratioNote = `For W3 the ${REF_LINE} line is four lines at once: its wall time runs until the last of the four receivers exits, and its halves sum the four receiving or the four sending pipelines.`
  let stdout = `\n## ferry benchmark: ${title}\n\n${mainTable}\n`
  if (gzipTable) stdout += `\nAgainst the gzip line:\n\n${gzipTable}\n`
  if (threadLines.length) stdout += `\n${threadLines.join("\n")}\n`
  if (w3Table) stdout += `\nW3 scaling (same total bytes; below 1 means several clients at once beat one):\n\n${w3Table}\n`
  if (costLines.length) stdout += `\n${costLines.join("\n")}\n`
  if (Object.keys(skipped).length) stdout += `\n${Object.entries(skipped).map(([c, why]) => `- SKIPPED ${c}: ${why}`).join("\n")}\n`
  if (failureLines.length) stdout += `\nFailed runs (not counted):\n${failureLines.join("\n")}\n`
  console.log(stdout)

  const finished = new Date()
  const json = {
    schema: 2,
    quick: opts.quick,
    note: opts.quick ? `QUICK RUN: workloads shrunk ${QUICK_FACTOR}x; not representative` : undefined,
    started: started.toISOString(),
    finished: finished.toISOString(),
    argv: process.argv.slice(2),
    runsPerContender: opts.runs,
    timeoutS: opts.timeoutS,
    machine: { ...machine, clockTicksPerS: CLK_TCK, loadAvgAtEnd: os.loadavg().map((x) => +x.toFixed(2)) },
    ferryGit: gitRev(),
    contenders,
    skipped,
    commands,
    tools: { nc: TOOLS.nc, gzip: TOOLS.gzip, igzip: TOOLS.igzip, time: TIME },
    ratiosAgainst: REF_LINE,
    units: {
      wall: "s",
      cpu: "s user+sys; cpuReceiverS: the ferry server over the run (/proc/PID/stat delta) or the receiving half of the one-liner (nc -l, gzip/igzip -d, sync on W4); cpuSenderS: the ferry send processes or the sending half (find, sort, xargs+cat, nc); cpuS: both; *SysS: the system (kernel) part",
      rss: "MiB peak",
      throughput: "MB/s (1e6 bytes) of original data rebuilt",
      ratios: "median of the contender / median of the line (vsLines.LINE.wall, .receiverCpu, .senderCpu)",
    },
    workloads: out.map(({ w, cs, sums, best }) => ({
      id: w.id,
      referenceOnly: w.referenceOnly,
      description: w.description,
      clients: w.clients,
      oneLinersFsync: w.fsync,
      originalBytes: w.bytes,
      datasets: w.datasets.map(({ name, pieces, slice, size, seed, sha256 }) => ({ name, pieces, slice, size, seed, sha256 })),
      contenders: cs,
      bestOneLiner: best,
      summary: sums,
      runs: Object.fromEntries(cs.map((c) => [c, results.get(`${w.id}/${c}`)])),
    })),
    servers,
    w3VsReference: w3Table ? w3ratio : undefined,
    tlsCost: tls_.lines.length ? tls_.costs : undefined,
    metricsCost: metrics_.lines.length ? metrics_.costs : undefined,
  }

  const md = [
    `# ferry benchmark: ${title}`,
    "",
    `- date: ${started.toISOString()} (took ${((finished - started) / 1000).toFixed(0)} s)`,
    `- machine: ${machine.cpuModel}, ${machine.cores} cores, ${machine.memTotalGiB} GiB RAM, ${machine.kernel}`,
    `- Node ${machine.node}; load average at start ${machine.loadAvgAtStart.join(" ")}, at end ${json.machine.loadAvgAtEnd.join(" ")}`,
    `- ferry: ${json.ferryGit ?? "unknown revision"}`,
    `- invocation: \`node bench/run.mjs ${process.argv.slice(2).join(" ")}\`; ${opts.runs} run(s) per contender, alternating; medians over successful runs`,
    `- loopback, warm page cache (one untimed read of every dataset before its runs); one long-running ferry server per ferry contender and workload, outputs removed between runs`,
    "",
    "## Results",
    "",
    mainTable,
    "",
    `MB/s is original (rebuilt) bytes / median wall time, in 10^6 bytes per second. Receiver CPU is user+sys of the receiving side: for ferry the long-running \`ferry serve\` from just before the senders start to just after the last one exits (/proc/PID/stat), for a one-liner its receiving half (\`nc -l\`, \`${REF_LINE} -d\` or \`gzip -d\`, and on W4 \`sync\`). Sender CPU is user+sys of the sending side: the \`ferry send\` processes, or the one-liner's sending half (\`find\`, \`sort\`, \`xargs\`+\`cat\`, \`nc\`). RSS server/client is the peak of the server over the run (VmHWM, reset before each run) and of the largest client process (for the one-liners: largest process on the receiver side and on the sender side), maximum over the runs. The ratio columns divide medians by the ${REF_LINE} line's: wall by wall, receiver CPU by its receiving half, sender CPU by its sending half; wall / best one-liner divides by the faster of the gzip/igzip lines. ${ratioNote}`,
    "",
  ]
  if (gzipTable) md.push("## Against the gzip line", "", gzipTable, "", "The same ratios against the gzip one-liner (`gzip -d` in place of `igzip -d`).", "")
  if (threadLines.length)
    md.push(
      "## ferry receiver threads",
      "",
      ...threadLines.map((l) => `- ${l}`),
      "",
      "CPU of each thread of the ferry server over the run (/proc/PID/task/TID/stat), median per group over the runs (medians of parts: they need not add up to the receiver CPU median). Threads are grouped by name (/proc/PID/task/TID/comm) when they carry their own: \"V8 DefaultWorke\" and the like as V8 helpers, \"libuv-worker\" as the libuv pool, \"WorkerThread\" as workers. A thread that shows only the process name (Node 20 names none of its threads) is grouped by what it waits in while idle: on epoll (its own event loop) it is a worker_threads worker (Node's delayed-task scheduler thread also has one, and uses next to no CPU), on a futex a pool thread (V8 platform workers, the libuv thread pool, the inspector's signal thread). main is the thread whose id is the process id. unattributed is the server's CPU over the run minus the sum over its live threads: threads that ended during the run, and the rounding between the kernel's process and thread times (a few hundredths of a second).",
      "",
    )
  if (w3Table) md.push("## W3: four clients at once vs one client", "", w3Table, "", "The reference is W1: one dataset of the same total bytes sent by one client (one pipeline for the one-liners).", "")
  if (tls_.lines.length) md.push("## TLS cost", "", ...tls_.lines.map((l) => `- ${l}`), "", "ferry-tls median / ferry median on the same workload: wall time, CPU (user+sys of server and clients), and the receiver and sender CPU on their own. Above 1 is what TLS costs.", "")
  if (metrics_.lines.length) md.push("## Metrics cost", "", ...metrics_.lines.map((l) => `- ${l}`), "", `ferry-metrics median / ferry median on the same workload: wall time and receiver (server) CPU; ferry-metrics is ferry with \`serve ${METRICS_ARGS.join(" ")}\`. Above 1 is what the metrics endpoint costs.`, "")
  md.push("## Workloads", "")
  for (const { w } of out) md.push(`- ${w.id}${w.referenceOnly ? " (as W3 reference)" : ""}: ${w.description}; ${w.bytes.toLocaleString("en-US")} original bytes; datasets ${w.datasets.map((d) => `${d.name} (seed ${d.seed}, sha256 ${d.sha256.slice(0, 12)}...)`).join(", ")}`)
  md.push(
    "", "## Commands", "",
    "ferry: one server per workload, started once before its first run and kept running across the runs (a new one only after a failed run), with the rebuilt NAME and NAME.done removed after each run so that the next run sends everything again. Each run starts one fresh `send` per dataset; time runs from the start of the sends to the exit of the last one:",
    "", "```sh", commands.ferry.server, commands.ferry.client, "```", "",
  )
  if (commands["ferry-tls"]) {
    const t = commands["ferry-tls"]
    md.push(
      `ferry-tls (the same, over TLS; on ${plannedFor("ferry-tls").join(", ")}${skipped["ferry-tls"] ? `; SKIPPED: ${skipped["ferry-tls"]}` : ""}). The certificate is made once per invocation, before the runs, in a temporary folder removed at exit:`,
      "", "```sh", t.certificate, t.server, t.client, "```", "",
    )
  }
  if (commands["ferry-metrics"]) {
    const t = commands["ferry-metrics"]
    md.push(`ferry-metrics (the same, with the server's metrics endpoint on; on ${plannedFor("ferry-metrics").join(", ")}${skipped["ferry-metrics"] ? `; SKIPPED: ${skipped["ferry-metrics"]}` : ""}):`, "", "```sh", t.server, t.client, "```", "")
  }
  for (const c of ONE_LINERS) {
    if (!commands[c]) continue
    md.push(
      `${c} one-liner (receiver listening before the timer starts; time runs from the start of the sender until the receiver exits)${skipped[c] ? ` (SKIPPED: ${skipped[c]})` : ""}:`,
      "", "```sh", `# receiver`, commands[c].receiver,
      ...(commands[c].receiverWithFsync ? [`# receiver on W4 (sync FILE fsyncs the output, in the same timed shell)`, commands[c].receiverWithFsync] : []),
      `# sender`, commands[c].sender, "```", "",
    )
  }
  md.push(`Every process was run under \`${TIME} -f '${TIME_FMT}' -o FILE\` (the ferry servers are read from /proc/PID/stat, /proc/PID/task/*/stat and VmHWM instead). For W3 every contender runs four transfers at once: four ferry send clients to one server, or four sender/receiver pipelines on four ports. Outputs were checked against the sha256 saved by \`ferry fake\` (and NAME.done for the ferry contenders, whose sends must also report every piece sent) before a time counted.`, "")
  if (Object.keys(skipped).length) md.push("## Skipped contenders", "", ...Object.entries(skipped).map(([c, why]) => `- SKIPPED ${c}: ${why}`), "")
  if (failureLines.length) md.push("## Failed runs", "", ...failureLines, "")

  mkdirSync(RESULTS, { recursive: true })
  const jsonText = JSON.stringify(json, null, 2) + "\n"
  const stamp = started.toISOString().replace(/\.\d+Z$/, "Z").replace(/:/g, "-")
  writeAtomic(join(RESULTS, "latest.json"), jsonText)
  writeAtomic(join(RESULTS, "latest.md"), md.join("\n"))
  writeAtomic(join(RESULTS, `${stamp}${opts.quick ? "-quick" : ""}.json`), jsonText)
  log(`wrote ${rel(join(RESULTS, "latest.md"))}, ${rel(join(RESULTS, "latest.json"))} and ${rel(join(RESULTS, `${stamp}${opts.quick ? "-quick" : ""}.json`))}`)
  return failures ? 1 : 0
}

function gitRev() {
  const r = spawnSync("git", ["-C", ROOT, "describe", "--always", "--dirty"], { encoding: "utf8" })
  return r.status === 0 ? r.stdout.trim() : null
}

// ---------------------------------------------------------------- cleanup on exit / Ctrl-C

function cleanupSync() {
  killAll("SIGKILL")
  for (const d of tempDirs) {
    try { rmSync(d, { recursive: true, force: true }) } catch {}
  }
  tempDirs.clear()
}
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    if (stopping) return
    stopping = true
    log(`${sig}: stopping every child and removing temporary folders`)
    killAll("SIGTERM")
    setTimeout(() => {
      cleanupSync()
      process.exit(130)
    }, 1000)
  })
}
process.on("exit", cleanupSync)

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`bench: ${e?.stack ?? e}`)
    process.exit(1)
  },
)
