/**
 * Mutual TLS through bin/ferry: a server with --tls-client-ca takes only clients whose certificate
 * chains to that CA; the others are refused with one line each, counted, and their sender stops at
 * once (exit 3); an accepted client's subject is in the server's log lines and events.
 */
import { readFileSync, writeFileSync } from "node:fs"
import type { AddressInfo } from "node:net"
import * as tls from "node:tls"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ferry, sha256File, shaOf, spawnFerry, tempDirs } from "./support/cli.js"
import { type Issued, issue, makeCa } from "./support/certs.js"

const dirs = tempDirs()
afterAll(() => dirs.cleanup())

let sample: { dir: string; sha: string }
let ca: Issued
let server: Issued
let alice: Issued
let mallory: Issued
let tokenFile: string
beforeAll(async () => {
  const dir = dirs.make("sample")
  const made = await ferry(["fake", "--path", dir, "--name", "mt", "--size", "200000", "--slice", "4096", "--seed", "22"])
  sample = { dir, sha: shaOf(made.stdout, "mt")! }
  const pki = dirs.make("pki")
  ca = makeCa(pki, "ferry-ca")
  const other = makeCa(pki, "other-ca")
  server = issue(pki, "server", ca, "/CN=localhost", "server")
  alice = issue(pki, "alice", ca, "/CN=alice/O=example", "client")
  mallory = issue(pki, "mallory", other, "/CN=mallory", "client")
  tokenFile = join(pki, "token")
  writeFileSync(tokenFile, "mutual tls and a token\n")
})

/** `ferry serve --json` on a free loopback port; resolves once it listens. */
const startJsonServer = async (dest: string, extra: ReadonlyArray<string>) => {
  const running = spawnFerry(["serve", "--port", "0", "--host", "127.0.0.1", "--dest", dest, "--json", ...extra])
  const address = (await running.waitFor(/"event":"listening","address":"([^"]+)"/))[1]!
  return {
    ...running,
    address,
    stop: async () => {
      if (running.child.exitCode === null) running.child.kill("SIGTERM")
      return running.exited
    }
  }
}

const sendTo = (address: string, extra: ReadonlyArray<string>) =>
  ferry(["send", "--path", sample.dir, "--address", address, "--quiet", "--tls-ca", ca.cert, "--tls-servername", "localhost", ...extra])

