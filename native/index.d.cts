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
   * Reads a whole piece file into `out[offset, offset + room)`: open (O_NONBLOCK), fstat, read to the
   * end, close, in one call. Answers the bytes read, or -1 (more than `max` bytes), -2 (more than
   * `room`, not past `max`: call again with more room), -(100 + k) (not a regular file: 1 FIFO,
   * 2 folder, 3 socket, 4 device, 5 other), -(1000 + errno). Throws on invalid arguments only.
   */
  readPiece(path: string, out: Uint8Array, offset: number, room: number, max: number): number
  /** The kernel's smoothed round trip of TCP socket `fd` in milliseconds (TCP_INFO), or -1 when it cannot be read. */
  tcpRoundTrip(fd: number): number
}

declare const binding: IsalInflate | null
export = binding
