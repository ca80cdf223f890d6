import * as Context from "effect/Context"
import * as Layer from "effect/Layer"

/**
 * Reused memory for piece frames. A batch frame is about a megabyte; making a
 * fresh one per batch costs an mmap, page faults and, once garbage, a GC and
 * an munmap, all on the event loop. Frames instead cycle through this pool:
 * decoder or reader fills one, a worker or the socket uses it, and it comes
 * back. The pool is bounded, so memory stays flat; one is shared by the
 * transport, the readers and the gunzip threads of a program (FramePool).
 */

const GRAIN = 256 * 1024

export class BufferPool {
  private readonly free: Array<ArrayBuffer> = []

  constructor(
    /** Smaller requests are plain allocations: not worth pooling. */
    readonly minBytes = 64 * 1024,
    /** Buffers kept for reuse at most. */
    readonly keep = 24,
    /** Bytes kept for reuse at most: after a peak of large frames, the rest is left to the collector. */
    readonly keepBytes = 64 * 1024 * 1024
  ) {}

  private kept = 0

  /** A buffer of exactly `size` bytes, over a pooled ArrayBuffer that may be larger. */
  take(size: number): Buffer {
    if (size < this.minBytes) return Buffer.allocUnsafeSlow(size)
    for (let i = this.free.length - 1; i >= 0; i--) {
      const ab = this.free[i]!
      if (ab.byteLength >= size && ab.byteLength <= size * 2 + GRAIN) {
        this.free.splice(i, 1)
        this.kept -= ab.byteLength
        return Buffer.from(ab, 0, size)
      }
    }
    const capacity = Math.ceil(size / GRAIN) * GRAIN
    return Buffer.from(Buffer.allocUnsafeSlow(capacity).buffer, 0, size)
  }

  /** Gives a buffer back; one that was moved to another thread (detached) is ignored. */
  give(ab: ArrayBufferLike): void {
    if (!(ab instanceof ArrayBuffer) || ab.byteLength < this.minBytes || ab.byteLength > this.keepBytes) return
    this.free.push(ab)
    this.kept += ab.byteLength
    while (this.free.length > this.keep || this.kept > this.keepBytes) this.kept -= this.free.shift()!.byteLength
  }

  /** Bytes kept for reuse now. */
  get keptBytes(): number {
    return this.kept
  }

  get size(): number {
    return this.free.length
  }
}

/** The pool of piece frames a program's transport, readers and gunzip threads share. */
export class FramePool extends Context.Tag("ferry/FramePool")<FramePool, BufferPool>() {}

export const FramePoolLive = Layer.sync(FramePool, () => new BufferPool())
