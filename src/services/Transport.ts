/**
 * Connections between client and server, as framed links. The live layer is
 * TCP; the memory layer joins both ends inside one process, through the same
 * framing and backpressure code, for tests.
 */
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as net from "node:net"
import * as tls from "node:tls"
import { Duplex } from "node:stream"
import { PeerMismatch, ProtocolError, TransportError } from "../domain/Errors.js"
import { DEFAULT_MAX_FRAME, describeFrameProblem, FrameDecoder, FrameKind, type FrameProblem, isFrameProblem, type RawFrame } from "../domain/Frame.js"
import { type BudgetHolder, type BufferPool, type FrameBudget, FramePool } from "./BufferPool.js"

export interface Address {
  readonly host: string
  readonly port: number
}

export const formatAddress = (a: Address): string => (a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`)

/** One connection, framed. */
export interface Link {
  readonly peer: string
  /** Incoming frames, pulled: while nobody pulls, the socket is not read. Consume once. */
  readonly frames: Stream.Stream<RawFrame, ProtocolError | TransportError>
  /** Queues bytes on the socket; waits while the socket's buffer is full. `onFlushed` runs once the socket is done with them. */
  readonly send: (bytes: Uint8Array, onFlushed?: () => void) => Effect.Effect<void, TransportError>
  /** Ends the connection after what was sent. */
  readonly end: Effect.Effect<void>
  /** Changes the largest frame accepted from now on (small until a peer has authenticated). */
  readonly limitFrames: (maxFrame: number) => void
  /** Gives a frame's bytes back to the link's budget, once the frame has been handled (nothing without a budget). */
  readonly release: (frame: RawFrame) => void
  /**
   * On a dialled link, the milliseconds the TCP connection took to set up (after any name
   * lookup): one network round trip, plus however late this event loop noticed it (a few
   * milliseconds while a process starts). 0 in memory; not measured on accepted links.
   */
  readonly roundTrip?: number
  /** The first bytes the peer sent (up to 64), to tell what it speaks when it is not ferry. */
  readonly firstBytes: () => Uint8Array
}

export interface LinkOptions {
  readonly maxFrame?: number
  /** Decoded frames a link holds before it stops reading the socket. */
  readonly readAhead?: number
  /** Largest control or ack frame accepted (a server's: they carry no piece data). */
  readonly maxControl?: number
  /** Memory shared by every link of a server: each frame's body is taken from it before it is allocated. */
  readonly budget?: FrameBudget | undefined
}

/** TLS for a client: the server is verified against `ca` (PEM) or the system's roots, and must carry `servername`. */
export interface TlsClient {
  readonly ca: Buffer | undefined
  readonly servername: string | undefined
}

/** TLS for a server: its certificate and key (PEM). */
export interface TlsServer {
  readonly cert: Buffer
  readonly key: Buffer
}

export interface DialOptions extends LinkOptions {
  readonly tls?: TlsClient | undefined
}

export interface ListenOptions extends LinkOptions {
  readonly host: string
  readonly port: number
  readonly tls?: TlsServer | undefined
  /** TLS handshakes must finish within this. */
  readonly handshakeTimeout?: Duration.DurationInput
}

export class Transport extends Context.Tag("ferry/Transport")<Transport, {
  /** Connects (and, with TLS, completes the TLS handshake); a TLS failure is a PeerMismatch: trying again cannot help. */
  readonly dial: (address: Address, options?: DialOptions) => Effect.Effect<Link, TransportError | PeerMismatch, Scope.Scope>
  /**
   * Whether the server at `address` answers a TLS hello with TLS (a handshake, or a TLS alert),
   * certificate unchecked: told apart from a server that is down, or plain, or hung up on us.
   */
  readonly speaksTls: (address: Address) => Effect.Effect<boolean>
  /** Accepts connections until the scope closes; each handler runs in a scope of its own. */
  readonly listen: (
    options: ListenOptions,
    onLink: (link: Link) => Effect.Effect<void, never, Scope.Scope>
  ) => Effect.Effect<Address, TransportError, Scope.Scope>
}>() {}

/** Connections to a server that ended before the handshake was done: TLS's here, ferry's in server/Connection.ts. */
export const handshakesFailed = Metric.counter("ferry_serve_handshakes_failed_total", {
  description: "Connections that ended before finishing the handshake (TLS or ferry's), whatever the reason.",
  incremental: true
})

const READ_AHEAD = 4 * 1024 * 1024

/**
 * Frames over any Node duplex: a TCP socket or an in-memory pair. Chunks are
 * decoded as they arrive (one copy, into pooled frame bodies); once
 * READ_AHEAD bytes of frames wait for the consumer, the socket is paused, so
 * a slow consumer (a busy disk) slows the sender instead of growing memory.
 */
/** Where a link's incoming bytes come from: the socket's 'data' events, or a read buffer of its own. */
export interface Input {
  readonly attach: (sink: (chunk: Buffer) => void) => void
  readonly detach: () => void
}

const dataEvents = (socket: Duplex): Input => {
  let attached: ((chunk: Buffer) => void) | undefined
  return {
    attach: (sink) => {
      attached = sink
      socket.on("data", sink)
    },
    detach: () => {
      if (attached !== undefined) socket.off("data", attached)
    }
  }
}

/** Bytes a plain TCP socket reads at once into its own buffer. */
const READ_BUFFER = 256 * 1024

/**
 * A plain TCP socket that reads into one buffer of its own for its whole life
 * (net's `onread`), instead of a fresh 64 KiB Buffer per read that becomes
 * garbage: on a large dataset that is a gigabyte of garbage less for the
 * receiver's main thread to collect. What arrives before the link listens is
 * copied aside.
 */
const ownReadBuffer = () => {
  const buffer = Buffer.allocUnsafeSlow(READ_BUFFER)
  let sink: ((chunk: Buffer) => void) | undefined
  let detached = false
  const early: Array<Buffer> = []
  const input: Input = {
    attach: (s) => {
      sink = s
      for (const chunk of early.splice(0)) s(chunk)
    },
    detach: () => {
      sink = undefined
      detached = true
    }
  }
  const onread = {
    buffer,
    callback: (n: number, buf: Uint8Array) => {
      const chunk = Buffer.from(buf.buffer, buf.byteOffset, n)
      if (sink !== undefined) sink(chunk)
      // once the link has stopped listening, what still comes (while the socket closes) is dropped, not kept
      else if (!detached) early.push(Buffer.from(chunk))
      return true
    }
  }
  return { onread, input }
}

export const linkFromDuplex = (socket: Duplex, peer: string, options: LinkOptions = {}, pool?: BufferPool, input: Input = dataEvents(socket)): Link => {
  let first = new Uint8Array(0)
  const budget = options.budget
  /** Bytes of this link's frames in the budget: complete and not yet released, or arriving. */
  let held = 0
  /** Bytes the budget took for the next body while this link waited for room. */
  let granted = 0
  let onRoom: () => void = () => {}
  let onEvicted: (reason: string) => void = () => {}
  const holder: BudgetHolder = {
    arriving: () => decoder.arriving,
    evict: (reason) => onEvicted(reason)
  }
  const allocate = (size: number, kind: FrameKind): Buffer | undefined => {
    if (budget !== undefined) {
      if (granted === size) granted = 0
      else if (!budget.tryTake(size)) {
        budget.wait(holder, size, () => {
          granted = size
          // the decoder is in the middle of a push when room is made at once: go on after it
          queueMicrotask(() => onRoom())
        })
        return undefined
      }
      held += size
    }
    return kind === FrameKind.Pieces && pool !== undefined ? pool.take(size) : Buffer.allocUnsafeSlow(size)
  }
  const decoder = new FrameDecoder(options.maxFrame ?? DEFAULT_MAX_FRAME, allocate, options.maxControl)
  const readAhead = options.readAhead ?? READ_AHEAD
  const frames = Stream.suspend(() => {
    const queue: Array<RawFrame> = []
    let queued = 0
    let finished: Effect.Effect<never, Option.Option<ProtocolError | TransportError>> | undefined
    let wake: (() => void) | undefined
    const finish = (outcome: Effect.Effect<never, Option.Option<ProtocolError | TransportError>>) => {
      finished ??= outcome
      wake?.()
    }
    const decoded = (r: Array<RawFrame> | FrameProblem) => {
      if (isFrameProblem(r)) {
        socket.pause()
        return finish(Effect.fail(Option.some(new ProtocolError({ peer, code: r._tag, reason: describeFrameProblem(r) }))))
      }
      for (const f of r) {
        queue.push(f)
        queued += f.body.length
      }
      if (queued > readAhead || decoder.stalled) socket.pause()
      if (queue.length > 0) wake?.()
    }
    const onData = (chunk: Buffer) => {
      if (first.length < 64) first = Buffer.concat([first, chunk.subarray(0, 64 - first.length)])
      if (finished !== undefined) return
      decoded(decoder.push(chunk))
    }
    onRoom = () => {
      if (finished !== undefined) return
      decoded(decoder.resume())
      if (finished === undefined && !decoder.stalled && queued <= readAhead && socket.isPaused()) socket.resume()
    }
    onEvicted = (reason) => {
      const arriving = decoder.arriving
      decoder.abandon()
      held -= arriving
      budget?.give(arriving + granted)
      granted = 0
      socket.pause()
      finish(Effect.fail(Option.some(new ProtocolError({ peer, code: "MemoryFull", reason }))))
    }
    budget?.join(holder)
    const onEnd = () => {
      const p = decoder.finish()
      finish(p === undefined ? Effect.fail(Option.none()) : Effect.fail(Option.some(new ProtocolError({ peer, code: p._tag, reason: describeFrameProblem(p) }))))
    }
    const onError = (e: unknown) => finish(Effect.fail(Option.some(new TransportError({ address: peer, reason: reasonOf(e) }))))
    const onClose = () => finish(Effect.fail(Option.some(new TransportError({ address: peer, reason: "connection closed" }))))
    input.attach(onData)
    socket.once("end", onEnd)
    socket.on("error", onError)
    socket.once("close", onClose)
    const pull = Effect.async<Chunk.Chunk<RawFrame>, Option.Option<ProtocolError | TransportError>>((resume) => {
      const attempt = (): boolean => {
        if (queue.length > 0) {
          const out = queue.splice(0)
          queued = 0
          if (finished === undefined && !decoder.stalled && socket.isPaused()) socket.resume()
          resume(Effect.succeed(Chunk.unsafeFromArray(out)))
          return true
        }
        if (finished !== undefined) {
          resume(finished)
          return true
        }
        return false
      }
      if (!attempt()) {
        wake = () => {
          if (attempt()) wake = undefined
        }
      }
      return Effect.sync(() => {
        wake = undefined
      })
    })
    return Stream.repeatEffectChunkOption(pull).pipe(
      Stream.ensuring(Effect.sync(() => {
        input.detach()
        socket.off("end", onEnd)
        socket.off("error", onError)
        socket.off("close", onClose)
        if (budget !== undefined) {
          // whatever this link still holds goes back: frames not handled, the one arriving, room granted
          decoder.abandon()
          budget.leave(holder)
          budget.give(held + granted)
          held = 0
          granted = 0
        }
      }))
    )
  })
  const release = (frame: RawFrame) => {
    if (budget === undefined || held === 0) return
    const n = Math.min(frame.body.length, held)
    held -= n
    budget.give(n)
  }
  const send = (bytes: Uint8Array, onFlushed?: () => void) =>
    Effect.async<void, TransportError>((resume) => {
      if (socket.destroyed || socket.writableEnded) {
        resume(Effect.fail(new TransportError({ address: peer, reason: "connection closed" })))
        return
      }
      if (socket.write(bytes, onFlushed === undefined ? undefined : () => onFlushed())) resume(Effect.void)
      else {
        const onDrain = () => {
          socket.off("close", onClose)
          resume(Effect.void)
        }
        const onClose = () => {
          socket.off("drain", onDrain)
          resume(Effect.fail(new TransportError({ address: peer, reason: "connection closed" })))
        }
        socket.once("drain", onDrain)
        socket.once("close", onClose)
      }
    })
  const end = Effect.sync(() => {
    if (!socket.destroyed) socket.end()
  })
  return { peer, frames, send, end, limitFrames: (maxFrame) => void (decoder.maxFrame = maxFrame), release, firstBytes: () => first }
}

const reasonOf = (e: unknown): string => {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === "ECONNREFUSED") return "connection refused (is `ferry serve` running there?)"
    if (code === "ECONNRESET") return "connection reset by peer"
    if (code === "EPIPE") return "connection closed by peer"
    if (code === "ETIMEDOUT") return "connection timed out"
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "host not found"
    return code !== undefined ? `${code}: ${e.message}` : e.message
  }
  return String(e)
}

/** Destroys the socket when the scope closes. */
const scopedSocket = (socket: Duplex) =>
  Effect.addFinalizer(() =>
    Effect.async<void>((resume) => {
      if (socket.destroyed) return resume(Effect.void)
      socket.once("close", () => resume(Effect.void))
      socket.end()
      // nobody reads any more: let the peer's end-of-stream through so the socket can close
      socket.resume()
      // a peer that never reads must not hold us: give it a moment, then cut
      const timer = setTimeout(() => socket.destroy(), 2_000)
      timer.unref()
    })
  )

/**
 * A socket for an accepted connection (accepted paused) that reads into a buffer of its own: net's
 * server has no `onread` option, so the connection's handle moves to a new socket that has one.
 */
const adopt = (accepted: net.Socket, onread: { readonly buffer: Buffer; readonly callback: (n: number, buf: Uint8Array) => boolean }): net.Socket => {
  const holder = accepted as unknown as { _handle: unknown }
  const handle = holder._handle
  if (handle === null || handle === undefined) return accepted
  holder._handle = null
  // the server counts the accepted socket: closing the empty shell keeps its count right
  accepted.destroy()
  return new net.Socket({ handle, onread, readable: true, writable: true } as net.SocketConstructorOpts)
}

const tune = (socket: net.Socket) => {
  socket.setNoDelay(true)
  socket.setKeepAlive(true, 30_000)
}

/** A TLS failure that says the peer is not what we expect (no TLS, a certificate we do not trust), or undefined. */
const tlsMismatch = (e: Error): string | undefined => {
  const code = (e as NodeJS.ErrnoException).code ?? ""
  if (/WRONG_VERSION_NUMBER|wrong version number|packet length too long|unknown protocol|ECONNRESET/i.test(`${code} ${e.message}`)) {
    return "TLS handshake failed: the server does not speak TLS (drop --tls / --tls-ca?)"
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT_ALTNAME|ERR_SSL/.test(code)) return `TLS certificate not trusted: ${e.message} (give the server's CA with --tls-ca)`
  return undefined
}

/** A TLS client hello, only to see whether TLS answers: nothing is sent over it, its certificate is not trusted for anything. */
const probeTls = (address: Address) =>
  Effect.async<boolean>((resume) => {
    const s = tls.connect({
      host: address.host,
      port: address.port,
      servername: net.isIP(address.host) === 0 ? address.host : undefined,
      rejectUnauthorized: false
    })
    let answered = false
    const done = (answer: boolean) => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      if (answer) {
        // a clean close (close_notify), so that the server sees its handshake finish, not fail
        s.end()
        s.unref()
        setTimeout(() => s.destroy(), 2_000).unref()
      } else s.destroy()
      resume(Effect.succeed(answer))
    }
    const timer = setTimeout(() => done(false), 2_000)
    s.on("error", () => {})
    s.once("secureConnect", () => done(true))
    // a TLS alert (no cipher in common, a protocol version refused) is TLS answering too
    s.once("error", (e: NodeJS.ErrnoException) => done(/ALERT/i.test(e.code ?? "")))
    return Effect.sync(() => {
      clearTimeout(timer)
      if (!answered) s.destroy()
    })
  })

