/**
 * What a side proves itself with and checks its peer against: the token, its
 * own certificate and key, and the CA its peer must chain to. Held in a
 * SubscriptionRef so that a reload (SIGHUP) reaches new connections: the
 * client reads it at each dial, the server's listener follows its changes.
 * A file that is now broken keeps the value read before, and says why.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { X509Certificate } from "node:crypto"
import * as tls from "node:tls"
import { parseToken } from "../domain/Auth.js"

export interface Credential {
  /** The shared secret; undefined: none. */
  readonly token: string | undefined
  /** Our certificate and its key (PEM): a server's, or a client's (send --tls-cert). */
  readonly cert: Buffer | undefined
  readonly key: Buffer | undefined
  /** The CA our peer must chain to (PEM): a client's --tls-ca, a server's --tls-client-ca. */
  readonly ca: Buffer | undefined
}

/** A file a part was read from, and the flag that named it (for messages). */
export interface CredentialFile {
  readonly flag: string
  readonly path: string
}

/** Where each part comes from; a part without a file (FERRY_TOKEN, or not given) is never read again. */
export interface CredentialFiles {
  readonly token?: CredentialFile | undefined
  readonly cert?: CredentialFile | undefined
  readonly key?: CredentialFile | undefined
  readonly ca?: CredentialFile | undefined
}

export class Credentials extends Context.Tag("ferry/Credentials")<Credentials, {
  readonly get: Effect.Effect<Credential>
  /** The credential now, then each one a reload sets. */
  readonly changes: Stream.Stream<Credential>
  /** Reads the files again; logs one line for each broken file, and one for what changed (if anything did, or nothing broke). */
  readonly reload: Effect.Effect<void>
}>() {
  /** Credentials that never change (a reload says so). */
  static readonly fixed = (credential: Credential) =>
    Layer.effect(Credentials, Effect.map(SubscriptionRef.make(credential), (ref) => ({ get: SubscriptionRef.get(ref), changes: ref.changes, reload: Effect.logInfo("reload: nothing changed") })))
}

const firstLine = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0]!

/** Why a certificate and key (PEM) cannot be used together, or undefined. */
export const keyPairProblem = (cert: Buffer, key: Buffer): string | undefined => {
  try {
    tls.createSecureContext({ cert, key })
    return undefined
  } catch (e) {
    return firstLine(e)
  }
}

/** Why a CA file (PEM) cannot be used, or undefined. A context alone takes garbage silently: the certificate is parsed too. */
export const caProblem = (ca: Buffer): string | undefined => {
  try {
    if (!ca.includes("-----BEGIN CERTIFICATE-----")) return "no PEM certificate in it"
    void new X509Certificate(ca)
    tls.createSecureContext({ ca })
    return undefined
  } catch (e) {
    return firstLine(e)
  }
}

const same = (a: Buffer | undefined, b: Buffer | undefined) => (a === undefined || b === undefined ? a === b : a.equals(b))

const makeLive = (files: CredentialFiles, initial: Credential) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const ref = yield* SubscriptionRef.make(initial)
    const readFile = (file: CredentialFile) =>
      fs.readFile(file.path).pipe(
        Effect.map((bytes) => Buffer.from(bytes)),
        Effect.mapError((e) => `${file.flag} ${file.path}: ${e._tag === "SystemError" && e.reason === "NotFound" ? "no such file" : e.message}`),
        Effect.either
      )
    /** The file's bytes, or why they cannot be used, in one line naming the flag and the file. */
    const readChecked = (file: CredentialFile, check: (bytes: Buffer) => string | undefined) =>
      Effect.map(readFile(file), Either.flatMap((bytes) => {
        const problem = check(bytes)
        return problem === undefined ? Either.right(bytes) : Either.left(`${file.flag} ${file.path}: ${problem}`)
      }))
    const reload = Effect.gen(function*() {
      const before = yield* SubscriptionRef.get(ref)
      const broken: Array<string> = []
      let token = before.token
      if (files.token !== undefined) {
        const file = files.token
        const read = Either.flatMap(yield* readFile(file), (bytes) => {
          const parsed = parseToken(bytes.toString("utf8"))
          return "problem" in parsed ? Either.left(`${file.flag} ${file.path}: ${parsed.problem}`) : Either.right(parsed.token)
        })
        if (Either.isLeft(read)) broken.push(`${read.left}; keeping the previous token`)
        else token = read.right
      }
      let cert = before.cert
      let key = before.key
      if (files.cert !== undefined && files.key !== undefined) {
        const pair = Either.all([yield* readFile(files.cert), yield* readFile(files.key)])
        const mismatch = Either.isRight(pair) ? keyPairProblem(pair.right[0], pair.right[1]) : undefined
        const problem = Either.isLeft(pair)
          ? pair.left
          : mismatch === undefined ? undefined : `${files.cert.flag} ${files.cert.path} with ${files.key.flag} ${files.key.path}: ${mismatch}`
        if (problem !== undefined) broken.push(`${problem}; keeping the previous certificate`)
        else if (Either.isRight(pair)) [cert, key] = pair.right
      }
      let ca = before.ca
      if (files.ca !== undefined) {
        const read = yield* readChecked(files.ca, caProblem)
        if (Either.isLeft(read)) broken.push(`${read.left}; keeping the previous CA`)
        else ca = read.right
      }
      const changed = [
        ...(token !== before.token ? ["token"] : []),
        ...(!same(cert, before.cert) || !same(key, before.key) ? ["tls certificate"] : []),
        ...(!same(ca, before.ca) ? [/client.ca/i.test(files.ca?.flag ?? "") ? "tls client CA" : "tls CA"] : [])
      ]
      if (changed.length > 0) yield* SubscriptionRef.set(ref, { token, cert, key, ca })
      for (const line of broken) yield* Effect.logWarning(`reload: ${line}`)
      // a broken file's line says it all when nothing else changed
      if (changed.length > 0) yield* Effect.logInfo(`reloaded: ${changed.join(", ")}`)
      else if (broken.length === 0) yield* Effect.logInfo("reload: nothing changed")
    })
    const serialized = yield* Effect.makeSemaphore(1)
    return { get: SubscriptionRef.get(ref), changes: ref.changes, reload: serialized.withPermits(1)(reload) }
  })

/** Credentials read from files at start (`initial`, as the command line read them), read again on each reload. */
export const CredentialsLive = (files: CredentialFiles, initial: Credential) =>
  Layer.effect(Credentials, makeLive(files, initial)).pipe(Layer.provide(NodeFileSystem.layer))
