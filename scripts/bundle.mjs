#!/usr/bin/env node
// Bundles the compiled CLI (dist/bin.js and everything it imports, Effect included) into one
// CommonJS file, dist/ferry.cjs, and makes V8's code cache for it, dist/ferry.cjs.cache, which
// bin/ferry loads with it. One file instead of several hundred ES modules spares the module
// loader; the code cache spares compiling it: every `ferry send` pays start-up, so both matter
// (on this machine `ferry --help` went from about 0.55 to 0.35 CPU-seconds with the cache).
// The cache is only used if it matches the bundle and the Node.js version (V8 checks both).
//
// Run-time paths (worker scripts, the native addon) are located by node/Assets.js from its
// own URL: inside the bundle, `import.meta.url` stands for that file's place beside the bundle.
// The worker scripts are not bundled: they import a handful of small modules, and no Effect.
// The metrics endpoint (`--metrics`, with the HTTP server under it) is imported on demand: it is
// in the bundle, but esbuild wraps it so that none of its code runs until then.
import { execFile, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { fileURLToPath } from "node:url"
import { build } from "esbuild"

const root = fileURLToPath(new URL("..", import.meta.url))

await build({
  absWorkingDir: root,
  entryPoints: ["dist/bin.js"],
  outfile: "dist/ferry.cjs",
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  sourcemap: "linked",
  legalComments: "none",
  logLevel: "warning",
  define: { "import.meta.url": "__ferryAssetsUrl" },
  banner: { js: "const __ferryAssetsUrl = require(\"node:url\").pathToFileURL(require(\"node:path\").join(__dirname, \"node\", \"Assets.js\")).href;" }
})
rmSync(`${root}dist/ferry.cjs.cache`, { force: true })

// The cache holds the functions compiled by the time it is written, so it is written at the end
// of a real `ferry send` of a small sample to a local `ferry serve`: the code a send runs is then
// in it, not only the command line's (W4, 10,000 pieces: about 0.1 CPU-second less per send on
// this machine). Should that fail (no loopback, say), it is written after `--help` as before.
const ferry = [`${root}bin/ferry.mjs`]
const run = promisify(execFile)
const cacheFromSend = async () => {
  const work = mkdtempSync(join(tmpdir(), "ferry-cache-"))
  const server = spawn(process.execPath, [...ferry, "serve", "--port", "0", "--host", "127.0.0.1", "--dest", join(work, "dest")], { stdio: ["ignore", "pipe", "pipe"] })
  const exited = new Promise((resolve) => server.once("exit", resolve))
  try {
    // run without blocking this event loop, which drains the server's output meanwhile
    await run(process.execPath, [...ferry, "fake", "--path", join(work, "src"), "--size", "1MB"])
    const address = await new Promise((resolve, reject) => {
      let seen = ""
      const look = (chunk) => {
        seen += chunk
        const m = /listening on (\S+)/.exec(seen)
        if (m) resolve(m[1])
      }
      server.stdout.on("data", look)
      server.stderr.on("data", look)
      server.once("exit", () => reject(new Error(`ferry serve exited: ${seen.trim()}`)))
      setTimeout(() => reject(new Error("ferry serve did not start listening in 20 s")), 20_000).unref()
    })
    await run(process.execPath, [...ferry, "send", "--path", join(work, "src"), "--address", address, "--quiet", "--retry-for", "5s"], {
      env: { ...process.env, FERRY_WRITE_CODE_CACHE: "1" },
      timeout: 60_000
    })
  } finally {
    server.kill("SIGTERM")
    await exited
    try {
      rmSync(work, { recursive: true, force: true })
    } catch {
      // a temporary folder left behind is no reason to make the cache again
    }
  }
}
try {
  await cacheFromSend()
} catch (e) {
  console.warn(`bundle: the code cache is made from \`ferry --help\` instead of a sample send (${e instanceof Error ? e.message : e})`)
  rmSync(`${root}dist/ferry.cjs.cache`, { force: true })
  execFileSync(process.execPath, [...ferry, "--help"], { env: { ...process.env, FERRY_WRITE_CODE_CACHE: "1" }, stdio: "ignore" })
}
