/** The live transport: TCP, and TLS when asked, reading piece frames into the program's frame pool. */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Stream from "effect/Stream"
import * as net from "node:net"
import * as tls from "node:tls"
import { PeerMismatch, TransportError } from "../../domain/Errors.js"
import { type BufferPool, FramePool } from "../BufferPool.js"
import { type Address, formatAddress } from "../../domain/Units.js"
import { type ClientCertificate, handshakesFailed, refusesOurCertificate, type TlsServer, Transport } from "../Transport.js"
import { defaultRoots } from "../../node/ExtraCa.js"
import { adoptWithOwnBuffer, kernelRoundTrip, rawSocketOf } from "../../node/Sockets.js"
import { linkFromDuplex, ownReadBuffer, reasonOf, scopedSocket } from "./Link.js"

const tune = (socket: net.Socket) => {
  socket.setNoDelay(true)
  socket.setKeepAlive(true, 30_000)
}

/** The server's TLS layer refused the certificate we showed, or that we showed none. */
const certificateRefused = (e: { readonly message: string }) =>
  `the server refused our client certificate at the TLS layer (${e.message.split("\n")[0]}); check --tls-cert and --tls-key`

/** A TLS failure that says the peer is not what we expect (no TLS, a certificate we do not trust), or undefined. */
const tlsMismatch = (e: Error): string | undefined => {
  const code = (e as NodeJS.ErrnoException).code ?? ""
  if (refusesOurCertificate(code)) return certificateRefused(e)
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

const secureContextOf = (material: TlsServer): tls.SecureContextOptions => ({
  cert: material.cert,
  key: material.key,
  ...(material.clientCa === undefined ? {} : { ca: material.clientCa })
})

/** What a client showed, on a server that asks for certificates: read once its handshake is done. */
const clientCertificateOf = (socket: tls.TLSSocket): ClientCertificate => {
  const shown = socket.getPeerX509Certificate()
  if (shown === undefined) return { _tag: "Missing" }
  const subject = shown.subject.split("\n").join(", ")
  if (socket.authorized) return { _tag: "Trusted", subject }
  const why = String(socket.authorizationError ?? "unknown")
  return { _tag: "Untrusted", subject, reason: untrustedBecause[why] ?? why }
}

/** OpenSSL's verification codes a client certificate most often fails with, in a user's words. */
const untrustedBecause: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "not signed by the CA this server trusts for clients (--tls-client-ca)",
  UNABLE_TO_GET_ISSUER_CERT: "not signed by the CA this server trusts for clients (--tls-client-ca)",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "not signed by the CA this server trusts for clients (--tls-client-ca)",
  DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed, not signed by the CA this server trusts for clients (--tls-client-ca)",
  SELF_SIGNED_CERT_IN_CHAIN: "its chain ends in a CA this server does not trust for clients (--tls-client-ca)",
  CERT_HAS_EXPIRED: "it has expired",
  CERT_NOT_YET_VALID: "it is not valid yet",
  INVALID_PURPOSE: "it is not meant for a TLS client (extendedKeyUsage)"
}

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
            ...(secure.ca === undefined ? defaultRoots() : { ca: secure.ca }),
            ...(secure.cert === undefined || secure.key === undefined ? {} : { cert: secure.cert, key: secure.key }),
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
          // the kernel's measure where it can be read: ours waits for this callback, and a busy
          // event loop (several senders starting at once) made loopback look 20-50 ms away
          roundTrip = Math.min(performance.now() - started, kernelRoundTrip(s) ?? Infinity)
        })
        s.once(secure === undefined ? "connect" : "secureConnect", () => {
          s.off("error", onError)
          resume(Effect.succeed(s))
        })
        return Effect.sync(() => s.destroy())
      })
      tune(socket)
      socket.on("error", () => {}) // surfaced through reads and writes
      yield* scopedSocket(socket, false)
      return { ...linkFromDuplex(socket, peer, options, pool, own?.input), roundTrip }
    }),
  listen: (options, onLink) =>
    Effect.gen(function*() {
      const runFork = yield* FiberSet.makeRuntime<never>()
      const server: net.Server = options.tls === undefined
        ? net.createServer({ noDelay: true, keepAlive: true, pauseOnConnect: true })
        : tls.createServer({
          ...secureContextOf(options.tls),
          // a client's certificate is checked here, not by the TLS layer: one it rejects is cut without
          // a word, where ferry refuses it with a reason both sides can read (server/Connection.ts)
          requestCert: options.tls.clientCa !== undefined,
          rejectUnauthorized: false,
          noDelay: true,
          keepAlive: true,
          handshakeTimeout: Duration.toMillis(options.handshakeTimeout ?? "10 seconds")
        })
      // whether clients must show a certificate is decided at start: a reload changes the CA, not the rule
      const requestsCertificates = options.tls?.clientCa !== undefined
      if (options.tls !== undefined && options.tlsChanges !== undefined) {
        // new connections get the new certificate (and client CA); those open keep theirs
        yield* options.tlsChanges.pipe(
          Stream.runForEach((material) => Effect.sync(() => (server as tls.Server).setSecureContext(secureContextOf(material)))),
          Effect.forkScoped
        )
      }
      const sockets = new Set<net.Socket>()
      const accept = (accepted: net.Socket) => {
        // plain TCP: the connection is taken over by a socket that reads into its own buffer
        const own = options.tls === undefined ? ownReadBuffer() : undefined
        const socket = own === undefined ? accepted : adoptWithOwnBuffer(accepted, own.onread)
        tune(socket)
        socket.on("error", () => {})
        sockets.add(socket)
        socket.once("close", () => sockets.delete(socket))
        const peer = formatAddress({ host: socket.remoteAddress ?? "?", port: socket.remotePort ?? 0 })
        const link = linkFromDuplex(socket, peer, options, pool, own?.input)
        const shown = requestsCertificates ? clientCertificateOf(socket as tls.TLSSocket) : undefined
        const handler = Effect.scoped(
          Effect.zipRight(scopedSocket(socket), onLink(shown === undefined ? link : { ...link, clientCertificate: shown }))
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
          const raw = rawSocketOf(socket)
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
export const TransportLive = Layer.effect(Transport, Effect.map(FramePool, makeTcpTransport))
