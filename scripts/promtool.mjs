#!/usr/bin/env node
// Finds Prometheus's promtool, with which the metrics tests check ferry's /metrics
// (`promtool check metrics`: Prometheus's own parser of the text format, and its lint).
// On the PATH, else in .tools/, else taken from Debian's prometheus package: downloaded with
// `apt-get download` (after `apt-get update` if that fails) and only promtool extracted from it
// with dpkg-deb, so nothing is installed, no service is started and no dependency is pulled
// (the package is about 19 MB; a few seconds). Prints promtool's path on stdout and exits 0;
// else says why on stderr and exits 1.
import { execFileSync } from "node:child_process"
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const cached = join(root, ".tools", "promtool")

const fail = (why) => {
  console.error(`promtool not available: ${why}`)
  process.exit(1)
}
const works = (path) => {
  try {
    execFileSync(path, ["--version"], { stdio: "ignore", timeout: 30_000 })
    return true
  } catch {
    return false
  }
}
const onPath = (cmd) => (process.env.PATH ?? "").split(delimiter).filter((dir) => dir !== "").map((dir) => join(dir, cmd)).find((p) => existsSync(p))

const found = onPath("promtool")
if (found !== undefined && works(found)) {
  console.log(found)
  process.exit(0)
}
if (existsSync(cached) && works(cached)) {
  console.log(cached)
  process.exit(0)
}
if (onPath("apt-get") === undefined || onPath("dpkg-deb") === undefined) fail("not on the PATH, and no apt-get and dpkg-deb to take it from Debian's prometheus package")

/** Downloads the package into `work` and moves promtool to .tools/; answers why not, or undefined. */
const extract = (work) => {
  chmodSync(work, 0o777) // apt-get downloads as its own user, _apt
  const download = () => execFileSync("apt-get", ["download", "-q", "prometheus"], { cwd: work, stdio: ["ignore", "pipe", "pipe"], timeout: 300_000 })
  try {
    download()
  } catch {
    try {
      execFileSync("apt-get", ["update", "-q"], { stdio: "ignore", timeout: 300_000 })
      download()
    } catch (e) {
      return `apt-get download prometheus failed: ${String(e.stderr ?? e.message).trim().split("\n").pop()}`
    }
  }
  const deb = readdirSync(work).find((f) => f.endsWith(".deb"))
  if (deb === undefined) return "apt-get download prometheus left no .deb"
  try {
    execFileSync("sh", ["-c", `dpkg-deb --fsys-tarfile "${join(work, deb)}" | tar -x -C "${work}" ./usr/bin/promtool`], { stdio: "ignore", timeout: 120_000 })
    mkdirSync(join(root, ".tools"), { recursive: true })
    copyFileSync(join(work, "usr", "bin", "promtool"), cached) // /tmp may be another filesystem
    chmodSync(cached, 0o755)
  } catch (e) {
    return `could not extract promtool from Debian's prometheus package: ${e.message}`
  }
  return undefined
}

const work = mkdtempSync(join(tmpdir(), "ferry-promtool-"))
const problem = extract(work)
rmSync(work, { recursive: true, force: true })
if (problem !== undefined) fail(problem)
if (!works(cached)) fail(`${cached} does not run`)
console.log(cached)
