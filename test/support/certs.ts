/** Certificates made at test time with `openssl`: CAs, and certificates they sign (EC P-256, two days). */
import { execFileSync } from "node:child_process"
import { X509Certificate } from "node:crypto"
import { readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"

const quiet = { stdio: "ignore" } as const
const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

export interface Issued {
  readonly cert: string
  readonly key: string
}

/** A self-signed CA in `dir`, named `name`. */
export const makeCa = (dir: string, name: string): Issued => {
  const cert = join(dir, `${name}.pem`)
  const key = join(dir, `${name}.key`)
  execFileSync("openssl", ["req", "-x509", ...ec, "-keyout", key, "-out", cert, "-days", "2", "-subj", `/CN=${name}`], quiet)
  return { cert, key }
}

/**
 * A certificate for `subject` (as `/CN=alice/O=example`) signed by `ca`: a server's (localhost and
 * 127.0.0.1 as its names) or a client's.
 */
export const issue = (dir: string, name: string, ca: Issued, subject: string, role: "server" | "client"): Issued => {
  const cert = join(dir, `${name}.pem`)
  const key = join(dir, `${name}.key`)
  const csr = join(dir, `${name}.csr`)
  const ext = join(dir, `${name}.ext`)
  writeFileSync(ext, role === "server" ? "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" : "extendedKeyUsage=clientAuth\n")
  execFileSync("openssl", ["req", ...ec, "-keyout", key, "-out", csr, "-subj", subject], quiet)
  execFileSync("openssl", ["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext], quiet)
  return { cert, key }
}

/** The SHA-256 fingerprint of a PEM certificate file, as Node's `X509Certificate.fingerprint256` writes it. */
export const fingerprintOf = (file: string) => new X509Certificate(readFileSync(file)).fingerprint256
