/**
 * Connections between client and server, as framed links: the service and
 * its types. The live layer is TCP (transport/Tcp.ts); the memory layer
 * joins both ends inside one process (transport/Memory.ts); both frame
 * through transport/Link.ts, the same framing and backpressure code.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { PeerMismatch, ProtocolError, TransportError } from "../domain/Errors.js"
import { type RawFrame } from "../domain/Frame.js"
import type { Address } from "../domain/Units.js"
import type { FrameBudget } from "../node/FrameBudget.js"

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
  /** On a TLS server that asks for client certificates (--tls-client-ca), what this client showed. */
  readonly clientCertificate?: ClientCertificate
}

/** A client's certificate, as a server that asks for one found it. `subject` as `CN=alice, O=example`. */
export type ClientCertificate =
  | { readonly _tag: "Trusted"; readonly subject: string }
  | { readonly _tag: "Missing" }
  | { readonly _tag: "Untrusted"; readonly subject: string; readonly reason: string }

export interface LinkOptions {
  readonly maxFrame?: number
  /** Decoded frames a link holds before it stops reading the socket. */
  readonly readAhead?: number
  /** Largest control or ack frame accepted (a server's: they carry no piece data). */
  readonly maxControl?: number
  /** Memory shared by every link of a server: each frame's body is taken from it before it is allocated. */
  readonly budget?: FrameBudget | undefined
}

/**
 * TLS for a client: the server is verified against `ca` (PEM) or the system's roots, and must carry
 * `servername`; with `cert` and `key`, the client shows that certificate.
 */
export interface TlsClient {
  readonly ca: Buffer | undefined
  readonly servername: string | undefined
  readonly cert?: Buffer | undefined
  readonly key?: Buffer | undefined
}

/** TLS for a server: its certificate and key (PEM); with `clientCa`, clients must show a certificate that chains to it. */
export interface TlsServer {
  readonly cert: Buffer
  readonly key: Buffer
  readonly clientCa?: Buffer | undefined
}

export interface DialOptions extends LinkOptions {
  readonly tls?: TlsClient | undefined
}

export interface ListenOptions extends LinkOptions {
  readonly host: string
  readonly port: number
  readonly tls?: TlsServer | undefined
  /** New TLS material for the connections accepted from then on (a reload); those open keep theirs. */
  readonly tlsChanges?: Stream.Stream<TlsServer> | undefined
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

/**
 * Whether a TLS error a client got is the server refusing the certificate the client showed (or
 * did not show): a TLS alert about it. A TLS server that is not ferry (a proxy in front of it)
 * refuses that way; ferry refuses with a message (CertificateRequired, CertificateUntrusted).
 */
export const refusesOurCertificate = (code: string | undefined): boolean =>
  code !== undefined &&
  /^ERR_SSL_(TLSV13|TLSV1|SSLV3)_ALERT_(CERTIFICATE_REQUIRED|UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|ACCESS_DENIED)$/.test(code)

/** Connections to a server that ended before the handshake was done: TLS's here, ferry's in server/Connection.ts. */
export const handshakesFailed = Metric.counter("ferry_serve_handshakes_failed_total", {
  description: "Connections that ended before finishing the handshake (TLS or ferry's), whatever the reason.",
  incremental: true
})

