/**
 * Seals and the commit they start. A seal is a sender vouching for the
 * CRC32 of the whole file; once every piece is held, a seal with the CRC32
 * of the file the server holds starts the commit (once) and waits for it,
 * and any other is a Conflict.
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import { formatCrc } from "../../domain/Crc32.js"
import { StoreError } from "../../domain/Errors.js"
import { Destination } from "../Destination.js"
import { GunzipPool } from "../GunzipPool.js"
import { type Active, type DatasetKey, failAll } from "./Active.js"
import { checkOnDisk, type Commit, publishCommit } from "./Commit.js"
import { datasetsCommitted } from "./Metrics.js"
import { fileCrc, ioToStore } from "./StateFiles.js"

export interface Seals {
  /** Answers the seals received so far, once every piece is held. */
  readonly settle: (entry: Active) => Effect.Effect<void>
  /** The sender vouches that its pieces make a file with this CRC32: completes with the commit, or fails with Conflict. */
  readonly seal: (entry: Active) => (crc32: number) => Effect.Effect<Commit, StoreError>
}

export interface SealsOptions {
  readonly dest: Destination["Type"]
  readonly gunzip: GunzipPool["Type"]
  /** A reference to the dataset, held by the caller's scope: the commit holds one, so the files stay open until it is done. */
  readonly reference: (key: DatasetKey) => Effect.Effect<unknown, StoreError, Scope.Scope>
  /** Forgets the dataset's entry: later openers find the commit on record. */
  readonly forget: (key: DatasetKey) => Effect.Effect<void>
}

export const makeSeals = ({ dest, forget, gunzip, reference }: SealsOptions): Seals => {
  const commit = (entry: Active, crc: number) =>
    Effect.gen(function*() {
      const m = entry.manifest
      const started = Date.now()
      // what is committed is checked as it is on disk, not only by the CRC records beside it; the
      // reading back (page cache, CPU) and the flushing (the disk) go side by side, both done before
      // the rename below: on a 200 ms link the commit is time the sender waits for
      const check = checkOnDisk(entry.state, crc).pipe(
        Effect.provideService(GunzipPool, gunzip),
        Effect.tapError(() => Ref.update(entry.status, (st) => ({ ...st, discard: true })))
      )
      const flush = Effect.all([entry.state.data.sync, entry.state.crcs.sync], { concurrency: 2, discard: true }).pipe(Effect.mapError(ioToStore(m.dataset, "CommitFailed")))
      const [[checked], [synced]] = yield* Effect.all([Effect.timed(check), Effect.timed(flush)], { concurrency: 2 })
      const result = yield* publishCommit(m, entry.lease, crc, entry.leftover).pipe(Effect.provideService(Destination, dest))
      yield* forget(entry.key)
      yield* Effect.logDebug(
        `${m.dataset}: commit took ${Date.now() - started} ms: ${Math.round(Duration.toMillis(checked))} ms reading the file back and, beside it, ${Math.round(Duration.toMillis(synced))} ms flushing it to disk`
      )
      yield* Effect.logInfo(`${m.dataset}: committed ${m.size} bytes in ${m.count} pieces, crc32 ${result.crc32}`)
      yield* Metric.increment(datasetsCommitted)
      return result
    }).pipe(
      Effect.tapError((e) => failAll(entry, e)),
      Effect.exit,
      Effect.flatMap((exit) => Deferred.done(entry.commit, exit))
    )

  /** Starts the commit (once): it holds a reference of its own, so the files stay open until it is done. */
  const startCommit = (entry: Active, crc: number) =>
    Effect.gen(function*() {
      const holder = yield* Scope.make()
      yield* Scope.extend(reference(entry.key), holder)
      yield* Effect.forkDaemon(Effect.ensuring(commit(entry, crc), Scope.close(holder, Exit.void)))
    })

  /** A file that no sealing sender vouches for is discarded when the last user lets go. */
  const settle = (entry: Active) =>
    entry.settling.withPermits(1)(
      Effect.gen(function*() {
        const status = yield* Ref.get(entry.status)
        if (!entry.state.bitmap.complete || status.seals.length === 0 || Option.isSome(status.failure)) return
        const crc = yield* fileCrc(entry.state).pipe(Effect.mapError(ioToStore(entry.manifest.dataset, "CommitFailed")))
        const seals = yield* Ref.modify(entry.status, (s) => [s.seals, { ...s, seals: [] }])
        const matched = seals.filter((s) => s.crc === crc)
        const mismatched = seals.filter((s) => s.crc !== crc)
        if (matched.length > 0 && !status.committing) {
          yield* Ref.update(entry.status, (s) => ({ ...s, committing: true }))
          yield* startCommit(entry, crc)
        }
        for (const s of matched) yield* Deferred.completeWith(s.reply, Deferred.await(entry.commit))
        const discard = mismatched.length > 0 && matched.length === 0 && !status.committing
        if (discard) yield* Ref.update(entry.status, (s) => ({ ...s, discard: true }))
        const name = entry.manifest.dataset
        for (const s of mismatched) {
          yield* Deferred.fail(s.reply, new StoreError({
            dataset: name,
            code: "Conflict",
            reason: `the pieces this server holds make a file with crc32 ${formatCrc(crc)}, but this sender's make ${formatCrc(s.crc)}: another sender sent different content under the name ${name}, or the folder changed since an earlier attempt${discard ? "; the server's copy is discarded, so sending again starts afresh" : ""}`
          }))
        }
      })
    ).pipe(Effect.catchAll((e) => failAll(entry, e)))

  const seal = (entry: Active) => (crc32: number): Effect.Effect<Commit, StoreError> =>
    Effect.gen(function*() {
      const reply = yield* Deferred.make<Commit, StoreError>()
      const failure = yield* Ref.modify(entry.status, (s) =>
        Option.isSome(s.failure) ? [s.failure, s] : [Option.none<StoreError>(), { ...s, seals: [...s.seals, { crc: crc32 >>> 0, reply }] }])
      if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
      yield* settle(entry)
      return yield* Deferred.await(reply)
    })

  return { settle, seal }
}
