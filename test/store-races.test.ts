/**
 * Races in the server's dataset store, with several stores (servers) on one
 * temporary destination folder, built from the exported layers. Each test
 * stops one fiber at the window of its race (a hook before a lease is taken,
 * or before a removal under the destination, waiting on a Deferred) and lets
 * the other side act there, so the interleaving is the same on every run.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Either, Exit, Fiber, FiberId, FiberStatus, Layer, Logger, Option, Ref, Schedule, Scope } from "effect"
import { spawnSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as zlib from "node:zlib"
import { encodeLease } from "../src/domain/Lease.js"
import { Destination } from "../src/services/Destination.js"
import { DestinationLive } from "../src/services/destination/Live.js"
import { GunzipPoolInProcess } from "../src/services/GunzipPool.js"
import { PieceStore, PieceStoreLive } from "../src/services/PieceStore.js"
import { Leases, makeLeases, processOwner } from "../src/services/store/Leases.js"
import { tempDirs } from "./support/cli.js"
import { manifestOf, piecesOf, writeBatch } from "./support/world.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

type Hook = (subject: string) => Effect.Effect<void>

/** Where a test may stop a store: before and after it takes a lease on a dataset, and before it removes something under the destination. */
interface Hooks {
  readonly beforeLease: Ref.Ref<Hook>
  readonly afterLease: Ref.Ref<Hook>
  readonly beforeRemove: Ref.Ref<Hook>
}

const noHook: Hook = () => Effect.void

/** One server's store on `dest`: the exported live store and leases, with the test's hooks in front of its leases and removals. */
const storeOn = (dest: string) =>
  Effect.gen(function*() {
    const hooks: Hooks = { beforeLease: yield* Ref.make(noHook), afterLease: yield* Ref.make(noHook), beforeRemove: yield* Ref.make(noHook) }
    const destination = Layer.effect(
      Destination,
      Effect.map(Destination, (d) => ({ ...d, remove: (rel: string) => Effect.zipRight(Effect.flatMap(Ref.get(hooks.beforeRemove), (h) => h(rel)), d.remove(rel)) }))
    ).pipe(Layer.provide(DestinationLive(dest)))
    const leases = Layer.effect(
      Leases,
      Effect.map(makeLeases({ leaseMs: 60_000 }), (l) => ({
        ...l,
        acquire: (dataset: string) =>
          Effect.flatMap(Ref.get(hooks.beforeLease), (h) => h(dataset)).pipe(
            Effect.zipRight(l.acquire(dataset)),
            Effect.tap(() => Effect.flatMap(Ref.get(hooks.afterLease), (h) => h(dataset)))
          )
      }))
    )
    const layer = PieceStoreLive().pipe(Layer.provide(leases), Layer.provide(Layer.merge(destination, GunzipPoolInProcess())))
    const store = Context.get(yield* Layer.build(layer), PieceStore)
    return { store, hooks }
  })

/**
 * A hook that stops every caller whose subject is `subject` until `go`: `reached` gives the first
 * one's fiber once it is there.
 */
const stopAt = (hook: Ref.Ref<Hook>, subject: string) =>
  Effect.gen(function*() {
    const reached = yield* Deferred.make<Option.Option<Fiber.RuntimeFiber<unknown, unknown>>>()
    const go = yield* Deferred.make<void>()
    yield* Ref.set(hook, (s) =>
      s === subject ? Effect.zipRight(Effect.flatMap(Effect.sync(Fiber.getCurrentFiber), (f) => Deferred.succeed(reached, f)), Deferred.await(go)) : Effect.void)
    return { reached: Deferred.await(reached), go: Deferred.succeed(go, undefined) }
  })

/** Waits until the fiber is suspended in an asynchronous wait (here: the dataset's lookup that another opener runs). */
const waiting = (fiber: Fiber.RuntimeFiber<unknown, unknown>) =>
  Fiber.status(fiber).pipe(
    Effect.repeat({ until: (s) => FiberStatus.isSuspended(s) && FiberId.isFiberId(s.blockingOn), schedule: Schedule.spaced("1 millis") })
  )

const contentOf = (size: number, seed: number) => {
  const bytes = Buffer.alloc(size)
  let x = seed
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    bytes[i] = x >>> 24
  }
  return bytes
}

const SLICE = 1000
const datasetOf = (name: string, seed: number) => {
  const original = contentOf(5 * SLICE + 321, seed)
  return { name, original, manifest: manifestOf(name, original, SLICE), pieces: piecesOf(original, SLICE), crc: zlib.crc32(original) }
}

const stateFolder = (dest: string, name: string) => join(dest, ".ferry", name)
const stateFolders = (dest: string) => readdirSync(join(dest, ".ferry")).filter((n) => !n.startsWith(".probe"))

