/**
 * The Credentials service on its own: what a reload reads again, what it keeps when a file is
 * broken, and the one line it says, over real files made at test time.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger } from "effect"
import { copyFileSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll } from "vitest"
import { type Credential, type CredentialFiles, Credentials, CredentialsLive } from "../src/services/Credentials.js"
import { type Issued, issue, makeCa } from "./support/certs.js"
import { tempDirs } from "./support/cli.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

let pki: string
let ca: Issued
let first: Issued
let second: Issued
beforeAll(() => {
  pki = dirs.make("pki")
  ca = makeCa(pki, "ca")
  first = issue(pki, "first", ca, "/CN=first", "client")
  second = issue(pki, "second", ca, "/CN=second", "client")
})

/** Files in a folder of their own, read once as the command line would, and the service over them. */
const setUp = () => {
  const dir = dirs.make("creds")
  const files = { token: join(dir, "token"), cert: join(dir, "cert.pem"), key: join(dir, "key.pem"), ca: join(dir, "ca.pem") }
  writeFileSync(files.token, "one\n")
  copyFileSync(first.cert, files.cert)
  copyFileSync(first.key, files.key)
  copyFileSync(ca.cert, files.ca)
  const given: CredentialFiles = {
    token: { flag: "--token-file", path: files.token },
    cert: { flag: "--tls-cert", path: files.cert },
    key: { flag: "--tls-key", path: files.key },
    ca: { flag: "--tls-ca", path: files.ca }
  }
  const initial: Credential = { token: "one", cert: readFileSync(files.cert), key: readFileSync(files.key), ca: readFileSync(files.ca) }
  return { files, layer: CredentialsLive(given, initial), initial }
}

/** Runs a reload, and answers the lines it logged. */
const reloaded = Effect.gen(function*() {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => void lines.push(`${logLevel.label} ${Array.isArray(message) ? message.join(" ") : String(message)}`))
  yield* Effect.flatMap(Credentials, (c) => c.reload).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  return lines
})

describe("Credentials reload", () => {
  it.effect("nothing changed: one line saying so, the same values", () => {
    const { initial, layer } = setUp()
    return Effect.gen(function*() {
      expect(yield* reloaded).toEqual(["INFO reload: nothing changed"])
      expect(yield* Effect.flatMap(Credentials, (c) => c.get)).toEqual(initial)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a new token and certificate: read, and named in one line", () => {
    const { files, layer } = setUp()
    return Effect.gen(function*() {
      writeFileSync(files.token, "two\n")
      copyFileSync(second.cert, files.cert)
      copyFileSync(second.key, files.key)
      expect(yield* reloaded).toEqual(["INFO reloaded: token, tls certificate"])
      const now = yield* Effect.flatMap(Credentials, (c) => c.get)
      expect(now.token).toBe("two")
      expect(now.cert?.equals(readFileSync(second.cert))).toBe(true)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a key that is not the certificate's, a CA that is not PEM, an empty token, a missing file: each kept, one line each", () => {
    const { files, initial, layer } = setUp()
    return Effect.gen(function*() {
      copyFileSync(second.cert, files.cert) // the key is still the first's
      writeFileSync(files.ca, "garbage\n")
      writeFileSync(files.token, "")
      const lines = yield* reloaded
      expect(lines).toHaveLength(3)
      expect(lines[0]).toMatch(/^WARN reload: --token-file \S+token: the token is empty; keeping the previous token$/)
      expect(lines[1]).toMatch(/^WARN reload: --tls-cert \S+cert\.pem with --tls-key \S+key\.pem: .*key values mismatch.*; keeping the previous certificate$/)
      expect(lines[2]).toMatch(/^WARN reload: --tls-ca \S+ca\.pem: no PEM certificate in it; keeping the previous CA$/)
      expect(yield* Effect.flatMap(Credentials, (c) => c.get)).toEqual(initial)
    }).pipe(Effect.provide(layer))
  })

  it.effect("a file gone: kept, and said", () => {
    const { files, layer } = setUp()
    return Effect.gen(function*() {
      rmSync(files.token)
      expect(yield* reloaded).toEqual([expect.stringMatching(/^WARN reload: --token-file \S+token: no such file; keeping the previous token$/)])
    }).pipe(Effect.provide(layer))
  })
})