const makeTcpTransport = (pool: BufferPool): Transport["Type"] => ({
  speaksTls: probeTls,
  dial: (address, options) =>
    Effect.gen(function*() {
      const peer = formatAddress(address)
      const secure = options?.tls
      let started = performance.now()
      let roundTrip = 0
      let connected = false
      const own = secure === undefined ? ownReadBuffer() : undefined
      const socket = yield* Effect.async<net.Socket, TransportError | PeerMismatch>((resume) => {
        const s = secure === undefined
          ? net.connect({ host: address.host, port: address.port, ...(own === undefined ? {} : { onread: own.onread }) })
          : tls.connect({
            host: address.host,
            port: address.port,
            servername: secure.servername ?? (net.isIP(address.host) === 0 ? address.host : undefined),
            ...(secure.ca === undefined ? {} : { ca: secure.ca }),
            rejectUnauthorized: true
          })
        const onError = (e: Error) => {
          // a TCP connection that was made, then a TLS handshake that failed: the peer is not what we think
          const mismatch = secure !== undefined && connected ? tlsMismatch(e) : undefined
          resume(Effect.fail(mismatch === undefined ? new TransportError({ address: peer, reason: reasonOf(e) }) : new PeerMismatch({ peer, reason: mismatch })))
        }
        s.once("error", onError)
        s.once("lookup", () => {
          started = performance.now()
        })
        s.once("connect", () => {
          connected = true
          roundTrip = performance.now() - started
        })
        s.once(secure === undefined ? "connect" : "secureConnect", () => {
          s.off("error", onError)
          resume(Effect.succeed(s))
        })
        return Effect.sync(() => s.destroy())
      })
      tune(socket)
      socket.on("error", () => {}) // surfaced through reads and writes
      yield* scopedSocket(socket)
      return { ...linkFromDuplex(socket, peer, options, pool, own?.input), roundTrip }
    }),
  listen: (options, onLink) =>
    Effect.gen(function*() {
      const runFork = yield* FiberSet.makeRuntime<never>()
      const server: net.Server = options.tls === undefined
        ? net.createServer({ noDelay: true, keepAlive: true, pauseOnConnect: true })
        : tls.createServer({
          cert: options.tls.cert,
          key: options.tls.key,
          noDelay: true,
          keepAlive: true,
          handshakeTimeout: Duration.toMillis(options.handshakeTimeout ?? "10 seconds")
        })
      const sockets = new Set<net.Socket>()
      const accept = (accepted: net.Socket) => {
        // plain TCP: the connection is taken over by a socket that reads into its own buffer
        const own = options.tls === undefined ? ownReadBuffer() : undefined
        const socket = own === undefined ? accepted : adopt(accepted, own.onread)
        tune(socket)
        socket.on("error", () => {})
        sockets.add(socket)
        socket.once("close", () => sockets.delete(socket))
        const peer = formatAddress({ host: socket.remoteAddress ?? "?", port: socket.remotePort ?? 0 })
        const handler = Effect.scoped(
          Effect.zipRight(scopedSocket(socket), onLink(linkFromDuplex(socket, peer, options, pool, own?.input)))
        )
        runFork(handler)
      }
      server.on(options.tls === undefined ? "connection" : "secureConnection", accept)
      if (options.tls !== undefined) {
        // a plain client, a wrong certificate, a stalled handshake: that client's problem, logged
        const peers = new WeakMap<object, string>()
        // the address is read as the connection is accepted, before the TLS layer takes the socket: by the
        // time a handshake fails the peer may be gone, and a socket whose peer has gone has no address to read
        const addressOf = (s: net.Socket) => (s.remoteAddress === undefined ? undefined : formatAddress({ host: s.remoteAddress, port: s.remotePort ?? 0 }))
        server.prependListener("connection", (raw: net.Socket) => {
          const peer = addressOf(raw)
          if (peer !== undefined) peers.set(raw, peer)
        })
        server.on("tlsClientError", (e, socket) => {
          const raw = (socket as unknown as { _parent?: object })._parent
          const peer = (raw !== undefined ? peers.get(raw) : undefined) ?? addressOf(socket) ?? "a client that hung up before its address could be read"
          runFork(Effect.zipRight(Effect.logWarning(`${peer}: TLS handshake failed (${e.message.split("\n")[0]})`), Metric.increment(handshakesFailed)))
          socket.destroy()
        })
      }
      const bound = yield* Effect.async<Address, TransportError>((resume) => {
        const onError = (e: Error) =>
          resume(Effect.fail(new TransportError({ address: formatAddress(options), reason: reasonOf(e) })))
        server.once("error", onError)
        server.listen({ host: options.host, port: options.port }, () => {
          server.off("error", onError)
          const a = server.address() as net.AddressInfo
          resume(Effect.succeed({ host: a.address, port: a.port }))
        })
      })
      yield* Effect.addFinalizer(() =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          for (const s of sockets) s.destroy()
        })
      )
      return bound
    })
})

