/** The in-memory transport: both ends in one process, through the same framing and backpressure code as TCP, for tests and in-process programs. */
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import { Duplex } from "node:stream"
import { TransportError } from "../../domain/Errors.js"
import { FramePool } from "../BufferPool.js"
import { formatAddress } from "../../domain/Units.js"
import { Transport } from "../Transport.js"
import { linkFromDuplex, scopedSocket } from "./Link.js"

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
export const TransportInMemory = Layer.effect(Transport, Effect.map(FramePool, (pool): Transport["Type"] => {
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
