/**
 * SIGHUP through bin/ferry: `serve` reads its token and TLS files again (new connections get them,
 * a transfer in progress goes on), a broken file keeps the old value, and neither `serve` nor
 * `send --watch` stops.
 */
import { copyFileSync, existsSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as tls from "node:tls"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ferry, sha256File, shaOf, spawnFerry, tempDirs } from "./support/cli.js"
import { fingerprintOf, type Issued, issue, makeCa } from "./support/certs.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

let ca: Issued
let first: Issued
let second: Issued
let pki: string
beforeAll(() => {
  pki = dirs.make("pki")
  ca = makeCa(pki, "ferry-ca")
  first = issue(pki, "first", ca, "/CN=localhost/O=first", "server")
  second = issue(pki, "second", ca, "/CN=localhost/O=second", "server")
})

const fakeDataset = async (name: string, size: number, seed: number) => {
  const dir = dirs.make(name)
  const made = await ferry(["fake", "--path", dir, "--name", name, "--size", String(size), "--seed", String(seed)])
  return { dir, sha: shaOf(made.stdout, name)! }
}

/** The fingerprint of the certificate the server shows a new connection. */
const servedCertificate = (address: string) =>
  new Promise<string>((resolve, reject) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))]
    const socket = tls.connect({ host, port, ca: [], rejectUnauthorized: false }, () => {
      resolve(socket.getPeerX509Certificate()!.fingerprint256)
      socket.destroy()
    })
    socket.once("error", reject)
  })

const tokenOf = (text: string) => {
  const file = join(dirs.make("token"), "token")
  writeFileSync(file, `${text}\n`)
  return file
}

describe("serve on SIGHUP", () => {
  it("a token and a certificate rotated under a transfer in progress: it completes, new connections get the new ones", async () => {
    // the server's own files, rotated in place as an operator (or certbot) would
    const cert = join(pki, "serving.pem")
    const key = join(pki, "serving.key")
    copyFileSync(first.cert, cert)
    copyFileSync(first.key, key)
    const serverToken = tokenOf("old secret")
    const oldToken = tokenOf("old secret")
    const newToken = tokenOf("new secret")
    const dest = dirs.make("dest")
    const server = spawnFerry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, "--tls-cert", cert, "--tls-key", key, "--token-file", serverToken, "--json"])
    try {
      const address = (await server.waitFor(/"event":"listening","address":"([^"]+)"/))[1]!
      expect(await servedCertificate(address)).toBe(fingerprintOf(first.cert))
      // a few MiB at 1 MiB/s: a transfer that lasts a few seconds
      const big = await fakeDataset("slow", 6 * 1024 * 1024, 7)
      const tlsArgs = ["--tls-ca", ca.cert, "--tls-servername", "localhost"]
      const slow = spawnFerry(["send", "--path", big.dir, "--address", address, "--token-file", oldToken, "--bwlimit", "1MiB/s", "--quiet", ...tlsArgs])
      await server.waitFor(/"event":"dataset-opened","dataset":"slow"/)

      copyFileSync(second.cert, cert)
      copyFileSync(second.key, key)
      writeFileSync(serverToken, "new secret\n")
      server.child.kill("SIGHUP")
      await server.waitFor(/reloaded: token, tls certificate/)
      // the reload came while the transfer was in progress
      expect(server.output().stdout).not.toMatch(/"event":"dataset-committed","dataset":"slow"/)
      expect(server.child.exitCode).toBeNull()

      expect(await slow.exited).toBe(0)
      expect(existsSync(join(dest, "slow.done"))).toBe(true)
      expect(sha256File(join(dest, "slow"))).toBe(big.sha)

      expect(await servedCertificate(address)).toBe(fingerprintOf(second.cert))
      const small = await fakeDataset("small", 100_000, 8)
      const withNew = await ferry(["send", "--path", small.dir, "--address", address, "--token-file", newToken, "--quiet", ...tlsArgs])
      expect(withNew.code).toBe(0)
      expect(sha256File(join(dest, "small"))).toBe(small.sha)
      const withOld = await ferry(["send", "--path", small.dir, "--address", address, "--token-file", oldToken, "--quiet", ...tlsArgs])
      expect(withOld.code).toBe(3)
      expect(withOld.stderr).toMatch(/server refused: authentication failed: wrong token/)
      expect(server.child.exitCode).toBeNull()
    } finally {
      server.child.kill("SIGTERM")
      await server.exited
    }
  })

  it("a certificate file now broken keeps the previous certificate, says why, and the server goes on serving", async () => {
    const cert = join(pki, "broken.pem")
    const key = join(pki, "broken.key")
    copyFileSync(first.cert, cert)
    copyFileSync(first.key, key)
    const dest = dirs.make("dest")
    const server = spawnFerry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, "--tls-cert", cert, "--tls-key", key])
    try {
      const address = (await server.waitFor(/listening on (\S+)/))[1]!
      server.child.kill("SIGHUP")
      await server.waitFor(/reload: nothing changed/)
      writeFileSync(cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
      server.child.kill("SIGHUP")
      const line = await server.waitFor(/^ferry: warning: reload: --tls-cert \S+broken\.pem with --tls-key \S+broken\.key: .+; keeping the previous certificate$/m)
      expect(line[0]).not.toMatch(/\n/)
      expect(await servedCertificate(address)).toBe(fingerprintOf(first.cert))
      const small = await fakeDataset("kept", 100_000, 9)
      const r = await ferry(["send", "--path", small.dir, "--address", address, "--quiet", "--tls-ca", ca.cert, "--tls-servername", "localhost"])
      expect(r.code).toBe(0)
      expect(sha256File(join(dest, "kept"))).toBe(small.sha)
      expect(server.child.exitCode).toBeNull()
    } finally {
      server.child.kill("SIGTERM")
      await server.exited
    }
  })
})

