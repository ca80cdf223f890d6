/**
 * The failures a user can act on, one per cause. Each renders as one line.
 */
import * as Data from "effect/Data"
import type { DatasetFailureCode, RefusalCode } from "./Codes.js"

/** The folder given to `send` or `fake` cannot be used. */
export class FolderError extends Data.TaggedError("FolderError")<{
  readonly path: string
  readonly reason: string
}> {
  override get message() {
    return `${this.path}: ${this.reason}`
  }
}

/** A dataset on the sending side is inconsistent: bad name or marker, missing or unreadable piece. */
export class DatasetError extends Data.TaggedError("DatasetError")<{
  readonly dataset: string
  readonly reason: string
}> {
  override get message() {
    return `dataset ${this.dataset}: ${this.reason}`
  }
}

/** The server refused or failed a dataset (bad piece, conflict, no space...). */
export class DatasetRejected extends Data.TaggedError("DatasetRejected")<{
  readonly dataset: string
  readonly code: DatasetFailureCode
  readonly reason: string
}> {
  override get message() {
    return `dataset ${this.dataset}: server refused it (${this.code}): ${this.reason}`
  }
}

/** Could not reach, or lost, the other end. */
export class TransportError extends Data.TaggedError("TransportError")<{
  readonly address: string
  readonly reason: string
  /** The system's or TLS library's code for it (`ECONNRESET`, `ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`), when it had one. */
  readonly code?: string | undefined
}> {
  override get message() {
    return `${this.address}: ${this.reason}`
  }
}

/** The peer refused our connection, or broke ferry's protocol on it. */
export class ProtocolError extends Data.TaggedError("ProtocolError")<{
  readonly peer: string
  readonly code: RefusalCode
  readonly reason: string
}> {
  override get message() {
    return `${this.peer}: ${this.reason}`
  }
}

/**
 * The other end is not a ferry peer we can talk to: TLS on one side only, a
 * certificate we do not trust, another protocol or version. Trying again
 * cannot help, so the client gives up at once.
 */
export class PeerMismatch extends Data.TaggedError("PeerMismatch")<{
  readonly peer: string
  readonly reason: string
}> {
  override get message() {
    return `${this.peer}: ${this.reason}`
  }
}

/** One dataset on the server cannot be stored: every `Failed` message starts as one of these. */
export class StoreError extends Data.TaggedError("StoreError")<{
  readonly dataset: string
  readonly code: DatasetFailureCode
  readonly reason: string
  /** What failed underneath (an I/O error with its errno), kept for --debug and JSON logs. */
  readonly cause?: unknown
}> {
  override get message() {
    return `dataset ${this.dataset}: ${this.reason}`
  }
}

/** The destination folder of `serve` cannot be used at all. */
export class DestinationError extends Data.TaggedError("DestinationError")<{
  readonly dest: string
  readonly reason: string
}> {
  override get message() {
    return `${this.dest}: ${this.reason}`
  }
}
