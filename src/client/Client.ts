/**
 * The sending side: finds the datasets in a folder (once, or for as long as
 * it runs with `watch`), waits for their markers, and sends each ready one
 * to a server: the least loaded of those that are up, several datasets at
 * once. A dataset a server cannot take now (Busy, no space, lost to another
 * server, shutting down) waits and goes again, elsewhere when it can; one
 * whose server went away goes to another server, or to the same one once it
 * is back. Every outcome is published as it happens (Monitor), and the run
 * answers a summary: what was committed, what failed, and whether a server
 * could not be reached.
 */
import type * as FileSystem from "@effect/platform/FileSystem"
import type * as Path from "@effect/platform/Path"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Metric from "effect/Metric"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { isDeferral } from "../domain/Codes.js"
import { markerFileName, parseEntry } from "../domain/Dataset.js"
import { ExitCode } from "../domain/ExitCode.js"
import { DatasetError, type DatasetRejected, type FolderError } from "../domain/Errors.js"
import type { Holdings } from "../domain/Inventory.js"
import { DEFAULT_MAX_FRAME } from "../domain/Frame.js"
import { DatasetScanner } from "../services/DatasetScanner.js"
import { publish } from "../services/Monitor.js"
import type { PieceReader } from "../services/PieceReader.js"
import type { Address } from "../domain/Units.js"
import type { Transport } from "../services/Transport.js"
import { cleanUp, finishInterruptedMove, type OnCommit } from "./Cleanup.js"
import type { ConnectionOptions, LinkError } from "./Connection.js"
import { defaultEarlyTiming, earlyTransfer, type EarlyTiming } from "./Early.js"
import { awaitMarker, inventory, markerPresent, nameProblem, readManifest } from "./Folder.js"
import { Progress } from "./Progress.js"
import { type DatasetReport, transfer, type TransferOptions } from "./Transfer.js"
import { pickUplink } from "./Choice.js"
import { isTransient, makeUplink, type ReconnectPolicy, type Uplink } from "./Uplink.js"

/* What a sender counts of its datasets (README: Operating ferry). */

export const committedDatasets = Metric.counter("ferry_send_datasets_committed_total", {
  description: "Datasets the servers committed (those already committed there included).",
  incremental: true
})
export const failedDatasets = Metric.counter("ferry_send_datasets_failed_total", {
  description: "Datasets that failed for good, by code (the server's failure code, BadDataset, PeerMismatch or Unreachable).",
  incremental: true
})

export interface SendOptions extends TransferOptions, ReconnectPolicy {
  /** Servers to send to; datasets are spread over them. */
  readonly addresses: ReadonlyArray<Address>
  /** TCP connections to each server, or "auto": see `autoConnections`. */
  readonly connections: number | "auto"
  /** Bytes a connection may have unacknowledged. */
  readonly window: number
  /** Datasets sent at the same time. */
  readonly parallelDatasets: number
  readonly maxFrame: number
  /** Shared secret for servers that ask for one. */
  readonly token: string | undefined
  /** TLS: verify against `ca` (PEM) or, when undefined, the system's roots. */
  readonly tls: ConnectionOptions["tls"]
  readonly handshakeTimeout: Duration.DurationInput
  /** Keep watching the folder and send datasets as they become ready, until interrupted. */
  readonly watch: boolean
  /** A dataset whose marker is still missing after this long fails; undefined: wait forever. */
  readonly markerTimeout: Duration.DurationInput | undefined
  /** What to do with a dataset's files once the server has committed it. */
  readonly onCommit: OnCommit
  /** Send a dataset's pieces as they appear, before its marker (client/Early.ts), and how often to look. */
  readonly early: boolean
  readonly earlyTiming: EarlyTiming
  /** Round trips below this are near for "auto" (default NEAR_ROUND_TRIP_MS; tests lower it to see loopback as far). */
  readonly nearRoundTripMs?: number
}

export const defaultSendOptions: Omit<SendOptions, "dir" | "addresses"> = {
  connections: "auto",
  window: 8 * 1024 * 1024,
  batchBytes: 2 * 1024 * 1024,
  readAhead: 4,
  parallelDatasets: 2,
  maxFrame: DEFAULT_MAX_FRAME,
  token: undefined,
  tls: undefined,
  handshakeTimeout: "10 seconds",
  retries: 20,
  retryFor: "5 minutes",
  cap: "10 seconds",
  watch: false,
  markerTimeout: undefined,
  onCommit: { _tag: "Keep" },
  early: false,
  earlyTiming: defaultEarlyTiming
}

export interface DatasetFailure {
  readonly dataset: string
  readonly error: DatasetError | DatasetRejected | LinkError
}

