/**
 * The optional native addon (native/: ISA-L's inflate and CRC32, a batch of pieces read in one
 * call, the kernel's round trip of a socket), loaded through its loader `native/index.cjs`, once
 * per thread and loader. Null where it is not built (or does not load): every caller has a way without it.
 * No Effect here: worker threads import this module.
 */
import { createRequire } from "node:module"

export interface NativeAddon {
  /** Gunzips into out[outOffset, outOffset + outLength): [status, produced, consumed] (native/README.md). */
  readonly inflateInto: (input: Uint8Array, out: Uint8Array, outOffset: number, outLength: number) => [number, number, number]
  /** zlib's crc32(bytes, crc), with ISA-L's folding code. */
  readonly crc32: (bytes: Uint8Array, crc?: number) => number
  /**
   * A batch of whole piece files read on libuv's thread pool: piece j `gap` bytes past the end of the one
   * before (the first at `at + gap`); sizes[j] its bytes, -1 over `max`, -2 needs room, -(100 + kind),
   * -(1000 + errno); `done(count)` with the pieces read, `sizes[count]` why not the next. `paths`: each
   * path followed by a NUL. Leave `out` and `sizes` alone until `done`.
   */
  readonly readPieces: (paths: string, out: Uint8Array, at: number, gap: number, max: number, sizes: Float64Array, done: (count: number) => void) => void
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
