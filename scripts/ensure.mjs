#!/usr/bin/env node
// Makes a fresh clone ready: installs the locked dependencies when they are
// missing or stale, and builds dist/ when src/ is newer. Quick when nothing changed.
import { execSync } from "node:child_process"
import { existsSync, readdirSync, statSync } from "node:fs"
import { join } from "node:path"

const root = new URL("..", import.meta.url).pathname
const run = (cmd) => execSync(cmd, { cwd: root, stdio: ["ignore", "inherit", "inherit"] })
const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0)
const newest = (dir) => {
  let t = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs)
  }
  return t
}

const [major] = process.versions.node.split(".").map(Number)
if (major < 20) {
  console.error(`ferry needs Node.js 20 or newer; this is ${process.version}`)
  process.exit(1)
}
if (mtime(join(root, "node_modules/.package-lock.json")) < mtime(join(root, "package-lock.json"))) {
  console.error("ferry: installing the locked dependencies...")
  // exactly the locked versions; the lock file lists every platform's optional packages
  run("npm ci --no-audit --no-fund --loglevel=error")
}
const built = mtime(join(root, "dist/ferry.cjs.cache"))
if (built < newest(join(root, "src")) || built < mtime(join(root, "tsconfig.json")) || built < mtime(join(root, "scripts/bundle.mjs"))) {
  console.error("ferry: building (tsc)...")
  run("npm run --silent build")
}

// The optional ISA-L gunzip addon: built once, quick when up to date; never fails (zlib is the fallback).
if (process.env.FERRY_NATIVE !== "0") run("node native/build.mjs")
