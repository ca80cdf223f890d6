#!/usr/bin/env node
// Builds the optional ISA-L gunzip addon (native/build/Release/isal_inflate.node).
// Never fails its caller: it always exits 0 and prints one line saying whether the
// fast inflater is available (and why not). Quick when the addon is already built
// and newer than its sources. Set FERRY_NATIVE=0 to skip it (zlib is used instead).
//
// Steps: if ISA-L's headers or libisal.so are missing and we are root with apt-get,
// `apt-get install -y libisal-dev` (after `apt-get update` if the first try fails);
// then `node-gyp rebuild` in native/ with npm's bundled node-gyp, against the Node
// headers installed next to this node binary (no download).
import { execFileSync, spawnSync } from "node:child_process"
import { existsSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { delimiter, dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const addon = join(here, "build", "Release", "isal_inflate.node")
const sources = ["binding.gyp", "isal_inflate.c"].map((f) => join(here, f))

const say = (line) => console.error(`ferry: ${line}`)
const done = (ok, why) => {
  say(ok ? `fast gunzip (ISA-L addon) available${why ? ` (${why})` : ""}` : `fast gunzip (ISA-L addon) not available: ${why}; using zlib`)
  process.exit(0)
}

const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0)
const onPath = (cmd) =>
  (process.env.PATH ?? "").split(delimiter).some((d) => d && existsSync(join(d, cmd)))

// Loads the addon in a child process so that a half-built or unloadable file (for
// example libisal.so.2 missing) neither throws here nor stays cached in this process.
const loads = () => {
  const r = spawnSync(
    process.execPath,
    ["-e", `const m = require(${JSON.stringify(join(here, "index.cjs"))}); process.exit(m ? 0 : 1)`],
    { stdio: "ignore", timeout: 30_000 }
  )
  return r.status === 0
}

const incDirs = ["/usr/include", "/usr/local/include"]
const libDirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
const haveHeaders = () => incDirs.some((d) => existsSync(join(d, "isa-l", "igzip_lib.h")))
const haveLib = () => libDirs.some((d) => existsSync(join(d, "libisal.so")))

const run = (cmd, args, opts = {}) => {
  try {
    execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], timeout: 15 * 60_000, ...opts })
    return { ok: true, out: "" }
  } catch (e) {
    const out = `${e.stdout ?? ""}${e.stderr ?? ""}`.trim().split("\n").slice(-1)[0] ?? ""
    return { ok: false, out: out || String(e.message ?? e) }
  }
}

if (process.env.FERRY_NATIVE === "0") done(false, "disabled by FERRY_NATIVE=0")
if (process.platform !== "linux") done(false, `not supported on ${process.platform}`)

const built = mtime(addon)
if (built > 0 && sources.every((s) => mtime(s) < built) && loads()) done(true)

// 1. ISA-L development files.
if (!haveHeaders() || !haveLib()) {
  const root = typeof process.getuid === "function" && process.getuid() === 0
  if (!root || !onPath("apt-get")) {
    done(false, "libisal-dev is not installed (install it with `apt-get install -y libisal-dev`)")
  }
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
  let r = run("apt-get", ["install", "-y", "--no-install-recommends", "libisal-dev"], { env })
  if (!r.ok) {
    run("apt-get", ["update"], { env })
    r = run("apt-get", ["install", "-y", "--no-install-recommends", "libisal-dev"], { env })
  }
  if (!r.ok || !haveHeaders() || !haveLib()) done(false, `apt-get install libisal-dev failed: ${r.out}`)
}

// 2. A compiler toolchain for node-gyp.
for (const tool of ["python3", "make"]) {
  if (!onPath(tool)) done(false, `${tool} is not installed`)
}
if (!onPath("cc") && !onPath("gcc")) done(false, "no C compiler (cc/gcc) is installed")

// 3. node-gyp: the project's own, or the one bundled with npm (no download).
const findNodeGyp = () => {
  const candidates = [
    join(here, "..", "node_modules", "node-gyp", "bin", "node-gyp.js"),
    join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js")
  ]
  try {
    // npm's own location, wherever it is installed.
    const npmDir = dirname(createRequire(import.meta.url).resolve("npm/package.json", {
      paths: [join(dirname(process.execPath), "..", "lib", "node_modules")]
    }))
    candidates.push(join(npmDir, "node_modules", "node-gyp", "bin", "node-gyp.js"))
  } catch {}
  try {
    const root = execFileSync("npm", ["root", "-g"], { stdio: ["ignore", "pipe", "ignore"], timeout: 30_000 })
      .toString()
      .trim()
    candidates.push(join(root, "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"))
  } catch {}
  return candidates.find((c) => existsSync(c))
}
const nodeGyp = findNodeGyp()
if (!nodeGyp) done(false, "node-gyp was not found (it comes with npm)")

// Node's headers: the ones installed beside this node binary (e.g. /usr/include/node),
// so node-gyp does not try to download them.
const args = [nodeGyp, "rebuild", "--release"]
const nodeDir = join(dirname(process.execPath), "..")
if (existsSync(join(nodeDir, "include", "node", "node_api.h"))) args.push(`--nodedir=${nodeDir}`)
else if (process.env.npm_config_nodedir) args.push(`--nodedir=${process.env.npm_config_nodedir}`)

const b = run(process.execPath, args, { cwd: here })
if (!b.ok) done(false, `node-gyp rebuild failed: ${b.out}`)
if (!existsSync(addon)) done(false, "node-gyp produced no isal_inflate.node")
if (!loads()) done(false, "the built addon does not load (is libisal.so.2 installed?)")
done(true, "built")