describe("an opener interrupted while the dataset is taken up", () => {
  for (const which of ["the first opener (whose lookup runs)", "a second opener (waiting for the first's lookup)"] as const) {
    it.scopedLive(`${which}: lets go of its own reference only; the dataset stays shared, its files open, and it commits`, () =>
      Effect.gen(function*() {
        const dest = dirs.make("dest")
        const d = datasetOf("shared", 1)
        const { hooks, store } = yield* storeOn(dest)
        const taking = yield* stopAt(hooks.beforeLease, d.name)
        // two openers of one dataset: the first's lookup stops before its lease, the second waits for it
        const first = yield* Effect.fork(Effect.scoped(Effect.zipRight(store.open(d.manifest), Effect.never)))
        yield* taking.reached
        yield* waiting(first)
        const sessionScope = yield* Scope.make()
        const second = yield* Effect.fork(Scope.extend(store.open(d.manifest), sessionScope))
        yield* waiting(second)
        const [interrupted, kept] = which.startsWith("the first") ? [first, second] : [second, first]
        yield* Fiber.interrupt(interrupted)
        yield* taking.go
        // the one left: the second opener's session (the first's, when it is the second that was interrupted, is held by its fiber)
        const session = kept === second ? yield* Fiber.join(second) : yield* Scope.extend(store.open(d.manifest), sessionScope)
        // a later opener shares the dataset in progress: it is not taken up again (this server's own lease would make that Busy)
        const later = yield* Effect.either(Effect.scoped(Effect.map(store.open(d.manifest), (s) => Option.isNone(s.committed))))
        expect(later).toEqual(Either.right(true))
        expect(yield* store.inProgress).toBe(1)
        // and the files are open under the writer: every piece is written, and the commit takes its own reference
        yield* writeBatch(session, d.pieces)
        const commit = yield* session.seal(d.crc)
        expect(commit.size).toBe(d.original.length)
        if (kept === first) yield* Fiber.interrupt(first)
        yield* Scope.close(sessionScope, Exit.void)
        expect(readFileSync(join(dest, d.name)).equals(d.original)).toBe(true)
        expect(readFileSync(join(dest, `${d.name}.done`), "utf8")).toBe(`${d.original.length}\n`)
        expect(stateFolders(dest)).toEqual(["committed"])
        expect(yield* store.inProgress).toBe(0)
      }))
  }
})

describe("a dataset committed by another server between an opener's look and its lease", () => {
  it.scopedLive("the opener answers Committed, removes the state folder it just made and lets go of the lease", () =>
    Effect.gen(function*() {
      const dest = dirs.make("dest")
      const d = datasetOf("late", 2)
      const x = yield* storeOn(dest)
      const y = yield* storeOn(dest)
      // X holds every piece of the dataset, not sealed yet
      const xScope = yield* Scope.make()
      const onX = yield* Scope.extend(x.store.open(d.manifest), xScope)
      yield* writeBatch(onX, d.pieces)
      // Y looks (no .done yet) and stops before its lease
      const taking = yield* stopAt(y.hooks.beforeLease, d.name)
      const yScope = yield* Scope.make()
      const opening = yield* Effect.fork(Scope.extend(y.store.open(d.manifest), yScope))
      yield* taking.reached
      // X commits (its tidy removes the state folder) and lets go
      const commit = yield* onX.seal(d.crc)
      yield* Scope.close(xScope, Exit.void)
      expect(existsSync(stateFolder(dest, d.name))).toBe(false)
      yield* taking.go
      const onY = yield* Fiber.join(opening)
      expect(onY.committed).toEqual(Option.some(commit))
      expect(onY.held).toBe(d.manifest.count)
      // while Y's session is still open: no state folder (and so no lease of Y's), nothing in progress
      expect(existsSync(stateFolder(dest, d.name))).toBe(false)
      expect(yield* y.store.inProgress).toBe(0)
      yield* Scope.close(yScope, Exit.void)
      expect(stateFolders(dest)).toEqual(["committed"])
      expect(readFileSync(join(dest, d.name)).equals(d.original)).toBe(true)
    }))

  it.scopedLive("and when its lookup is interrupted just after its lease (its last opener went away), the fresh state folder goes all the same", () =>
    Effect.gen(function*() {
      const dest = dirs.make("dest")
      const d = datasetOf("gone", 5)
      const x = yield* storeOn(dest)
      const y = yield* storeOn(dest)
      const xScope = yield* Scope.make()
      const onX = yield* Scope.extend(x.store.open(d.manifest), xScope)
      yield* writeBatch(onX, d.pieces)
      const looked = yield* stopAt(y.hooks.beforeLease, d.name)
      const leased = yield* stopAt(y.hooks.afterLease, d.name)
      const opening = yield* Effect.fork(Effect.scoped(y.store.open(d.manifest)))
      yield* looked.reached
      yield* onX.seal(d.crc)
      yield* Scope.close(xScope, Exit.void)
      yield* looked.go
      // Y's lookup holds a fresh lease, and is interrupted there, as the dataset's scope does when its last
      // opener goes away (its sender heard Committed from X); told before it goes on, so pending by then
      const lookup = Option.getOrThrow(yield* leased.reached)
      expect(readdirSync(stateFolder(dest, d.name)).some((n) => n.startsWith("lease."))).toBe(true)
      lookup.unsafeInterruptAsFork(FiberId.none)
      yield* leased.go
      yield* Fiber.await(lookup)
      yield* Fiber.interrupt(opening)
      expect(existsSync(stateFolder(dest, d.name))).toBe(false)
      expect(stateFolders(dest)).toEqual(["committed"])
    }))
})

