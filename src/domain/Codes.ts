/**
 * Every code a server or client can answer with, as Schema literals shared by
 * both ends of the wire, the events and the metrics: a code is matched by its
 * literal type, never by a string someone typed twice.
 */
import * as Schema from "effect/Schema"

/** Why a connection was refused or dropped (the `Refused` message). */
export const RefusalCode = Schema.Literal(
  "BadMessage",
  "Unexpected",
  "VersionMismatch",
  "AuthFailed",
  "AuthRequired",
  "TooManyConnections",
  "TooManyPending",
  "NotReady",
  "HandleInUse",
  "UnknownHandle",
  "BadFrame",
  "FrameTooLarge",
  "UnknownFrameKind",
  "EmptyFrame",
  "TruncatedFrame",
  "HandshakeTimeout",
  "IdleTimeout",
  "ShuttingDown",
  /** The server's frame memory (--memory) was full, and this connection's unfinished frame the largest. */
  "MemoryFull",
  /** More datasets open on one connection than the server allows (--max-handles). */
  "TooManyHandles",
  /** The server asks for a client certificate (--tls-client-ca) and the client showed none. */
  "CertificateRequired",
  /** The client's certificate does not chain to the CA the server trusts for clients. */
  "CertificateUntrusted"
)
export type RefusalCode = typeof RefusalCode.Type

/** Why one dataset failed on the server (the `Failed` message); the connection goes on. */
export const DatasetFailureCode = Schema.Literal(
  /** The manifest cannot describe a real dataset. */
  "BadManifest",
  /** Over one of the server's size limits. */
  "TooLarge",
  "TooManyPieces",
  /** Another dataset of that name, of another size or content, is committed or in progress. */
  "Conflict",
  /** The server (or another server on the same destination) is busy with it, or at its limit: try later. */
  "Busy",
  /** It does not fit on the destination's disk now: try later. */
  "NoSpace",
  /** The destination is on a read-only filesystem. */
  "ReadOnly",
  "BadIndex",
  "DuplicatePiece",
  "BadFrame",
  /** A piece is not the gzip of its slice. */
  "BadPiece",
  "WriteFailed",
  "CommitFailed",
  "StateUnusable",
  /** This server lost the dataset to another server on the same destination: try again. */
  "LeaseLost",
  /** The server is stopping: try again (it, or another one). */
  "ShuttingDown",
  "Internal"
)
export type DatasetFailureCode = typeof DatasetFailureCode.Type

/** Failures that say "not now", not "never": the client waits and tries again (elsewhere if it can). */
export const isDeferral = (code: DatasetFailureCode): boolean =>
  code === "Busy" || code === "NoSpace" || code === "LeaseLost" || code === "ShuttingDown"

/** Refusals that a reconnection may cure (the server is busy or was slow), as opposed to a mismatch. */
export const isTransientRefusal = (code: RefusalCode): boolean =>
  code === "HandshakeTimeout" || code === "IdleTimeout" || code === "TooManyConnections" ||
  code === "TooManyPending" || code === "ShuttingDown" || code === "MemoryFull"
