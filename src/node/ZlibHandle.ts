/**
 * Node private fields, adapter 1 of 2: zlib's own native handle behind a
 * Gunzip stream (`_handle`, with `writeSync` and `reset`) and its write state
 * (`_writeState`: output and input bytes left). Why: the public API
 * allocates a fresh output Buffer per call and a fresh stream per piece;
 * through the handle a piece inflates straight into the batch's buffer, and
 * one engine is reset between pieces (about 20% of the receiver's CPU on 16
 * KiB slices). Where the handle is not what we expect, `openZlibHandle`
 * answers undefined and the caller falls back to `zlib.gunzipSync`;
 * test/node-internals.test.ts fails when a Node release changes it, so that
 * the slow path is never taken silently.
 */
import * as zlib from "node:zlib"

export interface ZlibHandle {
  /** Inflates `input` into `out[outOff, outOff + outLen)` with `flush`; errors go to `onerror`. */
  writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void
  reset(): void
  onerror: (message: string, errno: number, code?: string) => void
}

export interface ZlibEngine {
  readonly handle: ZlibHandle
  /** [output bytes left, input bytes left] after the last writeSync. */
  readonly writeState: Uint32Array
}

/** A gunzip engine over zlib's native handle, or undefined where this Node does not have one as expected. */
export const openZlibHandle = (): ZlibEngine | undefined => {
  const stream = zlib.createGunzip() as unknown as { _handle?: ZlibHandle; _writeState?: Uint32Array }
  const handle = stream._handle
  const writeState = stream._writeState
  if (handle === undefined || writeState === undefined || typeof handle.writeSync !== "function" || typeof handle.reset !== "function") return undefined
  return { handle, writeState }
}
