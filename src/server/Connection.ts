/**
 * One client connection on the server: the handshake, then the datasets it
 * opens, each in a session of its own, and its piece batches fed to the
 * store and acknowledged once on disk. Each kind of frame is one small
 * Effect; the whole connection is one Stream with its timeouts.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { newNonce, proofMatches } from "../domain/Auth.js"
import { isDeferral, type RefusalCode } from "../domain/Codes.js"
import type { Manifest } from "../domain/Dataset.js"
import { GrowingSpec } from "../domain/Growing.js"
import { ProtocolError, StoreError, type TransportError } from "../domain/Errors.js"
import { decodePieces, encodeAck, FrameKind, pieceBytesOf, type RawFrame } from "../domain/Frame.js"
import {
  Committed,
  type ControlMessage,
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
import { Credentials } from "../services/Credentials.js"
import { publish } from "../services/Monitor.js"
import type { PieceStore } from "../services/PieceStore.js"
import { handshakesFailed, type Link } from "../services/Transport.js"
import { connectionsAccepted, connectionsRefused, datasetsFailed, receivedBytes } from "./Counters.js"
import type { Gate } from "./Gate.js"
import { makeHandles } from "./Handles.js"
import type { ServeOptions } from "./Server.js"

/** Until the handshake is done, only small control frames are accepted. */
export const HANDSHAKE_FRAME = 64 * 1024

