#!/usr/bin/env node
// The main job, end to end on this machine: make a sample dataset, start a
// server on loopback, send, check the rebuilt file's sha256, clean up.
import { spawn, execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import { createReadStream, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const ferry = new URL("../bin/ferry", import.meta.url).pathname
const size = process.argv[2] ?? "256MiB"
const work = mkdtempSync(join(tmpdir(), "ferry-demo-"))
const source = join(work, "outbox")
const dest = join(work, "inbox")
let server
const cleanup = () => {
  server?.kill("SIGTERM")
  rmSync(work, { recursive: true, force: true })
}
process.on("SIGINT", () => (cleanup(), process.exit(130)))

const step = (text) => console.log(`\n== ${text}`)
const sha256 = (file) =>
  new Promise((resolve, reject) => {
    const h = createHash("sha256")
    createReadStream(file).on("data", (d) => h.update(d)).on("end", () => resolve(h.digest("hex"))).on("error", reject)
  })

try {
  step(`ferry fake --path ${source} --size ${size}`)
  const made = execFileSync(ferry, ["fake", "--path", source, "--size", size], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] })
  process.stdout.write(made)
  const expected = /^sha256 ([0-9a-f]{64})/m.exec(made)[1]

  step(`ferry serve --port 0 --dest ${dest} --host 127.0.0.1`)
  server = spawn(ferry, ["serve", "--port", "0", "--dest", dest, "--host", "127.0.0.1"], { stdio: ["ignore", "pipe", "inherit"] })
  const address = await new Promise((resolve, reject) => {
    let out = ""
    server.stdout.on("data", (d) => {
      out += d
      const m = /listening on (\S+)/.exec(out)
      if (m) resolve(m[1])
    })
    server.once("exit", (code) => reject(new Error(`server exited (${code})`)))
  })

  step(`ferry send --path ${source} --address ${address}`)
  const started = process.hrtime.bigint()
  execFileSync(ferry, ["send", "--path", source, "--address", address], { stdio: "inherit" })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9

  step("check")
  const got = await sha256(join(dest, "abc"))
  const marker = readFileSync(join(dest, "abc.done"), "utf8").trim()
  const bytes = Number(marker)
  console.log(`expected sha256 ${expected}`)
  console.log(`rebuilt  sha256 ${got}`)
  console.log(`abc.done says   ${marker} bytes`)
  if (got !== expected) throw new Error("the rebuilt file does not match the original")
  console.log(`\nOK: ${(bytes / 1e6).toFixed(1)} MB rebuilt byte for byte in ${seconds.toFixed(2)} s (${(bytes / 1e6 / seconds).toFixed(0)} MB/s, including process start-up)`)
  cleanup()
} catch (e) {
  console.error(`demo failed: ${e.message}`)
  cleanup()
  process.exit(1)
}
