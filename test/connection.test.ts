/**
 * One sender connection against an in-memory server: what the server acknowledges is what the
 * connection counts as acknowledged (the ledger the stall check and "auto"'s growth read), also
 * when the server fails a dataset with batches of it still unanswered.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Queue, Ref } from "effect"
import { type Acknowledged, connect, type Reply } from "../src/client/Connection.js"
import { encodePieces } from "../src/domain/Frame.js"
import { manifestOf, piecesOf, startServer, world } from "./support/world.js"

const SLICE = 1000

/** Seeded, poorly compressible bytes. */
const original = (() => {
  const bytes = new Uint8Array(6 * SLICE)
  let seed = 7
  for (let i = 0; i < bytes.length; i++) bytes[i] = (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 24
  return bytes
})()

describe("a sender connection", () => {
  it.scopedLive("counts as acknowledged only the batches the server acknowledged, when the server fails the dataset with batches in flight", () => {
    const { layer } = world()
    return Effect.gen(function*() {
      const address = yield* startServer()
      const acked = yield* Ref.make<Acknowledged>({ pieces: 0, bytes: 0 })
      const c = yield* connect(address, { window: 8 * 1024 * 1024, maxFrame: 1024 * 1024, token: undefined, tls: undefined, handshakeTimeout: "10 seconds" }, acked)
      const box = yield* c.mailbox(1)
      yield* c.open(1, manifestOf("bad", original, SLICE))
      const pieces = piecesOf(original, SLICE)
      // one good batch, acknowledged before the rest go out
      yield* c.sendBatch(1, 0, 2, encodePieces(1, 0, pieces.slice(0, 2)))
      expect(yield* Queue.take(box)).toEqual({ _tag: "Ack", seq: 0 })
      // a batch the server refuses (not gzip), then two more right behind it
      yield* c.sendBatch(1, 1, 1, encodePieces(1, 1, [{ index: 2, bytes: Buffer.from("not gzip data at all") }]))
      yield* c.sendBatch(1, 2, 2, encodePieces(1, 2, pieces.slice(3, 5)))
      yield* c.sendBatch(1, 3, 1, encodePieces(1, 3, pieces.slice(5, 6)))
      const batchPieces = [2, 1, 2, 1]
      let answered = 2
      for (;;) {
        const reply: Reply = yield* Queue.take(box)
        if (reply._tag === "Ack") answered += batchPieces[reply.seq]!
        else {
          expect(reply._tag).toBe("Failed")
          break
        }
      }
      // the refused batch was never acknowledged, so it is not counted; its window is free all the same
      expect(answered).toBeLessThan(6)
      expect((yield* Ref.get(acked)).pieces).toBe(answered)
      expect(c.inflight()).toBe(0)
    }).pipe(Effect.provide(layer))
  })
})
