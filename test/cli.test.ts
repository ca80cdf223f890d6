/**
 * The command line a newcomer meets: help, defaults, FERRY_* variables,
 * errors as one `ferry:` line with exit 2, log formats. The built `bin/ferry`
 * runs for everything a user sees; the pure parts run in-process.
 */
import { describe, expect, it } from "@effect/vitest"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Schema from "effect/Schema"
import fc from "fast-check"
import { execFile } from "node:child_process"
import { afterAll } from "vitest"
import { errorLine, exitCode, ExitCode, tidyHelp, usageLogFormat } from "../src/Cli.js"
import { envName } from "../src/CliOptions.js"
import { ByteSize, DurationText, formatByteSize, parseBytes, parseDuration, PositiveCount } from "../src/domain/Units.js"
import { VERSION } from "../src/domain/Version.js"
import { LoggingLive, logExit, type LogStyle } from "../src/Logging.js"
import { FERRY, ferry, spawnFerry, tempDirs } from "./support/cli.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

const ANSI = /\x1b\[/

/** The lines a program logs, as ferry's logger writes them. */
const logged = (style: LogStyle, program: Effect.Effect<void>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    yield* program.pipe(Effect.provide(LoggingLive(style, { write: (line) => void lines.push(line) })))
    return lines
  })

describe("quantities on the command line", () => {
  it("sizes in help read back as the same number of bytes", () => {
    expect(formatByteSize(16 * 1024 ** 2)).toBe("16MiB")
    expect(formatByteSize(2 ** 44)).toBe("16TiB")
    expect(formatByteSize(1000)).toBe("1000")
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 50 }), (n) => parseBytes(formatByteSize(n)) === n))
  })

  it("durations as people write them: plain seconds as before, compact units, or Effect durations", () => {
    expect(parseDuration("10")).toEqual(Duration.seconds(10))
    expect(parseDuration("1.5")).toEqual(Duration.millis(1500))
    expect(parseDuration("500ms")).toEqual(Duration.millis(500))
    expect(parseDuration("2s")).toEqual(Duration.seconds(2))
    expect(parseDuration("5m")).toEqual(Duration.minutes(5))
    expect(parseDuration("1h30m")).toEqual(Duration.minutes(90))
    expect(parseDuration("1h 30m")).toEqual(Duration.minutes(90))
    expect(parseDuration("1.5m")).toEqual(Duration.seconds(90))
    expect(parseDuration("2d")).toEqual(Duration.days(2))
    expect(parseDuration("3S")).toEqual(Duration.seconds(3))
    expect(parseDuration("500 millis")).toEqual(Duration.millis(500))
    expect(parseDuration("2 minutes")).toEqual(Duration.minutes(2))
    for (const bad of ["0", "-1", "ten", "10 parsecs", "0 seconds", "", "3x", "s", "1h30", "0s", "0ms"]) expect(parseDuration(bad), bad).toBeUndefined()
    expect(Schema.encodeSync(DurationText)(Duration.seconds(120))).toBe("2m")
    expect(Schema.encodeSync(DurationText)(Duration.minutes(90))).toBe("1h30m")
    // what help prints reads back as the same duration
    fc.assert(fc.property(fc.integer({ min: 1, max: 10 * 86_400_000 }), (ms) => Duration.toMillis(parseDuration(Schema.encodeSync(DurationText)(Duration.millis(ms)))!) === ms))
  })

  it("a wrong value says what was expected and what was given", () => {
    expect(() => Schema.decodeSync(ByteSize)("lots")).toThrow('must be a size in bytes such as 16384 or 16KiB, not "lots"')
    expect(() => Schema.decodeSync(PositiveCount)("0")).toThrow('must be a whole number above 0, not "0"')
    expect(Schema.decodeSync(PositiveCount)("256")).toBe(256)
  })

  it("each flag has its variable", () => {
    expect(envName("max-connections")).toBe("FERRY_MAX_CONNECTIONS")
    expect(envName("token-file")).toBe("FERRY_TOKEN_FILE")
  })
})

