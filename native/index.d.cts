/** Status codes returned as the first element of inflateInto's result. */
export type InflateStatus = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7

export interface IsalInflate {
  /**
   * Gunzips one or more concatenated gzip members from `input` into
   * `out[outOffset, outOffset + outLength)`; never writes outside that window.
   * Returns [status, produced, consumed]:
   * 0 ok, 1 window too small, 2 truncated input, 3 not gzip (bad header, or
   * non-gzip bytes after a member), 4 corrupt deflate data, 5 CRC32 mismatch,
   * 6 ISIZE mismatch, 7 other error.
   * On 0, consumed < input.length means the rest starts with a zero byte
   * (padding that Node's gunzip also ignores).
   * Throws TypeError/RangeError on invalid arguments.
   */
  inflateInto(input: Uint8Array, out: Uint8Array, outOffset: number, outLength: number): [InflateStatus, number, number]
  /**
   * The CRC32 of gzip and zlib of `bytes`, continuing from `crc` (default 0): the same number as
   * `zlib.crc32(bytes, crc)`, computed with ISA-L's folding code. Throws TypeError on invalid arguments.
   */
  crc32(bytes: Uint8Array, crc?: number): number
  /**
   * A batch of piece files read whole, as one piece of async work on libuv's thread pool (no JavaScript
   * runs meanwhile); each is opened with O_NONBLOCK, fstat-ed, refused when not a regular file, read to
   * the end and closed. `paths`: each piece's path followed by a NUL. Piece j goes `gap` bytes past the
   * end of the one before (the first at `at + gap`), leaving room for the gaps of those after it;
   * `sizes[j]` gets its bytes, or -1 (more than `max`), -2 (it does not fit in `out`: read it again with
   * more room), -(100 + k) (not a regular file: 1 FIFO, 2 folder, 3 socket, 4 device, 5 other) or
   * -(1000 + errno); reading stops at the first answer below 0. `done(count)` runs on
   * this thread with the pieces read; count short of the paths means `sizes[count]` says why. `out` and
   * `sizes` must be left alone until then. Throws on invalid arguments only.
   */
  readPieces(paths: string, out: Uint8Array, at: number, gap: number, max: number, sizes: Float64Array, done: (count: number) => void): void
  /** The kernel's smoothed round trip of TCP socket `fd` in milliseconds (TCP_INFO), or -1 when it cannot be read. */
  tcpRoundTrip(fd: number): number
}

declare const binding: IsalInflate | null
export = binding
