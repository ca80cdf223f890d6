/**
 * The Node private fields ferry relies on, one adapter each (src/node/): these tests
 * fail when a Node release changes them, so that a fallback is never taken silently.
 */
import { describe, expect, it } from "vitest"
import * as net from "node:net"
import * as tls from "node:tls"
import * as zlib from "node:zlib"
import { adoptWithOwnBuffer, kernelRoundTrip, rawSocketOf } from "../src/node/Sockets.js"
import { openZlibHandle } from "../src/node/ZlibHandle.js"

describe("zlib's native handle behind a Gunzip stream (node/ZlibHandle.ts)", () => {
  it("is there, and inflates a gzip member into a buffer we give, telling bytes produced and consumed", () => {
    const engine = openZlibHandle()
    expect(engine, `Node ${process.version} changed zlib's _handle/_writeState: ferry would fall back to gunzipSync`).toBeDefined()
    const slice = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 31) & 0xff))
    const piece = zlib.gzipSync(slice)
    const out = Buffer.alloc(6000, 0xee)
    let error: string | undefined
    engine!.handle.onerror = (message) => (error = message)
    engine!.handle.writeSync(zlib.constants.Z_FINISH, piece, 0, piece.length, out, 100, 5001)
    expect(error).toBeUndefined()
    expect(5001 - engine!.writeState[0]!).toBe(5000)
    expect(piece.length - engine!.writeState[1]!).toBe(piece.length)
    expect(out.subarray(100, 5100).equals(slice)).toBe(true)
    expect(out[99]).toBe(0xee)
    // reset: the same engine takes the next piece
    engine!.handle.reset()
    const next = zlib.gzipSync(Buffer.from("hello"))
    engine!.handle.writeSync(zlib.constants.Z_FINISH, next, 0, next.length, out, 0, 6)
    expect(out.subarray(0, 5).toString()).toBe("hello")
  })
})

describe("sockets (node/Sockets.ts)", () => {
  it("an accepted connection's handle moves to a socket that reads into our own buffer", async () => {
    const own = Buffer.alloc(64 * 1024)
    const got: Array<string> = []
    let adopted: net.Socket | undefined
    const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      adopted = adoptWithOwnBuffer(accepted, { buffer: own, callback: (n, buf) => (got.push(Buffer.from(buf.subarray(0, n)).toString()), true) })
    })
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok))
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1")
    await new Promise<void>((ok) => client.once("connect", () => ok()))
    client.write("hello through our buffer")
    await new Promise<void>((ok) => {
      const check = () => (got.join("") === "hello through our buffer" ? ok() : setTimeout(check, 5))
      check()
    })
    expect(adopted, `Node ${process.version} has no _handle on an accepted socket`).toBeDefined()
    // it was moved, not used as it was: the data came through `onread`, into `own`
    expect(own.subarray(0, 5).toString()).toBe("hello")
    client.destroy()
    adopted!.destroy()
    await new Promise<void>((ok) => server.close(() => ok()))
  })

  it("a connected client socket's descriptor gives the kernel's round trip (through the native addon): loopback is far under a millisecond", async () => {
    const server = net.createServer((s) => s.destroy())
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok))
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1")
    await new Promise<void>((ok) => client.once("connect", () => ok()))
    const ms = kernelRoundTrip(client)
    expect(ms, `Node ${process.version} has no _handle.fd on a client socket, or native/ is not built`).toBeDefined()
    expect(ms!).toBeGreaterThan(0)
    expect(ms!).toBeLessThan(1)
    client.destroy()
    // a socket with no descriptor: no measure, not a wrong one
    expect(kernelRoundTrip(new net.Socket())).toBeUndefined()
    await new Promise<void>((ok) => server.close(() => ok()))
  })

  it("a TLS socket made over a raw one keeps it as its parent", () => {
    const raw = new net.Socket()
    const secure = new tls.TLSSocket(raw, { isServer: false })
    expect(rawSocketOf(secure), `Node ${process.version} no longer keeps _parent on a TLS socket`).toBe(raw)
    secure.destroy()
  })
})
