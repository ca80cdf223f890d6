/**
 * The client's end of one connection: the handshake (client/Handshake.ts), a
 * window of bytes in flight, pings while it is quiet, and what the server says
 * about each dataset, delivered to that dataset's mailbox (a Queue per handle).
 * One fiber reads the link: it hands the handshake its two frames, then routes
 * the rest.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { Manifest } from "../domain/Dataset.js"
import { DatasetRejected, ProtocolError, TransportError } from "../domain/Errors.js"
import { decodeAck, FrameKind, type RawFrame } from "../domain/Frame.js"
import { Close, encodeControl, type Marker, Open, type Opened, type OpenGrowing, Ping, Seal } from "../domain/Protocol.js"
import { Throttle } from "../services/Throttle.js"
import type { Address } from "../domain/Units.js"
import { Transport } from "../services/Transport.js"
import { type ConnectionOptions, current, expectControl, handshake, type HandshakeFrames, type HandshakeSteps, type LinkError, refusal } from "./Handshake.js"

export type { ConnectionOptions, HandshakeSteps, LinkError } from "./Handshake.js"

/** What the server says about one dataset (one handle) on this connection. */
export type Reply =
  | { readonly _tag: "Ack"; readonly seq: number }
  | { readonly _tag: "Committed"; readonly size: number; readonly crc32: string }
  | { readonly _tag: "Failed"; readonly error: DatasetRejected }
  | { readonly _tag: "Lost"; readonly error: LinkError }

/**
 * What one server acknowledged over a run: pieces, the progress the reconnection policy and the
 * stall check look for; bytes of frames, the throughput "auto" grows by (domain/Growth.ts). One
 * ledger per server, owned by its uplink (client/Uplink.ts); each of its connections adds to it.
 */
export interface Acknowledged {
  readonly pieces: number
  readonly bytes: number
}

export interface Connection {
  readonly peer: string
  /** Largest frame the server accepts. */
  readonly maxFrame: number
  /** Milliseconds of one network round trip, measured when the connection was set up. */
  readonly roundTrip: number
  /** Bytes sent and not yet acknowledged. */
  readonly inflight: () => number
  /** The replies for a handle, from now until the scope closes (when the handle is forgotten here). */
  readonly mailbox: (handle: number) => Effect.Effect<Queue.Dequeue<Reply>, never, Scope.Scope>
  readonly open: (handle: number, manifest: Manifest) => Effect.Effect<Opened, LinkError | DatasetRejected>
  /** Sends another request the server answers with Opened (a growing dataset's open, or its marker: see client/Early.ts). */
  readonly ask: (handle: number, message: OpenGrowing | Marker) => Effect.Effect<Opened, LinkError | DatasetRejected>
  /** Sends a pieces frame once the window has room; its ack frees the room; `onFlushed` runs when the socket is done with the bytes. */
  readonly sendBatch: (handle: number, seq: number, pieces: number, frame: Buffer, onFlushed?: () => void) => Effect.Effect<void, LinkError>
  readonly seal: (handle: number, crc32: string) => Effect.Effect<void, LinkError>
  readonly close: (handle: number) => Effect.Effect<void>
  /** Fails when the connection is lost. */
  readonly lost: Effect.Effect<never, LinkError>
}

/**
 * Dials, completes the handshake, and routes incoming frames until the scope closes; what the
 * server acknowledges is added to `acked`.
 */