describe("log lines", () => {
  it.effect("json: one object per line, ISO time, level, message, every annotation a field", () =>
    Effect.gen(function*() {
      const lines = yield* logged(
        { format: "json", debug: false },
        Effect.logWarning("piece refused").pipe(Effect.annotateLogs({ dataset: "abc", peer: "10.0.0.2:5000", code: "BadPiece" }))
      )
      expect(lines).toHaveLength(1)
      expect(lines[0]!.endsWith("\n")).toBe(true)
      expect(JSON.parse(lines[0]!)).toEqual({
        time: "1970-01-01T00:00:00.000Z", // the test clock
        level: "WARN",
        message: "piece refused",
        dataset: "abc",
        peer: "10.0.0.2:5000",
        code: "BadPiece"
      })
    }))

  it.effect("json: the line ferry stops on is an ERROR carrying the exit code", () =>
    Effect.gen(function*() {
      const lines = yield* logged({ format: "json", debug: false }, logExit("127.0.0.1:1: connection refused", 1))
      expect(JSON.parse(lines[0]!)).toMatchObject({ level: "ERROR", message: "127.0.0.1:1: connection refused", exit: 1 })
    }))

  it.effect("text: short ferry: lines, a prefix for warnings and errors, none for the final failure", () =>
    Effect.gen(function*() {
      const lines = yield* logged(
        { format: "text", debug: false },
        Effect.all([
          Effect.logDebug("not shown without --debug"),
          Effect.logInfo("listening"),
          Effect.logWarning("no token").pipe(Effect.annotateLogs("peer", "x")),
          Effect.logError("second failure"),
          logExit("first failure", 1)
        ])
      )
      expect(lines).toEqual(["ferry: listening\n", "ferry: warning: no token\n", "ferry: error: second failure\n", "ferry: first failure\n"])
    }))

  it.effect("text with --debug: full UTC timestamp, level, annotations", () =>
    Effect.gen(function*() {
      const lines = yield* logged({ format: "text", debug: true }, Effect.logDebug("found 2 datasets").pipe(Effect.annotateLogs("dataset", "abc")))
      expect(lines).toEqual(["1970-01-01T00:00:00.000Z DEBUG found 2 datasets dataset=abc\n"])
    }))
})

describe("what @effect/cli prints, as ferry shows it", () => {
  it("usage lines name the program, without colour unless asked", () => {
    const help = "\x1b[1mUSAGE\x1b[0m\n\n$ send --path DIR\n\n  A user-defined piece of text.\n\n  Folder.\n"
    expect(tidyHelp(help, false)).toBe("USAGE\n\nferry send --path DIR\n\n  Folder.")
    expect(tidyHelp(help, true)).toMatch(ANSI)
    expect(tidyHelp("$ ferry", false)).toBe("ferry")
  })

  it("an error of several paragraphs is one line", () => {
    const doc = HelpDoc.blocks([HelpDoc.p("Expected to find option: '--path'"), HelpDoc.p("Expected to find option: '--address'")])
    expect(errorLine(doc)).toBe("missing --path (or FERRY_PATH); missing --address (or FERRY_ADDRESS)")
  })

  it("exit codes", () => {
    expect(exitCode(Exit.succeed(ExitCode.Usage))).toBe(2)
    expect(exitCode(Exit.interrupt(FiberId.none))).toBe(130)
    expect(exitCode(Exit.fail("not reported"))).toBe(1)
    expect(exitCode(Exit.die(new Error("boom")))).toBe(1)
  })
})

/** Lines of stderr that are not empty. */
const lines = (text: string) => text.split("\n").filter((l) => l !== "")