const metricsOf = async (server: { waitFor: (p: RegExp) => Promise<RegExpExecArray> }) => {
  const url = (await server.waitFor(/metrics on (http:\/\/[^"\s]+)/))[1]!
  return (await fetch(url)).text()
}

const refusedCount = (metrics: string, code: string) =>
  Number(new RegExp(`^ferry_serve_connections_refused_total\\{code="${code}"\\} (\\d+)$`, "m").exec(metrics)?.[1] ?? 0)

describe.each([
  { label: "without a token", token: [] as Array<string> },
  { label: "with a token", token: ["--token-file"] }
])("serve --tls-client-ca, $label", ({ token }) => {
  let running: Awaited<ReturnType<typeof startJsonServer>>
  let dest: string
  const tokenArgs = () => (token.length === 0 ? [] : ["--token-file", tokenFile])
  beforeAll(async () => {
    dest = dirs.make("dest")
    running = await startJsonServer(dest, [
      "--tls-cert", server.cert, "--tls-key", server.key, "--tls-client-ca", ca.cert, ...tokenArgs(),
      "--log-format", "json", "--metrics", "127.0.0.1:0"
    ])
  })
  afterAll(async () => {
    await running?.stop()
  })

  it("a client without a certificate is refused: exit 3 after one attempt, one line on the server, counted", async () => {
    const r = await sendTo(running.address, ["--retries", "5", ...tokenArgs()])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/server refused: this server requires a client certificate \(send --tls-cert and --tls-key\)/)
    await running.waitFor(/"message":"127\.0\.0\.1:\d+: refused \(CertificateRequired\)/)
    // one attempt: one refusal on the server
    expect(running.output().stderr.match(/refused \(CertificateRequired\)/g)).toHaveLength(1)
    expect(refusedCount(await metricsOf(running), "CertificateRequired")).toBe(1)
  })

  it("a client whose certificate another CA signed is refused: exit 3, the reason on both sides", async () => {
    const r = await sendTo(running.address, ["--tls-cert", mallory.cert, "--tls-key", mallory.key, "--retries", "5", ...tokenArgs()])
    expect(r.code).toBe(3)
    expect(r.stderr).toMatch(/server refused: client certificate CN=mallory: not signed by the CA this server trusts for clients/)
    await running.waitFor(/refused \(CertificateUntrusted\): client certificate CN=mallory: not signed by the CA/)
    expect(running.output().stderr.match(/refused \(CertificateUntrusted\)/g)).toHaveLength(1)
    expect(refusedCount(await metricsOf(running), "CertificateUntrusted")).toBe(1)
    expect(running.output().stdout).toMatch(/"event":"connection-refused","peer":"127\.0\.0\.1:\d+","code":"CertificateUntrusted"/)
  })

  it("a client with a certificate the CA signed commits; its subject is in the server's events and log lines", async () => {
    const r = await sendTo(running.address, ["--tls-cert", alice.cert, "--tls-key", alice.key, ...tokenArgs()])
    expect(r.stderr).not.toMatch(/refused|warning|error/i)
    expect(r.code).toBe(0)
    expect(sha256File(join(dest, "mt"))).toBe(sample.sha)
    await running.waitFor(/"event":"connection-closed"/)
    const events = running.output().stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>)
    for (const name of ["connection-accepted", "dataset-opened", "dataset-committed", "connection-closed"]) {
      expect(events.find((e) => e.event === name)).toMatchObject({ client: "CN=alice, O=example" })
    }
    // the server's log lines for that connection carry it too (the commit's, for one)
    const logs = running.output().stderr.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(logs.find((l) => /mt: committed/.test(String(l.message)))).toMatchObject({ client: "CN=alice, O=example" })
  })

  if (token.length > 0) {
    it("a good certificate is not enough without the token", async () => {
      const r = await sendTo(running.address, ["--tls-cert", alice.cert, "--tls-key", alice.key])
      expect(r.code).toBe(3)
      expect(r.stderr).toMatch(/the server requires a token/)
    })
  }
})

describe("a TLS server in front of ferry that refuses the certificate itself (a TLS alert)", () => {
  it("is not a fault a retry cures: one attempt, exit 3, the reason named", async () => {
    // what a proxy does: the TLS layer asks for a certificate and ends the handshake without one
    const proxy = tls.createServer({ cert: readFileSync(server.cert), key: readFileSync(server.key), ca: readFileSync(ca.cert), requestCert: true, rejectUnauthorized: true })
    let connections = 0
    proxy.on("connection", () => connections++)
    proxy.on("tlsClientError", () => {})
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve))
    try {
      const r = await sendTo(`127.0.0.1:${(proxy.address() as AddressInfo).port}`, ["--retries", "5"])
      expect(r.code).toBe(3)
      expect(r.stderr).toMatch(/the server refused our client certificate at the TLS layer \(ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED\)/)
      expect(connections).toBe(1)
    } finally {
      await new Promise((resolve) => proxy.close(resolve))
    }
  })
})

describe("the command line", () => {
  it("send --tls-cert without --tls-key is a usage error", async () => {
    const r = await ferry(["send", "--path", sample.dir, "--address", "127.0.0.1:1", "--tls-cert", alice.cert])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/^ferry: .*--tls-cert and --tls-key go together/m)
  })

  it("serve --tls-client-ca needs a certificate and key, and a CA file that holds one", async () => {
    const dest = dirs.make("dest")
    const alone = await ferry(["serve", "--port", "0", "--dest", dest, "--tls-client-ca", ca.cert])
    expect(alone.code).toBe(2)
    expect(alone.stderr).toMatch(/^ferry: .*--tls-client-ca needs --tls-cert and --tls-key/m)
    const garbage = join(dirs.make("bad"), "ca.pem")
    writeFileSync(garbage, "not a certificate\n")
    const bad = await ferry(["serve", "--port", "0", "--dest", dest, "--tls-cert", server.cert, "--tls-key", server.key, "--tls-client-ca", garbage])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/^ferry: .*--tls-client-ca .*ca\.pem: no PEM certificate in it/m)
  })
})
