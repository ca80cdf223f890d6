/**
 * A hand-driven protocol client for abuse tests: it speaks ferry's frames
 * over a plain socket, and can also say things no real client would.
 */
import * as net from "node:net"
import { proofFor } from "../../src/domain/Auth.js"
import { Manifest } from "../../src/domain/Dataset.js"
import { encodePieces, FrameDecoder, FrameKind, isFrameProblem, type RawFrame } from "../../src/domain/Frame.js"
import { type ControlMessage, decodeControl, encodeControl, Hello, Hi, Open, PROTOCOL_VERSION, Seal } from "../../src/domain/Protocol.js"

export interface RawConnection {
  readonly socket: net.Socket
  /** The next control message from the server (frames of other kinds are skipped). */
  readonly next: (timeoutMs?: number) => Promise<ControlMessage>
  /** Resolves when the server closes the connection. */
  readonly closed: Promise<void>
  readonly write: (bytes: Uint8Array) => void
}

export const rawConnect = (address: string): Promise<RawConnection> =>
  new Promise((resolve, reject) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))]
    const socket = net.connect({ host, port })
    const decoder = new FrameDecoder()
    const frames: Array<RawFrame> = []
    let waiting: (() => void) | undefined
    let ended = false
    socket.on("data", (chunk) => {
      const r = decoder.push(chunk)
      if (!isFrameProblem(r)) frames.push(...r)
      waiting?.()
    })
    socket.on("error", () => {})
    const closed = new Promise<void>((done) =>
      socket.once("close", () => {
        ended = true
        waiting?.()
        done()
      })
    )
    const next = (timeoutMs = 10_000) =>
      new Promise<ControlMessage>((ok, fail) => {
        const timer = setTimeout(() => fail(new Error("no message from the server in time")), timeoutMs)
        const check = () => {
          while (frames.length > 0) {
            const f = frames.shift()!
            if (f.kind !== FrameKind.Control) continue
            const m = decodeControl(f.body)
            if (m._tag === "Right") {
              clearTimeout(timer)
              waiting = undefined
              return ok(m.right)
            }
          }
          if (ended) {
            clearTimeout(timer)
            waiting = undefined
            return fail(new Error("connection closed"))
          }
          waiting = check
        }
        check()
      })
    socket.once("connect", () => resolve({ socket, next, closed, write: (b) => void socket.write(b) }))
    socket.once("error", reject)
  })

/** Says Hi, as every client speaks first; answers the server's reply (a Welcome). */
export const rawHi = (c: RawConnection): Promise<ControlMessage> => {
  c.write(encodeControl(new Hi({ protocol: PROTOCOL_VERSION, client: "raw-test" })))
  return c.next()
}

/** Connects and completes the handshake (with the token, when given). */
export const rawHandshake = async (address: string, token?: string): Promise<RawConnection> => {
  const c = await rawConnect(address)
  const welcome = await rawHi(c)
  if (welcome._tag !== "Welcome") throw new Error(`expected Welcome, got ${welcome._tag}`)
  c.write(encodeControl(new Hello({ proof: token === undefined ? null : proofFor(token, welcome.nonce) })))
  const ready = await c.next()
  if (ready._tag !== "Ready") throw new Error(`expected Ready, got ${JSON.stringify(ready)}`)
  return c
}

export const openMessage = (handle: number, m: { dataset: string; size: number; sliceSize: number; first: number; count: number; firstSliceCrc?: number }) =>
  encodeControl(new Open({ handle, manifest: new Manifest({ firstSliceCrc: 0, ...m }) }))

/** An Open with fields no Schema would let through, written as raw JSON. */
export const rawOpen = (handle: number, manifest: Record<string, unknown>) => {
  const body = Buffer.from(JSON.stringify({ _tag: "Open", handle, manifest }))
  const frame = Buffer.alloc(5 + body.length)
  frame.writeUInt32BE(body.length + 1, 0)
  frame[4] = FrameKind.Control
  body.copy(frame, 5)
  return frame
}

/** A pieces frame of (piece number, gzip bytes) pairs. */
export const piecesMessage = (handle: number, seq: number, pieces: ReadonlyArray<{ readonly index: number; readonly bytes: Uint8Array }>) =>
  encodePieces(handle, seq, pieces)

/** The sender vouches for the whole file's CRC32 (8 hex digits). */
export const sealMessage = (handle: number, crc32: string) => encodeControl(new Seal({ handle, crc32 }))
