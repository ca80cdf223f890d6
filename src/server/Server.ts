/**
 * The receiving side: accepts connections, runs the handshake, opens the
 * datasets clients announce, and feeds their piece batches to the piece
 * store, acknowledging each batch once it is on disk.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { newNonce, proofMatches } from "../domain/Auth.js"
import { ProtocolError, StoreError, TransportError } from "../domain/Errors.js"
import { decodePieces, encodeAck, FrameKind, type RawFrame } from "../domain/Frame.js"
import {
  Committed,
  decodeControl,
  encodeControl,
  Failed,
  Opened,
  PROTOCOL_VERSION,
  Ready,
  Refused,
  Welcome
} from "../domain/Protocol.js"
import { VERSION } from "../domain/Version.js"
import { PieceStore, type Session } from "../services/PieceStore.js"
import { type Address, formatAddress, type Link, Transport } from "../services/Transport.js"

export interface ServeOptions {
  readonly host: string
  readonly port: number
  readonly maxFrame: number
  /** A client that has not finished the handshake by then is dropped. */
  readonly handshakeTimeout: Duration.DurationInput
  /** A connection that sends nothing for this long is dropped (clients ping within it). */
  readonly idleTimeout: Duration.DurationInput
  /** Piece batches of one connection being verified and written at once. */
  readonly batchesInFlight: number
  /** Shared secret clients must prove they know; undefined: no authentication. */
  readonly token: string | undefined
  /** TLS certificate and key (PEM); undefined: plain TCP. */
  readonly tls: { readonly cert: Buffer; readonly key: Buffer } | undefined
  /** Connections past the handshake, at most. */
  readonly maxConnections: number
  /** Connections still in the handshake, at most: past it, the oldest is dropped. */
  readonly maxPending: number
  /** Bytes of frames one connection may hold in memory (read ahead plus being written). */
  readonly connectionMemory: number
}

export const defaultServeOptions: ServeOptions = {
  host: "0.0.0.0",
  port: 0,
  maxFrame: 16 * 1024 * 1024,
  handshakeTimeout: "10 seconds",
  idleTimeout: "120 seconds",
  batchesInFlight: 4,
  token: undefined,
  tls: undefined,
  maxConnections: 256,
  maxPending: 64,
  connectionMemory: 128 * 1024 * 1024
}

/** Until the handshake is done, only small control frames are accepted. */
const HANDSHAKE_FRAME = 64 * 1024

/** Connections of one server, counted across links. */
interface Gate {
  /** Connections in the handshake, oldest first, each with the way to drop it. */
  readonly pending: Map<object, () => void>
  ready: number
}

const isLoopback = (host: string) => host === "localhost" || host.startsWith("127.") || host === "::1"

/** Starts listening; serves until the scope closes. Answers the bound address. */
export const serve = (options: ServeOptions): Effect.Effect<Address, TransportError, Transport | PieceStore | Scope.Scope> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const store = yield* PieceStore
    const gate: Gate = { pending: new Map(), ready: 0 }
    const address = yield* transport.listen(
      {
        host: options.host,
        port: options.port,
        maxFrame: Math.min(HANDSHAKE_FRAME, options.maxFrame),
        readAhead: Math.min(2 * 1024 * 1024, Math.floor(options.connectionMemory / 4)),
        tls: options.tls,
        handshakeTimeout: options.handshakeTimeout
      },
      (link) => serveLink(store, link, options, gate)
    )
    yield* Effect.logInfo(`serving on ${formatAddress(address)}${options.tls === undefined ? "" : " (TLS)"}, writing to ${store.dest}`)
    if (options.token === undefined && !isLoopback(options.host)) {
      yield* Effect.logWarning(
        `listening on ${options.host} without a token: anyone who can reach port ${address.port} can write datasets into ${store.dest}; set --token-file or FERRY_TOKEN`
      )
    }
    return address
  })

