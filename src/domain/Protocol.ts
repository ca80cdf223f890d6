/**
 * Control messages: small JSON frames validated with Schema at both ends.
 * Piece data never goes through here (see Frame.ts). Protocol 2: the client
 * speaks first (so that a TLS or non-ferry peer is told apart at once), and
 * vouches for the content of each dataset with a seal before it is committed.
 */
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { DatasetFailureCode, RefusalCode } from "./Codes.js"
import { DatasetName, Manifest } from "./Dataset.js"
import { encodeFrame, FrameKind } from "./Frame.js"
import { GrowingSpec } from "./Growing.js"

export const PROTOCOL_VERSION = 2

const Handle = Schema.Number.pipe(Schema.int(), Schema.between(0, 0xffff_ffff))
/** A CRC32 as 8 lowercase hex digits. */
export const Crc32Hex = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{8}$/))

/** Client -> server, first frame on every connection. */
export class Hi extends Schema.TaggedClass<Hi>()("Hi", {
  protocol: Schema.Number,
  client: Schema.String.pipe(Schema.maxLength(200))
}) {}

/** Server -> client, the answer to Hi. */
export class Welcome extends Schema.TaggedClass<Welcome>()("Welcome", {
  protocol: Schema.Number,
  server: Schema.String,
  /** Random challenge for the client's proof. */
  nonce: Schema.String,
  auth: Schema.Literal("none", "hmac-sha256"),
  /** Seconds of silence after which the server drops a connection: clients ping well within it. */
  idle: Schema.Number,
  /** Largest frame the server accepts: clients size their batches under it. */
  maxFrame: Schema.Number
}) {}

/** Client -> server: the answer to the challenge (null when the server asks for none). */
export class Hello extends Schema.TaggedClass<Hello>()("Hello", {
  proof: Schema.NullOr(Schema.String.pipe(Schema.maxLength(256)))
}) {}

/** Server -> client: the handshake succeeded. */
export class Ready extends Schema.TaggedClass<Ready>()("Ready", {}) {}

/** Client -> server: start (or resume) a dataset under a handle of this connection. */
export class Open extends Schema.TaggedClass<Open>()("Open", {
  handle: Handle,
  manifest: Manifest
}) {}

/** Server -> client: which pieces it already holds (base64 bitmap, bit i = piece first + i). */
export class Opened extends Schema.TaggedClass<Opened>()("Opened", {
  handle: Handle,
  held: Schema.Number,
  bitmap: Schema.NullOr(Schema.String),
  /** The CRC32 of the committed file when the dataset was already committed, else null. */
  committed: Schema.NullOr(Crc32Hex),
  /** The pieces the bitmap covers, when it is not the manifest's count (a growing dataset: the server's bound). */
  pieces: Schema.optional(Schema.Number.pipe(Schema.int(), Schema.nonNegative()))
}) {}

/**
 * Client -> server (`send --early`): start (or resume) a dataset whose size is not known yet.
 * Answered by `Opened`, whose bitmap covers `pieces` (the most the server allows this dataset).
 */
export class OpenGrowing extends Schema.TaggedClass<OpenGrowing>()("OpenGrowing", {
  handle: Handle,
  spec: GrowingSpec
}) {}

/**
 * Client -> server: the marker of a growing dataset appeared and says this size. The server checks
 * it against the pieces it holds and answers `Opened` with the bitmap over the real count (the
 * dataset is then an ordinary one: the rest of its pieces, then `Seal`), or `Failed`.
 */
export class Marker extends Schema.TaggedClass<Marker>()("Marker", {
  handle: Handle,
  size: Schema.Number.pipe(Schema.int(), Schema.nonNegative())
}) {}

/**
 * Client -> server: every piece of the dataset has been sent, and together the
 * sender's pieces make a file with this CRC32 (combined from their gzip
 * trailers). The server commits only a file whose CRC32 is the one vouched for.
 */
export class Seal extends Schema.TaggedClass<Seal>()("Seal", {
  handle: Handle,
  crc32: Crc32Hex
}) {}

/** Server -> client: the dataset is rebuilt, synced and marked done. */
export class Committed extends Schema.TaggedClass<Committed>()("Committed", {
  handle: Handle,
  dataset: DatasetName,
  size: Schema.Number,
  crc32: Crc32Hex
}) {}

/** Server -> client: this dataset failed; the connection and other datasets go on. */
export class Failed extends Schema.TaggedClass<Failed>()("Failed", {
  handle: Handle,
  dataset: Schema.String,
  code: DatasetFailureCode,
  message: Schema.String
}) {}

/** Client -> server: this client is done with the handle (the dataset failed, committed, or moves elsewhere). */
export class Close extends Schema.TaggedClass<Close>()("Close", {
  handle: Handle
}) {}

/** Client -> server: still here (sent when a connection would otherwise be silent). */
export class Ping extends Schema.TaggedClass<Ping>()("Ping", {}) {}

/** Server -> client: the connection is refused or broken; the server closes it next. */
export class Refused extends Schema.TaggedClass<Refused>()("Refused", {
  code: RefusalCode,
  message: Schema.String
}) {}

export const ControlMessage = Schema.Union(Hi, Welcome, Hello, Ready, Open, OpenGrowing, Marker, Opened, Seal, Committed, Failed, Close, Ping, Refused)
export type ControlMessage = typeof ControlMessage.Type

const fromJson = Schema.parseJson(ControlMessage)
const decodeJson = Schema.decodeUnknownEither(fromJson)
const encodeJson = Schema.encodeSync(fromJson)

export const encodeControl = (message: ControlMessage): Buffer =>
  encodeFrame(FrameKind.Control, Buffer.from(encodeJson(message), "utf8"))

/**
 * The client's first frame. Its JSON ends with a line break (whitespace, to JSON), so that a
 * line-based server on the other end, such as an HTTP server waiting for its request line,
 * answers at once and the client can tell it is not ferry, instead of both waiting in silence
 * until the handshake times out.
 */
export const encodeHi = (hi: Hi): Buffer => encodeFrame(FrameKind.Control, Buffer.from(`${encodeJson(hi)}\r\n`, "utf8"))

export const decodeControl = (body: Uint8Array): Either.Either<ControlMessage, string> =>
  decodeJson(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8")).pipe(
    Either.mapLeft((e) => ParseResult.TreeFormatter.formatErrorSync(e).split("\n").slice(0, 3).join(" "))
  )
