/**
 * The in-memory world the pipeline tests run in: one memory filesystem for
 * the senders' folders and the servers' destinations, the in-memory
 * transport, and the in-process layers, which run the same reading,
 * inflating and placing code as the worker threads.
 */
import { Effect, Layer, Logger, LogLevel } from "effect"
import { createHash } from "node:crypto"
import * as zlib from "node:zlib"
import { defaultSendOptions, send, type SendOptions } from "../../src/client/Client.js"
import { ProgressLive } from "../../src/client/Progress.js"
import { Manifest } from "../../src/domain/Dataset.js"
import { decodePieces, encodePieces } from "../../src/domain/Frame.js"
import { defaultServeOptions, serve, type ServeOptions } from "../../src/server/Server.js"
import { DatasetScannerInProcess } from "../../src/services/DatasetScanner.js"
import { DestinationOnFileSystem } from "../../src/services/destination/InProcess.js"
import { GunzipPoolInProcess } from "../../src/services/GunzipPool.js"
import { PieceReaderInProcess } from "../../src/services/PieceReader.js"
import { defaultStoreLimits, FLUSH_BEHIND, PieceStore, PieceStoreLayer, type Session, type StoreLimits } from "../../src/services/PieceStore.js"
import { SampleMaker, SampleMakerInProcess } from "../../src/services/SampleMaker.js"
import { LeasesLive } from "../../src/services/store/Leases.js"
import { FramePoolLive } from "../../src/services/BufferPool.js"
import { type Address, MemoryTransport } from "../../src/services/Transport.js"
import { makeMemoryFileSystem, type MemoryFileSystemHandle } from "./MemoryFileSystem.js"

export interface ServerSpec {
  readonly dest?: string
  readonly limits?: Partial<StoreLimits>
  readonly flushEvery?: number
  /** Free bytes the destination reports (statfs); default: the memory filesystem's room left, or 1e12. */
  readonly space?: number | Effect.Effect<number>
  readonly leaseMs?: number
}

/** A piece store on the memory filesystem, as one server sees it. */
export const storeLayer = (memory: MemoryFileSystemHandle, spec: ServerSpec = {}) =>
  PieceStoreLayer({ ...defaultStoreLimits, ...spec.limits }, spec.flushEvery ?? FLUSH_BEHIND).pipe(
    Layer.provide(LeasesLive({ leaseMs: spec.leaseMs ?? 30_000 })),
    Layer.provideMerge(Layer.mergeAll(
      GunzipPoolInProcess(),
      DestinationOnFileSystem(spec.dest ?? "/dest", spec.space ?? Effect.sync(() => memory.faults.capacity === undefined ? 1e12 : memory.faults.capacity - memory.files.usedBytes()))
    )),
    Layer.provide(memory.layer)
  )

export const world = (spec: ServerSpec = {}) => {
  const memory = makeMemoryFileSystem()
  const layer = Layer.mergeAll(
    MemoryTransport.pipe(Layer.provide(FramePoolLive)),
    PieceReaderInProcess,
    DatasetScannerInProcess,
    SampleMakerInProcess,
    ProgressLive,
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