describe("ferry --help", () => {
  it("piped, has no ANSI escapes; usage lines name the program", async () => {
    for (const args of [["--help"], ["send", "--help"], ["serve", "--help"], ["fake", "--help"], []]) {
      const r = await ferry(args)
      expect(r.code).toBe(0)
      expect(r.stdout).not.toMatch(ANSI)
      expect(r.stdout).not.toMatch(/^\$ /m)
    }
    const send = await ferry(["send", "--help"])
    expect(send.stdout).toMatch(/^USAGE\n\nferry send \[--path DIR\] \[--address HOST:PORT\[,HOST:PORT\.\.\.\]\] /m)
    const top = await ferry(["--help"])
    expect(top.stdout).toMatch(/^ {2}- ferry serve \[--port PORT\]/m)
    expect(top.stdout).toMatch(/^ {4}Receive datasets, gunzip them/m)
  })

  it("shows the defaults, from the pipelines' own values, bytes in a readable unit", async () => {
    const r = await ferry(["serve", "--help"])
    const entry = (flag: string) => new RegExp(`^${flag}\\b.*\\n\\n.*\\n\\n  (.*)$`, "m").exec(r.stdout)?.[1]
    expect(entry("--max-connections N")).toBe("Default: 256; or FERRY_MAX_CONNECTIONS in the environment.")
    expect(entry("--max-slice BYTES")).toBe("Default: 64MiB; or FERRY_MAX_SLICE in the environment.")
    // the frame limit follows the slice limit unless it is given
    expect(r.stdout).toMatch(/enough for one piece of --max-slice/)
    expect(entry("--max-dataset-size BYTES")).toBe("Default: 16TiB; or FERRY_MAX_DATASET_SIZE in the environment.")
    expect(entry("--idle-timeout SECONDS")).toBe("Default: 2m; or FERRY_IDLE_TIMEOUT in the environment.")
    expect(entry("--port PORT")).toBe("Required; or FERRY_PORT in the environment.")
    // nothing listed that every command rejects or that needs a terminal
    expect(r.stdout).not.toMatch(/--log-level|--wizard|--completions/)
  })

  const onTerminal = (env: NodeJS.ProcessEnv) =>
    new Promise<string>((resolve, reject) =>
      execFile("script", ["-qc", `${FERRY} send --help`, "/dev/null"], { env: { ...process.env, ...env } }, (e, out) => (e ? reject(e) : resolve(out))))

  // a terminal through script(1), from util-linux (bsdutils, essential on Debian)
  it("on a terminal it has colour, unless NO_COLOR is set", async () => {
    expect(await onTerminal({ NO_COLOR: "" })).toMatch(ANSI)
    expect(await onTerminal({ NO_COLOR: "1" })).not.toMatch(ANSI)
  })

  it("--version prints the version", async () => {
    const r = await ferry(["--version"])
    expect(r.code).toBe(0)
    expect(r.stdout).toBe(`${VERSION}\n`)
  })
})

describe("command-line errors: one ferry: line, exit 2", () => {
  it("an unknown flag", async () => {
    const r = await ferry(["send", "--path", "/tmp", "--address", "127.0.0.1:1", "--bogus"])
    expect(r.code).toBe(2)
    expect(lines(r.stderr)).toEqual(["ferry: Received unknown argument: '--bogus'"])
    expect(r.stdout).toBe("")
  })

  it("a misspelt flag, with the right one suggested", async () => {
    const r = await ferry(["send", "--path", "/tmp", "--adress", "127.0.0.1:1"])
    expect(r.code).toBe(2)
    expect(lines(r.stderr)).toEqual(["ferry: The flag '--adress' is not recognized. Did you mean '--address'?"])
  })

  it("an unknown command", async () => {
    const r = await ferry(["recieve"])
    expect(r.code).toBe(2)
    expect(lines(r.stderr)).toEqual(["ferry: Invalid subcommand for ferry - use one of 'send', 'serve', 'fake'"])
  })

  it("a bad duration, byte size, count", async () => {
    const dest = dirs.make("dest")
    for (const [flag, value, message] of [
      ["--idle-timeout", "0", 'ferry: --idle-timeout must be a number of seconds or a duration such as 500ms, 2s, 5m, 1h30m or \"2 minutes\", above 0, not "0"'],
      ["--connection-memory", "1 parsec", 'ferry: --connection-memory must be a size in bytes above 0 such as 16384 or 16KiB, not "1 parsec"'],
      ["--max-pending", "-3", 'ferry: --max-pending must be a whole number above 0, not "-3"']
    ] as const) {
      const r = await ferry(["serve", "--port", "0", "--dest", dest, flag, value])
      expect(r.code).toBe(2)
      expect(lines(r.stderr)).toEqual([message])
    }
  })

  it("--wizard without a terminal refuses at once instead of waiting for answers", async () => {
    const started = Date.now()
    const r = await ferry(["send", "--wizard"], { timeout: 20_000 })
    expect(r.code).toBe(2)
    expect(lines(r.stderr)).toEqual(["ferry: --wizard asks its questions on a terminal; give the options on the command line instead (ferry --help)"])
    expect(Date.now() - started).toBeLessThan(15_000)
  })
})

