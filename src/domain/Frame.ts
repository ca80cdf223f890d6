/**
 * ferry's wire framing. Every frame is
 *
 *   u32 length (big-endian, counts kind + body) | u8 kind | body
 *
 * Control frames carry Schema-validated JSON (see Protocol.ts); piece and ack
 * frames are binary so that the hot path never touches JSON.
 */

export const FrameKind = { Control: 1, Pieces: 2, Ack: 3 } as const
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind]

export const HEADER_BYTES = 5
/** Default ceiling on one frame: a batch of pieces, or a control message. */
export const DEFAULT_MAX_FRAME = 64 * 1024 * 1024
/** Ceiling on a control or ack frame a server accepts: they carry no piece data, so a large one is abuse. */
export const MAX_CONTROL_FRAME = 1024 * 1024

export interface RawFrame {
  readonly kind: FrameKind
  /** The body, in a buffer of its own, so that it can be moved to a worker. */
  readonly body: Buffer
}

export type FrameProblem =
  | { readonly _tag: "FrameTooLarge"; readonly length: number; readonly max: number; readonly control?: boolean }
  | { readonly _tag: "UnknownFrameKind"; readonly kind: number }
  | { readonly _tag: "EmptyFrame" }
  | { readonly _tag: "TruncatedFrame"; readonly missing: number }

export const describeFrameProblem = (p: FrameProblem): string => {
  switch (p._tag) {
    case "FrameTooLarge":
      return p.control === true
        ? `control message of ${p.length} bytes is over the limit of ${p.max} (control messages carry no piece data)`
        : `frame of ${p.length} bytes is over the limit of ${p.max}`
    case "UnknownFrameKind":
      return `unknown frame kind ${p.kind}`
    case "EmptyFrame":
      return "frame with no kind"
    case "TruncatedFrame":
      return `connection closed in the middle of a frame (${p.missing} bytes missing)`
  }
}

const isKind = (k: number): k is FrameKind => k === 1 || k === 2 || k === 3

export const encodeFrame = (kind: FrameKind, body: Uint8Array): Buffer => {
  const out = Buffer.allocUnsafe(HEADER_BYTES + body.length)
  out.writeUInt32BE(body.length + 1, 0)
  out[4] = kind
  out.set(body, HEADER_BYTES)
  return out
}

