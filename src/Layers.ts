/**
 * The layers a program needs to serve or send, bundled: live ones (TCP,
 * worker threads, the real disk) and in-process ones (the same pipelines
 * with an in-memory transport and without threads, over whichever
 * FileSystem the program provides: the real one, or an in-memory one).
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import type * as FileSystem from "@effect/platform/FileSystem"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ProgressLive } from "./client/Progress.js"
import { FramePoolLive } from "./services/BufferPool.js"
import { DatasetScannerInProcess, DatasetScannerLive } from "./services/DatasetScanner.js"
import { raiseDescriptorLimit } from "./node/Descriptors.js"
import { DestinationInProcess } from "./services/destination/InProcess.js"
import { DestinationLive } from "./services/destination/Live.js"
import { GunzipPoolInProcess, GunzipPoolLive } from "./services/GunzipPool.js"
import { PieceReaderInProcess, PieceReaderLive } from "./services/PieceReader.js"
import { defaultStoreLimits, FLUSH_BEHIND, PieceStoreLive, type StoreLimits } from "./services/PieceStore.js"
import { SampleMakerInProcess, SampleMakerLive } from "./services/SampleMaker.js"
import { LeasesLive } from "./services/store/Leases.js"
import { TransportInMemory } from "./services/transport/Memory.js"
import { TransportLive } from "./services/transport/Tcp.js"

export interface ServerLayerOptions {
  /** The destination folder (`serve --dest`). */
  readonly dest: string
  readonly limits?: Partial<StoreLimits>
  /** A lease not renewed for this long may be taken over by another server on the same destination. */
  readonly leaseMs?: number
  /** Gunzip worker threads (default: one per core). */
  readonly workers?: number
  /** The ISA-L addon's loader, or null for zlib (default: the one shipped with ferry). */
  readonly nativeAddon?: string | null
  /** Bytes between two background fsyncs of a dataset's data file. */
  readonly flushEvery?: number
  /** Connections past the handshake at most (`serve --max-connections`): they need descriptors too. */
  readonly maxConnections?: number
}

const store = (options: ServerLayerOptions) =>
  PieceStoreLive({ ...defaultStoreLimits, ...options.limits }, options.flushEvery ?? FLUSH_BEHIND).pipe(
    Layer.provide(LeasesLive({ leaseMs: options.leaseMs ?? 30_000 }))
  )

/**
 * A server over TCP and the real disk: the piece store, its gunzip threads, and the transport
 * (sharing one frame pool), with the open files limit raised first (see Descriptors.ts).
 */
export const ServerLive = (options: ServerLayerOptions) =>
  Layer.mergeAll(
    store(options).pipe(
      Layer.provideMerge(Layer.mergeAll(
        GunzipPoolLive({ ...(options.workers === undefined ? {} : { workers: options.workers }), ...(options.nativeAddon === undefined ? {} : { nativeAddon: options.nativeAddon }) }),
        DestinationLive(options.dest)
      ))
    ),
    TransportLive
  ).pipe(
    Layer.provide(FramePoolLive),
    Layer.provide(Layer.effectDiscard(raiseDescriptorLimit(options.limits?.maxDatasets ?? defaultStoreLimits.maxDatasets, options.maxConnections ?? 256)))
  )

export interface ClientLayerOptions {
  /** Reader threads at most where the native addon is not built (default 2); with it, batches are read on libuv's thread pool. */
  readonly readers?: number
  /** How often a folder without filesystem events is looked at again. */
  readonly pollEvery?: import("effect/Duration").DurationInput
}

/** A sender over TCP and the real disk: the piece reader, the folder scanner, progress, and the filesystem. */
export const ClientLive = (options: ClientLayerOptions = {}) =>
  Layer.mergeAll(
    TransportLive,
    PieceReaderLive(options.readers === undefined ? {} : { workers: options.readers }),
    DatasetScannerLive(options.pollEvery ?? "1 second"),
    ProgressLive
  ).pipe(Layer.provide(FramePoolLive), Layer.provideMerge(Layer.merge(NodeFileSystem.layer, NodePath.layer)))

/** The sample maker (`ferry fake`) on worker threads, and the filesystem. */
export const SampleLive = SampleMakerLive().pipe(Layer.provideMerge(Layer.merge(NodeFileSystem.layer, NodePath.layer)))

/**
 * The server's pipeline without threads or sockets, over the FileSystem the program provides;
 * with `ClientInProcess`, a whole transfer runs in one process (the transport is in memory).
 */
export const ServerInProcess = (
  options: ServerLayerOptions & {
    /** Bytes free on the destination, as statfs would say (default: unknown, Infinity). */
    readonly space?: number | Effect.Effect<number>
    /** Bytes the destination's filesystem holds in all (default: unknown, Infinity). */
    readonly capacity?: number
  }
) =>
  store(options).pipe(
    Layer.provideMerge(Layer.mergeAll(
      GunzipPoolInProcess(options.nativeAddon === undefined ? {} : { nativeAddon: options.nativeAddon }),
      DestinationInProcess(options.dest, options.space ?? Infinity, options.capacity ?? Infinity)
    ))
  )

export const ClientInProcess: Layer.Layer<
  import("./services/PieceReader.js").PieceReader | import("./services/DatasetScanner.js").DatasetScanner | import("./client/Progress.js").Progress | import("./services/SampleMaker.js").SampleMaker,
  never,
  FileSystem.FileSystem | import("@effect/platform/Path").Path
> = Layer.mergeAll(PieceReaderInProcess, DatasetScannerInProcess, ProgressLive, SampleMakerInProcess)

/** The in-memory transport both in-process layers share: provide it once, to both. */
export const TransportInProcess = TransportInMemory.pipe(Layer.provide(FramePoolLive))
