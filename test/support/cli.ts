/** Running the built `bin/ferry` in tests: commands, a server on loopback, temporary folders. */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

export const FERRY = new URL("../../bin/ferry", import.meta.url).pathname

export interface Ran {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

export const ferry = (args: ReadonlyArray<string>, options: { timeout?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> =>
  new Promise((resolve) => {
    execFile(FERRY, args, { timeout: options.timeout ?? 60_000, env: { ...process.env, ...options.env }, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1
      resolve({ code, stdout, stderr })
    })
  })

/** A child `ferry` whose output can be awaited line by line. */
export const spawnFerry = (args: ReadonlyArray<string>, options: { env?: NodeJS.ProcessEnv } = {}) => {
  const child = spawn(FERRY, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...options.env } })
  let stdout = ""
  let stderr = ""
  const waiters: Array<() => void> = []
  const poke = () => waiters.splice(0).forEach((w) => w())
  child.stdout!.on("data", (d) => ((stdout += d), poke()))
  child.stderr!.on("data", (d) => ((stderr += d), poke()))
  const exited = new Promise<number>((resolve) => child.once("exit", (code, signal) => (poke(), resolve(code ?? (signal === null ? 1 : 128)))))
  /** Resolves with the first match of `pattern` in stdout+stderr; rejects if the process exits first. */
  const waitFor = (pattern: RegExp, timeoutMs = 30_000) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}; output so far:\n${stdout}${stderr}`)), timeoutMs)
      const check = () => {
        const m = pattern.exec(stdout + stderr)
        if (m !== null) {
          clearTimeout(timer)
          return resolve(m)
        }
        if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(timer)
          return reject(new Error(`ferry exited before ${pattern}; output:\n${stdout}${stderr}`))
        }
        waiters.push(check)
      }
      check()
    })
  return {
    child: child as ChildProcess,
    exited,
    waitFor,
    output: () => ({ stdout, stderr })
  }
}

export type Running = ReturnType<typeof spawnFerry>

/** `ferry serve` on a free loopback port; resolves once it listens. */
export const startServer = async (dest: string, extra: ReadonlyArray<string> = [], env?: NodeJS.ProcessEnv) => {
  const port = extra.includes("--port") ? [] : ["--port", "0"]
  const server = spawnFerry(["serve", ...port, "--host", "127.0.0.1", "--dest", dest, ...extra], env === undefined ? {} : { env })
  const m = await server.waitFor(/listening on (\S+)/)
  return {
    ...server,
    address: m[1]!,
    stop: async () => {
      if (server.child.exitCode === null) server.child.kill("SIGTERM")
      return server.exited
    }
  }
}

export const tempDirs = () => {
  const made: Array<string> = []
  return {
    make: (label = "t") => {
      const dir = mkdtempSync(join(tmpdir(), `ferry-${label}-`))
      made.push(dir)
      return dir
    },
    cleanup: () => {
      for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true })
    }
  }
}

export const sha256File = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex")

export const shaOf = (fakeOutput: string, name = "abc") => new RegExp(`^sha256 ([0-9a-f]{64})  ${name}$`, "m").exec(fakeOutput)?.[1]
