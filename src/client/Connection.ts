/**
 * The client's end of one connection: the handshake, a window of bytes in
 * flight, pings while it is quiet, and what the server says about each
 * dataset, delivered to that dataset's mailbox (a Queue per handle).
 */
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { proofFor } from "../domain/Auth.js"
import type { Manifest } from "../domain/Dataset.js"
import { DatasetRejected, PeerMismatch, ProtocolError, TransportError } from "../domain/Errors.js"
import { decodeAck, FrameKind, type RawFrame } from "../domain/Frame.js"
import { Close, type ControlMessage, decodeControl, encodeControl, encodeHi, Hello, Hi, type Marker, Open, type Opened, type OpenGrowing, Ping, PROTOCOL_VERSION, Seal } from "../domain/Protocol.js"
import { VERSION } from "../domain/Version.js"
import { Credentials } from "../services/Credentials.js"
import { Throttle } from "../services/Throttle.js"
import type { Address } from "../domain/Units.js"
import { type Link, refusesOurCertificate, type TlsClient, Transport } from "../services/Transport.js"

export type LinkError = TransportError | ProtocolError | PeerMismatch

/** What the server says about one dataset (one handle) on this connection. */
export type Reply =
  | { readonly _tag: "Ack"; readonly seq: number }
  | { readonly _tag: "Committed"; readonly size: number; readonly crc32: string }
  | { readonly _tag: "Failed"; readonly error: DatasetRejected }
  | { readonly _tag: "Lost"; readonly error: LinkError }

