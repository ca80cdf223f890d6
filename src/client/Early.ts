/**
 * `send --early`: one dataset sent while its producer is still writing it.
 * Until piece 0 is finished nothing is opened (a dataset numbered from
 * above 0 cannot know its lowest piece before the marker, so it waits for
 * it as without --early). Then the dataset is opened as growing
 * (`OpenGrowing`: slice size and first slice known, size and count not),
 * and every piece that looks finished (EarlyFolder.ts) is sent as it
 * appears. A piece the server finds broken before the marker is not a
 * failure: that connection opens the dataset again, and the piece waits
 * until it changes on disk, or for the marker. Once the marker is there
 * and every piece sent is acknowledged, the marker's size goes to the
 * server (`Marker`), which checks it against the pieces it holds and
 * answers what it holds over the real count; from there the dataset is an
 * ordinary transfer (Transfer.ts, `sendOpened`): the rest of its pieces,
 * the seal, the commit, exactly as without --early.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Stream from "effect/Stream"
import * as zlib from "node:zlib"
import { PieceBitmap } from "../domain/Bitmap.js"
import { markerFileName } from "../domain/Dataset.js"
import { DatasetError, DatasetRejected, ProtocolError } from "../domain/Errors.js"
import { GrowingSpec, piecesNamed, provisionalManifest, readiness } from "../domain/Growing.js"
import { Marker, type Opened, OpenGrowing } from "../domain/Protocol.js"
import { PieceReader } from "../services/PieceReader.js"
import type { Connection, LinkError, Reply } from "./Connection.js"
import { lookAt, type PieceLook, sliceOf } from "./EarlyFolder.js"
import { inventory, markerPresent, pieceFileBytes, piecesPresent, readManifest } from "./Folder.js"
import { Progress } from "./Progress.js"
import { ackedBytes, piecesPerBatch, sendOpened, sentBytes, sentPieces, type TransferOptions } from "./Transfer.js"

export interface EarlyTiming {
  /** Milliseconds between two looks at the folder. */
  readonly look: number
  /** A piece's size and time must hold still this long (two looks at least this far apart). */
  readonly settle: number
}

export const defaultEarlyTiming: EarlyTiming = { look: 250, settle: 200 }

const sleep = (ms: number) => Effect.sleep(`${ms} millis`)

/** The marker is there: read it and the pieces as without --early (the same checks). */
const manifestNow = (dir: string, dataset: string) =>
  Effect.gen(function*() {
    const inv = yield* inventory(dir).pipe(Effect.mapError((e) => new DatasetError({ dataset, reason: e.message })))
    const holdings = inv.datasets.get(dataset)
    if (holdings === undefined) return yield* Effect.fail(new DatasetError({ dataset, reason: `${markerFileName(dataset)} is gone` }))
    return yield* readManifest(dir, holdings)
  })

