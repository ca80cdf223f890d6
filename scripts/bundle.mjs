#!/usr/bin/env node
// Bundles the compiled CLI (dist/bin.js and everything it imports, Effect included) into one
// CommonJS file, dist/ferry.cjs, and makes V8's code cache for it, dist/ferry.cjs.cache, which
// bin/ferry loads with it. One file instead of several hundred ES modules spares the module
// loader; the code cache spares compiling it: every `ferry send` pays start-up, so both matter
// (on this machine `ferry --help` went from about 0.55 to 0.35 CPU-seconds with the cache).
//
// Run-time paths (worker scripts, the native addon) are located by services/Assets.js from its
// own URL: inside the bundle, `import.meta.url` stands for that file's place beside the bundle.
// The worker scripts are not bundled: they import a handful of small modules, and no Effect.
import { execFileSync } from "node:child_process"
import { rmSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { build } from "esbuild"

const root = fileURLToPath(new URL("..", import.meta.url))
const dist = join(root, "dist")

await build({
  absWorkingDir: root,
  entryPoints: ["dist/bin.js"],
  outfile: "dist/ferry.cjs",
  bundle: true,
  splitting: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  sourcemap: "linked",
  legalComments: "none",
  // CommonJS dependencies (ws, under the HTTP server) require Node's own modules: give them `require`
  banner: { js: "import { createRequire as __ferryCreateRequire } from \"node:module\"; const require = __ferryCreateRequire(import.meta.url);" },
  logLevel: "warning",
  define: { "import.meta.url": "__ferryAssetsUrl" },
  banner: { js: "const __ferryAssetsUrl = require(\"node:url\").pathToFileURL(require(\"node:path\").join(__dirname, \"services\", \"Assets.js\")).href;" }
})
rmSync(`${root}dist/ferry.cjs.cache`, { force: true })
// the cache holds what compiling the bundle and starting the command line took
execFileSync(process.execPath, [`${root}bin/ferry`, "--help"], { env: { ...process.env, FERRY_WRITE_CODE_CACHE: "1" }, stdio: "ignore" })
