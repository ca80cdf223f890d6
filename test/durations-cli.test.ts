/**
 * Issue 18 point 4, through `bin/ferry`: every duration flag and FERRY_ variable takes durations
 * as people write them, and `send --watch` against a server that is down says it tries without end.
 */
import { afterAll, describe, expect, it } from "vitest"
import { ferry, spawnFerry, tempDirs } from "./support/cli.js"
import { freePort, makeFake } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

describe("durations as people write them", () => {
  it("--retry-for 3s, --marker-timeout 2s, --progress-interval 1s are taken: nobody listening gives up after 3s (exit 3)", async () => {
    const src = dirs.make("src")
    await makeFake(src, "abc", ["--size", "1000", "--slice", "100"])
    const r = await ferry(["send", "--path", src, "--address", "127.0.0.1:1", "--retry-for", "3s", "--marker-timeout", "2s", "--progress-interval", "1s"])
    expect(r.stderr).not.toMatch(/must be a number of seconds/)
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/gave up after 20 retries or 3s\)$/m)
  })

  it("FERRY_MARKER_TIMEOUT=1500ms fails a dataset whose marker never comes (exit 1)", async () => {
    const src = dirs.make("src")
    await makeFake(src, "late", ["--size", "1000", "--slice", "100", "--no-marker"])
    const r = await ferry(["send", "--path", src, "--address", "127.0.0.1:1", "--retry-for", "1h30m"], { env: { FERRY_MARKER_TIMEOUT: "1500ms" } })
    expect(r.code).toBe(1)
    expect(r.stdout).toMatch(/^late: failed/m)
  })

  it("a duration that is not one is a usage error naming the flag (exit 2)", async () => {
    const r = await ferry(["send", "--path", dirs.make("x"), "--address", "127.0.0.1:1", "--retry-for", "3x"])
    expect(r.code).toBe(2)
    expect(r.stderr.trim().split("\n")).toHaveLength(1)
    expect(r.stderr).toMatch(/^ferry: --retry-for must be a number of seconds or a duration such as 500ms, 2s, 5m, 1h30m or "2 minutes", above 0, not "3x"/)
  })

  it("send --watch against a server that is down tries again without end, and says so", async () => {
    const src = dirs.make("src")
    await makeFake(src, "abc", ["--size", "1000", "--slice", "100"])
    const watcher = spawnFerry(["send", "--watch", "--path", src, "--address", `127.0.0.1:${await freePort()}`, "--quiet"])
    try {
      const m = await watcher.waitFor(/trying again (.*)$/m)
      expect(m[1]).toBe("without end (--watch)")
      expect(watcher.output().stderr).not.toMatch(/Infinity/)
    } finally {
      watcher.child.kill("SIGTERM")
      await watcher.exited
    }
  })
})
