#!/usr/bin/env node
// Bundles the compiled CLI (dist/bin.js and everything it imports, Effect included) into one
// CommonJS file, dist/ferry.cjs, and makes V8's code cache for it, dist/ferry.cjs.cache, which
// bin/ferry loads with it. One file instead of several hundred ES modules spares the module
// loader; the code cache spares compiling it: every `ferry send` pays start-up, so both matter
// (on this machine `ferry --help` went from about 0.55 to 0.35 CPU-seconds with the cache).
//
// Run-time paths (worker scripts, the native addon) are located by node/Assets.js from its
// own URL: inside the bundle, `import.meta.url` stands for that file's place beside the bundle.
// The worker scripts are not bundled: they import a handful of small modules, and no Effect.
// The metrics endpoint (`--metrics`, with the HTTP server under it) is imported on demand: it is
// in the bundle, but esbuild wraps it so that none of its code runs until then.
import { execFileSync } from "node:child_process"
import { rmSync } from "node:fs"
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
// the cache holds what compiling the bundle and starting the command line took
execFileSync(process.execPath, [`${root}bin/ferry`, "--help"], { env: { ...process.env, FERRY_WRITE_CODE_CACHE: "1" }, stdio: "ignore" })
