#!/usr/bin/env node
// Why ferry's worker pools are not @effect/platform's Worker.makePool: a measurement anyone can rerun.
// Two threads answering a trivial request, built both ways with esbuild (the way ferry's own
// bundle is): the time to the first answers (thread start-up, paid by every `ferry send` and
// `ferry serve`), 2000 round trips one after another (per-batch cost), and the whole CPU.
//   node bench/worker-pool.mjs [runs]
import { execFileSync } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const here = new URL("./worker-pool/", import.meta.url).pathname
const root = new URL("..", import.meta.url).pathname
const out = mkdtempSync(join(tmpdir(), "ferry-worker-pool-"))
const esbuild = join(root, "node_modules", ".bin", "esbuild")
for (const f of ["plain-worker", "main-plain", "effect-worker", "main-effect"]) {
  execFileSync(esbuild, [join(here, `${f}.ts`), "--bundle", "--platform=node", "--format=esm", `--outfile=${join(out, `${f}.mjs`)}`, "--log-level=error"], { cwd: root })
}
const runs = Number(process.argv[2] ?? 3)
for (let i = 0; i < runs; i++) {
  for (const f of ["main-plain", "main-effect"]) process.stdout.write(execFileSync(process.execPath, [join(out, `${f}.mjs`)], { encoding: "utf8" }))
}
