/**
 * Node private fields, adapter 2 of 2: sockets.
 *
 * `_handle` of an accepted socket: net's server has no `onread` option, so a
 * plain TCP connection is moved to a new socket that reads into a buffer of
 * its own (no fresh 64 KiB Buffer per read on the receiver's hot path). Where
 * the handle is not there, the accepted socket is used as it is.
 *
 * `_parent` of a server-side TLS socket: the raw TCP socket under it, whose
 * address was read as it was accepted; when a handshake fails the TLS socket
 * may no longer have one, and the log line names the peer through this.
 *
 * `_handle.fd` of a connected client socket: the kernel's round trip of the
 * connection (TCP_INFO, read by the native addon), which a busy event loop
 * does not inflate. Without the addon, or without a descriptor there (TLS),
 * the callers measure with their clock alone.
 *
 * test/node-internals.test.ts fails when a Node release changes any of them.
 */
import * as net from "node:net"
import type * as tls from "node:tls"
import { nativeAddon } from "./Assets.js"
import { loadNative } from "./Native.js"

/** The kernel's smoothed round trip of a connected TCP socket, in milliseconds; undefined when it cannot be read. */
export const kernelRoundTrip = (socket: net.Socket): number | undefined => {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd
  const native = loadNative(nativeAddon)
  if (native === null || typeof fd !== "number" || fd < 0) return undefined
  const ms = native.tcpRoundTrip(fd)
  return ms > 0 ? ms : undefined
}

export interface OwnRead {
  readonly buffer: Buffer
  readonly callback: (n: number, buf: Uint8Array) => boolean
}

/** A socket for an accepted connection (accepted paused) that reads into `onread`'s buffer; the accepted shell is closed. */
export const adoptWithOwnBuffer = (accepted: net.Socket, onread: OwnRead): net.Socket => {
  const holder = accepted as unknown as { _handle: unknown }
  const handle = holder._handle
  if (handle === null || handle === undefined) return accepted
  holder._handle = null
  // the server counts the accepted socket: closing the empty shell keeps its count right
  accepted.destroy()
  return new net.Socket({ handle, onread, readable: true, writable: true } as net.SocketConstructorOpts)
}

/** The raw socket a TLS socket was made over, when Node keeps it. */
export const rawSocketOf = (socket: tls.TLSSocket | net.Socket): object | undefined => (socket as unknown as { _parent?: object })._parent ?? undefined
