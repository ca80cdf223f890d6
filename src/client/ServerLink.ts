/**
 * The client's end of one connection: the handshake, a window of bytes in
 * flight, and the routing of what the server says (acks, opened, committed,
 * failed) to the transfers waiting for it.
 */
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { proofFor } from "../domain/Auth.js"
import { DatasetRejected, ProtocolError, TransportError } from "../domain/Errors.js"
import type { Manifest } from "../domain/Dataset.js"
import { decodeAck, FrameKind, type RawFrame } from "../domain/Frame.js"
import { type ControlMessage, decodeControl, encodeControl, Hello, Open, type Opened, Ping, PROTOCOL_VERSION } from "../domain/Protocol.js"
import { VERSION } from "../domain/Version.js"
import { type Address, type Link, Transport } from "../services/Transport.js"

export type LinkError = TransportError | ProtocolError

/** What a dataset being sent needs to hear from any connection. */
export interface TransferEvents {
  readonly onAck: (seq: number) => void
  readonly onCommitted: (message: Extract<ControlMessage, { _tag: "Committed" }>) => void
  readonly onFailed: (error: DatasetRejected | LinkError) => void
}

export interface ServerLink {
  readonly peer: string
  /** Largest frame the server accepts. */
  readonly maxFrame: number
  /** Milliseconds of one network round trip, measured when the connection was set up. */
  readonly roundTrip: number
  /** Bytes sent and not yet acknowledged. */
  readonly inflight: () => number
  readonly open: (handle: number, manifest: Manifest) => Effect.Effect<Opened, LinkError | DatasetRejected>
  /** Sends a pieces frame once the window has room; `seq` is released by its ack; `onFlushed` runs when the socket is done with the bytes. */
  readonly sendBatch: (handle: number, seq: number, frame: Buffer, onFlushed?: () => void) => Effect.Effect<void, LinkError>
}

export interface LinkOptions {
  readonly window: number
  readonly maxFrame: number
  /** The shared secret, when the server asks for one. */
  readonly token: string | undefined
  /** TLS, verified against `ca` or the system's roots. */
  readonly tls: { readonly ca: Buffer | undefined; readonly servername: string | undefined } | undefined
  /** The server must greet and accept us within this. */
  readonly handshakeTimeout: Duration.DurationInput
}

/** Reads frames one at a time from a link (the handshake needs them one by one). */
const frameReader = (link: Link) =>
  Effect.map(Stream.toPull(link.frames), (pull) => {
    let buffered: Array<RawFrame> = []
    const next: Effect.Effect<RawFrame, LinkError> = Effect.suspend(() => {
      const head = buffered.shift()
      if (head !== undefined) return Effect.succeed(head)
      return pull.pipe(
        Effect.catchAll((e) =>
          Option.isNone(e)
            ? Effect.fail(new TransportError({ address: link.peer, reason: "the server closed the connection" }))
            : Effect.fail(e.value)
        ),
        Effect.flatMap((chunk) => {
          buffered = Chunk.toArray(chunk)
          return next
        })
      )
    })
    return next
  })

const expectControl = (peer: string, frame: RawFrame): Effect.Effect<ControlMessage, ProtocolError> => {
  if (frame.kind !== FrameKind.Control) {
    return Effect.fail(new ProtocolError({ peer, code: "Unexpected", reason: "expected a control frame" }))
  }
  const decoded = decodeControl(frame.body)
  return Either.isLeft(decoded)
    ? Effect.fail(new ProtocolError({ peer, code: "BadMessage", reason: `malformed message from server: ${decoded.left}` }))
    : Effect.succeed(decoded.right)
}

const refusal = (peer: string, m: ControlMessage) =>
  m._tag === "Refused"
    ? new ProtocolError({ peer, code: m.code, reason: `server refused: ${m.message}` })
    : new ProtocolError({ peer, code: "Unexpected", reason: `unexpected ${m._tag} from server` })

