/**
 * Leases on datasets of a shared destination (see domain/Lease.ts for the
 * design): taking one, keeping it alive with heartbeats, noticing it was
 * taken over, and confirming it before a commit.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import { StoreError } from "../../domain/Errors.js"
import {
  decodeLease,
  encodeLease,
  epochFolder,
  judge,
  LEASE_BYTES,
  type LeaseOwner,
  type LeaseRecord,
  leaseFile,
  type Observation,
  sameMachine,
  stateEntries
} from "../../domain/Lease.js"
import { Destination } from "../Destination.js"
import { ioToStore } from "./StateFiles.js"

export const STATE_FOLDER = ".ferry"

/** How long a lease lasts without a beat before another server may take the dataset over. */
export const DEFAULT_LEASE_TIME = "30 seconds"

/** This server's hold on one dataset. */
export interface Lease {
  readonly epoch: number
  /** The folder of this epoch's files, relative to the destination. */
  readonly folder: string
  /** Fails with LeaseLost once another server has taken the dataset; renews first when the last beat is old. */
  readonly assure: Effect.Effect<void, StoreError>
  /** Beats now and checks that no other server took the dataset: the last step before a commit. */
  readonly confirm: Effect.Effect<void, StoreError>
  /** Completes when the lease is lost. */
  readonly lost: Deferred.Deferred<void>
  /**
   * Whether the state in the folder may be resumed: nobody held the dataset (a server that lets go
   * syncs its files first), or the last holder wrote through this machine's own kernel. A holder on
   * another machine that went silent may have crashed with dirty pages, its bitmap on the storage
   * and the data it claims not: its state is started afresh.
   */
  readonly resumable: boolean
  /**
   * Stops the heartbeat for good, quietly: for a holder about to remove the dataset's state folder
   * itself (after its commit, or a leftover folder), whose next beat would find its lease gone and
   * say it was lost to another server.
   */
  readonly retire: Effect.Effect<void>
}

export class Leases extends Context.Tag("ferry/Leases")<Leases, {
  readonly owner: LeaseOwner
  readonly leaseMs: number
  /** Takes the dataset, or fails with Busy; released (the lease file removed) with the scope. */
  readonly acquire: (dataset: string) => Effect.Effect<Lease, StoreError, Scope.Scope>
}>() {}

/** Who this process is, for the leases it takes. */
export const processOwner = (): LeaseOwner => ({
  host: os.hostname(),
  boot: readOr("/proc/sys/kernel/random/boot_id", "").trim(),
  pid: process.pid,
  start: startTimeOf(process.pid) ?? "",
  id: randomBytes(8).toString("hex")
})

const readOr = (path: string, fallback: string): string => {
  try {
    return fs.readFileSync(path, "utf8")
  } catch {
    return fallback
  }
}

/** Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot. */
const startTimeOf = (pid: number): string | undefined => {
  const stat = readOr(`/proc/${pid}/stat`, "")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return fields[19]
}

/** Whether a process of this machine that held a lease is gone (or its pid now belongs to another). */
export const processGone = (owner: LeaseOwner): boolean => {
  try {
    process.kill(owner.pid, 0)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") return true
  }
  const start = startTimeOf(owner.pid)
  return start !== undefined && owner.start !== "" && start !== owner.start
}

export interface LeaseOptions {
  /** A lease whose beat stands still this long is free to take. */
  readonly leaseMs: number
  readonly owner?: LeaseOwner
  readonly gone?: (owner: LeaseOwner) => boolean
}

