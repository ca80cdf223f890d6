/**
 * `send --bwlimit TIMETABLE` through the built `bin/ferry` over loopback: a
 * timetable whose next change is a few seconds away, seen in
 * ferry_send_bwlimit_bytes_per_second and in the bytes sent before and after
 * the change; a bad timetable, given as the flag or in FERRY_BWLIMIT, is a
 * command-line error naming the entry.
 */
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { ferry, sha256File, spawnFerry, startServer, tempDirs } from "./support/cli.js"
import { linesOf, makeFake, pieceBytes } from "./support/datasets.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

/** The sender reads its timetable in local time: UTC here, so that the test can write the times. */
const UTC = { TZ: "UTC" }
const two = (n: number) => String(n).padStart(2, "0")
/** HH:MM:SS in UTC, `offsetMs` from now. */
const utcClock = (offsetMs: number) => {
  const d = new Date(Date.now() + offsetMs)
  return `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())}`
}

const scrape = async (address: string) => {
  const body = await (await fetch(`http://${address}/metrics`)).text()
  const value = (series: string) => {
    const line = body.split("\n").find((l) => l.startsWith(`${series} `))
    return line === undefined ? undefined : Number(line.slice(series.length + 1))
  }
  return { body, value }
}

describe("send --bwlimit by the clock", () => {
  it("16KiB/s until a few seconds from now, then off: the gauge and the bytes sent follow, without a restart", async () => {
    const src = dirs.make("src")
    const m = await makeFake(src, "clock", ["--size", "8MiB", "--slice", "16KiB", "--seed", "97"])
    const wire = pieceBytes(src, "clock")
    expect(wire).toBeGreaterThan(4_000_000)
    const dest = dirs.make("dest")
    // frames of at most 128 KiB of pieces, so that the first frame does not take a megabyte at once
    const server = await startServer(dest, ["--max-frame", "256KiB", "--connection-memory", "1MiB"])
    try {
      // every-day entries: the one in force began an hour ago, the next one comes in 10 s (room for node to start)
      const slow = `${utcClock(-3_600_000)},16KiB/s`
      const off = `${utcClock(10_000)},off`
      const sender = spawnFerry(["send", "--path", src, "--address", server.address, "--bwlimit", `${slow} ${off}`, "--quiet", "--metrics", "127.0.0.1:0"], { env: UTC })
      const metrics = (await sender.waitFor(/metrics on http:\/\/(\S+)\/metrics/))[1]!
      await sender.waitFor(new RegExp(`bandwidth limit now 16KiB/s \\(timetable entry "${slow}"\\), until \\w{3} ${off.split(",")[0]}`))
      const before = await scrape(metrics)
      expect(before.value("ferry_send_bwlimit_bytes_per_second"), before.body).toBe(16 * 1024)
      // at 16 KiB/s: the burst (64 KiB), a frame or two, and 16 KiB a second: far from the dataset's 4 MB and more
      expect(before.value("ferry_send_bytes_total")).toBeLessThan(1024 * 1024)

      await sender.waitFor(new RegExp(`bandwidth limit now off \\(timetable entry "${off}"\\)`))
      const after = await scrape(metrics)
      expect(after.value("ferry_send_bwlimit_bytes_per_second"), after.body).toBe(0)
      // off: the rest goes at once (at 16 KiB/s it would take minutes more, past the test's timeout)
      expect(await sender.exited).toBe(0)
      expect(sha256File(join(dest, "clock"))).toBe(m.sha)
      const limits = linesOf(sender.output().stderr).filter((l) => l.includes("bandwidth limit"))
      expect(limits, sender.output().stderr).toHaveLength(2)
    } finally {
      await server.stop()
    }
  })

  it("a bad timetable is a command-line error (2) naming the entry, as the flag or in FERRY_BWLIMIT", async () => {
    const src = dirs.make("src")
    const flag = await ferry(["send", "--path", src, "--address", "127.0.0.1:9", "--bwlimit", "08:00,10MiB/s 25:00,off"])
    expect(flag.code).toBe(2)
    expect(linesOf(flag.stderr)).toEqual(['ferry: --bwlimit has a bad entry "25:00,off": "25:00" is not a time of day (HH:MM, from 00:00 to 23:59)'])
    expect(flag.stdout).toBe("")

    const env = await ferry(["send", "--path", src, "--address", "127.0.0.1:9"], { env: { FERRY_BWLIMIT: "Mon-08:00,10MiB/s Sat-00:00,slow" } })
    expect(env.code).toBe(2)
    expect(linesOf(env.stderr)).toEqual(['ferry: FERRY_BWLIMIT has a bad entry "Sat-00:00,slow": "slow" is not a rate above 0 (such as 10MiB/s) or off'])
  })
})