/** Dials, completes the handshake, and routes incoming frames until the scope closes. */
export const connect = (
  address: Address,
  transfers: ReadonlyMap<number, TransferEvents>,
  options: LinkOptions
): Effect.Effect<ServerLink, LinkError, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const link = yield* transport.dial(address, { maxFrame: options.maxFrame, tls: options.tls })
    const peer = link.peer
    const next = yield* frameReader(link)
    const inTime = <A>(step: Effect.Effect<A, LinkError>, waitingFor: string) =>
      Effect.timeoutFail(step, {
        duration: options.handshakeTimeout,
        onTimeout: () =>
          new ProtocolError({
            peer,
            code: "HandshakeTimeout",
            reason: `no ${waitingFor} from the server within ${Duration.format(options.handshakeTimeout)}${options.tls === undefined ? " (is it a TLS server? then add --tls or --tls-ca)" : ""}`
          })
      })

    const welcome = yield* inTime(Effect.flatMap(next, (f) => expectControl(peer, f)), "greeting")
    if (welcome._tag !== "Welcome") return yield* Effect.fail(refusal(peer, welcome))
    if (welcome.protocol !== PROTOCOL_VERSION) {
      return yield* Effect.fail(new ProtocolError({ peer, code: "VersionMismatch", reason: `server speaks protocol ${welcome.protocol}, this client speaks ${PROTOCOL_VERSION}; upgrade the older side` }))
    }
    if (welcome.auth === "hmac-sha256" && options.token === undefined) {
      return yield* Effect.fail(new ProtocolError({ peer, code: "AuthRequired", reason: "the server requires a token: give --token-file or set FERRY_TOKEN" }))
    }
    const proof = welcome.auth === "hmac-sha256" && options.token !== undefined ? proofFor(options.token, welcome.nonce) : null
    yield* link.send(encodeControl(new Hello({ protocol: PROTOCOL_VERSION, client: `ferry/${VERSION}`, proof })))
    const ready = yield* inTime(Effect.flatMap(next, (f) => expectControl(peer, f)), "answer to our hello")
    if (ready._tag !== "Ready") return yield* Effect.fail(refusal(peer, ready))
    const roundTrip = link.roundTrip ?? 0
    yield* Effect.logDebug(`${peer}: connected (${welcome.server}), round trip ${roundTrip.toFixed(2)} ms`)
    // keep a quiet connection (waiting for a marker, or for a commit) from looking idle
    yield* link.send(encodeControl(new Ping())).pipe(
      Effect.repeat(Schedule.spaced(Duration.seconds(Math.max(1, welcome.idle / 3)))),
      Effect.ignore,
      Effect.delay(Duration.seconds(Math.max(1, welcome.idle / 3))),
      Effect.forkScoped
    )

    const window = yield* Effect.makeSemaphore(options.window)
    let inflight = 0
    /** Window bytes held by each batch in flight, by handle then seq. */
    const held = new Map<number, Map<number, number>>()
    const opening = new Map<number, Deferred.Deferred<Opened, DatasetRejected>>()

    const release = (handle: number, seq: number) => {
      const bytes = held.get(handle)?.get(seq)
      if (bytes === undefined) return Effect.void
      held.get(handle)!.delete(seq)
      inflight -= bytes
      return window.release(bytes)
    }

    const route = (frame: RawFrame): Effect.Effect<void, LinkError> => {
      if (frame.kind === FrameKind.Ack) {
        const ack = decodeAck(frame.body)
        if (ack === undefined) return Effect.fail(new ProtocolError({ peer, code: "BadFrame", reason: "malformed ack" }))
        transfers.get(ack.handle)?.onAck(ack.seq)
        return release(ack.handle, ack.seq)
      }
      return Effect.flatMap(expectControl(peer, frame), (m) => {
        switch (m._tag) {
          case "Opened": {
            const d = opening.get(m.handle)
            opening.delete(m.handle)
            return d === undefined ? Effect.void : Deferred.succeed(d, m)
          }
          case "Committed":
            transfers.get(m.handle)?.onCommitted(m)
            return Effect.void
          case "Failed": {
            const error = new DatasetRejected({ dataset: m.dataset, code: m.code, reason: m.message })
            const d = opening.get(m.handle)
            opening.delete(m.handle)
            transfers.get(m.handle)?.onFailed(error)
            // The server drops the handle and will ack none of its batches: free their window,
            // and forget the handle so that a batch still on its way is not sent.
            const seqs = [...(held.get(m.handle)?.keys() ?? [])]
            return Effect.zipRight(
              d === undefined ? Effect.void : Deferred.fail(d, error),
              Effect.zipRight(
                Effect.forEach(seqs, (seq) => release(m.handle, seq), { discard: true }),
                Effect.sync(() => held.delete(m.handle))
              )
            )
          }
          default:
            return Effect.fail(refusal(peer, m))
        }
      })
    }

    const lost = yield* Deferred.make<never, LinkError>()
    yield* Effect.forever(Effect.flatMap(next, route)).pipe(
      Effect.catchAll((e) =>
        Effect.gen(function*() {
          yield* Effect.logDebug(`${peer}: ${e.message}`)
          for (const t of transfers.values()) t.onFailed(e)
          yield* Deferred.fail(lost, e)
        })
      ),
      Effect.forkScoped
    )

    const whileUp = <A, E>(effect: Effect.Effect<A, E>) => Effect.raceFirst(effect, Deferred.await(lost))

    return {
      peer,
      maxFrame: welcome.maxFrame,
      roundTrip,
      inflight: () => inflight,
      open: (handle, manifest) =>
        Effect.gen(function*() {
          const d = yield* Deferred.make<Opened, DatasetRejected>()
          opening.set(handle, d)
          held.set(handle, new Map())
          yield* link.send(encodeControl(new Open({ handle, manifest })))
          return yield* whileUp(Deferred.await(d))
        }),
      sendBatch: (handle, seq, frame, onFlushed) =>
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
            batches.set(seq, bytes)
            yield* restore(link.send(frame, onFlushed))
          })
        )
    } satisfies ServerLink
  })
