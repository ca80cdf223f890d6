/**
 * The in-memory world the pipeline tests run in: one memory filesystem for
 * the senders' folders and the servers' destinations, and the layers ferry
 * exports for this (`ServerInProcess`, `ClientInProcess`,
 * `TransportInProcess`), which run the same reading, inflating and placing
 * code as the worker threads.
 */
import { Effect, Layer, Logger, LogLevel } from "effect"
import { createHash } from "node:crypto"
import * as zlib from "node:zlib"
import { defaultSendOptions, send, type SendOptions } from "../../src/client/Client.js"
import { Manifest } from "../../src/domain/Dataset.js"
import { decodePieces, encodePieces } from "../../src/domain/Frame.js"
import { ClientInProcess, TransportInProcess, ServerInProcess } from "../../src/Layers.js"
import { defaultServeOptions, serve, type ServeOptions } from "../../src/server/Server.js"
import { PieceStore, type Session, type StoreLimits } from "../../src/services/PieceStore.js"
import { SampleMaker } from "../../src/services/SampleMaker.js"
import type { Address } from "../../src/domain/Units.js"
import { makeMemoryFileSystem, type MemoryFileSystemHandle } from "./MemoryFileSystem.js"

export interface ServerSpec {
  readonly dest?: string
  readonly limits?: Partial<StoreLimits>
  readonly flushEvery?: number
  /** Free bytes the destination reports (statfs); default: the memory filesystem's room left, or 1e12. */
  readonly space?: number | Effect.Effect<number>
  /** Bytes the destination's filesystem holds in all; default: unknown. */
  readonly capacity?: number
  readonly leaseMs?: number
}

/** A server's store on the memory filesystem, as one server sees it: the exported in-process layer. */
export const storeLayer = (memory: MemoryFileSystemHandle, spec: ServerSpec = {}) =>
  ServerInProcess({
    dest: spec.dest ?? "/dest",
    ...(spec.limits === undefined ? {} : { limits: spec.limits }),
    ...(spec.flushEvery === undefined ? {} : { flushEvery: spec.flushEvery }),
    leaseMs: spec.leaseMs ?? 30_000,
    space: spec.space ?? Effect.sync(() => memory.faults.capacity === undefined ? 1e12 : memory.faults.capacity - memory.files.usedBytes()),
    ...(spec.capacity === undefined ? {} : { capacity: spec.capacity })
  }).pipe(Layer.provide(memory.layer))

/** One memory filesystem, the in-memory transport, and the exported in-process layers of both sides. */
export const world = (spec: ServerSpec = {}) => {
  const memory = makeMemoryFileSystem()
  const layer = Layer.mergeAll(
    TransportInProcess,
    ClientInProcess,
    storeLayer(memory, spec),
    Logger.minimumLogLevel(LogLevel.Warning)
  ).pipe(Layer.provideMerge(memory.layer))
  return { memory, layer }
}

export const sha256 = (bytes: Uint8Array | undefined) => createHash("sha256").update(bytes ?? new Uint8Array()).digest("hex")

export const make = (dir: string, name: string, size: number, sliceSize: number, seed = 1, firstNumber = 0) =>
  Effect.flatMap(SampleMaker, (maker) => maker.make({ dir, name, size, sliceSize, seed, firstNumber, level: 1 }))

export const startServer = (options: Partial<ServeOptions> = {}) => serve({ ...defaultServeOptions, host: "memory", port: 0, ...options })

export const sendAll = (dir: string, address: Address | ReadonlyArray<Address>, extra: Partial<SendOptions> = {}) =>
  Effect.scoped(send({ ...defaultSendOptions, dir, addresses: Array.isArray(address) ? address : [address as Address], connections: 2, ...extra }))

/** A manifest for test data: the first slice's CRC32 as a sender would compute it. */
export const manifestOf = (dataset: string, original: Uint8Array, sliceSize: number, first = 0) =>
  new Manifest({
    dataset,
    size: original.length,
    sliceSize,
    first,
    count: original.length === 0 ? 0 : Math.ceil(original.length / sliceSize),
    firstSliceCrc: zlib.crc32(original.subarray(0, sliceSize))
  })

/** The gzip pieces of `original`, numbered from `first`. */
export const piecesOf = (original: Uint8Array, sliceSize: number, first = 0) =>
  Array.from({ length: Math.ceil(original.length / sliceSize) }, (_, k) => ({
    index: first + k,
    bytes: zlib.gzipSync(original.subarray(k * sliceSize, Math.min(original.length, (k + 1) * sliceSize)))
  }))

/** Writes pieces to a session as one batch, the way the server's connection does. */
export const writeBatch = (session: Session, pieces: ReadonlyArray<{ readonly index: number; readonly bytes: Uint8Array }>, seq = 0) => {
  const frame = encodePieces(1, seq, pieces).subarray(5)
  const batch = decodePieces(frame)
  if ("problem" in batch) return Effect.die(batch.problem)
  return session.write(batch, Buffer.from(frame))
}

export { PieceStore }