describe("a committed dataset's state folder left behind (the server was stopped between its .done and its tidying)", () => {
  /** A process of this machine that has exited: the holder of the lease a killed server leaves. */
  const goneOwner = () => {
    const exited = spawnSync(process.execPath, ["-e", ""])
    return { ...processOwner(), pid: exited.pid!, start: "1", id: "killed-server" }
  }

  it.scopedLive("is removed by the next opener once its lease is free (its holder is gone)", () =>
    Effect.gen(function*() {
      const dest = dirs.make("dest")
      const d = datasetOf("leftover", 3)
      const { store } = yield* storeOn(dest)
      // what a commit leaves when its server is killed right after the marker: the result, its marker and
      // record, and the state folder with the lease still naming the killed server
      writeFileSync(join(dest, d.name), d.original)
      writeFileSync(join(dest, `${d.name}.done`), `${d.original.length}\n`)
      const crc32 = d.crc.toString(16).padStart(8, "0")
      mkdirSync(join(dest, ".ferry", "committed"), { recursive: true })
      writeFileSync(join(dest, ".ferry", "committed", d.name), JSON.stringify({ size: d.original.length, crc32 }), { flag: "w" })
      mkdirSync(join(stateFolder(dest, d.name), "epoch.3"), { recursive: true })
      writeFileSync(join(stateFolder(dest, d.name), "lease.3"), encodeLease({ owner: goneOwner(), epoch: 3, beat: 12 }))
      writeFileSync(join(stateFolder(dest, d.name), "epoch.3", "manifest.json"), "{}")
      writeFileSync(join(stateFolder(dest, d.name), "epoch.3", "bitmap"), Buffer.alloc(1, 0x3f))

      // what the store says meanwhile: its tidying under its own lease is not a lease lost to another server
      const said: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => void said.push(`${logLevel.label} ${Array.isArray(message) ? message.join(" ") : String(message)}`))
      const session = yield* store.open(d.manifest).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      expect(session.committed).toEqual(Option.some({ dataset: d.name, size: d.original.length, crc32 }))
      expect(said).toContain("INFO leftover: removed the state folder left beside its commit")
      expect(said.filter((l) => l.startsWith("WARN"))).toEqual([])
      expect(existsSync(stateFolder(dest, d.name))).toBe(false)
      expect(stateFolders(dest)).toEqual(["committed"])
      // the result itself is untouched
      expect(readFileSync(join(dest, d.name)).equals(d.original)).toBe(true)
    }))

  it.scopedLive("is left alone while a live server still holds its lease (the committing server, before its tidying)", () =>
    Effect.gen(function*() {
      const dest = dirs.make("dest")
      const d = datasetOf("tidying", 4)
      const x = yield* storeOn(dest)
      const y = yield* storeOn(dest)
      const xScope = yield* Scope.make()
      const onX = yield* Scope.extend(x.store.open(d.manifest), xScope)
      yield* writeBatch(onX, d.pieces)
      // X commits and stops after its marker, before it removes its state folder: its lease is live
      const tidying = yield* stopAt(x.hooks.beforeRemove, `.ferry/${d.name}`)
      const sealing = yield* Effect.fork(onX.seal(d.crc))
      yield* tidying.reached
      expect(existsSync(join(dest, `${d.name}.done`))).toBe(true)
      const leaseOfX = readdirSync(stateFolder(dest, d.name)).filter((n) => n.startsWith("lease."))
      expect(leaseOfX).toHaveLength(1)
      // Y is told Committed, and leaves X's folder and lease alone
      const onY = yield* Effect.scoped(Effect.map(y.store.open(d.manifest), (s) => s.committed))
      expect(Option.map(onY, (c) => c.size)).toEqual(Option.some(d.original.length))
      expect(readdirSync(stateFolder(dest, d.name)).filter((n) => n.startsWith("lease."))).toEqual(leaseOfX)
      expect(existsSync(join(stateFolder(dest, d.name), "epoch.1"))).toBe(true)
      // X goes on: its tidying removes the folder, and its commit is answered
      yield* tidying.go
      const commit = yield* Fiber.join(sealing)
      expect(commit.size).toBe(d.original.length)
      yield* Scope.close(xScope, Exit.void)
      expect(stateFolders(dest)).toEqual(["committed"])
      expect(readFileSync(join(dest, d.name)).equals(d.original)).toBe(true)
    }))
})