const serveLink = (
  store: PieceStore["Type"],
  link: Link,
  options: ServeOptions,
  gate: Gate
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const nonce = newNonce()
    // frames of this connection being verified and written, in bytes
    const memory = yield* Effect.makeSemaphore(options.connectionMemory)
    const sessions = new Map<number, Session>()
    /** Handles whose dataset failed: their batches still in flight are dropped quietly. */
    const dropped = new Set<number>()
    const handshake = yield* Deferred.make<void, ProtocolError>()
    // A flood of connections that never finish the handshake must not lock others out:
    // past the limit, the oldest of them is dropped.
    const me = {}
    if (gate.pending.size >= options.maxPending) {
      const [oldest, drop] = gate.pending.entries().next().value as [object, () => void]
      gate.pending.delete(oldest)
      drop()
    }
    gate.pending.set(me, () =>
      Deferred.unsafeDone(handshake, Exit.fail(new ProtocolError({ peer: link.peer, code: "TooManyPending", reason: "too many connections in the handshake; dropped the oldest" }))))
    yield* Effect.addFinalizer(() => Effect.sync(() => gate.pending.delete(me)))
    let ready = false

    const send = (bytes: Uint8Array) => link.send(bytes)
    const refuse = (code: string, message: string) =>
      Effect.logWarning(`${link.peer}: refused (${code}): ${message}`).pipe(
        Effect.zipRight(send(encodeControl(new Refused({ code, message })))),
        Effect.ignore,
        Effect.zipRight(Effect.fail(new ProtocolError({ peer: link.peer, code, reason: message })))
      )

    const fail = (handle: number, e: StoreError) =>
      Effect.gen(function*() {
        sessions.delete(handle)
        dropped.add(handle)
        yield* Effect.logWarning(`${link.peer}: ${e.message}`)
        yield* send(encodeControl(new Failed({ handle, dataset: e.dataset, code: e.code, message: e.reason })))
      })

    const open = (handle: number, manifest: Session["manifest"]) =>
      Effect.gen(function*() {
        if (sessions.has(handle)) return yield* refuse("HandleInUse", `handle ${handle} is already open`)
        const opened = yield* Effect.either(Scope.extend(store.open(manifest), scope))
        if (Either.isLeft(opened)) return yield* fail(handle, opened.left)
        const session = opened.right
        sessions.set(handle, session)
        dropped.delete(handle)
        yield* Effect.logDebug(`${link.peer}: opened ${manifest.dataset} as handle ${handle} (${session.held.held}/${manifest.count} held)`)
        yield* send(encodeControl(
          new Opened({
            handle,
            held: session.held.held,
            bitmap: session.held.held > 0 && !session.committed ? session.held.toBase64() : null,
            committed: session.committed
          })
        ))
        // Tell this client when the dataset is committed, whoever finished it.
        yield* session.commit.pipe(
          Effect.flatMap((c) => send(encodeControl(new Committed({ handle, dataset: c.dataset, size: c.size, crc32: c.crc32 })))),
          Effect.catchTag("StoreError", (e) => fail(handle, e)),
          Effect.ignore,
          Effect.forkIn(scope)
        )
      })

    const onControl = (body: Buffer) =>
      Effect.gen(function*() {
        const decoded = decodeControl(body)
        if (Either.isLeft(decoded)) return yield* refuse("BadMessage", `malformed control message: ${decoded.left}`)
        const message = decoded.right
        switch (message._tag) {
          case "Hello": {
            if (ready) return yield* refuse("Unexpected", "second Hello")
            if (message.protocol !== PROTOCOL_VERSION) {
              return yield* refuse(
                "VersionMismatch",
                `client speaks protocol ${message.protocol}, this server speaks ${PROTOCOL_VERSION}; upgrade the older side`
              )
            }
            if (options.token !== undefined && !proofMatches(options.token, nonce, message.proof)) {
              return yield* refuse(
                "AuthFailed",
                message.proof === null
                  ? "this server requires a token (--token-file or FERRY_TOKEN)"
                  : "authentication failed: wrong token"
              )
            }
            gate.pending.delete(me)
            if (gate.ready >= options.maxConnections) {
              return yield* refuse("TooManyConnections", `the server has ${gate.ready} connections, its limit; try again later`)
            }
            gate.ready++
            yield* Effect.addFinalizer(() => Effect.sync(() => gate.ready--)).pipe(Scope.extend(scope))
            ready = true
            link.limitFrames(options.maxFrame)
            yield* Effect.logDebug(`${link.peer}: hello from ${message.client}`)
            yield* send(encodeControl(new Ready()))
            yield* Deferred.succeed(handshake, undefined)
            return
          }
          case "Open":
            if (!ready) return yield* refuse("NotReady", "Open before the handshake")
            return yield* open(message.handle, message.manifest)
          case "Ping":
            return
          default:
            return yield* refuse("Unexpected", `unexpected ${message._tag} from a client`)
        }
      })

    const onPieces = (body: Buffer) =>
      Effect.gen(function*() {
        if (!ready) return yield* refuse("NotReady", "pieces before the handshake")
        const batch = decodePieces(body)
        if ("problem" in batch) return yield* refuse("BadFrame", batch.problem)
        const session = sessions.get(batch.handle)
        if (session === undefined) {
          if (dropped.has(batch.handle)) return
          return yield* refuse("UnknownHandle", `pieces for handle ${batch.handle}, which is not open`)
        }
        const written = yield* memory.withPermits(Math.min(body.length, options.connectionMemory))(session.write(batch, body)).pipe(
          // a bug or a dead worker fails this dataset with one line, not the whole connection
          Effect.catchAllDefect((defect) =>
            Effect.zipRight(
              Effect.logError(`${link.peer}: internal error while writing ${session.manifest.dataset}: ${defect instanceof Error ? defect.message : String(defect)}`),
              Effect.fail(new StoreError({ dataset: session.manifest.dataset, code: "Internal", reason: "internal error on the server (see its log)" }))
            )
          ),
          Effect.either
        )
        if (Either.isLeft(written)) return yield* fail(batch.handle, written.left)
        yield* send(encodeAck(batch.handle, batch.seq))
      })

    const onFrame = (frame: RawFrame) => {
      switch (frame.kind) {
        case FrameKind.Control:
          return onControl(frame.body)
        case FrameKind.Pieces:
          return onPieces(frame.body)
        case FrameKind.Ack:
          return refuse("Unexpected", "ack from a client")
      }
    }

    yield* Effect.logDebug(`${link.peer}: connected`)
    const welcome = new Welcome({
      protocol: PROTOCOL_VERSION,
      server: `ferry/${VERSION}`,
      nonce,
      auth: options.token === undefined ? "none" : "hmac-sha256",
      idle: Duration.toSeconds(options.idleTimeout),
      maxFrame: options.maxFrame
    })
    const welcomed = yield* Effect.either(send(encodeControl(welcome)))
    if (Either.isLeft(welcomed)) return

    const handshakeDeadline = Deferred.await(handshake).pipe(
      Effect.timeoutFail({
        duration: options.handshakeTimeout,
        onTimeout: () => new ProtocolError({ peer: link.peer, code: "HandshakeTimeout", reason: "no handshake in time" })
      }),
      Effect.tapError((e) => refuse(e.code, e.reason).pipe(Effect.ignore)),
      Effect.zipRight(Effect.never)
    )

    const idle = () => new ProtocolError({ peer: link.peer, code: "IdleTimeout", reason: `nothing received for ${Duration.format(options.idleTimeout)}` })
    const outcome = yield* link.frames.pipe(
      Stream.timeoutFail(idle, options.idleTimeout),
      Stream.mapEffect(onFrame, { concurrency: options.batchesInFlight, unordered: true }),
      Stream.runDrain,
      Effect.raceFirst(handshakeDeadline),
      Effect.either
    )
    if (Either.isLeft(outcome)) {
      const e = outcome.left
      if (e._tag === "ProtocolError" && e.code === "IdleTimeout") yield* refuse(e.code, e.reason).pipe(Effect.ignore)
      else if (e._tag === "ProtocolError") yield* Effect.logWarning(`${link.peer}: dropped: ${e.reason}`)
      else yield* Effect.logDebug(`${link.peer}: ${e.reason}`)
    } else yield* Effect.logDebug(`${link.peer}: disconnected`)
    yield* link.end
  })