export interface SendSummary {
  /** Datasets found in the folder (at the start, for a watching sender). */
  readonly found: number
  readonly committed: ReadonlyArray<DatasetReport>
  readonly failed: ReadonlyArray<DatasetFailure>
  /** Set when a server could not be reached, or kept, within the retry budget. */
  readonly unreachable: LinkError | undefined
}

export type SendEnvironment = Transport | PieceReader | DatasetScanner | FileSystem.FileSystem | Path.Path | Progress

/** How long a dataset a server could not take waits before it goes again: 1 s doubling to 30 s, jittered. */
const deferralSchedule = Schedule.exponential("1 second").pipe(Schedule.union(Schedule.spaced("30 seconds")), Schedule.jittered)

type Outcome = DatasetError | DatasetRejected | LinkError

/** Every server has been given up on. */
class NoServerLeft extends Data.TaggedError("NoServerLeft")<{ readonly error: LinkError }> {}

/** "Not now" from a server: Busy, no space, taken by another server, shutting down. */
const isDeferred = (e: Outcome): e is DatasetRejected => e._tag === "DatasetRejected" && isDeferral(e.code)

/** The server went away while the dataset was being sent. */
const isLinkLost = (e: Outcome): boolean => e._tag !== "DatasetRejected" && e._tag !== "DatasetError" && isTransient(e)