export interface Connection {
  readonly peer: string
  /** Largest frame the server accepts. */
  readonly maxFrame: number
  /** Milliseconds of one network round trip, measured when the connection was set up. */
  readonly roundTrip: number
  /** Bytes sent and not yet acknowledged. */
  readonly inflight: () => number
  /** Pieces acknowledged on this connection so far: progress, for the reconnection policy. */
  readonly acked: () => number
  /** Bytes of frames acknowledged on this connection so far: its throughput, for "auto" (domain/Growth.ts). */
  readonly ackedBytes: () => number
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

export interface ConnectionOptions {
  readonly window: number
  readonly maxFrame: number
  /** The shared secret, when the server asks for one. */
  readonly token: string | undefined
  readonly tls: TlsClient | undefined
  /** The server must greet and accept us within this. */
  readonly handshakeTimeout: Duration.DurationInput
}

/** Reads frames one at a time from a link (the handshake needs them one by one). */
const frameReader = (link: Link) =>
  Effect.map(Stream.toPull(link.frames), (pull) => {
    let buffered: Array<RawFrame> = []
    const next: Effect.Effect<RawFrame, TransportError | ProtocolError> = Effect.suspend(() => {
      const head = buffered.shift()
      if (head !== undefined) return Effect.succeed(head)
      return pull.pipe(
        Effect.catchAll((e) =>
          Option.isNone(e) ? Effect.fail(new TransportError({ address: link.peer, reason: "the server closed the connection" })) : Effect.fail(e.value)
        ),
        Effect.flatMap((chunk) => {
          buffered = Chunk.toArray(chunk)
          return next
        })
      )
    })
    return next
  })

const printable = (bytes: Uint8Array) => Buffer.from(bytes).toString("latin1").replace(/[^\x20-\x7e]+/g, " ").trim().slice(0, 40)

/**
 * What went wrong while the server should have been greeting us, in a user's words: a peer that
 * sent bytes no ferry server sends is not one we can talk to, and trying again would not help. A
 * silent hang-up is no such evidence (a server killed or restarting does that too): on a plain
 * connection it is a TLS server only if a TLS hello to it is answered with TLS; otherwise it is a
 * lost connection, tried again like any other.
 */
const greetingProblem = (transport: Transport["Type"], address: Address, link: Link, secure: boolean, e: TransportError | ProtocolError): Effect.Effect<never, LinkError> => {
  // TLS 1.3: the server checks our certificate after our side of the handshake is done, and its alert comes here
  if (secure && e._tag === "TransportError" && refusesOurCertificate(e.code)) {
    return Effect.fail(new PeerMismatch({ peer: link.peer, reason: `the server refused our client certificate at the TLS layer (${e.code}); check --tls-cert and --tls-key` }))
  }
  const first = link.firstBytes()
  if (first.length >= 2 && (first[0] === 0x15 || first[0] === 0x16) && first[1] === 0x03) {
    return Effect.fail(new PeerMismatch({ peer: link.peer, reason: "the server speaks TLS: add --tls (or --tls-ca FILE)" }))
  }
  if (e._tag === "ProtocolError" && first.length > 0) {
    return Effect.fail(new PeerMismatch({ peer: link.peer, reason: `this is not a ferry server (it answered ${JSON.stringify(printable(first))})` }))
  }
  if (e._tag === "TransportError" && first.length === 0 && !secure) {
    return Effect.flatMap(transport.speaksTls(address), (tls) =>
      Effect.fail(
        tls
          ? new PeerMismatch({ peer: link.peer, reason: "the server hung up without a word when we said hello, and answers TLS: it is a TLS server (add --tls or --tls-ca FILE)" })
          : e
      ))
  }
  return Effect.fail(e)
}

const expectControl = (peer: string, frame: RawFrame): Effect.Effect<ControlMessage, ProtocolError> => {
  if (frame.kind !== FrameKind.Control) return Effect.fail(new ProtocolError({ peer, code: "Unexpected", reason: "expected a control frame" }))
  const decoded = decodeControl(frame.body)
  return Either.isLeft(decoded)
    ? Effect.fail(new ProtocolError({ peer, code: "BadMessage", reason: `malformed message from server: ${decoded.left}` }))
    : Effect.succeed(decoded.right)
}

/** A Refused message, or anything else where it should not be. */
const refusal = (peer: string, m: ControlMessage): LinkError => {
  if (m._tag !== "Refused") return new ProtocolError({ peer, code: "Unexpected", reason: `unexpected ${m._tag} from server` })
  if (m.code === "VersionMismatch" || m.code === "AuthFailed" || m.code === "AuthRequired" || m.code === "CertificateRequired" || m.code === "CertificateUntrusted") return new PeerMismatch({ peer, reason: `server refused: ${m.message}` })
  return new ProtocolError({ peer, code: m.code, reason: `server refused: ${m.message}` })
}

/** The token and TLS material for a new connection: as reloaded last (SIGHUP), else as given. */
const current = (options: ConnectionOptions) =>
  Effect.map(Effect.serviceOption(Credentials), (credentials) => {
    if (Option.isNone(credentials)) return Effect.succeed({ token: options.token, tls: options.tls })
    return Effect.map(credentials.value.get, (now) => ({
      token: now.token,
      tls: options.tls === undefined ? undefined : { ...options.tls, ca: now.ca ?? options.tls.ca, cert: now.cert ?? options.tls.cert, key: now.key ?? options.tls.key }
    }))
  }).pipe(Effect.flatten)

/** Hooks into the handshake, for dialing ahead (client/DialAhead.ts). */
export interface HandshakeSteps {
  /** Once the server's greeting is in: the round trip as measured so far (TCP set-up, our hi and its answer). */
  readonly greeted?: (roundTripMs: number) => Effect.Effect<void>
  /** Awaited before our hello: a connection dialed ahead holds there until it is wanted. */
  readonly beforeHello?: Effect.Effect<void, LinkError>
}

/** Dials, completes the handshake, and routes incoming frames until the scope closes. */
export const connect = (address: Address, options: ConnectionOptions, steps: HandshakeSteps = {}): Effect.Effect<Connection, LinkError, Transport | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const throttle = yield* Throttle
    const { token, tls } = yield* current(options)
    const link = yield* transport.dial(address, { maxFrame: options.maxFrame, tls })
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
    const receive = (waitingFor: string) =>
      inTime(next.pipe(Effect.flatMap((f) => expectControl(peer, f)), Effect.catchAll((e) => greetingProblem(transport, address, link, options.tls !== undefined, e))), waitingFor)

