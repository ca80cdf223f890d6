/**
 * One dataset sent over the connections of one server: open it on each,
 * learn what the server holds, read the missing pieces in batches through
 * the reader, send each on the connection with the most room, vouch for the
 * whole file's CRC32 with a seal (combined from the pieces' gzip trailers,
 * those sent and those the server already held), and wait for the commit.
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { dispatch } from "./Dispatch.js"
import { PieceBitmap } from "../domain/Bitmap.js"
import { ContentCrc, formatCrc } from "../domain/Crc32.js"
import { lengthOf, type Manifest, offsetOf } from "../domain/Dataset.js"
import { DatasetRejected, ProtocolError } from "../domain/Errors.js"
import type { Opened } from "../domain/Protocol.js"
import { PieceReader } from "../services/PieceReader.js"
import type { Connection, LinkError, Reply } from "./Connection.js"
import { pieceFileBytes } from "./Folder.js"
import { Progress } from "./Progress.js"

/* What a sender counts (README: Operating ferry): per batch, never per piece. */

export const sentBytes = Metric.counter("ferry_send_bytes_total", {
  description: "Compressed piece bytes sent in pieces frames, framing not included (sent again after a reconnection, counted again).",
  incremental: true
})
export const sentPieces = Metric.counter("ferry_send_pieces_total", {
  description: "Pieces sent (sent again after a reconnection, counted again).",
  incremental: true
})
export const ackedBytes = Metric.counter("ferry_send_acked_bytes_total", {
  description: "Original bytes the servers acknowledged as written.",
  incremental: true
})

export interface TransferOptions {
  readonly dir: string
  /** Target size of one pieces frame. */
  readonly batchBytes: number
  /** Batches being read ahead of the network. */
  readonly readAhead: number
}

export interface DatasetReport {
  readonly dataset: string
  readonly server: string
  readonly size: number
  readonly pieces: number
  /** Pieces this run sent (the server already held the others). */
  readonly sent: number
  readonly alreadyCommitted: boolean
  /** The file's CRC32, as the server computed it and this sender vouched for it. */
  readonly crc32: string
  readonly seconds: number
}

interface Batch {
  readonly seq: number
  readonly indices: Uint32Array
  readonly bytes: number
}

const MAX_BATCH_PIECES = 4096

/**
 * The missing pieces as batches of about `batchBytes` of compressed data,
 * made one at a time as the stream pulls them: what the client keeps per
 * piece is the server's bitmap (one bit), never an object. Each batch is a
 * run of consecutive pieces.
 */
