/**
 * The README's "Use it from code" program is examples/send-and-serve.ts,
 * word for word; the typecheck covers it (tsconfig includes examples/), and
 * this test runs it as a user would, against the package's own exports.
 */
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { build } from "esbuild"
import { describe, expect, it } from "vitest"

const root = fileURLToPath(new URL("../", import.meta.url))
const example = readFileSync(`${root}examples/send-and-serve.ts`, "utf8")

describe("the README's program", () => {
  it("is examples/send-and-serve.ts, word for word", () => {
    const readme = readFileSync(`${root}README.md`, "utf8")
    const block = /## Use it from code[\s\S]*?```ts\n([\s\S]*?)```/.exec(readme)?.[1]
    expect(block).toBe(example)
  })

  it("runs: makes a dataset, serves, sends, prints the result, exits 0", async () => {
    // compiled as it stands (imports of "ferry" left as they are: the package resolves itself)
    const out = `${root}examples/.build/send-and-serve.mjs`
    await build({ entryPoints: [`${root}examples/send-and-serve.ts`], outfile: out, format: "esm", platform: "node", logLevel: "warning" })
    const r = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(process.execPath, [out], { timeout: 60_000 }, (error, stdout) => resolve({ code: error === null ? 0 : Number(error.code ?? 1), stdout }))
    )
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^abc: committed 8388608 bytes, crc32 [0-9a-f]{8}$/m)
    expect(r.stdout).not.toMatch(/failed/)
  })
})
