"use strict"
// Optional ISA-L gunzip addon. Exports { inflateInto, crc32, readPieces, tcpRoundTrip } when native/build/Release/isal_inflate.node
// is built and loads (it needs libisal.so.2 at run time), otherwise null. Never throws.
// Build it with `node native/build.mjs`; callers fall back to node:zlib when this is null.
let binding = null
try {
  const addon = require("./build/Release/isal_inflate.node")
  if (addon && typeof addon.inflateInto === "function" && typeof addon.crc32 === "function" && typeof addon.readPieces === "function" && typeof addon.tcpRoundTrip === "function") {
    binding = { inflateInto: addon.inflateInto, crc32: addon.crc32, readPieces: addon.readPieces, tcpRoundTrip: addon.tcpRoundTrip }
  }
} catch {
  binding = null
}
module.exports = binding
