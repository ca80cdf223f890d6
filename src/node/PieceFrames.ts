/**
 * Reading pieces, the way both reader layers do it: a batch of piece files
 * read straight into one pieces frame, and the CRC32 of each piece's slice
 * taken from its gzip trailer, so that the sender can vouch for the whole
 * file's CRC32 without inflating anything. The reader worker threads run
 * these over node:fs; the in-process reader over files it loaded through the
 * injected FileSystem. No Effect here: worker threads import this module.
 */
import * as zlib from "node:zlib"
import { HEADER_BYTES, PIECE_ENTRY_HEADER, PIECES_HEADER, piecesFrameBytes, writePieceEntry, writePiecesHeader } from "../domain/Frame.js"
import { type Geometry, lengthOf, pieceFileName } from "../domain/Layout.js"

/** The few synchronous file operations reading needs; they throw errno errors. */
export interface PieceFiles {
  readonly open: (name: string) => number
  /** Reads at `position`, or at the file's position when null; answers the bytes read (0 at the end). */
  readonly read: (fd: number, into: Uint8Array, offset: number, length: number, position: number | null) => number
  readonly size: (fd: number) => number
  readonly close: (fd: number) => void
  /**
   * Optional, in one step: reads the whole file `name` into `into[offset, offset + room)`; answers
   * its bytes, -1 when it holds more than `max`, -2 when it needs more room (and not past `max`).
   * Throws as `open` does. The reader threads use the native addon's `readPiece` for it.
   */
  readonly readWhole?: (name: string, into: Uint8Array, offset: number, room: number, max: number) => number
}

export interface FrameRequest {
  readonly geometry: Geometry
  readonly handle: number
  readonly seq: number
  readonly indices: Uint32Array
  readonly maxPieceBytes: number
}

export type FrameOutcome =
  | {
    readonly _tag: "Frame"
    readonly frame: Buffer
    /** Compressed bytes of the pieces themselves. */
    readonly pieceBytes: number
    /** The CRC32 of each piece's slice, in batch order. */
    readonly crcs: Uint32Array
  }
  | { readonly _tag: "Unreadable"; readonly index: number; readonly reason: string }

const PIECES_START = HEADER_BYTES + PIECES_HEADER

/**
 * The CRC32 of a piece's slice, the piece being `bytes[start, end)`: its gzip trailer's, when the
 * trailer's ISIZE says the last member is the whole slice (or the piece is one member); otherwise
 * (several members) by inflating it. A piece that does not inflate gets its trailer's value: the
 * server will refuse it anyway. The trailer is read in place: no view is made per piece.
 */
export const sliceCrcOf = (bytes: Buffer, start: number, end: number, expected: number): number => {
  if (end - start < 18) return 0
  const trailerCrc = bytes.readUInt32LE(end - 8)
  if (bytes.readUInt32LE(end - 4) === expected >>> 0) return trailerCrc
  try {
    return zlib.crc32(zlib.gunzipSync(bytes.subarray(start, end), { maxOutputLength: Math.max(1, expected + 1) }))
  } catch {
    return trailerCrc
  }
}

const unreadable = (name: string, e: unknown) => {
  const err = e as NodeJS.ErrnoException
  return `${name} cannot be read (${err.code ?? err.message})`
}

/**
 * Reads a batch's piece files into one pieces frame, in `buffer` when it is
 * large enough (it grows otherwise). A short read means end of file, so most
 * pieces cost open, read, close: no fstat.
 */