describe("FERRY_* environment variables", () => {
  it("a bad value in the environment is named, exit 2", async () => {
    const r = await ferry(["serve", "--port", "0", "--dest", dirs.make("dest")], { env: { FERRY_MAX_FRAME: "bogus" } })
    expect(r.code).toBe(2)
    expect(lines(r.stderr)).toEqual(['ferry: FERRY_MAX_FRAME must be a size in bytes above 0 such as 16384 or 16KiB, not "bogus"'])
  })

  it("required options from the environment: serve listens", async () => {
    const dest = dirs.make("dest")
    const server = spawnFerry(["serve", "--host", "127.0.0.1"], { env: { FERRY_PORT: "0", FERRY_DEST: dest } })
    try {
      const m = await server.waitFor(/listening on 127\.0\.0\.1:(\d+)/)
      expect(Number(m[1])).toBeGreaterThan(0)
      expect(server.output().stderr).toContain(`writing to ${dest}`)
    } finally {
      server.child.kill("SIGTERM")
      await server.exited
    }
  })

  it("Ctrl-C stops serve cleanly: one line, exit code 0", async () => {
    const server = spawnFerry(["serve", "--host", "127.0.0.1"], { env: { FERRY_PORT: "0", FERRY_DEST: dirs.make("dest") } })
    await server.waitFor(/listening on/)
    server.child.kill("SIGINT")
    expect(await server.exited).toBe(0)
    expect(server.output().stderr).toMatch(/^ferry: stopped by SIGINT; datasets in progress are kept in .*\/\.ferry for their senders to resume$/m)
  })

  it("a flag wins over the environment, which wins over the default", async () => {
    const dir = dirs.make("src")
    const small = ["--size", "1000", "--slice", "100", "--no-marker"]
    const fromFlag = await ferry(["fake", "--path", dir, "--name", "flag", ...small], { env: { FERRY_NAME: "env" } })
    expect(fromFlag.stdout).toMatch(/^sha256 [0-9a-f]{64} {2}flag$/m)
    const fromEnv = await ferry(["fake", "--path", dir, ...small], { env: { FERRY_NAME: "env" } })
    expect(fromEnv.stdout).toMatch(/^sha256 [0-9a-f]{64} {2}env$/m)
    const byDefault = await ferry(["fake", "--path", dir, ...small])
    expect(byDefault.stdout).toMatch(/^sha256 [0-9a-f]{64} {2}abc$/m)
    // a bad variable does not matter when the flag is given
    const overridden = await ferry(["fake", "--path", dir, "--size", "1000", ...small.slice(2)], { env: { FERRY_SIZE: "lots" } })
    expect(overridden.code).toBe(0)
  })

  it("switches: FERRY_DEBUG=1 is --debug, FERRY_DEBUG=maybe is an error", async () => {
    const dir = dirs.make("src")
    const debug = await ferry(["fake", "--path", dir, "--size", "1000", "--slice", "100"], { env: { FERRY_DEBUG: "1" } })
    expect(debug.code).toBe(0)
    expect(debug.stderr).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}made abc/m)
    const bad = await ferry(["fake", "--path", dir], { env: { FERRY_DEBUG: "maybe" } })
    expect(bad.code).toBe(2)
    expect(lines(bad.stderr)).toEqual(['ferry: FERRY_DEBUG must be true or false (1 or 0), not "maybe"'])
  })

  it("FERRY_TOKEN is the token itself, FERRY_TOKEN_FILE names a file", async () => {
    const empty = await ferry(["send", "--path", "/tmp", "--address", "127.0.0.1:1"], { env: { FERRY_TOKEN: "" } })
    expect(lines(empty.stderr)).toEqual(["ferry: FERRY_TOKEN: the token is empty"])
    const missing = await ferry(["send", "--path", "/tmp", "--address", "127.0.0.1:1"], { env: { FERRY_TOKEN_FILE: "/nonexistent/token" } })
    expect(missing.code).toBe(2)
    expect(lines(missing.stderr)).toEqual(["ferry: FERRY_TOKEN_FILE /nonexistent/token: no such file"])
  })
})

