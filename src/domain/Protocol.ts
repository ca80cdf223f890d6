/**
 * Control messages: small JSON frames validated with Schema at both ends.
 * Piece data never goes through here (see Frame.ts).
 */
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { DatasetName, Manifest } from "./Dataset.js"
import { encodeFrame, FrameKind } from "./Frame.js"

export const PROTOCOL_VERSION = 1

const Handle = Schema.Number.pipe(Schema.int(), Schema.between(0, 0xffff_ffff))

/** Server -> client, first frame on every connection. */
export class Welcome extends Schema.TaggedClass<Welcome>()("Welcome", {
  protocol: Schema.Number,
  server: Schema.String,
  /** Random challenge for the client's proof; room for authentication. */
  nonce: Schema.String,
  auth: Schema.Literal("none", "hmac-sha256"),
  /** Seconds of silence after which the server drops a connection: clients ping well within it. */
  idle: Schema.Number,
  /** Largest frame the server accepts: clients size their batches under it. */
  maxFrame: Schema.Number
}) {}

/** Client -> server, answer to Welcome. */
export class Hello extends Schema.TaggedClass<Hello>()("Hello", {
  protocol: Schema.Number,
  client: Schema.String.pipe(Schema.maxLength(200)),
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
  committed: Schema.Boolean
}) {}

/** Server -> client: the dataset is rebuilt, synced and marked done. */
export class Committed extends Schema.TaggedClass<Committed>()("Committed", {
  handle: Handle,
  dataset: DatasetName,
  size: Schema.Number,
  crc32: Schema.String
}) {}

/** Server -> client: this dataset failed; the connection and other datasets go on. */
export class Failed extends Schema.TaggedClass<Failed>()("Failed", {
  handle: Handle,
  dataset: Schema.String,
  code: Schema.String,
  message: Schema.String
}) {}

/** Client -> server: still here (sent when a connection would otherwise be silent). */
export class Ping extends Schema.TaggedClass<Ping>()("Ping", {}) {}

/** Either side: the connection is refused or broken; the sender closes it next. */
export class Refused extends Schema.TaggedClass<Refused>()("Refused", {
  code: Schema.String,
  message: Schema.String
}) {}

export const ControlMessage = Schema.Union(Welcome, Hello, Ready, Open, Opened, Committed, Failed, Ping, Refused)
export type ControlMessage = typeof ControlMessage.Type

const fromJson = Schema.parseJson(ControlMessage)
const decodeJson = Schema.decodeUnknownEither(fromJson)
const encodeJson = Schema.encodeSync(fromJson)

export const encodeControl = (message: ControlMessage): Buffer =>
  encodeFrame(FrameKind.Control, Buffer.from(encodeJson(message), "utf8"))

export const decodeControl = (body: Uint8Array): Either.Either<ControlMessage, string> =>
  decodeJson(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8")).pipe(
    Either.mapLeft((e) => ParseResult.TreeFormatter.formatErrorSync(e).split("\n").slice(0, 3).join(" "))
  )
