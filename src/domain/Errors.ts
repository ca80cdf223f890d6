/**
 * The failures a user can act on, one per cause. Each renders as one line.
 */
import * as Data from "effect/Data"

/** The folder given to `send` or `fake` cannot be used. */
export class FolderError extends Data.TaggedError("FolderError")<{
  readonly path: string
  readonly reason: string
}> {
  override get message() {
    return `${this.path}: ${this.reason}`
  }
}

/** A dataset on the sending side is inconsistent: bad marker, missing or unreadable piece. */
export class DatasetError extends Data.TaggedError("DatasetError")<{
  readonly dataset: string
  readonly reason: string
}> {
  override get message() {
    return `dataset ${this.dataset}: ${this.reason}`
  }
}

/** The server rejected a dataset (bad piece, conflict, no space...). */
export class DatasetRejected extends Data.TaggedError("DatasetRejected")<{
  readonly dataset: string
  readonly code: string
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
}> {
  override get message() {
    return `${this.address}: ${this.reason}`
  }
}

/** The peer spoke something other than ferry's protocol, or refused ours. */
export class ProtocolError extends Data.TaggedError("ProtocolError")<{
  readonly peer: string
  readonly code: string
  readonly reason: string
}> {
  override get message() {
    return `${this.peer}: ${this.reason}`
  }
}

/** The destination folder of `serve` cannot be used or written. */
export class StoreError extends Data.TaggedError("StoreError")<{
  readonly dataset: string
  readonly code: string
  readonly reason: string
}> {
  override get message() {
    return this.dataset === "" ? this.reason : `dataset ${this.dataset}: ${this.reason}`
  }
}

/** A command-line value that cannot be used. */
export class UsageError extends Data.TaggedError("UsageError")<{
  readonly reason: string
}> {
  override get message() {
    return this.reason
  }
}

export type FerryError =
  | FolderError
  | DatasetError
  | DatasetRejected
  | TransportError
  | ProtocolError
  | StoreError
  | UsageError
