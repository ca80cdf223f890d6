/**
 * The client's side of a connection's handshake: our hi, the server's greeting, our hello (with
 * the proof of the token it asks for), and its answer; and when the greeting is not what a ferry
 * server says, what the peer is instead, in a user's words. The server's two frames come from the
 * connection's reader (client/Connection.ts), the one fiber that reads the link.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { proofFor } from "../domain/Auth.js"
import { PeerMismatch, ProtocolError, type TransportError } from "../domain/Errors.js"
import { FrameKind, type RawFrame } from "../domain/Frame.js"
import { type ControlMessage, decodeControl, encodeControl, encodeHi, Hello, Hi, PROTOCOL_VERSION, type Welcome } from "../domain/Protocol.js"
import type { Address } from "../domain/Units.js"
import { VERSION } from "../domain/Version.js"
import { Credentials } from "../services/Credentials.js"
import { type Link, refusesOurCertificate, type TlsClient, Transport } from "../services/Transport.js"

export type LinkError = TransportError | ProtocolError | PeerMismatch

export interface ConnectionOptions {
  readonly window: number
  readonly maxFrame: number
  /** The shared secret, when the server asks for one. */
  readonly token: string | undefined
  readonly tls: TlsClient | undefined
  /** The server must greet and accept us within this. */
  readonly handshakeTimeout: Duration.DurationInput
}

/** Hooks into the handshake, for dialing ahead (client/DialAhead.ts). */
export interface HandshakeSteps {
  /** Once the server's greeting is in: the round trip as measured so far (TCP set-up, our hi and its answer). */
  readonly greeted?: (roundTripMs: number) => Effect.Effect<void>
  /** Awaited before our hello: a connection dialed ahead holds there until it is wanted. */
  readonly beforeHello?: Effect.Effect<void, LinkError>
}

/** The server's first two frames, as the connection's reader takes them in (or how the reading ended before them). */
export interface HandshakeFrames {
  readonly greeting: Deferred.Deferred<RawFrame, LinkError>
  readonly answer: Deferred.Deferred<RawFrame, LinkError>
}

const printable = (bytes: Uint8Array) => Buffer.from(bytes).toString("latin1").replace(/[^\x20-\x7e]+/g, " ").trim().slice(0, 40)

/**
 * What went wrong while the server should have been greeting us, in a user's words: a peer that
 * sent bytes no ferry server sends is not one we can talk to, and trying again would not help. A
 * silent hang-up is no such evidence (a server killed or restarting does that too): on a plain
 * connection it is a TLS server only if a TLS hello to it is answered with TLS; otherwise it is a
 * lost connection, tried again like any other.
 */
const greetingProblem = (transport: Transport["Type"], address: Address, link: Link, secure: boolean, e: LinkError): Effect.Effect<never, LinkError> => {
  if (e._tag === "PeerMismatch") return Effect.fail(e)
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

export const expectControl = (peer: string, frame: RawFrame): Effect.Effect<ControlMessage, ProtocolError> => {
  if (frame.kind !== FrameKind.Control) return Effect.fail(new ProtocolError({ peer, code: "Unexpected", reason: "expected a control frame" }))
  const decoded = decodeControl(frame.body)
  return Either.isLeft(decoded)
    ? Effect.fail(new ProtocolError({ peer, code: "BadMessage", reason: `malformed message from server: ${decoded.left}` }))
    : Effect.succeed(decoded.right)
}

/** A Refused message, or anything else where it should not be. */
export const refusal = (peer: string, m: ControlMessage): LinkError => {
  if (m._tag !== "Refused") return new ProtocolError({ peer, code: "Unexpected", reason: `unexpected ${m._tag} from server` })
  if (m.code === "VersionMismatch" || m.code === "AuthFailed" || m.code === "AuthRequired" || m.code === "CertificateRequired" || m.code === "CertificateUntrusted") return new PeerMismatch({ peer, reason: `server refused: ${m.message}` })
  return new ProtocolError({ peer, code: m.code, reason: `server refused: ${m.message}` })
}

/** The token and TLS material for a new connection: as reloaded last (SIGHUP), else as given. */
export const current = (options: ConnectionOptions) =>
  Effect.map(Effect.serviceOption(Credentials), (credentials) => {
    if (Option.isNone(credentials)) return Effect.succeed({ token: options.token, tls: options.tls })
    return Effect.map(credentials.value.get, (now) => ({
      token: now.token,
      tls: options.tls === undefined ? undefined : { ...options.tls, ca: now.ca ?? options.tls.ca, cert: now.cert ?? options.tls.cert, key: now.key ?? options.tls.key }
    }))
  }).pipe(Effect.flatten)

/** Says hi and hello on a new link; succeeds with the server's greeting and the round trip once it has accepted us. */
export const handshake = (
  address: Address,
  link: Link,
  options: ConnectionOptions,
  token: string | undefined,
  frames: HandshakeFrames,
  steps: HandshakeSteps
): Effect.Effect<{ readonly welcome: Welcome; readonly roundTrip: number }, LinkError, Transport> =>
  Effect.gen(function*() {
    const transport = yield* Transport
    const peer = link.peer
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
    const receive = (frame: Deferred.Deferred<RawFrame, LinkError>, waitingFor: string) =>
      inTime(
        Deferred.await(frame).pipe(Effect.flatMap((f) => expectControl(peer, f)), Effect.catchAll((e) => greetingProblem(transport, address, link, options.tls !== undefined, e))),
        waitingFor
      )

    // the client speaks first, so that a TLS server (or anything that is not ferry) answers at once. Our
    // hello waits for the answer even without a token: the hello and its answer are the second measure of
    // the round trip below, the one a process busy starting up does not inflate (with the hello sent
    // along, loopback measured 20-30 ms under load and looked far)
    const hiSent = performance.now()
    yield* link.send(encodeHi(new Hi({ protocol: PROTOCOL_VERSION, client: `ferry/${VERSION}` })))
    const welcome = yield* receive(frames.greeting, "greeting")
    if (welcome._tag !== "Welcome") return yield* Effect.fail(refusal(peer, welcome))
    if (welcome.auth === "hmac-sha256" && token === undefined) {
      return yield* Effect.fail(new PeerMismatch({ peer, reason: "the server requires a token: give --token-file or set FERRY_TOKEN" }))
    }
    if (steps.greeted) yield* steps.greeted(Math.min(link.roundTrip ?? Infinity, performance.now() - hiSent))
    if (steps.beforeHello) yield* steps.beforeHello
    const proof = welcome.auth === "hmac-sha256" && token !== undefined ? proofFor(token, welcome.nonce) : null
    const helloSent = performance.now()
    yield* link.send(encodeControl(new Hello({ proof })))
    const ready = yield* receive(frames.answer, "answer to our hello")
    if (ready._tag !== "Ready") return yield* Effect.fail(refusal(peer, ready))
    // Two measures of one round trip: the TCP set-up, and our hello and its answer; a process
    // busy starting up delays one or the other by tens of milliseconds, rarely both
    const roundTrip = Math.min(link.roundTrip ?? 0, performance.now() - helloSent)
    return { welcome, roundTrip }
  })