    // the client speaks first, so that a TLS server (or anything that is not ferry) answers at once. Our
    // hello waits for the answer even without a token: the hello and its answer are the second measure of
    // the round trip below, the one a process busy starting up does not inflate (with the hello sent
    // along, loopback measured 20-30 ms under load and looked far)
    const hiSent = performance.now()
    yield* link.send(encodeHi(new Hi({ protocol: PROTOCOL_VERSION, client: `ferry/${VERSION}` })))
    const welcome = yield* receive("greeting")
    if (welcome._tag !== "Welcome") return yield* Effect.fail(refusal(peer, welcome))
    if (welcome.auth === "hmac-sha256" && token === undefined) {
      return yield* Effect.fail(new PeerMismatch({ peer, reason: "the server requires a token: give --token-file or set FERRY_TOKEN" }))
    }
    if (steps.greeted) yield* steps.greeted(Math.min(link.roundTrip ?? Infinity, performance.now() - hiSent))
    if (steps.beforeHello) yield* steps.beforeHello
    const proof = welcome.auth === "hmac-sha256" && token !== undefined ? proofFor(token, welcome.nonce) : null
    const helloSent = performance.now()
    yield* link.send(encodeControl(new Hello({ proof })))
    const ready = yield* receive("answer to our hello")
    if (ready._tag !== "Ready") return yield* Effect.fail(refusal(peer, ready))
    // Two measures of one round trip: the TCP set-up, and our hello and its answer; a process
    // busy starting up delays one or the other by tens of milliseconds, rarely both
    const roundTrip = Math.min(link.roundTrip ?? 0, performance.now() - helloSent)
    yield* Effect.logDebug(`${peer}: connected (${welcome.server}), round trip ${roundTrip.toFixed(2)} ms`)
    // keep a quiet connection (waiting for a marker, or for a commit) from looking idle
    const every = Duration.seconds(Math.max(1, welcome.idle / 3))
    yield* link.send(encodeControl(new Ping())).pipe(Effect.repeat(Schedule.spaced(every)), Effect.delay(every), Effect.ignore, Effect.forkScoped)

    const window = yield* Effect.makeSemaphore(options.window)
    let inflight = 0
    let acked = 0
    let ackedBytes = 0
    /** Window bytes and pieces of each batch in flight, by handle then seq. */
    const held = new Map<number, Map<number, { readonly bytes: number; readonly pieces: number }>>()
    const mailboxes = new Map<number, Queue.Queue<Reply>>()
    const opening = new Map<number, Deferred.Deferred<Opened, DatasetRejected>>()
    const lost = yield* Deferred.make<never, LinkError>()

    const release = (handle: number, seq: number) => {
      const batch = held.get(handle)?.get(seq)
      if (batch === undefined) return Effect.void
      held.get(handle)!.delete(seq)
      inflight -= batch.bytes
      acked += batch.pieces
      ackedBytes += batch.bytes
      return window.release(batch.bytes)
    }
    /** The server drops a failed handle and will ack none of its batches: free their window. */
    const forget = (handle: number) =>
      Effect.suspend(() => {
        const seqs = [...(held.get(handle)?.keys() ?? [])]
        return Effect.zipRight(Effect.forEach(seqs, (seq) => release(handle, seq), { discard: true }), Effect.sync(() => held.delete(handle)))
      })
    const deliver = (handle: number, reply: Reply) => {
      const box = mailboxes.get(handle)
      return box === undefined ? Effect.void : Queue.offer(box, reply)
    }

    const route = (frame: RawFrame): Effect.Effect<void, LinkError> => {
      if (frame.kind === FrameKind.Ack) {
        const ack = decodeAck(frame.body)
        if (ack === undefined) return Effect.fail(new ProtocolError({ peer, code: "BadFrame", reason: "malformed ack" }))
        return Effect.zipRight(release(ack.handle, ack.seq), deliver(ack.handle, { _tag: "Ack", seq: ack.seq }))
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

    yield* Effect.forever(Effect.flatMap(next, route)).pipe(
      Effect.catchAll((e) =>
        Effect.gen(function*() {
          yield* Effect.logDebug(`${peer}: ${e.message}`)
          for (const box of mailboxes.values()) yield* Queue.offer(box, { _tag: "Lost", error: e })
          yield* Deferred.fail(lost, e)
        })
      ),
      Effect.forkScoped
    )

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
      acked: () => acked,
      ackedBytes: () => ackedBytes,
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