export function* planBatches(manifest: Manifest, held: PieceBitmap, per: number): Generator<Batch> {
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

/**
 * Pieces per batch: about `batchBytes` of pieces of the size the first one has, but never more
 * than half the largest frame the server accepts could hold if every piece were as large as a
 * piece can be (an incompressible slice stored by gzip), so no frame can outgrow it.
 */
export const piecesPerBatch = (sliceSize: number, pieceBytes: number, batchBytes: number, serverMaxFrame: number): number => {
  const pieceBound = Math.ceil(sliceSize * 1.001) + 320
  const byBound = Math.floor(serverMaxFrame / 2 / pieceBound)
  const bySize = Math.floor(batchBytes / Math.max(1, pieceBytes))
  return Math.max(1, Math.min(MAX_BATCH_PIECES, byBound, bySize))
}

/** Adds consecutive pieces' slice CRCs to the file's CRC. */
const addRun = (crc: ContentCrc, m: Manifest, indices: Uint32Array, crcs: Uint32Array) => {
  const lengths = Array.from(indices, (i) => lengthOf(m, i))
  let start = 0
  for (let k = 1; k <= indices.length; k++) {
    if (k === indices.length || indices[k] !== indices[k - 1]! + 1) {
      crc.addRun(offsetOf(m, indices[start]!), crcs, lengths, start, k)
      start = k
    }
  }
}

/** Reads the trailers of pieces that are not sent (held by the server), run by run, into the file's CRC. */
const addTrailers = (dir: string, m: Manifest, runs: Iterable<readonly [number, number]>, crc: ContentCrc) =>
  Effect.flatMap(PieceReader, (reader) =>
    Effect.forEach(runs, ([a, b]) => {
      const indices = Uint32Array.from({ length: b - a }, (_, k) => m.first + a + k)
      return Effect.map(reader.trailers(dir, m, indices), (crcs) => addRun(crc, m, indices, crcs))
    }, { discard: true }))

/**
 * The held pieces' slice CRCs into the file's CRC: those known already (read while sending early)
 * from `crcOf`, the others from their trailers.
 */
const addHeld = (dir: string, m: Manifest, held: PieceBitmap, crc: ContentCrc, crcOf: ((index: number) => number | undefined) | undefined) =>
  Effect.gen(function*() {
    if (crcOf === undefined) return yield* addTrailers(dir, m, held.heldRuns(), crc)
    const unknown: Array<readonly [number, number]> = []
    for (const [a, b] of held.heldRuns()) {
      let k = a
      while (k < b) {
        const start = k
        if (crcOf(m.first + k) === undefined) {
          while (k < b && crcOf(m.first + k) === undefined) k++
          unknown.push([start, k])
        } else {
          while (k < b && crcOf(m.first + k) !== undefined) k++
          const indices = Uint32Array.from({ length: k - start }, (_, j) => m.first + start + j)
          addRun(crc, m, indices, Uint32Array.from(indices, (i) => crcOf(i)!))
        }
      }
    }
    yield* addTrailers(dir, m, unknown, crc)
  })

const heldBytes = (m: Manifest, held: PieceBitmap): number => {
  let bytes = 0
  for (const [a, b] of held.heldRuns()) for (let i = a; i < b; i++) bytes += lengthOf(m, m.first + i)
  return bytes
}

const allHeld = (count: number) => {
  const held = new PieceBitmap(count)
  for (let i = 0; i < count; i++) held.set(i)
  return held
}

export const transfer = (
  options: TransferOptions,
  connections: ReadonlyArray<Connection>,
  handle: number,
  manifest: Manifest,
  /** Connections to the same server that join while it runs ("auto" growing): each opens the dataset and takes batches too. */
  joining?: Stream.Stream<Connection>
) =>
  Effect.gen(function*() {
    const started = yield* Clock.currentTimeMillis
    const boxes = yield* Effect.forEach(connections, (c) => c.mailbox(handle))
    yield* Effect.addFinalizer(() => Effect.forEach(connections, (c) => c.close(handle), { discard: true }))
    const opened = yield* Effect.forEach(connections, (c) => c.open(handle, manifest), { concurrency: "unbounded" })
    return yield* sendOpened(options, connections, handle, manifest, boxes, opened[0]!, { started, sentBefore: 0, joining })
  }).pipe(Effect.scoped)

/**
 * The rest of a transfer once the dataset is open on every connection (`first` is the server's
 * answer): what it already holds, the missing pieces, the seal, the commit. An early transfer
 * (client/Early.ts) joins here once the marker has appeared, counting the pieces it sent before.
 */
export const sendOpened = (
  options: TransferOptions,
  connections: ReadonlyArray<Connection>,
  handle: number,
  manifest: Manifest,
  boxes: ReadonlyArray<Queue.Dequeue<Reply>>,
  first: Opened,
  since: {
    readonly started: number
    readonly sentBefore: number
    readonly crcOf?: (index: number) => number | undefined
    readonly joining?: Stream.Stream<Connection> | undefined
  }
) =>
  Effect.gen(function*() {
    const reader = yield* PieceReader
    const progress = yield* Progress
    const started = since.started
    const name = manifest.dataset
    const server = connections[0]!.peer
    const crc = new ContentCrc(manifest.size, manifest.sliceSize)

    if (first.committed !== null) {
      // the server has a file of this name and size: say so only if it is ours, byte for byte (as far as CRC32 tells)
      yield* addTrailers(options.dir, manifest, allHeld(manifest.count).heldRuns(), crc)
      if (formatCrc(crc.value) !== first.committed) {
        return yield* Effect.fail(new DatasetRejected({ dataset: name, code: "Conflict", reason: `the server already holds a committed ${name} of the same size, but with crc32 ${first.committed}, and this folder's pieces make ${formatCrc(crc.value)}` }))
      }
      yield* progress.update(name, (p) => ({ ...p, phase: "committed", pieces: manifest.count, bytes: manifest.size, ackedPieces: manifest.count, ackedBytes: manifest.size, heldBytes: manifest.size, server }))
      return { dataset: name, server, size: manifest.size, pieces: manifest.count, sent: 0, alreadyCommitted: true, crc32: first.committed, seconds: ((yield* Clock.currentTimeMillis) - started) / 1000 } satisfies DatasetReport
    }

    const held = first.bitmap === null ? new PieceBitmap(manifest.count) : PieceBitmap.fromBase64(manifest.count, first.bitmap)
    if (held === undefined) return yield* Effect.fail(new ProtocolError({ peer: server, code: "BadMessage", reason: "server sent a bitmap of the wrong length" }))
    const missing = manifest.count - held.held
    if (held.held > 0) {
      yield* Effect.logInfo(`${name}: server already holds ${held.held} of ${manifest.count} pieces; sending the other ${missing}`)
      yield* addHeld(options.dir, manifest, held, crc, since.crcOf)
    }
    const already = heldBytes(manifest, held)
    yield* progress.update(name, (p) => ({ ...p, phase: missing === 0 ? "committing" : "sending", pieces: manifest.count, bytes: manifest.size, ackedPieces: held.held, ackedBytes: already, heldBytes: already, startedAt: started, server, note: "" }))

    // what the server says, from every connection: acks for progress, then the outcome
    const outcome = yield* Deferred.make<{ readonly size: number; readonly crc32: string }, DatasetRejected | LinkError>()
    const inFlight = new Map<number, { readonly pieces: number; readonly bytes: number }>()
    const onReply = (reply: Reply) => {
      switch (reply._tag) {
        case "Ack": {
          const batch = inFlight.get(reply.seq)
          if (batch === undefined) return Effect.void
          inFlight.delete(reply.seq)
          return Effect.zipRight(
            Metric.incrementBy(ackedBytes, batch.bytes),
            progress.update(name, (p) => {
              const ackedPieces = p.ackedPieces + batch.pieces
              return { ...p, ackedPieces, ackedBytes: p.ackedBytes + batch.bytes, phase: ackedPieces === p.pieces ? "committing" : p.phase }
            })
          )
        }
        case "Committed":
          return Deferred.succeed(outcome, reply)
        case "Failed":
        case "Lost":
          return Deferred.fail(outcome, reply.error)
      }
    }
    yield* Stream.mergeAll(boxes.map((box) => Stream.fromQueue(box)), { concurrency: "unbounded" }).pipe(Stream.runForEach(onReply), Effect.forkScoped)

    const pieceBytes = yield* pieceFileBytes(options.dir, name, manifest.first)
    const serverMax = Math.min(...connections.map((c) => c.maxFrame))
    const batches = planBatches(manifest, held, piecesPerBatch(manifest.sliceSize, pieceBytes, options.batchBytes, serverMax))
    const reads = Stream.fromIterable({ [Symbol.iterator]: () => batches }).pipe(
      Stream.tap((batch) => Effect.sync(() => inFlight.set(batch.seq, { pieces: batch.indices.length, bytes: batch.bytes }))),
      Stream.mapEffect(
        (batch) =>
          Effect.map(
            reader.read({ dir: options.dir, geometry: manifest, handle, seq: batch.seq, indices: batch.indices, maxPieceBytes: serverMax - 64, expectBytes: pieceBytes * batch.indices.length }),
            (frame) => ({ batch, frame })
          ),
        { concurrency: options.readAhead }
      )
    )
    // a connection that joins opens the dataset, and is closed with the others: only after the commit
    const scope = yield* Effect.scope
    const join = (c: Connection) =>
      Effect.gen(function*() {
        const box = yield* c.mailbox(handle)
        yield* Effect.addFinalizer(() => c.close(handle))
        yield* c.open(handle, manifest)
        yield* Stream.fromQueue(box).pipe(Stream.runForEach(onReply), Effect.forkScoped)
        return Option.some(c)
      }).pipe(
        Scope.extend(scope),
        Effect.catchAll((e) => Effect.as(Effect.logDebug(`${name}: a connection that joined could not take part (${e.message})`), Option.none<Connection>()))
      )
    // Joins run beside the dispatch and are awaited before the seal: a connection that opened the dataset
    // after the commit began could otherwise open it anew on the server, and leave that state behind.
    const joined = yield* Queue.unbounded<Connection>()
    const joins = yield* FiberSet.make()
    const watching = since.joining === undefined
      ? undefined
      : yield* Stream.runForEach(since.joining, (c) => FiberSet.run(joins, Effect.flatMap(join(c), (j) => (Option.isSome(j) ? Queue.offer(joined, j.value) : Effect.void)))).pipe(
        Effect.forkScoped
      )
    const pump = dispatch(reads, {
      ready: connections.length,
      connections,
      joining: since.joining === undefined ? undefined : Stream.fromQueue(joined),
      send: (connection, { batch, frame }) =>
        Effect.suspend(() => {
          addRun(crc, manifest, batch.indices, frame.crcs)
          return connection.sendBatch(handle, frame.seq, batch.indices.length, frame.frame, frame.release).pipe(
            Effect.zipRight(Metric.incrementBy(sentPieces, batch.indices.length)),
            Effect.zipRight(Metric.incrementBy(sentBytes, frame.pieceBytes))
          )
        })
    })
    // a failure the server reports while we still send ends the pump at once
    yield* Effect.raceFirst(pump, Effect.zipRight(Deferred.await(outcome), Effect.never))
    if (watching !== undefined) yield* Fiber.interrupt(watching)
    yield* FiberSet.awaitEmpty(joins)
    yield* connections[0]!.seal(handle, formatCrc(crc.value))
    const done = yield* Deferred.await(outcome)
    yield* progress.update(name, (p) => ({ ...p, phase: "committed" }))
    return { dataset: name, server, size: done.size, pieces: manifest.count, sent: missing + since.sentBefore, alreadyCommitted: false, crc32: done.crc32, seconds: ((yield* Clock.currentTimeMillis) - started) / 1000 } satisfies DatasetReport
  })