/**
 * Incremental decoder: feed it the socket's chunks, split anywhere, and it
 * returns the whole frames they complete. It never throws; it answers a
 * problem instead, after which the connection must be dropped.
 *
 * A body is allocated at its header, through `allocate`, which may answer
 * undefined (no room for it now): the decoder then holds what it was given
 * past the header, takes nothing more into a frame, and `resume` tries again.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(HEADER_BYTES)
  private headerFill = 0
  private body: Buffer | undefined = undefined
  private bodyFill = 0
  private kind: FrameKind = FrameKind.Control
  /** Bytes received while waiting for room for the next body (copied: the socket's buffer is reused). */
  private held: Array<Uint8Array> | undefined = undefined

  constructor(
    public maxFrame: number = DEFAULT_MAX_FRAME,
    /** Where frame bodies are allocated: the caller may pool them, or answer undefined until there is room. */
    private readonly allocate: (size: number, kind: FrameKind) => Buffer | undefined = (size) => Buffer.allocUnsafeSlow(size),
    /** Largest control or ack frame: they carry no piece data. */
    public maxControl: number = Number.MAX_SAFE_INTEGER
  ) {}

  /** Bytes held for a frame that has not completed yet. */
  get pending(): number {
    return this.headerFill + this.bodyFill
  }

  /** Waiting for room for a body (see `resume`). */
  get stalled(): boolean {
    return this.held !== undefined
  }

  /** Bytes of the body being received, allocated and not complete yet (0 between frames). */
  get arriving(): number {
    return this.body === undefined ? 0 : this.body.length
  }

  /** Forgets the frame in progress and anything held: the connection is being dropped. */
  abandon(): void {
    this.body = undefined
    this.held = undefined
  }

  push(chunk: Uint8Array): Array<RawFrame> | FrameProblem {
    if (this.held !== undefined) {
      this.held.push(Buffer.from(chunk))
      return []
    }
    const frames: Array<RawFrame> = []
    const problem = this.take(chunk, frames)
    return problem ?? frames
  }

  /** Tries again to allocate the body it waits for; on room, decodes what it held meanwhile. */
  resume(): Array<RawFrame> | FrameProblem {
    const held = this.held
    if (held === undefined) return []
    this.held = undefined
    const frames: Array<RawFrame> = []
    for (let i = 0; i < held.length; i++) {
      const problem = this.take(held[i]!, frames)
      if (problem !== undefined) return problem
      const stalledAgain = this.held as Array<Uint8Array> | undefined
      if (stalledAgain !== undefined) {
        // stalled again, on a later frame: keep the rest, in order
        stalledAgain.push(...held.slice(i + 1))
        break
      }
    }
    return frames
  }

  private take(chunk: Uint8Array, frames: Array<RawFrame>): FrameProblem | undefined {
    let at = 0
    while (at < chunk.length || (this.body === undefined && this.headerFill === HEADER_BYTES)) {
      if (this.body === undefined) {
        if (this.headerFill < HEADER_BYTES) {
          const take = Math.min(HEADER_BYTES - this.headerFill, chunk.length - at)
          this.header.set(chunk.subarray(at, at + take), this.headerFill)
          this.headerFill += take
          at += take
          if (this.headerFill < HEADER_BYTES) break
        }
        const length = this.header.readUInt32BE(0)
        const kind = this.header[4]!
        if (length === 0) return { _tag: "EmptyFrame" }
        if (length > this.maxFrame) return { _tag: "FrameTooLarge", length, max: this.maxFrame }
        if (!isKind(kind)) return { _tag: "UnknownFrameKind", kind }
        if (kind !== FrameKind.Pieces && length > this.maxControl) return { _tag: "FrameTooLarge", length, max: this.maxControl, control: true }
        const body = this.allocate(length - 1, kind)
        if (body === undefined) {
          this.held = [Buffer.from(chunk.subarray(at))]
          return undefined
        }
        this.kind = kind
        this.body = body
        this.bodyFill = 0
      }
      const take = Math.min(this.body.length - this.bodyFill, chunk.length - at)
      this.body.set(chunk.subarray(at, at + take), this.bodyFill)
      this.bodyFill += take
      at += take
      if (this.bodyFill === this.body.length) {
        frames.push({ kind: this.kind, body: this.body })
        this.body = undefined
        this.bodyFill = 0
        this.headerFill = 0
      }
    }
    return undefined
  }

  /** Call at end of stream: a half-received frame is a problem. */
  finish(): FrameProblem | undefined {
    if (this.headerFill === 0) return undefined
    const missing = this.body === undefined ? HEADER_BYTES - this.headerFill : this.body.length - this.bodyFill
    return { _tag: "TruncatedFrame", missing }
  }
}

export const isFrameProblem = (r: Array<RawFrame> | FrameProblem): r is FrameProblem => !Array.isArray(r)

/* Piece batches: u32 handle | u32 seq | u32 count | count x (u32 index | u32 length | bytes) */

export const PIECES_HEADER = 12
export const PIECE_ENTRY_HEADER = 8

/** Bytes a pieces frame needs, header included, for pieces of these sizes in total. */
export const piecesFrameBytes = (count: number, pieceBytes: number): number =>
  HEADER_BYTES + PIECES_HEADER + count * PIECE_ENTRY_HEADER + pieceBytes