export const makeLeases = (options: LeaseOptions) =>
  Effect.gen(function*() {
    const dest = yield* Destination
    const me = options.owner ?? processOwner()
    const gone = options.gone ?? processGone
    const leaseMs = options.leaseMs
    /** What we last saw of leases held by others, by dataset. */
    const observations = new Map<string, Observation>()

    const busy = (dataset: string, reason: string) => new StoreError({ dataset, code: "Busy", reason })
    const lostError = (dataset: string) =>
      new StoreError({ dataset, code: "LeaseLost", reason: "another server on the same destination took this dataset over (this one was stalled for longer than the lease)" })
    const stateError = (dataset: string) => ioToStore(dataset, "StateUnusable")

    const holderOf = (record: LeaseRecord | undefined) =>
      record === undefined ? "a server that left its lease unreadable" : `${record.owner.host}, pid ${record.owner.pid}`

    const acquire = (dataset: string): Effect.Effect<Lease, StoreError, Scope.Scope> =>
      Effect.gen(function*() {
        const dir = `${STATE_FOLDER}/${dataset}`
        // a link (or a file) planted where the state folder goes is removed, never followed
        const kind = yield* dest.kind(dir).pipe(Effect.mapError(stateError(dataset)))
        if (kind !== "directory" && kind !== "none") {
          yield* Effect.logWarning(`${dataset}: ${dir} in the destination is a ${kind}, not a folder; replacing it`)
          yield* dest.remove(dir).pipe(Effect.mapError(stateError(dataset)))
        }
        yield* dest.ensureDir(dir).pipe(Effect.mapError(stateError(dataset)))
        const entries = stateEntries(yield* dest.list(dir).pipe(Effect.mapError(stateError(dataset))))
        let resumable = true
        if (entries.lease !== undefined) {
          const bytes = yield* dest.readFile(`${dir}/${leaseFile(entries.lease)}`, LEASE_BYTES).pipe(Effect.mapError(stateError(dataset)))
          const record = Option.isSome(bytes) ? decodeLease(bytes.value) : undefined
          resumable = record !== undefined && sameMachine(record.owner, me)
          const holderGone = record !== undefined && record.owner.id !== me.id && sameMachine(record.owner, me) && gone(record.owner)
          if (Option.isSome(bytes) && !holderGone) {
            const verdict = judge(observations.get(dataset), { epoch: entries.lease, beat: record?.beat ?? -1 }, yield* Clock.currentTimeMillis, leaseMs)
            observations.set(dataset, verdict.observation)
            if (!verdict.expired) {
              return yield* Effect.fail(busy(
                dataset,
                record?.owner.id === me.id
                  ? "this server is still closing it; try again in a moment"
                  : `another server on this destination is writing it (${holderOf(record)}); if that server has stopped, it is free within ${Math.ceil(verdict.remainingMs / 1000)} s`
              ))
            }
            yield* Effect.logInfo(
              `${dataset}: taking over from ${holderOf(record)}, silent for ${Math.round(leaseMs / 1000)} s${
                resumable ? "" : "; starting afresh, since its last writes may never have reached the storage"
              }`
            )
          } else if (holderGone) {
            yield* Effect.logInfo(`${dataset}: taking over from ${holderOf(record)}, which is no longer running`)
          }
        }
        observations.delete(dataset)
        const epoch = entries.current + 1
        let beat = 0
        // O_EXCL: of several servers taking this dataset at once, exactly one succeeds
        yield* dest.writeFile(`${dir}/${leaseFile(epoch)}`, encodeLease({ owner: me, epoch, beat }), { exclusive: true, sync: true }).pipe(
          Effect.mapError((e) => (e.code === "EEXIST" ? busy(dataset, "another server on this destination took it a moment ago") : stateError(dataset)(e)))
        )
        const lost = yield* Deferred.make<void>()
        let lastBeat = yield* Clock.currentTimeMillis
        let isLost = false
        let retired = false
        const markLost = Effect.suspend(() => {
          if (isLost || retired) return Effect.void
          isLost = true
          return Effect.zipRight(Effect.logWarning(`${dataset}: lost to another server on the same destination`), Deferred.succeed(lost, undefined))
        })
        /**
         * Whether the current lease is still ours. Its name is not enough: a commit removes the state
         * folder, so a later transfer of the same name starts again at epoch 1, and a holder stalled
         * since before that commit would take the new holder's `lease.1` and `epoch.1/` for its own.
         */
        const stillMine = Effect.gen(function*() {
          const names = yield* dest.list(dir)
          if (stateEntries(names).current > epoch || !names.includes(leaseFile(epoch))) return false
          const bytes = yield* dest.readFile(`${dir}/${leaseFile(epoch)}`, LEASE_BYTES)
          return Option.isSome(bytes) && decodeLease(bytes.value)?.owner.id === me.id
        })
        // removed when the dataset is closed (after its files: finalizers run in reverse), if it is still ours
        yield* Effect.addFinalizer(() =>
          stillMine.pipe(
            Effect.orElseSucceed(() => true),
            Effect.flatMap((mine) => (mine && !isLost ? dest.remove(`${dir}/${leaseFile(epoch)}`) : Effect.void)),
            Effect.ignore
          )
        )
        const previous = entries.epochs.at(-1)
        if (previous !== undefined) {
          const before = `${dir}/${epochFolder(previous)}`
          const kind = yield* dest.kind(before).pipe(Effect.mapError(stateError(dataset)))
          if (kind === "directory") {
            // the fence: a former holder's commit renames from its own epoch's folder, which is gone from now on
            yield* dest.rename(before, `${dir}/${epochFolder(epoch)}`).pipe(
              Effect.catchIf((e) => e.code === "ENOENT", () => Effect.void),
              Effect.mapError(stateError(dataset))
            )
          } else if (kind !== "none") {
            // a link (or a file) planted as the epoch folder is removed, never followed: the dataset starts afresh
            yield* Effect.logWarning(`${dataset}: ${before} in the destination is a ${kind}, not a folder; removing it`)
            yield* dest.remove(before).pipe(Effect.mapError(stateError(dataset)))
          }
        }
        for (const e of entries.leases) yield* dest.remove(`${dir}/${leaseFile(e)}`).pipe(Effect.ignore)
        for (const e of entries.epochs.slice(0, -1)) yield* dest.remove(`${dir}/${epochFolder(e)}`).pipe(Effect.ignore)
        const folder = `${dir}/${epochFolder(epoch)}`
        yield* dest.ensureDir(folder).pipe(Effect.mapError(stateError(dataset)))
        const file = yield* dest.open(`${dir}/${leaseFile(epoch)}`, "existing").pipe(Effect.mapError(stateError(dataset)))

        const check = Effect.flatMap(stillMine, (mine) => (mine ? Effect.void : markLost))
        const beatOnce = Effect.gen(function*() {
          if (isLost || retired) return
          const startedAt = yield* Clock.currentTimeMillis
          yield* file.write(encodeLease({ owner: me, epoch, beat: beat + 1 }), 0)
          // visible to other machines (NFS close-to-open) only once it reached the server
          yield* file.sync
          beat++
          yield* check
          if (!isLost) lastBeat = startedAt
        }).pipe(
          // a beat that cannot be written is a lease that will run out
          Effect.catchAll((e) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) =>
              now - lastBeat > leaseMs / 2
                ? Effect.zipRight(Effect.logWarning(`${dataset}: cannot renew the lease (${e.message})`), markLost)
                : Effect.void)
          )
        )
        const beating = yield* Effect.makeSemaphore(1)
        // taken while opening a dataset, which runs uninterruptibly: the beats must stay interruptible
        yield* beatOnce.pipe(beating.withPermits(1), Effect.repeat(Schedule.spaced(Math.max(50, Math.floor(leaseMs / 3)))), Effect.interruptible, Effect.forkScoped)
        const failIfLost = Effect.suspend(() => (isLost ? Effect.fail(lostError(dataset)) : Effect.void))
        return {
          epoch,
          folder,
          lost,
          resumable,
          assure: Effect.flatMap(Clock.currentTimeMillis, (now) =>
            isLost ? Effect.fail(lostError(dataset)) : now - lastBeat > leaseMs / 2 ? Effect.zipRight(beating.withPermits(1)(beatOnce), failIfLost) : Effect.void
          ),
          confirm: Effect.zipRight(beating.withPermits(1)(beatOnce), failIfLost),
          // under the beat's permit: no beat is half way when it returns, and none starts after
          retire: beating.withPermits(1)(Effect.sync(() => {
            retired = true
          }))
        } satisfies Lease
      })

    return { owner: me, leaseMs, acquire }
  })

export const LeasesLive = (options: LeaseOptions) => Layer.effect(Leases, makeLeases(options))
