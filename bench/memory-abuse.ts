/**
 * The server's memory under abuse (issue 18, point 6), measured on `bin/ferry serve`:
 *   A. 40 connections each send 47 MiB of a 48 MiB pieces frame, and stay;
 *   B. one 48 MiB control message after a handshake.
 * Reports the server's peak RSS (VmHWM) and its RSS once the clients are gone, and in B
 * how long a new client waits for its Welcome (the event loop blocked).
 *
 *   npx vite-node bench/memory-abuse.ts [-- extra serve flags]
 */
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { FrameKind } from "../src/domain/Frame.js"
import { rawConnect, rawHandshake, rawHi, type RawConnection } from "../test/support/raw.js"

const MiB = 1024 * 1024
const extra = process.argv.slice(2).filter((a) => a !== "--")
const ferry = process.env.FERRY_BIN ?? join(import.meta.dirname, "..", "bin", "ferry")

const status = (pid: number, field: string): number => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(field))
  return Number(line?.split(/\s+/)[1] ?? 0) / 1024
}

const startServer = async () => {
  const dest = mkdtempSync(join(tmpdir(), "ferry-mem-"))
  const child = spawn(ferry, ["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, ...extra], { stdio: ["ignore", "pipe", "inherit"] })
  const lines = createInterface({ input: child.stdout! })
  const address = await new Promise<string>((ok) => lines.on("line", (l) => l.startsWith("listening on ") && ok(l.slice(13))))
  return {
    address,
    pid: child.pid!,
    stop: () => {
      child.kill("SIGTERM")
      rmSync(dest, { recursive: true, force: true })
    }
  }
}

const written = (c: RawConnection, bytes: Uint8Array) =>
  new Promise<void>((ok) => {
    if (c.socket.write(bytes)) return ok()
    c.socket.once("drain", () => ok())
    c.socket.once("close", () => ok())
  })

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms))

/** Slowest Welcome of `n` new clients in a row, in ms: how long the server keeps a newcomer waiting. */
const slowestWelcome = async (address: string, n: number) => {
  let worst = 0
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    const c = await rawConnect(address)
    await rawHi(c)
    worst = Math.max(worst, performance.now() - t)
    c.socket.destroy()
  }
  return worst
}

const partialFrames = async () => {
  const server = await startServer()
  const base = status(server.pid, "VmRSS")
  const clients = await Promise.all(Array.from({ length: 40 }, () => rawHandshake(server.address)))
  const frame = Buffer.alloc(5 + 47 * MiB)
  frame.writeUInt32BE(48 * MiB + 1, 0)
  frame[4] = FrameKind.Pieces
  await Promise.race([Promise.all(clients.map((c) => written(c, frame))), sleep(20_000)])
  await sleep(2_000)
  const peak = status(server.pid, "VmHWM")
  const dropped = clients.filter((c) => c.socket.destroyed || c.socket.readableEnded).length
  for (const c of clients) c.socket.destroy()
  await sleep(3_000)
  const after = status(server.pid, "VmRSS")
  const welcome = await slowestWelcome(server.address, 5)
  server.stop()
  console.log(`A. 40 x 47 MiB of a 48 MiB frame: RSS ${base.toFixed(0)} MiB at start, peak ${peak.toFixed(0)} MiB, ${after.toFixed(0)} MiB 3 s after they close; ${dropped} connections dropped; a newcomer's Welcome after: ${welcome.toFixed(0)} ms`)
}

const bigControl = async () => {
  const server = await startServer()
  const base = status(server.pid, "VmRSS")
  const c = await rawHandshake(server.address)
  // JSON of empty arrays: cheap to send, costly to parse
  const body = Buffer.from(`{"_tag":"Close","handle":[${"[],".repeat(16 * MiB - 1)}[]]}`)
  const frame = Buffer.alloc(5 + body.length)
  frame.writeUInt32BE(body.length + 1, 0)
  frame[4] = FrameKind.Control
  body.copy(frame, 5)
  const t = performance.now()
  const sent = written(c, frame)
  // newcomers in a row while it arrives and is handled: the slowest is how long the server was blocked
  const welcome = slowestWelcome(server.address, 40)
  const answer = await c.next(60_000).then((m) => `${m._tag}${"code" in m ? ` (${String(m.code)}): ${String((m as { message?: string }).message)}` : ""}`, (e: Error) => e.message)
  const answered = performance.now() - t
  await sent
  const worst = await welcome
  const peak = status(server.pid, "VmHWM")
  server.stop()
  console.log(`B. one ${(body.length / MiB).toFixed(0)} MiB control message: RSS ${base.toFixed(0)} MiB at start, peak ${peak.toFixed(0)} MiB; answer after ${answered.toFixed(0)} ms: ${answer}; slowest Welcome of 40 newcomers meanwhile: ${worst.toFixed(0)} ms`)
}

await partialFrames()
await bigControl()
process.exit(0)
