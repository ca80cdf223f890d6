/**
 * The sending side: scan the folder, wait for each dataset's marker, open the
 * dataset on every connection, stream the missing pieces as batches through
 * the reader pool onto the connections with the most room, and wait for the
 * server's commit.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { PieceBitmap } from "../domain/Bitmap.js"
import { lengthOf, type Manifest } from "../domain/Dataset.js"
import { type DatasetError, type DatasetRejected, FolderError, ProtocolError, TransportError } from "../domain/Errors.js"
import { DEFAULT_MAX_FRAME } from "../domain/Frame.js"
import type { Committed } from "../domain/Protocol.js"
import { DatasetScanner } from "../services/DatasetScanner.js"
import { PieceReader } from "../services/PieceReader.js"
import { type Address, formatAddress, Transport } from "../services/Transport.js"
import { type Board, type DatasetProgress, makeBoard } from "./Progress.js"
import { awaitMarker, inventory, pieceFileBytes, readManifest } from "./Scan.js"
import { connect, type LinkError, type ServerLink, type TransferEvents } from "./ServerLink.js"

export interface SendOptions {
  readonly dir: string
  readonly address: Address
  /** TCP connections to the server, or "auto": see `autoConnections`. */
  readonly connections: number | "auto"
  /** Bytes a connection may have unacknowledged. */
  readonly window: number
  /** Target size of one pieces frame. */
  readonly batchBytes: number
  /** Batches being read ahead of the network. */
  readonly readAhead: number
  /** Datasets sent at the same time. */
  readonly parallelDatasets: number
  readonly maxFrame: number
  /** Progress board: live on a terminal, periodic lines otherwise, or none. */
  readonly progress: "tty" | "lines" | "none"
  /** Shared secret for servers that ask for one. */
  readonly token: string | undefined
  /** TLS: verify against `ca` (PEM) or, when undefined, the system's roots. */
  readonly tls: { readonly ca: Buffer | undefined; readonly servername: string | undefined } | undefined
  readonly handshakeTimeout: Duration.DurationInput
  /** Reconnections in a row without progress before giving up. */
  readonly retries: number
}

/** Round trips below this are near: loopback, a LAN, the same region. */
export const NEAR_ROUND_TRIP_MS = 20
/** Connections opened by "auto" to a server farther away. */
export const FAR_CONNECTIONS = 4

/**
 * How many connections "auto" opens, from the round trip the first one measured (its TCP set-up
 * time). A connection carries at most its window per round trip: 8 MiB per 20 ms is 420 MB/s,
 * more than one machine here rebuilds, so near, one connection fills the link, and each extra one
 * only costs CPU on both ends (measured on loopback: a second connection costs the client about
 * 12% more CPU and makes four clients at once about 10% slower). Farther, 8 MiB per 50 ms is
 * 168 MB/s, so more connections are opened to keep the link busy. The threshold is loose on
 * purpose: a busy event loop can add a few milliseconds to the measurement.
 */
export const autoConnections = (roundTripMs: number): number => (roundTripMs < NEAR_ROUND_TRIP_MS ? 1 : FAR_CONNECTIONS)

export const defaultSendOptions: Omit<SendOptions, "dir" | "address"> = {
  connections: "auto",
  window: 8 * 1024 * 1024,
  batchBytes: 2 * 1024 * 1024,
  readAhead: 4,
  parallelDatasets: 2,
  maxFrame: DEFAULT_MAX_FRAME,
  progress: "none",
  token: undefined,
  tls: undefined,
  handshakeTimeout: "10 seconds",
  retries: 5
}

export interface DatasetReport {
  readonly dataset: string
  readonly size: number
  readonly pieces: number
  /** Pieces this run sent (the server already held the others). */
  readonly sent: number
  readonly alreadyCommitted: boolean
  readonly crc32: string
}

export type SendError = FolderError | DatasetError | DatasetRejected | LinkError