export const connect = (
  address: Address,
  options: ConnectionOptions,
  acked: Ref.Ref<Acknowledged>,
  steps: HandshakeSteps = {}
): Effect.Effect<Connection, LinkError, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const throttle = yield* Throttle
    const { token, tls } = yield* current(options)
    const link = yield* transport.dial(address, { maxFrame: options.maxFrame, tls })
    const peer = link.peer

    const window = yield* Effect.makeSemaphore(options.window)
    let inflight = 0
    /** Window bytes and pieces of each batch in flight, by handle then seq. */
    const held = new Map<number, Map<number, { readonly bytes: number; readonly pieces: number }>>()
    const mailboxes = new Map<number, Queue.Queue<Reply>>()
    const opening = new Map<number, Deferred.Deferred<Opened, DatasetRejected>>()
    const lost = yield* Deferred.make<never, LinkError>()

    /** A batch's window given back; counted in `acked` only when the server acknowledged it. */
    const release = (handle: number, seq: number, acknowledged: boolean) => {
      const batch = held.get(handle)?.get(seq)
      if (batch === undefined) return Effect.void
      held.get(handle)!.delete(seq)
      inflight -= batch.bytes
      const free = window.release(batch.bytes)
      return acknowledged ? Effect.zipRight(Ref.update(acked, (a) => ({ pieces: a.pieces + batch.pieces, bytes: a.bytes + batch.bytes })), free) : free
    }
    /** The server drops a failed handle and will ack none of its batches: free their window, counting none of them. */
    const forget = (handle: number) =>
      Effect.suspend(() => {
        const seqs = [...(held.get(handle)?.keys() ?? [])]
        return Effect.zipRight(Effect.forEach(seqs, (seq) => release(handle, seq, false), { discard: true }), Effect.sync(() => held.delete(handle)))
      })
    const deliver = (handle: number, reply: Reply) => {
      const box = mailboxes.get(handle)
      return box === undefined ? Effect.void : Queue.offer(box, reply)
    }

    const route = (frame: RawFrame): Effect.Effect<void, LinkError> => {
      if (frame.kind === FrameKind.Ack) {
        const ack = decodeAck(frame.body)
        if (ack === undefined) return Effect.fail(new ProtocolError({ peer, code: "BadFrame", reason: "malformed ack" }))
        return Effect.zipRight(release(ack.handle, ack.seq, true), deliver(ack.handle, { _tag: "Ack", seq: ack.seq }))
      }
      return Effect.flatMap(expectControl(peer, frame), (m) => {
        switch (m._tag) {
          case "Opened": {
            const d = opening.get(m.handle)
            opening.delete(m.handle)
            return d === undefined ? Effect.void : Deferred.succeed(d, m)
          }
          case "Committed":
            return deliver(m.handle, { _tag: "Committed", size: m.size, crc32: m.crc32 })
          case "Failed": {
            const error = new DatasetRejected({ dataset: m.dataset, code: m.code, reason: m.message })
            const d = opening.get(m.handle)
            opening.delete(m.handle)
            return Effect.all([d === undefined ? Effect.void : Deferred.fail(d, error), forget(m.handle), deliver(m.handle, { _tag: "Failed", error })], { discard: true })
          }
          default:
            return Effect.fail(refusal(peer, m))
        }
      })
    }

    // the one reader of the link: the server's first two frames are the handshake's, the rest are routed
    const first: HandshakeFrames = { greeting: yield* Deferred.make<RawFrame, LinkError>(), answer: yield* Deferred.make<RawFrame, LinkError>() }
    const handshakeFrames = [first.greeting, first.answer]
    const end = (e: LinkError) =>
      Effect.gen(function*() {
        // until the server has answered our hello, the handshake tells what went wrong
        const handshaking = yield* Deferred.fail(first.answer, e)
        yield* Deferred.fail(first.greeting, e)
        if (!handshaking) yield* Effect.logDebug(`${peer}: ${e.message}`)
        for (const box of mailboxes.values()) yield* Queue.offer(box, { _tag: "Lost", error: e })
        yield* Deferred.fail(lost, e)
      })
    /** Takes in what the link read, the `i`th frame or how the reading ended: false once the connection is lost. */
    const take = ([read, i]: [Either.Either<RawFrame, LinkError>, number]): Effect.Effect<boolean> => {
      if (Either.isLeft(read)) return Effect.as(end(read.left), false)
      if (i < handshakeFrames.length) return Effect.as(Deferred.succeed(handshakeFrames[i]!, read.right), true)
      return route(read.right).pipe(Effect.as(true), Effect.catchAll((e) => Effect.as(end(e), false)))
    }
    // however the reading ends, the connection is lost; the stream itself never fails (a stream run
    // that fails ends a fiber with an error, and Effect logs that as unhandled)
    const reader = yield* link.frames.pipe(
      Stream.concat(Stream.failSync(() => new TransportError({ address: peer, reason: "the server closed the connection" }))),
      Stream.either,
      Stream.zipWithIndex,
      Stream.runForEachWhile(take),
      Effect.forkScoped
    )

    // a connection the server did not accept is read no further
    const { roundTrip, welcome } = yield* handshake(address, link, options, token, first, steps).pipe(Effect.onError(() => Fiber.interrupt(reader)))
    yield* Effect.logDebug(`${peer}: connected (${welcome.server}), round trip ${roundTrip.toFixed(2)} ms`)
    // keep a quiet connection (waiting for a marker, or for a commit) from looking idle
    const every = Duration.seconds(Math.max(1, welcome.idle / 3))
    yield* link.send(encodeControl(new Ping())).pipe(Effect.repeat(Schedule.spaced(every)), Effect.delay(every), Effect.ignore, Effect.forkScoped)

    // closing the connection (its scope) is losing it, for whoever still waits on it
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        if (yield* Deferred.isDone(lost)) return
        const e = new TransportError({ address: peer, reason: "connection closed" })
        for (const box of mailboxes.values()) yield* Queue.offer(box, { _tag: "Lost", error: e })
        yield* Deferred.fail(lost, e)
      })
    )

    const whileUp = <A, E>(effect: Effect.Effect<A, E>) => Effect.raceFirst(effect, Deferred.await(lost))
    const ask = (handle: number, message: Open | OpenGrowing | Marker) =>
      Effect.gen(function*() {
        const d = yield* Deferred.make<Opened, DatasetRejected>()
        opening.set(handle, d)
        if (!held.has(handle)) held.set(handle, new Map())
        yield* link.send(encodeControl(message))
        return yield* whileUp(Deferred.await(d))
      })

    return {
      peer,
      maxFrame: welcome.maxFrame,
      roundTrip,
      inflight: () => inflight,
      mailbox: (handle) =>
        Effect.acquireRelease(
          Effect.tap(Queue.unbounded<Reply>(), (box) => Effect.sync(() => mailboxes.set(handle, box))),
          () => Effect.sync(() => mailboxes.delete(handle))
        ),
      open: (handle, manifest) => Effect.zipRight(Effect.sync(() => held.delete(handle)), ask(handle, new Open({ handle, manifest }))),
      ask,
      sendBatch: (handle, seq, pieces, frame, onFlushed) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.gen(function*() {
            const bytes = Math.min(frame.length, options.window)
            // taking window bytes and recording who holds them happen together
            yield* restore(whileUp(window.take(bytes)))
            const batches = held.get(handle)
            if (batches === undefined) {
              // the dataset failed meanwhile: nothing will ack this batch
              yield* window.release(bytes)
              onFlushed?.()
              return
            }
            inflight += bytes
            batches.set(seq, { bytes, pieces })
            yield* restore(throttle.take(frame.length))
            yield* restore(link.send(frame, onFlushed))
          })
        ),
      seal: (handle, crc32) => link.send(encodeControl(new Seal({ handle, crc32 }))),
      close: (handle) => Effect.zipRight(forget(handle), link.send(encodeControl(new Close({ handle }))).pipe(Effect.ignore)),
      lost: Deferred.await(lost)
    } satisfies Connection
  })