/** TCP (and TLS) connections, reading piece frames into the program's frame pool. */
export const TcpTransport = Layer.effect(Transport, Effect.map(FramePool, makeTcpTransport))

/** Two duplexes joined back to back: what one writes, the other reads, with backpressure. */
export const duplexPair = (): readonly [Duplex, Duplex] => {
  const stalledWriter = new Map<Duplex, () => void>()
  const make = (peer: () => Duplex): Duplex => {
    const side: Duplex = new Duplex({
      read() {
        const resume = stalledWriter.get(side)
        if (resume !== undefined) {
          stalledWriter.delete(side)
          resume()
        }
      },
      write(chunk: Buffer, _encoding, callback) {
        const other = peer()
        if (other.destroyed) return callback(new Error("EPIPE"))
        if (other.push(chunk)) callback()
        else stalledWriter.set(other, () => callback())
      },
      final(callback) {
        peer().push(null)
        callback()
      },
      destroy(error, callback) {
        const other = peer()
        if (!other.destroyed) other.destroy()
        callback(error)
      }
    })
    return side
  }
  const a: Duplex = make(() => b)
  const b: Duplex = make(() => a)
  return [a, b]
}

/** Links inside one process, for tests: listen on any port number, dial it. */
export const MemoryTransport = Layer.effect(Transport, Effect.map(FramePool, (pool): Transport["Type"] => {
  const listeners = new Map<number, (socket: Duplex, peer: string) => void>()
  let nextPort = 40_000
  let nextClient = 1
  return {
    speaksTls: () => Effect.succeed(false),
    dial: (address, options) =>
      Effect.gen(function*() {
        const accept = listeners.get(address.port)
        const peer = formatAddress(address)
        if (accept === undefined) {
          return yield* Effect.fail(new TransportError({ address: peer, reason: "connection refused (is `ferry serve` running there?)" }))
        }
        const [client, server] = duplexPair()
        yield* scopedSocket(client)
        accept(server, `memory-client-${nextClient++}`)
        return { ...linkFromDuplex(client, peer, options, pool), roundTrip: 0 }
      }),
    listen: (options, onLink) =>
      Effect.gen(function*() {
        const port = options.port === 0 ? nextPort++ : options.port
        const runFork = yield* FiberSet.makeRuntime<never>()
        listeners.set(port, (socket, peer) => {
          runFork(Effect.scoped(Effect.zipRight(scopedSocket(socket), onLink(linkFromDuplex(socket, peer, options, pool)))))
        })
        yield* Effect.addFinalizer(() => Effect.sync(() => listeners.delete(port)))
        return { host: options.host, port }
      })
  }
}))
