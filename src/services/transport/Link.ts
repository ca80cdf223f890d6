/** A socket (or any Duplex) as a framed link: frames in with backpressure and the memory budget, large coalesced writes out. */
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Mailbox from "effect/Mailbox"
import * as Stream from "effect/Stream"
import { Duplex } from "node:stream"
import { ProtocolError, TransportError } from "../../domain/Errors.js"
import { DEFAULT_MAX_FRAME, describeFrameProblem, FrameDecoder, FrameKind, type FrameProblem, isFrameProblem, type RawFrame } from "../../domain/Frame.js"
import type { BudgetHolder } from "../../node/FrameBudget.js"
import type { BufferPool } from "../BufferPool.js"
import { type Link, type LinkOptions } from "../Transport.js"

export const READ_AHEAD = 4 * 1024 * 1024

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

export const dataEvents = (socket: Duplex): Input => {
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
export const ownReadBuffer = () => {
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
  /** What each frame still unreleased was charged to the budget. */
  const charged = new WeakMap<RawFrame, number>()
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
  // frames go into a mailbox as they are decoded and out as the link's Stream, a chunk of every
  // frame waiting at each take; the socket is paused while more than `readAhead` bytes wait
  const frames = Stream.unwrap(Effect.map(Mailbox.make<RawFrame, ProtocolError | TransportError>(), (mailbox) => {
    let queued = 0
    let finished = false
    const finish = (exit: Exit.Exit<void, ProtocolError | TransportError>) => {
      finished = true
      mailbox.unsafeDone(exit)
    }
    const decoded = (r: Array<RawFrame> | FrameProblem) => {
      if (isFrameProblem(r)) {
        socket.pause()
        return finish(Exit.fail(new ProtocolError({ peer, code: r._tag, reason: describeFrameProblem(r) })))
      }
      for (const f of r) {
        queued += f.body.length
        charged.set(f, f.body.length)
      }
      if (r.length > 0) mailbox.unsafeOfferAll(r)
      if (queued > readAhead || decoder.stalled) socket.pause()
    }
    /** The consumer took every frame waiting: the socket may read again. */
    const taken = (chunk: Chunk.Chunk<RawFrame>) => {
      queued = 0
      if (!finished && !decoder.stalled && socket.isPaused()) socket.resume()
      return chunk
    }
    const onData = (chunk: Buffer) => {
      if (first.length < 64) first = Buffer.concat([first, chunk.subarray(0, 64 - first.length)])
      if (finished) return
      decoded(decoder.push(chunk))
    }
    onRoom = () => {
      if (finished) return
      decoded(decoder.resume())
      if (!finished && !decoder.stalled && queued <= readAhead && socket.isPaused()) socket.resume()
    }
    onEvicted = (reason) => {
      const arriving = decoder.arriving
      decoder.abandon()
      held -= arriving
      budget?.give(arriving + granted)
      granted = 0
      socket.pause()
      finish(Exit.fail(new ProtocolError({ peer, code: "MemoryFull", reason })))
    }
    budget?.join(holder)
    const onEnd = () => {
      const p = decoder.finish()
      finish(p === undefined ? Exit.void : Exit.fail(new ProtocolError({ peer, code: p._tag, reason: describeFrameProblem(p) })))
    }
    const onError = (e: unknown) => finish(Exit.fail(new TransportError({ address: peer, reason: reasonOf(e), code: codeOf(e) })))
    const onClose = () => finish(Exit.fail(new TransportError({ address: peer, reason: "connection closed" })))
    input.attach(onData)
    socket.once("end", onEnd)
    socket.on("error", onError)
    socket.once("close", onClose)
    return Mailbox.toStream(mailbox).pipe(
      Stream.mapChunks(taken),
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
  }))
  const release = (frame: RawFrame) => {
    if (budget === undefined || held === 0) return
    // the size it was charged, read as it arrived: a body handed to a gunzip thread is detached here (length 0)
    const n = Math.min(charged.get(frame) ?? frame.body.length, held)
    charged.delete(frame)
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

/** A socket error's code, if it has one. */
export const codeOf = (e: unknown): string | undefined => (e instanceof Error ? (e as NodeJS.ErrnoException).code : undefined)

/** A socket error as a reason a user can read. */
export const reasonOf = (e: unknown): string => {
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

/**
 * Ends and destroys the socket when the scope closes. With `waitForPeer`, after the peer's end of
 * the stream too (a server lets its client hang up first); without (a client, whose every answer
 * is in), as soon as ours is sent: waiting was a round trip at the end of every run on a long link.
 */
export const scopedSocket = (socket: Duplex, waitForPeer = true) =>
  Effect.addFinalizer(() =>
    Effect.async<void>((resume) => {
      if (socket.destroyed) return resume(Effect.void)
      socket.once("close", () => resume(Effect.void))
      if (!waitForPeer) socket.once("finish", () => socket.destroy())
      socket.end()
      // nobody reads any more: let the peer's end-of-stream through so the socket can close
      socket.resume()
      // a peer that never reads must not hold us: give it a moment, then cut
      const timer = setTimeout(() => socket.destroy(), 2_000)
      timer.unref()
    })
  )