export const send = (options: SendOptions): Effect.Effect<SendSummary, FolderError, SendEnvironment | Scope.Scope> =>
  Effect.gen(function*() {
    const progress = yield* Progress
    const scanner = yield* DatasetScanner
    const dir = options.dir
    const connection: ConnectionOptions = { window: options.window, maxFrame: options.maxFrame, token: options.token, tls: options.tls, handshakeTimeout: options.handshakeTimeout }
    let uplinks: ReadonlyArray<Uplink> = []
    const ackedEverywhere = Effect.suspend(() => Effect.map(Effect.forEach(uplinks, (u) => u.acked), (counts) => counts.reduce((n, c) => n + c, 0)))

    const committed: Array<DatasetReport> = []
    const failed: Array<DatasetFailure> = []
    let unreachable: LinkError | undefined
    /** Datasets this run has taken up (queued, sending or finished): a watching sender takes each once. */
    const taken = new Set<string>()
    const ready = yield* Queue.unbounded<Holdings>()
    // the first scan counts as pending until every dataset it found is taken up: a dataset that fails
    // at once must not end the run (shut the queue) before the others are in it
    const pending = yield* Ref.make(1)

    const finish = Effect.flatMap(Ref.updateAndGet(pending, (n) => n - 1), (n) => (n === 0 && !options.watch ? Queue.shutdown(ready) : Effect.void))

    const fail = (dataset: string, error: DatasetFailure["error"]) =>
      Effect.gen(function*() {
        failed.push({ dataset, error })
        const onData = error._tag === "DatasetRejected" || error._tag === "DatasetError"
        const code = error._tag === "DatasetRejected" ? error.code : error._tag === "DatasetError" ? "BadDataset" : error._tag === "PeerMismatch" ? "PeerMismatch" : "Unreachable"
        // a server given up on has said so already, once for all its datasets
        if (onData) yield* Effect.logError(error.message).pipe(Effect.annotateLogs({ dataset, code }))
        else yield* Effect.logDebug(`${dataset}: not sent: ${error.message}`)
        yield* progress.update(dataset, (p) => ({ ...p, phase: "failed", note: error.message }))
        yield* Metric.increment(Metric.tagged(failedDatasets, "code", code))
        yield* publish({ event: "failed", dataset, code, message: error.message })
      })

    /**
     * Sends one ready dataset until it is committed or fails for good. A server that went away
     * means going again at once (the next pick waits for a server to be up); a server that cannot
     * take the dataset now means going again after a capped, jittered backoff, elsewhere first,
     * until nothing has progressed anywhere for --retry-for (never, for a watching sender).
     */
    const sendOne = (holdings: Holdings) =>
      Effect.gen(function*() {
        const name = holdings.dataset
        // --early: a dataset without its marker is sent as its pieces appear
        const early = options.early && !(yield* markerPresent(dir, name))
        const manifest = early ? undefined : yield* readManifest(dir, holdings)
        const avoid = new Set<string>()
        let stalledSince: { readonly at: number; readonly acked: number } | undefined
        // read on Effect's Clock, so that TestClock can drive --retry-for
        const stalledTooLong = Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const acked = yield* ackedEverywhere
          if (stalledSince === undefined || acked !== stalledSince.acked) stalledSince = { at: now, acked }
          return !options.watch && now - stalledSince.at > Duration.toMillis(options.retryFor)
        })
        const once = Effect.gen(function*() {
          // every server given up on: nothing left to try, whatever the error says
          const uplink = yield* pickUplink(uplinks, name, avoid).pipe(Effect.mapError((error) => new NoServerLeft({ error })))
          return yield* Effect.acquireUseRelease(
            Ref.update(uplink.load, (n) => n + 1),
            () =>
              manifest === undefined
                ? Effect.flatMap(uplink.settledConnections, (connections) => earlyTransfer({ ...options, timing: options.earlyTiming }, connections, uplink.nextHandle(), name))
                : Effect.flatMap(uplink.connections, (connections) => transfer(options, connections, uplink.nextHandle(), manifest, uplink.joining(connections))),
            () => Ref.update(uplink.load, (n) => n - 1)
          ).pipe(
            Effect.tapError((e) =>
              isDeferred(e)
                ? Effect.gen(function*() {
                  if (avoid.size === 0) yield* Effect.logInfo(`${name}: ${uplink.address} cannot take it now (${e.code}: ${e.reason}); waiting to try again`)
                  avoid.add(uplink.address)
                  yield* progress.update(name, (p) => ({ ...p, phase: "queued", note: `${e.code} at ${uplink.address}` }))
                  yield* publish({ event: "queued", dataset: name, reason: `${e.code}: ${e.reason}` })
                })
                : isLinkLost(e)
                ? progress.update(name, (p) => ({ ...p, phase: "queued", note: `reconnecting to ${uplink.address}` }))
                : Effect.void
            )
          )
        })
        return yield* once.pipe(
          Effect.retry({ while: (e) => e._tag !== "NoServerLeft" && isLinkLost(e) }),
          Effect.retry({ schedule: deferralSchedule, while: (e) => e._tag !== "NoServerLeft" && isDeferred(e) ? Effect.map(stalledTooLong, (stalled) => !stalled) : false }),
          Effect.mapError((e) => (e._tag === "NoServerLeft" ? e.error : e))
        )
      }).pipe(
        Effect.matchEffect({
          onFailure: (e) =>
            Effect.gen(function*() {
              if (e._tag !== "DatasetError" && e._tag !== "DatasetRejected") unreachable ??= e
              yield* fail(holdings.dataset, e)
            }),
          onSuccess: (report) =>
            Effect.gen(function*() {
              committed.push(report)
              yield* Metric.increment(committedDatasets)
              yield* publish({ event: "committed", dataset: report.dataset, server: report.server, bytes: report.size, pieces: report.pieces, sent: report.sent, crc32: report.crc32, seconds: report.seconds, alreadyCommitted: report.alreadyCommitted })
              if (options.onCommit._tag !== "Keep") {
                // sent early: the pieces were counted before they were all there
                if (options.early) {
                  const now = (yield* Effect.orElseSucceed(inventory(dir), () => undefined))?.datasets.get(report.dataset)
                  if (now !== undefined) holdings = now
                }
                const cleaned = yield* Effect.either(cleanUp(dir, { dataset: report.dataset, first: holdings.lowest === Infinity ? 0 : holdings.lowest, count: holdings.pieces }, options.onCommit))
                if (Either.isLeft(cleaned)) yield* Effect.logWarning(`${report.dataset}: committed, but ${cleaned.left.message}`)
                else yield* publish({ event: "cleaned", dataset: report.dataset, action: options.onCommit._tag === "Move" ? "move" : "delete", to: options.onCommit._tag === "Move" ? options.onCommit.to : null })
              }
            })
        }),
        Effect.ensuring(finish)
      )

    /** Takes up a dataset: at once when its marker is there, else once it appears (or fails after the marker timeout). */
    const takeUp = (holdings: Holdings, markerThere: boolean) =>
      Effect.gen(function*() {
        const name = holdings.dataset
        if (taken.has(name)) return
        taken.add(name)
        yield* Ref.update(pending, (n) => n + 1)
        const invalid = nameProblem(name)
        if (invalid !== undefined) {
          yield* fail(name, new DatasetError({ dataset: name, reason: invalid }))
          return yield* finish
        }
        if (markerThere || options.early) {
          yield* progress.update(name, (p) => ({ ...p, phase: "queued", note: "" }))
          return yield* Queue.offer(ready, holdings)
        }
        // a sender that runs for months sees every dataset's pieces before its marker: not news
        yield* (options.watch ? Effect.logDebug : Effect.logInfo)(`waiting for ${markerFileName(name)} in ${dir}`)
        yield* progress.update(name, (p) => ({ ...p, phase: "waiting" }))
        yield* publish({ event: "waiting", dataset: name })
        const wait = options.markerTimeout === undefined
          ? awaitMarker(dir, name)
          : awaitMarker(dir, name).pipe(Effect.timeoutFail({ duration: options.markerTimeout, onTimeout: () => new DatasetError({ dataset: name, reason: `${markerFileName(name)} did not appear within ${Duration.format(options.markerTimeout!)}` }) }))
        yield* wait.pipe(
          Effect.zipRight((options.watch ? Effect.logDebug : Effect.logInfo)(`found ${markerFileName(name)}`)),
          // pieces may have landed while we waited: count again
          Effect.zipRight(Effect.map(Effect.orElseSucceed(inventory(dir), () => undefined), (inv) => inv?.datasets.get(name) ?? holdings)),
          Effect.matchEffect({
            onFailure: (e) => Effect.zipRight(fail(name, e), finish),
            onSuccess: (h) => Effect.zipRight(progress.update(name, (p) => ({ ...p, phase: "queued" })), Queue.offer(ready, h))
          }),
          Effect.forkScoped
        )
      })

    // The servers are dialed while the folder is counted (on a 200 ms link the first connection takes
    // three round trips), and told of only once there is something to send. The counting gives the
    // event loop a turn between its batches (DatasetScanner.list), so the round trips measured
    // meanwhile hold: a server on loopback still looks near.
    const claimed = yield* Deferred.make<void>()
    uplinks = yield* Effect.forEach(options.addresses, (a) =>
      makeUplink(a, options.connections, connection, options, {
        alone: options.addresses.length === 1 && !options.watch,
        nearMs: options.nearRoundTripMs,
        claimed: Deferred.await(claimed)
      }))
    const found = yield* inventory(dir)
    if (options.onCommit._tag === "Move") {
      for (const name of found.moving) {
        const h = found.datasets.get(name)
        yield* Effect.logInfo(`${name}: finishing its move to ${options.onCommit.to}, which an earlier run left half done`)
        yield* finishInterruptedMove(dir, name, h?.lowest ?? 0, h?.highest ?? -1, options.onCommit.to).pipe(Effect.catchAll((e) => Effect.logWarning(`${name}: ${e.message}`)))
        found.datasets.delete(name)
      }
    }
    const names = [...found.datasets.keys()].sort()
    yield* Effect.logDebug(`found ${names.length} dataset(s): ${names.map((n) => `${n} (${found.datasets.get(n)!.pieces} pieces${found.datasets.get(n)!.marker ? "" : ", no marker yet"})`).join(", ")}`)
    if (names.length === 0 && !options.watch) return { found: 0, committed, failed, unreachable } satisfies SendSummary
    yield* Deferred.succeed(claimed, undefined)
    for (const name of names) yield* takeUp(found.datasets.get(name)!, found.datasets.get(name)!.marker)
    yield* finish

    if (options.watch) {
      // a new marker (or pieces of a new dataset) seen by the watch: count the folder again and take up what is new
      const look = Effect.gen(function*() {
        const inv = yield* inventory(dir).pipe(Effect.orElseSucceed(() => undefined))
        if (inv === undefined) return
        for (const [name, h] of inv.datasets) if (!taken.has(name) && !inv.moving.has(name)) yield* takeUp(h, h.marker)
      })
      yield* scanner.watch(dir).pipe(
        Stream.filter((seen) =>
          seen.length === 0 ||
          seen.some((n) => {
            const e = parseEntry(n)
            return e._tag !== "Other" && !taken.has(e.dataset)
          })
        ),
        Stream.runForEach(() => look),
        Effect.forkScoped
      )
    }

    yield* Stream.fromQueue(ready).pipe(
      Stream.mapEffect(sendOne, { concurrency: Math.max(1, options.parallelDatasets), unordered: true }),
      Stream.runDrain
    )
    return { found: names.length, committed, failed, unreachable } satisfies SendSummary
  })

/** The reconnection policy of a sender that watches: it never gives up on a server. */
export const watchPolicy: ReconnectPolicy = { retries: Number.MAX_SAFE_INTEGER, retryFor: Duration.infinity, cap: "30 seconds" }

/** Exit codes of `ferry send`: see the README. */
/** How a `send` run ends, as an exit code of the one table (domain/ExitCode.ts). */
export const exitCodeOf = (summary: SendSummary, allowEmpty: boolean): ExitCode => {
  if (summary.found === 0 && summary.committed.length === 0 && summary.failed.length === 0) return allowEmpty ? ExitCode.Ok : ExitCode.NothingToSend
  const onData = summary.failed.some((f) => f.error._tag === "DatasetError" || f.error._tag === "DatasetRejected")
  if (onData) return ExitCode.Failed
  if (summary.unreachable !== undefined || summary.failed.length > 0) return ExitCode.Unreachable
  return ExitCode.Ok
}
