#!/usr/bin/env node
// Bundles the compiled CLI (dist/bin.js and everything it imports, Effect included) into
// dist/ferry.mjs, which bin/ferry runs, and the chunks it shares with the code it loads only
// on demand (dist/ferry-HASH.mjs). A bundle instead of several hundred ES modules cuts start-up
// from about 0.4 to 0.13 CPU-seconds: most of it was the module loader resolving, opening and
// compiling files. That matters because every `ferry send` pays it.
//
// Code split off into chunks: the metrics endpoint (`--metrics`), imported dynamically, with the
// HTTP server it is built on; loaded with the rest, it would add about 8 MB to every run.
//
// dist/services/Assets.js stays outside the bundle: it locates the worker scripts and the
// native addon from its own import.meta.url, which must remain its real place. The worker
// scripts are not bundled: they import a handful of small modules, and no Effect.
import { build } from "esbuild"
import { readdirSync, rmSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const dist = join(root, "dist")

const keepAssetsOutside = {
  name: "keep-assets-outside",
  setup(b) {
    // every output file lies in dist/, beside services/
    b.onResolve({ filter: /(^|\/)Assets\.js$/ }, () => ({ path: "./services/Assets.js", external: true }))
  }
}

// chunks of an earlier build have other hashes
for (const f of readdirSync(dist)) if (/^ferry(-[A-Z0-9]+)?\.mjs(\.map)?$/.test(f)) rmSync(join(dist, f))

await build({
  absWorkingDir: root,
  entryPoints: { ferry: "dist/bin.js" },
  outdir: "dist",
  outExtension: { ".js": ".mjs" },
  chunkNames: "ferry-[hash]",
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: "linked",
  legalComments: "none",
  // CommonJS dependencies (ws, under the HTTP server) require Node's own modules: give them `require`
  banner: { js: "import { createRequire as __ferryCreateRequire } from \"node:module\"; const require = __ferryCreateRequire(import.meta.url);" },
  logLevel: "warning",
  plugins: [keepAssetsOutside]
})