export const readFrame = (req: FrameRequest, files: PieceFiles, buffer: Buffer): FrameOutcome => {
  const n = req.indices.length
  const crcs = new Uint32Array(n)
  let frame = buffer
  let at = PIECES_START
  for (let k = 0; k < n; k++) {
    const index = req.indices[k]!
    const name = pieceFileName(req.geometry.dataset, index)
    if (files.readWhole !== undefined) {
      const start = at + PIECE_ENTRY_HEADER
      const reserve = (n - k - 1) * PIECE_ENTRY_HEADER
      let size: number
      try {
        for (;;) {
          const room = frame.length - reserve - start
          size = room > 0 ? files.readWhole(name, frame, start, room, req.maxPieceBytes) : -2
          if (size !== -2) break
          const bigger = Buffer.allocUnsafeSlow(Math.ceil(frame.length * 1.5) + reserve)
          frame.copy(bigger, 0, 0, start)
          frame = bigger
        }
      } catch (e) {
        return { _tag: "Unreadable", index, reason: unreadable(name, e) }
      }
      if (size === -1) return { _tag: "Unreadable", index, reason: `${name} is over the limit of ${req.maxPieceBytes} bytes` }
      writePieceEntry(frame, at, index, size)
      crcs[k] = sliceCrcOf(frame, start, start + size, lengthOf(req.geometry, index))
      at = start + size
      continue
    }
    let fd = -1
    try {
      fd = files.open(name)
      const start = at + PIECE_ENTRY_HEADER
      // room is left for the entry headers still to come
      const reserve = (n - k - 1) * PIECE_ENTRY_HEADER
      let size = 0
      for (;;) {
        const room = frame.length - reserve - (start + size)
        if (room <= 0) {
          const known = files.size(fd)
          const bigger = Buffer.allocUnsafeSlow(Math.max(start + Math.max(known, size) + 1 + reserve, Math.ceil(frame.length * 1.5)))
          frame.copy(bigger, 0, 0, start + size)
          frame = bigger
          continue
        }
        const got = files.read(fd, frame, start + size, Math.min(room, req.maxPieceBytes + 1 - size), null)
        size += got
        if (size > req.maxPieceBytes) {
          return { _tag: "Unreadable", index, reason: `${name} is over the limit of ${req.maxPieceBytes} bytes` }
        }
        if (got === 0 || got < room) break
      }
      writePieceEntry(frame, at, index, size)
      crcs[k] = sliceCrcOf(frame, start, start + size, lengthOf(req.geometry, index))
      at = start + size
    } catch (e) {
      return { _tag: "Unreadable", index, reason: unreadable(name, e) }
    } finally {
      if (fd >= 0) files.close(fd)
    }
  }
  writePiecesHeader(frame.subarray(0, at), req.handle, req.seq, n)
  return { _tag: "Frame", frame: frame.subarray(0, at), pieceBytes: at - PIECES_START - n * PIECE_ENTRY_HEADER, crcs }
}

/** A frame's capacity for a batch expected to hold about `expectBytes` of pieces. */
export const frameCapacity = (count: number, expectBytes: number): number => Math.ceil(piecesFrameBytes(count, expectBytes * 1.25))

export type TrailersOutcome =
  | { readonly _tag: "Trailers"; readonly crcs: Uint32Array }
  | { readonly _tag: "Unreadable"; readonly index: number; readonly reason: string }

/** The slice CRC32s of pieces the sender does not send (the server holds them): trailers only, 8 bytes a piece. */
export const readTrailers = (geometry: Geometry, indices: Uint32Array, files: PieceFiles): TrailersOutcome => {
  const crcs = new Uint32Array(indices.length)
  const trailer = Buffer.allocUnsafe(8)
  for (let k = 0; k < indices.length; k++) {
    const index = indices[k]!
    const name = pieceFileName(geometry.dataset, index)
    const expected = lengthOf(geometry, index)
    let fd = -1
    try {
      fd = files.open(name)
      const size = files.size(fd)
      if (size >= 18 && files.read(fd, trailer, 0, 8, size - 8) === 8 && trailer.readUInt32LE(4) === expected >>> 0) {
        crcs[k] = trailer.readUInt32LE(0)
      } else {
        const whole = Buffer.allocUnsafe(size)
        let got = 0
        while (got < size) {
          const r = files.read(fd, whole, got, size - got, got)
          if (r === 0) break
          got += r
        }
        crcs[k] = sliceCrcOf(whole, 0, got, expected)
      }
    } catch (e) {
      return { _tag: "Unreadable", index, reason: unreadable(name, e) }
    } finally {
      if (fd >= 0) files.close(fd)
    }
  }
  return { _tag: "Trailers", crcs }
}