export const serveConnection = (
  store: PieceStore["Type"],
  link: Link,
  options: ServeOptions,
  gate: Gate
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const peer = link.peer
    // the subject of a client certificate the server checked, in this connection's log lines and events
    const client = link.clientCertificate?._tag === "Trusted" ? link.clientCertificate.subject : undefined
    const who = client === undefined ? peer : `${peer} (${client})`
    const clientField = client === undefined ? {} : { client }
    // read once per connection: a reload changes the token for the connections that come after it
    const token = yield* Option.match(yield* Effect.serviceOption(Credentials), { onNone: () => Effect.succeed(options.token), onSome: (c) => Effect.map(c.get, (now) => now.token) })
    const nonce = newNonce()
    // frames of this connection being verified and written, in bytes
    const memory = yield* Effect.makeSemaphore(options.connectionMemory)
    const handles = yield* makeHandles(options.maxHandles)
    const handshake = yield* Deferred.make<void, ProtocolError>()
    // where the handshake is: moved on by the frame handlers below, which run concurrently
    const stage = yield* Ref.make<"hi" | "hello" | "ready">("hi")
    const ticket = yield* gate.enter(Deferred.fail(handshake, new ProtocolError({ peer, code: "TooManyPending", reason: "too many connections in the handshake; dropped the oldest" })))

    const send = (bytes: Uint8Array) => link.send(bytes)
    /** Counted once per connection: when refused, or else when dropped for a frame the transport could not read. */
    const counted = yield* Ref.make(false)
    const countRefusal = (code: RefusalCode) =>
      Effect.flatMap(Ref.getAndSet(counted, true), (already) => already ? Effect.void : Metric.increment(Metric.tagged(connectionsRefused, "code", code)))
    const refuse = (code: RefusalCode, message: string) =>
      Effect.logWarning(`${who}: refused (${code}): ${message}`).pipe(
        Effect.annotateLogs({ peer, code }),
        Effect.zipRight(countRefusal(code)),
        Effect.zipRight(publish({ event: "connection-refused", peer, code, message })),
        Effect.zipRight(send(encodeControl(new Refused({ code, message })))),
        Effect.ignore,
        Effect.zipRight(Effect.fail(new ProtocolError({ peer, code, reason: message })))
      )

    const fail = (handle: number, e: StoreError) =>
      Effect.gen(function*() {
        yield* handles.drop(handle)
        // "not now" (Busy, no space yet, ...) is the sender's to wait out: a line under --debug only
        yield* (isDeferral(e.code) ? Effect.logDebug : Effect.logWarning)(`${who}: ${e.message}`).pipe(Effect.annotateLogs({ peer, dataset: e.dataset, code: e.code }))
        yield* Metric.increment(Metric.tagged(datasetsFailed, "code", e.code))
        yield* publish({ event: "dataset-failed", dataset: e.dataset, peer, ...clientField, code: e.code, message: e.reason })
        yield* send(encodeControl(new Failed({ handle, dataset: e.dataset, code: e.code, message: e.reason })))
      })

    const open = (handle: number, asked: Manifest | GrowingSpec) =>
      Effect.gen(function*() {
        const taken = yield* handles.take(handle)
        if (Option.isSome(taken)) {
          return yield* taken.value._tag === "InUse"
            ? refuse("HandleInUse", `handle ${handle} is already open`)
            : refuse("TooManyHandles", `${taken.value.open} datasets are open on this connection, the server's limit (--max-handles); close one first`)
        }
        const sessionScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const opened = yield* Effect.either(Scope.extend(asked instanceof GrowingSpec ? store.openGrowing(asked) : store.open(asked), sessionScope))
        if (Either.isLeft(opened)) {
          yield* Scope.close(sessionScope, Exit.void)
          return yield* fail(handle, opened.left)
        }
        const session = opened.right
        const manifest = session.manifest
        yield* handles.opened(handle, { session, scope: sessionScope })
        yield* Effect.logDebug(`${who}: opened ${manifest.dataset} as handle ${handle} (${session.held}/${manifest.count} held)`)
        yield* publish({ event: "dataset-opened", dataset: manifest.dataset, peer, ...clientField, pieces: manifest.count, held: session.held })
        const committed = Option.getOrUndefined(session.committed)
        yield* send(encodeControl(
          new Opened({
            handle,
            held: session.held,
            bitmap: session.held > 0 && committed === undefined ? session.heldBitmap() : null,
            committed: committed === undefined ? null : committed.crc32 === "" ? "00000000" : committed.crc32,
            ...(asked instanceof GrowingSpec ? { pieces: manifest.count } : {})
          })
        ))
        if (committed !== undefined) yield* handles.close(handle)
      })

    /** A growing dataset's marker: answered with what is held over its real count, as a second Opened. */
    const marker = (handle: number, size: number) =>
      Effect.gen(function*() {
        const found = yield* handles.find(handle)
        if (found._tag !== "Open") return found._tag === "Dropped" ? undefined : yield* refuse("UnknownHandle", `marker for handle ${handle}, which is not open`)
        const marked = yield* Effect.either(found.open.session.marker(size))
        if (Either.isLeft(marked)) return yield* fail(handle, marked.left)
        const { bitmap, held } = marked.right
        yield* send(encodeControl(new Opened({ handle, held, bitmap: held > 0 ? bitmap : null, committed: null })))
      })

    /** The sender vouches for its content: answer Committed once the store has committed exactly that. */
    const seal = (handle: number, crc32: string) =>
      Effect.gen(function*() {
        const found = yield* handles.find(handle)
        if (found._tag !== "Open") return found._tag === "Dropped" ? undefined : yield* refuse("UnknownHandle", `seal for handle ${handle}, which is not open`)
        yield* found.open.session.seal(parseInt(crc32, 16)).pipe(
          Effect.matchEffect({
            onFailure: (e) => fail(handle, e),
            onSuccess: (c) =>
              Effect.gen(function*() {
                yield* handles.close(handle)
                yield* publish({ event: "dataset-committed", dataset: c.dataset, peer, ...clientField, bytes: c.size, crc32: c.crc32 })
                yield* send(encodeControl(new Committed({ handle, dataset: c.dataset, size: c.size, crc32: c.crc32 })))
              })
          }),
          Effect.ignore,
          Effect.forkIn(scope)
        )
      })

    const hi = (message: Extract<ControlMessage, { _tag: "Hi" }>) =>
      Effect.gen(function*() {
        if (message.protocol !== PROTOCOL_VERSION) {
          return yield* refuse("VersionMismatch", `client speaks protocol ${message.protocol}, this server speaks ${PROTOCOL_VERSION}; upgrade the older side`)
        }
        yield* Ref.set(stage, "hello")
        yield* Effect.logDebug(`${who}: hi from ${message.client}`)
        yield* send(encodeControl(
          new Welcome({
            protocol: PROTOCOL_VERSION,
            server: `ferry/${VERSION}`,
            nonce,
            auth: token === undefined ? "none" : "hmac-sha256",
            idle: Duration.toSeconds(options.idleTimeout),
            maxFrame: options.maxFrame
          })
        ))
      })

    const hello = (proof: string | null) =>
      Effect.gen(function*() {
        if (token !== undefined && !proofMatches(token, nonce, proof)) {
          return yield* refuse(proof === null ? "AuthRequired" : "AuthFailed", proof === null ? "this server requires a token (--token-file or FERRY_TOKEN)" : "authentication failed: wrong token")
        }
        if (!(yield* ticket.pass)) {
          return yield* refuse("TooManyConnections", `the server has ${yield* ticket.ready} connections, its limit; try again later`)
        }
        yield* Ref.set(stage, "ready")
        link.limitFrames(options.maxFrame)
        yield* Metric.increment(connectionsAccepted)
        yield* publish({ event: "connection-accepted", peer, ...clientField })
        yield* send(encodeControl(new Ready()))
        yield* Deferred.succeed(handshake, undefined)
      })

    const onControl = (body: Buffer) =>
      Effect.gen(function*() {
        const decoded = decodeControl(body)
        if (Either.isLeft(decoded)) return yield* refuse("BadMessage", `malformed control message: ${decoded.left}`)
        const message = decoded.right
        const now = yield* Ref.get(stage)
        switch (message._tag) {
          case "Hi":
            return now === "hi" ? yield* hi(message) : yield* refuse("Unexpected", "second Hi")
          case "Hello":
            return now === "hello" ? yield* hello(message.proof) : yield* refuse("Unexpected", now === "hi" ? "Hello before Hi" : "second Hello")
          case "Open":
            return now === "ready" ? yield* open(message.handle, message.manifest) : yield* refuse("NotReady", "Open before the handshake")
          case "Seal":
            return now === "ready" ? yield* seal(message.handle, message.crc32) : yield* refuse("NotReady", "Seal before the handshake")
          case "OpenGrowing":
            return now === "ready" ? yield* open(message.handle, message.spec) : yield* refuse("NotReady", "OpenGrowing before the handshake")
          case "Marker":
            return now === "ready" ? yield* marker(message.handle, message.size) : yield* refuse("NotReady", "Marker before the handshake")
          case "Close":
            return now === "ready" ? yield* handles.close(message.handle) : yield* refuse("NotReady", "Close before the handshake")
          case "Ping":
            return
          default:
            return yield* refuse("Unexpected", `unexpected ${message._tag} from a client`)
        }
      })

    const onPieces = (body: Buffer) =>
      Effect.gen(function*() {
        if ((yield* Ref.get(stage)) !== "ready") return yield* refuse("NotReady", "pieces before the handshake")
        const batch = decodePieces(body)
        if ("problem" in batch) return yield* refuse("BadFrame", batch.problem)
        yield* Metric.incrementBy(receivedBytes, pieceBytesOf(batch, body.length))
        const found = yield* handles.find(batch.handle)
        if (found._tag !== "Open") return found._tag === "Dropped" ? undefined : yield* refuse("UnknownHandle", `pieces for handle ${batch.handle}, which is not open`)
        const { session } = found.open
        const written = yield* memory.withPermits(Math.min(body.length, options.connectionMemory))(session.write(batch, body)).pipe(
          // a bug or a dead worker fails this dataset with one line, not the whole connection
          Effect.catchAllDefect((defect) =>
            Effect.zipRight(
              Effect.logError(`${who}: internal error while writing ${session.manifest.dataset}: ${defect instanceof Error ? defect.message : String(defect)}`),
              Effect.fail(new StoreError({ dataset: session.manifest.dataset, code: "Internal", reason: "internal error on the server (see its log)" }))
            )
          ),
          Effect.either
        )
        if (Either.isLeft(written)) return yield* fail(batch.handle, written.left)
        // a batch of a session closed under it is not acknowledged: its pieces are not recorded
        if (written.right === "written") yield* send(encodeAck(batch.handle, batch.seq))
      })

    // a client whose certificate is missing or not trusted is refused at its first frame, whatever it is (once
    // read: a socket closed with bytes unread would be reset, and the refusal lost with them)
    const shown = link.clientCertificate
    // The handshake's frames are handled one after another, in the order they came (a client
    // sends its hello with its hi); once one of them ended the connection, the rest are not.
    const handshakeOrder = yield* Effect.makeSemaphore(1)
    const onFrame = (frame: RawFrame): Effect.Effect<void, ProtocolError | TransportError> =>
      Effect.flatMap(Ref.get(stage), (now) =>
        now === "ready"
          ? handleFrame(frame, now)
          : handshakeOrder.withPermits(1)(
            Effect.flatMap(Effect.all([Ref.get(stage), Ref.get(ended)]), ([now, over]) => (Option.isSome(over) ? Effect.void : handleFrame(frame, now)))
          ))
    const handleFrame = (frame: RawFrame, now: "hi" | "hello" | "ready") => {
      if (now === "hi" && shown?._tag === "Missing") return refuse("CertificateRequired", "this server requires a client certificate (send --tls-cert and --tls-key)")
      if (now === "hi" && shown?._tag === "Untrusted") return refuse("CertificateUntrusted", `client certificate ${shown.subject}: ${shown.reason}`)
      switch (frame.kind) {
        case FrameKind.Control:
          return onControl(frame.body)
        case FrameKind.Pieces:
          return onPieces(frame.body)
        case FrameKind.Ack:
          return refuse("Unexpected", "ack from a client")
      }
    }

    yield* Effect.logDebug(`${who}: connected`)
    const handshakeDeadline = Deferred.await(handshake).pipe(
      Effect.timeoutFail({
        duration: options.handshakeTimeout,
        onTimeout: () => new ProtocolError({ peer, code: "HandshakeTimeout", reason: "no handshake in time" })
      }),
      Effect.tapError((e) => refuse(e.code, e.reason).pipe(Effect.ignore)),
      Effect.zipRight(Effect.never)
    )

    const idle = () => new ProtocolError({ peer, code: "IdleTimeout", reason: `nothing received for ${Duration.format(options.idleTimeout)}` })
    // Why the connection ends is kept as a value: a failure inside the stream (the client went away,
    // or broke the protocol) would end one of the stream's own fibers with it, which Effect logs
    // under --debug as "Fiber terminated with an unhandled error", for an ordinary disconnect.
    const ended = yield* Ref.make(Option.none<ProtocolError | TransportError>())
    const ending = yield* Deferred.make<void>()
    const end = (e: ProtocolError | TransportError) =>
      Effect.zipRight(Ref.update(ended, Option.orElse(() => Option.some(e))), Deferred.succeed(ending, undefined))
    const outcome = yield* link.frames.pipe(
      Stream.timeoutFail(idle, options.idleTimeout),
      Stream.catchAll((e) => Stream.execute(end(e))),
      // on shutdown, or once the connection is ending, no new frame is taken; the batches already
      // taken finish writing
      Stream.interruptWhen(gate.stopping),
      Stream.interruptWhen(Deferred.await(ending)),
      Stream.mapEffect((frame) => Effect.catchAll(onFrame(frame), end).pipe(Effect.ensuring(Effect.sync(() => link.release(frame)))), { concurrency: options.batchesInFlight, unordered: true }),
      Stream.runDrain,
      Effect.raceFirst(handshakeDeadline),
      Effect.either
    )
    const failure = Either.isLeft(outcome) ? outcome.left : Option.getOrUndefined(yield* Ref.get(ended))
    if (failure !== undefined) {
      const e = failure
      if (e._tag === "ProtocolError" && e.code === "IdleTimeout") yield* refuse(e.code, e.reason).pipe(Effect.ignore)
      // a client that broke the protocol is worth a line (a refusal has had its own); one that was dropped to make room is not
      else if (e._tag === "ProtocolError" && e.code !== "TooManyPending" && !(yield* Ref.get(counted))) {
        yield* countRefusal(e.code)
        yield* Effect.logWarning(`${who}: dropped: ${e.reason}`).pipe(Effect.annotateLogs({ code: e.code }))
        // a frame the transport would not read (too large, of no known kind, memory full): the client hears why
        if (e.code === "FrameTooLarge" || e.code === "UnknownFrameKind" || e.code === "EmptyFrame" || e.code === "MemoryFull") {
          yield* send(encodeControl(new Refused({ code: e.code, message: e.reason }))).pipe(Effect.ignore)
        }
      }
      else yield* Effect.logDebug(`${who}: ${e.message}`)
    } else if (yield* gate.isStopping) {
      yield* send(encodeControl(new Refused({ code: "ShuttingDown", message: "the server is stopping; try again, or another server" }))).pipe(Effect.ignore)
    } else yield* Effect.logDebug(`${who}: disconnected`)
    if ((yield* Ref.get(stage)) !== "ready") yield* Metric.increment(handshakesFailed)
    else {
      const reason = failure !== undefined ? failure.message : (yield* gate.isStopping) ? "the server is stopping" : "the client closed the connection"
      yield* publish({ event: "connection-closed", peer, ...clientField, reason })
    }
    yield* handles.closeAll
    yield* link.end
  }).pipe(Effect.annotateLogs({ peer: link.peer, ...(link.clientCertificate?._tag === "Trusted" ? { client: link.clientCertificate.subject } : {}) }))
