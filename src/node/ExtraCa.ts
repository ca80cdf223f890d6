/**
 * The certificates named by NODE_EXTRA_CA_CERTS, for a TLS connection made without --tls-ca.
 * bin/ferry hands that variable over as FERRY_EXTRA_CA_CERTS, since Node.js 20 would parse the file
 * (and its bundled roots with it) at every start, used or not (nodejs/node#40524). Here the file is
 * read once, at the first connection that needs it, and added to Node.js's bundled roots, as
 * Node.js itself would have done; a file that cannot be read is ignored with Node.js's warning.
 */
import * as fs from "node:fs"
import * as tls from "node:tls"

let roots: { readonly ca?: Array<string> } | undefined

/** The `ca` option a client connection without --tls-ca takes: none (Node.js's roots), or its roots and the extra file's. */
export const defaultRoots = (): { readonly ca?: Array<string> } => {
  if (roots !== undefined) return roots
  roots = {}
  const file = process.env.FERRY_EXTRA_CA_CERTS
  if (file !== undefined && file !== "") {
    try {
      roots = { ca: [...tls.rootCertificates, fs.readFileSync(file, "utf8")] }
    } catch (e) {
      process.emitWarning(`Ignoring extra certs from \`${file}\`, load failed: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  return roots
}