describe("--log-format json", () => {
  const isoTime = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

  it("every stderr line is a JSON object with an ISO time; stdout is unchanged", async () => {
    const r = await ferry(["fake", "--path", dirs.make("src"), "--size", "1000", "--slice", "100", "--log-format", "json"])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^sha256 [0-9a-f]{64} {2}abc\ncrc32 [0-9a-f]{8} {2}abc\n$/)
    const events = lines(r.stderr).map((l) => JSON.parse(l))
    expect(events.length).toBeGreaterThan(0)
    for (const e of events) expect(e.time).toMatch(isoTime)
    expect(events).toContainEqual(expect.objectContaining({ level: "INFO", message: expect.stringMatching(/^made abc: 10 pieces/) }))
  })

  it("a failure is one JSON line at level ERROR, exit code unchanged", async () => {
    const r = await ferry(["send", "--path", "/nonexistent/ferry", "--address", "127.0.0.1:1"], { env: { FERRY_LOG_FORMAT: "json" } })
    expect(r.code).toBe(1)
    const events = lines(r.stderr).map((l) => JSON.parse(l))
    expect(events).toEqual([{ time: expect.stringMatching(isoTime), level: "ERROR", message: "/nonexistent/ferry: no such folder", exit: 1 }])
  })

  it.effect("the format of a usage error's line is read from the arguments alone: flag, else FERRY_LOG_FORMAT, else text", () =>
    Effect.gen(function*() {
      expect(yield* usageLogFormat(["send", "--log-format", "json", "--bogus"])).toBe("json")
      expect(yield* usageLogFormat(["send", "--bogus", "--log-format=json"])).toBe("json")
      expect(yield* usageLogFormat(["send", "--bogus"])).toBe("text")
      expect(yield* usageLogFormat(["send", "--log-format", "yaml"])).toBe("text")
      const saved = process.env.FERRY_LOG_FORMAT
      process.env.FERRY_LOG_FORMAT = "json"
      const fromEnv = yield* Effect.ensuring(usageLogFormat(["send", "--bogus"]), Effect.sync(() => {
        if (saved === undefined) delete process.env.FERRY_LOG_FORMAT
        else process.env.FERRY_LOG_FORMAT = saved
      }))
      expect(fromEnv).toBe("json")
    }).pipe(Effect.provide(NodeContext.layer)))

  it("so is a wrong command line", async () => {
    const r = await ferry(["send", "--log-format", "json", "--path", "/tmp", "--bogus"])
    expect(r.code).toBe(2)
    expect(lines(r.stderr).map((l) => JSON.parse(l))).toEqual([
      { time: expect.stringMatching(isoTime), level: "ERROR", message: expect.stringContaining("--address"), exit: 2 }
    ])
  })
})