describe("send --watch on SIGHUP", () => {
  it("a client certificate rotated under it: its next connection shows the new one", async () => {
    const dest = dirs.make("dest")
    const serveOn = (port: string) =>
      spawnFerry([
        "serve", "--port", port, "--host", "127.0.0.1", "--dest", dest, "--json",
        "--tls-cert", first.cert, "--tls-key", first.key, "--tls-client-ca", ca.cert
      ])
    let server = serveOn("0")
    const clientDir = dirs.make("client")
    const cert = join(clientDir, "client.pem")
    const key = join(clientDir, "client.key")
    const before = issue(pki, "before", ca, "/CN=before", "client")
    const after = issue(pki, "after", ca, "/CN=after", "client")
    copyFileSync(before.cert, cert)
    copyFileSync(before.key, key)
    const watched = dirs.make("watched")
    let sender: ReturnType<typeof spawnFerry> | undefined
    try {
      const address = (await server.waitFor(/"event":"listening","address":"([^"]+)"/))[1]!
      sender = spawnFerry([
        "send", "--watch", "--path", watched, "--address", address, "--tls-ca", ca.cert, "--tls-servername", "localhost",
        "--tls-cert", cert, "--tls-key", key, "--metrics", "127.0.0.1:0", "--quiet"
      ])
      await sender.waitFor(/metrics on http/)
      copyFileSync(after.cert, cert)
      copyFileSync(after.key, key)
      sender.child.kill("SIGHUP")
      await sender.waitFor(/reloaded: tls certificate/)
      // the connection open goes on with the certificate it was made with; a new one, to a server started
      // again on the same port, shows the one read last
      await server.waitFor(/"event":"connection-accepted","peer":"[^"]+","client":"CN=before"/)
      server.child.kill("SIGTERM")
      await server.exited
      server = serveOn(address.slice(address.lastIndexOf(":") + 1))
      await server.waitFor(/"event":"listening"/)
      const made = await ferry(["fake", "--path", watched, "--name", "rotated", "--size", "100000", "--seed", "11"])
      await server.waitFor(/"event":"dataset-committed","dataset":"rotated"[^\n]*"client":"CN=after"/)
      expect(sha256File(join(dest, "rotated"))).toBe(shaOf(made.stdout, "rotated"))
      expect(server.output().stdout).not.toMatch(/CN=before/)
      expect(sender.child.exitCode).toBeNull()
    } finally {
      sender?.child.kill("SIGTERM")
      await sender?.exited
      server.child.kill("SIGTERM")
      await server.exited
    }
  })

  it("reads its token file again and keeps watching; SIGTERM stops it", async () => {
    const token = tokenOf("one")
    const watched = dirs.make("watched")
    const sender = spawnFerry(["send", "--watch", "--path", watched, "--address", "127.0.0.1:1", "--token-file", token, "--metrics", "127.0.0.1:0", "--quiet"])
    await sender.waitFor(/metrics on http/)
    sender.child.kill("SIGHUP")
    await sender.waitFor(/reload: nothing changed/)
    writeFileSync(token, "two\n")
    sender.child.kill("SIGHUP")
    await sender.waitFor(/reloaded: token/)
    writeFileSync(token, "")
    sender.child.kill("SIGHUP")
    await sender.waitFor(/reload: --token-file \S+: the token is empty; keeping the previous token/)
    expect(sender.child.exitCode).toBeNull()
    sender.child.kill("SIGTERM")
    expect(await sender.exited).toBe(143)
  })
})
