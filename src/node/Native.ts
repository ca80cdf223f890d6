/**
 * The optional native addon (native/: ISA-L's inflate and CRC32, a piece read in one call, the
 * kernel's round trip of a socket), loaded through its loader `native/index.cjs`, once per thread
 * and loader. Null where it is not built (or does not load): every caller has a way without it.
 * No Effect here: worker threads import this module.
 */
import { createRequire } from "node:module"

export interface NativeAddon {
  /** Gunzips into out[outOffset, outOffset + outLength): [status, produced, consumed] (native/README.md). */
  readonly inflateInto: (input: Uint8Array, out: Uint8Array, outOffset: number, outLength: number) => [number, number, number]
  /** zlib's crc32(bytes, crc), with ISA-L's folding code. */
  readonly crc32: (bytes: Uint8Array, crc?: number) => number
  /** A whole piece file into out[offset, offset + room): its bytes, -1 over `max`, -2 needs room, -(100 + kind), -(1000 + errno). */
  readonly readPiece: (path: string, out: Uint8Array, offset: number, room: number, max: number) => number
  /** The kernel's smoothed round trip of TCP socket `fd` in milliseconds, or -1. */
  readonly tcpRoundTrip: (fd: number) => number
}

const loaded = new Map<string, NativeAddon | null>()

/** The addon through its loader (`nativeAddon` in node/Assets.ts); null when none is given or it cannot load. */
export const loadNative = (loader: string | null | undefined): NativeAddon | null => {
  if (typeof loader !== "string") return null
  let addon = loaded.get(loader)
  if (addon === undefined) {
    try {
      addon = createRequire(import.meta.url)(loader) as NativeAddon | null
    } catch {
      addon = null
    }
    loaded.set(loader, addon)
  }
  return addon
}
