#!/usr/bin/env node
// Bundles the compiled CLI (dist/bin.js and everything it imports, Effect included) into one
// file, dist/ferry.mjs, which bin/ferry runs. One file instead of several hundred ES modules
// cuts start-up from about 0.4 to 0.13 CPU-seconds: most of it was the module loader resolving,
// opening and compiling files. That matters because every `ferry send` pays it.
//
// dist/services/Assets.js stays outside the bundle: it locates the worker scripts and the
// native addon from its own import.meta.url, which must remain its real place. The worker
// scripts are not bundled: they import a handful of small modules, and no Effect.
import { build } from "esbuild"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))

const keepAssetsOutside = {
  name: "keep-assets-outside",
  setup(b) {
    b.onResolve({ filter: /(^|\/)Assets\.js$/ }, () => ({ path: "./services/Assets.js", external: true }))
  }
}

await build({
  absWorkingDir: root,
  entryPoints: ["dist/bin.js"],
  outfile: "dist/ferry.mjs",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: "linked",
  legalComments: "none",
  logLevel: "warning",
  plugins: [keepAssetsOutside]
})