/** Writes the frame and batch headers at the start of `frame`; entries follow at HEADER_BYTES + PIECES_HEADER. */
export const writePiecesHeader = (frame: Buffer, handle: number, seq: number, count: number): number => {
  frame.writeUInt32BE(frame.length - 4, 0)
  frame[4] = FrameKind.Pieces
  frame.writeUInt32BE(handle, 5)
  frame.writeUInt32BE(seq, 9)
  frame.writeUInt32BE(count, 13)
  return HEADER_BYTES + PIECES_HEADER
}

/** Writes one entry header at `at`; the piece's bytes go at the returned offset. */
export const writePieceEntry = (frame: Buffer, at: number, index: number, length: number): number => {
  frame.writeUInt32BE(index, at)
  frame.writeUInt32BE(length, at + 4)
  return at + PIECE_ENTRY_HEADER
}

/** A whole pieces frame from in-memory pieces (tests and the in-process reader). */
export const encodePieces = (
  handle: number,
  seq: number,
  pieces: ReadonlyArray<{ readonly index: number; readonly bytes: Uint8Array }>
): Buffer => {
  const total = pieces.reduce((n, p) => n + p.bytes.length, 0)
  const frame = Buffer.allocUnsafeSlow(piecesFrameBytes(pieces.length, total))
  let at = writePiecesHeader(frame, handle, seq, pieces.length)
  for (const p of pieces) {
    at = writePieceEntry(frame, at, p.index, p.bytes.length)
    frame.set(p.bytes, at)
    at += p.bytes.length
  }
  return frame
}

export interface PieceBatch {
  readonly handle: number
  readonly seq: number
  readonly indices: Uint32Array
  /** Offset of each piece's bytes within the body. */
  readonly starts: Uint32Array
  readonly lengths: Uint32Array
}

/** The bytes of the pieces themselves in a pieces body of `bodyLength` bytes (every byte belongs to an entry). */
export const pieceBytesOf = (batch: PieceBatch, bodyLength: number): number =>
  bodyLength - PIECES_HEADER - batch.indices.length * PIECE_ENTRY_HEADER

/** Reads the entry table of a pieces body; every byte must belong to an entry. */
export const decodePieces = (body: Uint8Array): PieceBatch | { readonly problem: string } => {
  if (body.length < PIECES_HEADER) return { problem: "pieces frame shorter than its header" }
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
  const handle = view.getUint32(0)
  const seq = view.getUint32(4)
  const count = view.getUint32(8)
  if (count * PIECE_ENTRY_HEADER > body.length - PIECES_HEADER) return { problem: `pieces frame claims ${count} pieces` }
  const indices = new Uint32Array(count)
  const starts = new Uint32Array(count)
  const lengths = new Uint32Array(count)
  let at = PIECES_HEADER
  for (let i = 0; i < count; i++) {
    if (at + PIECE_ENTRY_HEADER > body.length) return { problem: `pieces frame ends inside entry ${i}` }
    indices[i] = view.getUint32(at)
    const length = view.getUint32(at + 4)
    at += PIECE_ENTRY_HEADER
    if (at + length > body.length) return { problem: `piece ${indices[i]} runs past the end of its frame` }
    starts[i] = at
    lengths[i] = length
    at += length
  }
  if (at !== body.length) return { problem: `pieces frame has ${body.length - at} bytes after its last piece` }
  return { handle, seq, indices, starts, lengths }
}

/* Acks: u32 handle | u32 seq. The server sends one when every piece of batch `seq` is durable. */

export const encodeAck = (handle: number, seq: number): Buffer => {
  const out = Buffer.allocUnsafe(HEADER_BYTES + 8)
  out.writeUInt32BE(9, 0)
  out[4] = FrameKind.Ack
  out.writeUInt32BE(handle, 5)
  out.writeUInt32BE(seq, 9)
  return out
}

export const decodeAck = (body: Uint8Array): { readonly handle: number; readonly seq: number } | undefined => {
  if (body.length !== 8) return undefined
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
  return { handle: view.getUint32(0), seq: view.getUint32(4) }
}
