/**
 * Vitest global setup: bundles the worker scripts from source, so that the
 * live layers (worker threads) run under the tests without a prior build.
 * Assets.ts points there when it runs from source.
 */
import { build } from "esbuild"
import { fileURLToPath } from "node:url"
import { sourceWorkersDir } from "../../src/node/Assets.js"

export default async function setup() {
  const root = fileURLToPath(new URL("../../", import.meta.url))
  await build({
    absWorkingDir: root,
    entryPoints: ["read", "inflate", "fake"].map((name) => ({ in: `src/node/workers/${name}.ts`, out: name })),
    outdir: fileURLToPath(sourceWorkersDir),
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning"
  })
}