interface Task {
  readonly seq: number
  readonly indices: Uint32Array
  readonly bytes: number
}

const MAX_BATCH_PIECES = 4096

/**
 * The missing pieces as batches of about `batchBytes` of compressed data,
 * made one at a time as the stream pulls them: what the client keeps per
 * piece is the server's bitmap (one bit), never an object.
 */
export function* planBatches(manifest: Manifest, held: PieceBitmap, pieceBytes: number, batchBytes: number): Generator<Task> {
  const per = Math.max(1, Math.min(MAX_BATCH_PIECES, Math.floor(batchBytes / Math.max(1, pieceBytes))))
  let seq = 0
  for (const [a, b] of held.missing()) {
    for (let start = a; start < b; start += per) {
      const end = Math.min(b, start + per)
      const indices = new Uint32Array(end - start)
      let bytes = 0
      for (let k = 0; k < indices.length; k++) {
        indices[k] = manifest.first + start + k
        bytes += lengthOf(manifest, indices[k]!)
      }
      yield { seq: seq++, indices, bytes }
    }
  }
}

const heldBytes = (manifest: Manifest, held: PieceBitmap): number => {
  if (held.complete) return manifest.size
  let missing = 0
  for (const [a, b] of held.missing()) for (let i = a; i < b; i++) missing += lengthOf(manifest, manifest.first + i)
  return manifest.size - missing
}

const transfer = (
  options: SendOptions,
  links: ReadonlyArray<ServerLink>,
  transfers: Map<number, TransferEvents>,
  handle: number,
  manifest: Manifest,
  progress: DatasetProgress
) =>
  Effect.gen(function*() {
    const reader = yield* PieceReader
    const committed = yield* Deferred.make<Committed, DatasetRejected | LinkError>()
    /** Batches sent and not acknowledged yet: all the client remembers of them. */
    const inFlight = new Map<number, { readonly pieces: number; readonly bytes: number }>()
    transfers.set(handle, {
      onAck: (seq) => {
        const task = inFlight.get(seq)
        if (task === undefined) return
        inFlight.delete(seq)
        progress.ackedPieces += task.pieces
        progress.ackedBytes += task.bytes
        if (progress.ackedPieces === progress.totalPieces) progress.phase = "committing"
      },
      onCommitted: (m) => Deferred.unsafeDone(committed, Exit.succeed(m)),
      onFailed: (e) => Deferred.unsafeDone(committed, Exit.fail(e))
    })
    yield* Effect.addFinalizer(() => Effect.sync(() => transfers.delete(handle)))

    const opened = yield* Effect.forEach(links, (link) => link.open(handle, manifest), { concurrency: "unbounded" })
    const first = opened[0]!
    if (first.committed) {
      progress.start(manifest.count, manifest.size, manifest.count, manifest.size)
      progress.phase = "committed"
      return { dataset: manifest.dataset, size: manifest.size, pieces: manifest.count, sent: 0, alreadyCommitted: true, crc32: "" } satisfies DatasetReport
    }
    const held = first.bitmap === null ? new PieceBitmap(manifest.count) : PieceBitmap.fromBase64(manifest.count, first.bitmap)
    if (held === undefined) {
      return yield* Effect.fail(new ProtocolError({ peer: links[0]!.peer, code: "BadMessage", reason: "server sent a bitmap of the wrong length" }))
    }
    const pieceBytes = yield* pieceFileBytes(options.dir, manifest.dataset, manifest.first)
    // batches stay well under the largest frame the server accepts (half of it)
    const serverMax = Math.min(...links.map((l) => l.maxFrame))
    // Batches are planned on the largest a piece can be (an incompressible slice stored by gzip),
    // not on the first piece's size, so that no frame can outgrow the server's limit.
    const pieceBound = Math.ceil(manifest.sliceSize * 1.001) + 320
    const tasks = planBatches(manifest, held, pieceBound, Math.max(1, Math.min(options.batchBytes, Math.floor(serverMax / 2))))
    const missing = manifest.count - held.held
    progress.start(manifest.count, manifest.size, held.held, heldBytes(manifest, held))
    if (held.held > 0) yield* Effect.logInfo(`${manifest.dataset}: server already holds ${held.held} of ${manifest.count} pieces; sending the other ${missing}`)

    const pickLink = () => {
      let best = links[0]!
      for (const l of links) if (l.inflight() < best.inflight()) best = l
      return best
    }
    const pump = Stream.fromIterable({ [Symbol.iterator]: () => tasks }).pipe(
      Stream.tap((task) => Effect.sync(() => inFlight.set(task.seq, { pieces: task.indices.length, bytes: task.bytes }))),
      Stream.mapEffect(
        (task) =>
          reader.read({ dir: options.dir, dataset: manifest.dataset, handle, seq: task.seq, indices: task.indices, maxPieceBytes: Math.min(options.maxFrame, serverMax) - 64, expectBytes: pieceBytes * task.indices.length }),
        { concurrency: options.readAhead }
      ),
      Stream.mapEffect(
        (batch) =>
          Effect.suspend(() => {
            progress.sentBytes += batch.pieceBytes
            return pickLink().sendBatch(handle, batch.frame.readUInt32BE(9), batch.frame, batch.release)
          }),
        { concurrency: links.length, unordered: true }
      ),
      Stream.runDrain
    )
    const result = yield* Effect.raceFirst(Effect.zipRight(pump, Deferred.await(committed)), Deferred.await(committed))
    progress.phase = "committed"
    return { dataset: manifest.dataset, size: result.size, pieces: manifest.count, sent: missing, alreadyCommitted: false, crc32: result.crc32 } satisfies DatasetReport
  }).pipe(Effect.scoped)

