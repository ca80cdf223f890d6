/**
 * Reading pieces, the way both reader layers do it: a batch of piece files
 * read straight into one pieces frame, and the CRC32 of each piece's slice
 * taken from its gzip trailer, so that the sender can vouch for the whole
 * file's CRC32 without inflating anything. With the native addon a batch is
 * read as one piece of async work on libuv's thread pool (readFrameInBatch);
 * without it the reader worker threads run readFrame over node:fs; the
 * in-process reader runs it over files it loaded through the injected
 * FileSystem. No Effect here: worker threads import this module.
 */
import * as path from "node:path"
import * as util from "node:util"
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

/** The frame being filled: a piece's read replaces it with a larger one when the piece does not fit. */
interface Filling {
  frame: Buffer
}

const overLimit = (name: string, max: number) => `${name} is over the limit of ${max} bytes`

/**
 * One piece into `into.frame` at `start`, leaving `reserve` bytes after it: its size, or why it
 * cannot be read. A short read means end of file, so most pieces cost no fstat; a frame too small
 * grows to the size fstat tells.
 */
const readByParts = (files: PieceFiles, name: string, into: Filling, start: number, reserve: number, max: number): number | string => {
  let fd = -1
  try {
    fd = files.open(name)
    let size = 0
    for (;;) {
      const room = into.frame.length - reserve - (start + size)
      if (room <= 0) {
        const known = files.size(fd)
        const bigger = Buffer.allocUnsafeSlow(Math.max(start + Math.max(known, size) + 1 + reserve, Math.ceil(into.frame.length * 1.5)))
        into.frame.copy(bigger, 0, 0, start + size)
        into.frame = bigger
        continue
      }
      const got = files.read(fd, into.frame, start + size, Math.min(room, max + 1 - size), null)
      size += got
      if (size > max) return overLimit(name, max)
      if (got === 0 || got < room) return size
    }
  } catch (e) {
    return unreadable(name, e)
  } finally {
    if (fd >= 0) files.close(fd)
  }
}

/** Piece `k` of the batch, `size` bytes read after its entry header at `at`: the header and the slice's CRC written; where the next entry goes. */
const entered = (req: FrameRequest, frame: Buffer, at: number, k: number, size: number, crcs: Uint32Array): number => {
  const index = req.indices[k]!
  writePieceEntry(frame, at, index, size)
  const start = at + PIECE_ENTRY_HEADER
  crcs[k] = sliceCrcOf(frame, start, start + size, lengthOf(req.geometry, index))
  return start + size
}

/** The frame once every entry is in, `end` bytes long: its header written. */
const sealed = (req: FrameRequest, frame: Buffer, end: number, crcs: Uint32Array): FrameOutcome => {
  const whole = frame.subarray(0, end)
  writePiecesHeader(whole, req.handle, req.seq, req.indices.length)
  return { _tag: "Frame", frame: whole, pieceBytes: end - PIECES_START - req.indices.length * PIECE_ENTRY_HEADER, crcs }
}

/**
 * Reads a batch's piece files into one pieces frame, in `buffer` when it is
 * large enough (it grows otherwise), each piece's entry header before it.
 */
export const readFrame = (req: FrameRequest, files: PieceFiles, buffer: Buffer): FrameOutcome => {
  const n = req.indices.length
  const crcs = new Uint32Array(n)
  const into: Filling = { frame: buffer }
  let at = PIECES_START
  for (let k = 0; k < n; k++) {
    const index = req.indices[k]!
    const name = pieceFileName(req.geometry.dataset, index)
    const start = at + PIECE_ENTRY_HEADER
    // room is left for the entry headers still to come
    const reserve = (n - k - 1) * PIECE_ENTRY_HEADER
    const size = readByParts(files, name, into, start, reserve, req.maxPieceBytes)
    if (typeof size === "string") return { _tag: "Unreadable", index, reason: size }
    at = entered(req, into.frame, at, k, size, crcs)
  }
  return sealed(req, into.frame, at, crcs)
}

/** The native addon's batch read (readPieces in native/index.d.cts). */
export type BatchRead = (paths: string, out: Uint8Array, at: number, gap: number, max: number, sizes: Float64Array, done: (count: number) => void) => void

/** What a piece's name may stand for besides a regular file, in the words of the refusal (the addon's kinds 1 to 5 in this order). */
export const KINDS = ["a FIFO", "a folder", "a socket", "a device", "not a file"] as const

/** The addon's answer below -2 for a piece, as the error node:fs would have thrown. */
const answerError = (answer: number): Error => {
  if (answer <= -1000) {
    const code = util.getSystemErrorName(answer + 1000)
    return Object.assign(new Error(code), { code })
  }
  return new Error(`not a regular file: ${KINDS[-answer - 101] ?? KINDS[4]}`)
}

/**
 * readFrame's work with the addon's batch read: the batch's pieces are read into the frame in one
 * call off this thread, each after room for its entry header; then the entry headers and slice
 * CRCs are written here. A piece that does not fit grows the frame by half, and the read goes on
 * from that piece. `done` gets the outcome on this thread.
 */
export const readFrameInBatch = (req: FrameRequest, dir: string, readPieces: BatchRead, buffer: Buffer, done: (outcome: FrameOutcome) => void): void => {
  const n = req.indices.length
  const crcs = new Uint32Array(n)
  const sizes = new Float64Array(n)
  const prefix = path.join(dir, "/")
  const names = Array.from(req.indices, (index) => pieceFileName(req.geometry.dataset, index))
  let frame = buffer
  let at = PIECES_START
  let k = 0
  const from = () => {
    readPieces(`${prefix}${names.slice(k).join(`\0${prefix}`)}\0`, frame, at, PIECE_ENTRY_HEADER, req.maxPieceBytes, sizes.subarray(k), (count) => {
      for (const end = k + count; k < end; k++) at = entered(req, frame, at, k, sizes[k]!, crcs)
      if (k === n) return done(sealed(req, frame, at, crcs))
      const answer = sizes[k]!
      if (answer === -2) {
        const bigger = Buffer.allocUnsafeSlow(Math.ceil(frame.length * 1.5) + (n - k) * PIECE_ENTRY_HEADER)
        frame.copy(bigger, 0, 0, at)
        frame = bigger
        return from()
      }
      const name = names[k]!
      done({ _tag: "Unreadable", index: req.indices[k]!, reason: answer === -1 ? overLimit(name, req.maxPieceBytes) : unreadable(name, answerError(answer)) })
    })
  }
  from()
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