export const earlyTransfer = (options: TransferOptions & { readonly timing: EarlyTiming }, connections: ReadonlyArray<Connection>, handle: number, dataset: string) =>
  Effect.gen(function*() {
    const started = yield* Clock.currentTimeMillis
    const progress = yield* Progress
    const reader = yield* PieceReader
    const dir = options.dir
    const { look, settle } = options.timing
    const server = connections[0]!.peer
    const boxes = yield* Effect.forEach(connections, (c) => c.mailbox(handle))
    yield* Effect.addFinalizer(() => Effect.forEach(connections, (c) => c.close(handle), { discard: true }))

    // until piece 0 is finished (it gives S and the first slice's CRC32), or the marker appears
    let spec: GrowingSpec | undefined
    let previous: PieceLook | undefined
    while (spec === undefined) {
      if (yield* markerPresent(dir, dataset)) {
        const manifest = yield* manifestNow(dir, dataset)
        const opened = yield* Effect.forEach(connections, (c) => c.open(handle, manifest), { concurrency: "unbounded" })
        return yield* sendOpened(options, connections, handle, manifest, boxes, opened[0]!, { started, sentBefore: 0 })
      }
      const now = yield* lookAt(dir, dataset, 0, yield* Clock.currentTimeMillis)
      if (Option.isSome(now) && previous !== undefined && readiness(previous, now.value, settle, now.value.isize, now.value.isize, now.value.magic) === "ready") {
        const slice = yield* sliceOf(dir, dataset, 0)
        if (Option.isSome(slice) && slice.value.length > 0 && slice.value.length === now.value.isize) {
          spec = new GrowingSpec({ dataset, sliceSize: slice.value.length, first: 0, firstSliceCrc: zlib.crc32(slice.value) })
          break
        }
      }
      previous = Option.getOrUndefined(now)
      yield* sleep(look)
    }

    const growing = spec
    const S = growing.sliceSize
    const openGrowing = (c: Connection) => c.ask(handle, new OpenGrowing({ handle, spec: growing }))
    const opened = yield* Effect.forEach(connections, openGrowing, { concurrency: "unbounded" })
    const firstAnswer = opened[0]!
    if (firstAnswer.committed !== null) {
      // committed already: only the marker can tell whether it is this dataset
      yield* Effect.logInfo(`${dataset}: the server has a committed ${dataset}; waiting for ${markerFileName(dataset)} to compare`)
      while (!(yield* markerPresent(dir, dataset))) yield* sleep(look)
      const manifest = yield* manifestNow(dir, dataset)
      return yield* sendOpened(options, connections, handle, manifest, boxes, yield* connections[0]!.open(handle, manifest), { started, sentBefore: 0 })
    }
    const bound = firstAnswer.pieces ?? 0
    const heldAt = (answer: Opened) => (answer.bitmap === null ? new PieceBitmap(bound) : PieceBitmap.fromBase64(bound, answer.bitmap))
    const serverHeld = heldAt(firstAnswer)
    if (bound < 1 || serverHeld === undefined) return yield* Effect.fail(new ProtocolError({ peer: server, code: "BadMessage", reason: "server answered a growing dataset without its bound" }))
    /** Pieces acknowledged or in flight (bit i = piece i): never sent twice before the marker. */
    const claimed = new PieceBitmap(bound, serverHeld.bits.slice())
    let acked = serverHeld.held
    let sent = 0
    const inFlight = new Map<number, { readonly indices: Uint32Array; readonly on: number }>()
    const suspects = new Map<number, PieceLook>()
    const reopen = new Set<number>()
    let fatal: DatasetRejected | LinkError | undefined
    const looks = new Map<number, PieceLook>()
    /** The slice CRC32 of every piece read to be sent (from its trailer): the seal needs them, and they need not be read again. */
    let known = new Uint32Array(1024)
    const knownBits = new PieceBitmap(bound)
    const learn = (indices: Uint32Array, crcs: Uint32Array) => {
      const top = indices[indices.length - 1]!
      if (top >= known.length) {
        const grown = new Uint32Array(Math.min(bound, Math.max(top + 1, known.length * 2)))
        grown.set(known)
        known = grown
      }
      for (let k = 0; k < indices.length; k++) {
        known[indices[k]!] = crcs[k]!
        knownBits.set(indices[k]!)
      }
    }
    yield* progress.update(dataset, (p) => ({ ...p, phase: "sending", pieces: 0, bytes: 0, ackedPieces: acked, ackedBytes: acked * S, heldBytes: acked * S, startedAt: started, server, note: "early" }))

    /** Batches of a connection whose dataset failed go back to be sent again (their pieces were not recorded). */
    const giveBack = (on: number) => {
      for (const [seq, batch] of inFlight) {
        if (batch.on !== on) continue
        inFlight.delete(seq)
        for (const i of batch.indices) claimed.bits[i >>> 3]! &= ~(1 << (i & 7))
      }
    }
    const onReply = (on: number) => (reply: Reply) =>
      Effect.suspend(() => {
        switch (reply._tag) {
          case "Ack": {
            const batch = inFlight.get(reply.seq)
            if (batch === undefined) return Effect.void
            inFlight.delete(reply.seq)
            for (const i of batch.indices) looks.delete(i)
            acked += batch.indices.length
            return Effect.zipRight(
              Metric.incrementBy(ackedBytes, batch.indices.length * S),
              progress.update(dataset, (p) => ({ ...p, ackedPieces: acked, ackedBytes: acked * S }))
            )
          }
          case "Failed":
            if (reply.error.code === "BadPiece") {
              // caught half written, or rewritten since: tried again once it changes, or after the marker
              for (const index of piecesNamed(dataset, reply.error.reason)) {
                const seen = looks.get(index)
                if (seen !== undefined) suspects.set(index, seen)
              }
              giveBack(on)
              reopen.add(on)
              return Effect.logInfo(`${dataset}: ${reply.error.reason}; before the marker this is not a failure: tried again later`)
            }
            fatal ??= reply.error
            return Effect.void
          case "Lost":
            fatal ??= reply.error
            return Effect.void
          case "Committed":
            return Effect.void
        }
      })
    // a pause here stops the consumers: the rest of the transfer reads the mailboxes itself
    yield* Effect.scoped(Effect.gen(function*() {
      yield* Effect.forEach(boxes, (box, on) => Stream.fromQueue(box).pipe(Stream.runForEach(onReply(on)), Effect.forkScoped), { discard: true })
      const pieceBytes = yield* pieceFileBytes(dir, dataset, 0)
      const serverMax = Math.min(...connections.map((c) => c.maxFrame))
      const per = piecesPerBatch(S, pieceBytes, options.batchBytes, serverMax)
      const geometry = provisionalManifest(growing, bound)
      let seq = 0
      const roomiest = () => connections.reduce((best, c) => (c.inflight() < best.inflight() ? c : best))

      const sendRun = (indices: Uint32Array) =>
        Effect.gen(function*() {
          const mine = seq++
          const frame = yield* Effect.either(reader.read({ dir, geometry, handle, seq: mine, indices, maxPieceBytes: serverMax - 64, expectBytes: pieceBytes * indices.length }))
          if (frame._tag === "Left") {
            // changed or gone since it looked finished: looked at again later
            for (const i of indices) claimed.bits[i >>> 3]! &= ~(1 << (i & 7))
            return
          }
          learn(indices, frame.right.crcs)
          const c = roomiest()
          inFlight.set(mine, { indices, on: connections.indexOf(c) })
          sent += indices.length
          yield* c.sendBatch(handle, mine, indices.length, frame.right.frame, frame.right.release)
          yield* Metric.incrementBy(sentPieces, indices.length)
          yield* Metric.incrementBy(sentBytes, frame.right.pieceBytes)
        })

      while (true) {
        if (fatal !== undefined) return yield* Effect.fail(fatal)
        for (const on of reopen) {
          reopen.delete(on)
          const again = yield* openGrowing(connections[on]!)
          const held = heldAt(again)
          if (held !== undefined) for (const [a, b] of held.heldRuns()) for (let i = a; i < b; i++) claimed.set(i)
        }
        const markerThere = yield* markerPresent(dir, dataset)
        const at = yield* Clock.currentTimeMillis
        const ready: Array<number> = []
        const unclaimed = (yield* piecesPresent(dir, dataset)).filter((index) => index < bound && !claimed.has(index))
        // looks go in parallel: each is a stat, or a stat and two small reads (file system calls, not CPU)
        yield* Effect.forEach(unclaimed, (index) => {
          const before = looks.get(index)
          return Effect.map(
            lookAt(dir, dataset, index, at, (size, mtimeMs) => before !== undefined && before.size === size && before.mtimeMs === mtimeMs && at - before.at >= settle),
            (now) => {
              if (Option.isNone(now)) return
              // still since `before`: keep the time it has been still since
              const still = before !== undefined && before.size === now.value.size && before.mtimeMs === now.value.mtimeMs
              looks.set(index, still ? { ...now.value, at: before.at } : now.value)
              const suspect = suspects.get(index)
              if (suspect !== undefined) {
                if (suspect.size === now.value.size && suspect.mtimeMs === now.value.mtimeMs) return
                suspects.delete(index)
              }
              if (readiness(before, now.value, settle, now.value.isize, S, now.value.magic) === "ready") ready.push(index)
            }
          )
        }, { concurrency: 32, discard: true })
        ready.sort((a, b) => a - b)
        // runs of consecutive pieces, cut to batches, read ahead and sent as the connections have room
        const runs: Array<Uint32Array> = []
        for (let k = 0; k < ready.length;) {
          let end = k + 1
          while (end < ready.length && end - k < per && ready[end] === ready[end - 1]! + 1) end++
          const indices = Uint32Array.from(ready.slice(k, end))
          for (const i of indices) claimed.set(i)
          runs.push(indices)
          k = end
        }
        yield* Effect.forEach(runs, sendRun, { concurrency: Math.max(2, options.readAhead), discard: true })
        if (markerThere && ready.length === 0) {
          yield* Effect.logDebug(`${dataset}: ${markerFileName(dataset)} is there; ${sent} pieces sent early, ${acked} acknowledged`)
          break
        }
        yield* sleep(look)
      }
      // the marker is there: every batch acknowledged (or given back) before its size goes to the server
      while (inFlight.size > 0 || reopen.size > 0) {
        if (fatal !== undefined) return yield* Effect.fail(fatal)
        for (const on of reopen) {
          reopen.delete(on)
          yield* openGrowing(connections[on]!)
        }
        yield* sleep(10)
      }
    }))

    const manifest = yield* manifestNow(dir, dataset)
    if (manifest.sliceSize !== S || manifest.first !== growing.first || manifest.firstSliceCrc !== growing.firstSliceCrc) {
      return yield* Effect.fail(new DatasetError({ dataset, reason: `its first piece changed while it was sent early (slices of ${manifest.sliceSize} bytes, not ${S}, or another first slice); the server's copy is left to a new transfer` }))
    }
    yield* Effect.logDebug(`${dataset}: ${markerFileName(dataset)} says ${manifest.size} bytes; ${sent} pieces sent before it`)
    const marked = yield* connections[0]!.ask(handle, new Marker({ handle, size: manifest.size }))
    // replies that came while the marker was on its way (none is expected) are no news now
    yield* Effect.forEach(boxes, (box) => Queue.takeAll(box), { discard: true })
    const crcOf = (index: number) => (index < bound && knownBits.has(index) ? known[index] : undefined)
    return yield* sendOpened(options, connections, handle, manifest, boxes, marked, { started, sentBefore: sent, crcOf })
  }).pipe(Effect.scoped)