/** Failures worth a new connection: the network or the server went away. */
const isTransient = (e: SendError): e is LinkError =>
  e._tag === "TransportError" || (e._tag === "ProtocolError" && (e.code === "HandshakeTimeout" || e.code === "IdleTimeout" || e.code === "TooManyConnections" || e.code === "TooManyPending"))

/** Exponential backoff with jitter: 0.25 s, 0.5 s, 1 s ... up to 10 s, each scaled by 0.5 to 1. */
export const backoff = (attempt: number, random: number = Math.random()): Duration.Duration =>
  Duration.millis(Math.min(10_000, 250 * 2 ** attempt) * (0.5 + random / 2))

/**
 * Sends every dataset in `options.dir`; answers one report per dataset, or
 * the first failure. A lost connection or a restarted server costs a
 * reconnection (up to `retries` in a row without progress), after which only
 * the pieces the server does not hold yet are sent.
 */
export const send = (
  options: SendOptions
): Effect.Effect<
  Array<DatasetReport>,
  SendError,
  Transport | PieceReader | DatasetScanner | FileSystem.FileSystem | Path.Path | Scope.Scope
> =>
  Effect.gen(function*() {
    const found = yield* inventory(options.dir)
    if (found.datasets.size === 0) {
      return yield* Effect.fail(new FolderError({ path: options.dir, reason: "no pieces found (expected files named like abc-0000000.gz and abc.done)" }))
    }
    const names = [...found.datasets.keys()].sort()
    yield* Effect.logDebug(`found ${names.length} dataset(s): ${names.map((n) => `${n} (${found.datasets.get(n)!.pieces} pieces${found.datasets.get(n)!.marker ? "" : ", no marker yet"})`).join(", ")}`)

    const board: Board = yield* makeBoard({ mode: options.progress })
    const progress = new Map(names.map((name) => [name, board.track(name)]))

    // Each dataset's manifest, as soon as its marker is there; connections come and go, these stay.
    const manifests = new Map<string, Deferred.Deferred<Manifest, DatasetError>>()
    for (const name of names) {
      const ready = yield* Deferred.make<Manifest, DatasetError>()
      manifests.set(name, ready)
      yield* Effect.gen(function*() {
        let holdings = found.datasets.get(name)!
        if (!holdings.marker) {
          yield* awaitMarker(options.dir, name)
          // pieces may have landed while we waited: count again
          holdings = (yield* Effect.orElseSucceed(inventory(options.dir), () => found)).datasets.get(name) ?? holdings
        }
        return yield* readManifest(options.dir, holdings)
      }).pipe(Effect.exit, Effect.flatMap((exit) => Deferred.done(ready, exit)), Effect.forkScoped)
    }

    const reports = new Map<string, DatasetReport>()
    const failed = new Map<string, SendError>()

    /** One connected attempt at every dataset not finished yet; answers the link failures. */
    const attempt = Effect.scoped(
      Effect.gen(function*() {
        const transfers = new Map<number, TransferEvents>()
        const dial = connect(options.address, transfers, { window: options.window, maxFrame: options.maxFrame, token: options.token, tls: options.tls, handshakeTimeout: options.handshakeTimeout })
        const first = yield* dial
        const wanted = options.connections === "auto" ? autoConnections(first.roundTrip) : Math.max(1, options.connections)
        const links = [first, ...(yield* Effect.all(Array.from({ length: wanted - 1 }, () => dial), { concurrency: "unbounded" }))]
        yield* Effect.logDebug(
          `${links.length} connection(s) to ${formatAddress(options.address)}${options.connections === "auto" ? ` (auto: round trip ${first.roundTrip.toFixed(2)} ms)` : ""}`
        )
        const slots = yield* Effect.makeSemaphore(Math.max(1, options.parallelDatasets))
        const pending = names.filter((n) => !reports.has(n) && !failed.has(n))
        const outcomes = yield* Effect.forEach(
          pending,
          (name) =>
            Effect.gen(function*() {
              const manifest = yield* Deferred.await(manifests.get(name)!)
              const p = progress.get(name)!
              return yield* slots.withPermits(1)(transfer(options, links, transfers, names.indexOf(name) + 1, manifest, p)).pipe(
                Effect.tapError((e) =>
                  Effect.sync(() => {
                    if (!isTransient(e)) {
                      p.phase = "failed"
                      p.note = e.message
                    }
                  })
                )
              )
            }).pipe(Effect.either, Effect.map((r) => [name, r] as const)),
          { concurrency: "unbounded" }
        )
        const lost: Array<LinkError> = []
        for (const [name, r] of outcomes) {
          if (Either.isRight(r)) reports.set(name, r.right)
          else if (isTransient(r.left)) lost.push(r.left)
          else failed.set(name, r.left)
        }
        return lost
      })
    ).pipe(Effect.catchAll((e) => (isTransient(e) ? Effect.succeed([e]) : Effect.fail(e))))

    const acked = () => [...progress.values()].reduce((n, p) => n + p.ackedPieces, 0)
    let failures = 0
    for (;;) {
      const before = acked()
      const lost = yield* attempt
      if (lost.length === 0) break
      failures = acked() > before ? 1 : failures + 1
      if (failures > options.retries) {
        return yield* Effect.fail(
          options.retries === 0
            ? lost[0]!
            : new TransportError({ address: formatAddress(options.address), reason: `${lost[0]!.reason} (gave up after ${options.retries} retries)` })
        )
      }
      const wait = backoff(failures - 1)
      yield* Effect.logWarning(`${lost[0]!.message}; reconnecting in ${Duration.format(Duration.millis(Math.round(Duration.toMillis(wait))))} (retry ${failures} of ${options.retries})`)
      yield* Effect.sleep(wait)
    }
    yield* board.flush
    const errors = names.filter((n) => failed.has(n)).map((n) => failed.get(n)!)
    for (const f of errors.slice(1)) yield* Effect.logError(f.message)
    if (errors.length > 0) return yield* Effect.fail(errors[0]!)
    return names.map((n) => reports.get(n)!)
  })
