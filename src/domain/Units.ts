/** Command-line quantities: byte sizes with units, durations, HOST:PORT addresses, counts. */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"

const UNITS: Record<string, number> = {
  "": 1, b: 1,
  k: 1e3, kb: 1e3, kib: 1024,
  m: 1e6, mb: 1e6, mib: 1024 ** 2,
  g: 1e9, gb: 1e9, gib: 1024 ** 3,
  t: 1e12, tb: 1e12, tib: 1024 ** 4
}

/** "16384", "16KiB", "1.5GB" to bytes; undefined when it is not a size. */
export const parseBytes = (text: string): number | undefined => {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$/.exec(text)
  if (m === null) return undefined
  const unit = UNITS[m[2]!.toLowerCase()]
  if (unit === undefined) return undefined
  const bytes = Math.round(Number(m[1]) * unit)
  return Number.isSafeInteger(bytes) ? bytes : undefined
}

export interface Address {
  readonly host: string
  readonly port: number
}

/** "host:port", or "[v6]:port" for an IPv6 host: what parseAddress reads. */
export const formatAddress = (a: Address): string => (a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`)

/** "host:port" or "[v6]:port"; undefined when it is not one. An address to listen on may have port 0 (any free one). */
export const parseAddress = (text: string, lowestPort = 1): Address | undefined => {
  const m = /^\[([^\]]+)\]:([0-9]{1,5})$/.exec(text) ?? /^([^:\s]+):([0-9]{1,5})$/.exec(text)
  if (m === null) return undefined
  const port = Number(m[2])
  if (port < lowestPort || port > 65535) return undefined
  return { host: m[1]!, port }
}

export const formatBytes = (bytes: number): string => {
  if (bytes < 1000) return `${bytes} B`
  const units = ["kB", "MB", "GB", "TB"]
  let v = bytes
  let u = -1
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000
    u++
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`
}

/** Bytes in the largest binary unit that holds them exactly: 16777216 is "16MiB"; the inverse of `parseBytes`. */
export const formatByteSize = (bytes: number): string => {
  for (const [unit, size] of [["TiB", 1024 ** 4], ["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`
  }
  return String(bytes)
}

const COMPACT_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** "1h30m", "2s", "500ms", "1.5m": numbers each followed by ms, s, m, h or d; undefined when it is not that. */
const parseCompact = (text: string): Duration.Duration | undefined => {
  const parts = /^(?:\s*[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d))+$/.test(text) ? text.matchAll(/([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)/g) : undefined
  if (parts === undefined) return undefined
  let millis = 0
  for (const [, amount, unit] of parts) millis += Number(amount) * COMPACT_UNITS[unit!]!
  return Duration.millis(Math.round(millis))
}

/**
 * A duration as people write it: "10" (seconds, as ferry always took them), "1.5", the compact
 * "500ms", "2s", "5m", "1h30m", or Effect's "500 millis", "2 minutes"; undefined unless above 0.
 */
export const parseDuration = (text: string): Duration.Duration | undefined => {
  const trimmed = text.trim().toLowerCase()
  const duration = /^[0-9]+(?:\.[0-9]+)?$/.test(trimmed)
    ? Option.some(Duration.millis(Math.round(Number(trimmed) * 1000)))
    : Option.orElse(Option.fromNullable(parseCompact(trimmed)), () => Duration.decodeUnknown(trimmed))
  return Option.isSome(duration) && Duration.isFinite(duration.value) && Duration.greaterThan(duration.value, Duration.zero)
    ? duration.value
    : undefined
}

/** A duration as `parseDuration` reads it back, in the compact form: "1h30m", "2s", "1500ms". */
export const formatDuration = (duration: Duration.Duration): string => {
  let millis = Duration.toMillis(duration)
  if (millis % 1000 !== 0) return `${millis}ms`
  let out = ""
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (millis >= size) {
      out += `${Math.floor(millis / size)}${unit}`
      millis %= size
    }
  }
  return out
}

/**
 * A quantity written as text, for flags and environment variables: decoding
 * fails with "must be EXPECTED, not TEXT", encoding writes it the way a user would.
 */
export const fromText = <A>(
  target: Schema.Schema<A>,
  expected: string,
  read: (text: string) => A | undefined,
  write: (value: A) => string
): Schema.Schema<A, string> =>
  Schema.transformOrFail(Schema.String, Schema.typeSchema(target), {
    strict: true,
    decode: (text, _, ast) => {
      const value = read(text)
      return value === undefined
        ? ParseResult.fail(new ParseResult.Type(ast, text, `must be ${expected}, not ${JSON.stringify(text)}`))
        : ParseResult.succeed(value)
    },
    encode: (value) => ParseResult.succeed(write(value))
  })

const wholeNumber = (text: string): number | undefined =>
  /^\s*[0-9]+\s*$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : undefined

/** A count of something that must exist at least once: connections, datasets, pieces. */
export const PositiveCount = fromText(Schema.Number, "a whole number above 0", (text) => {
  const n = wholeNumber(text)
  return n !== undefined && n > 0 ? n : undefined
}, String)

/** A count that may be zero: retries, a first piece number. */
export const Count = fromText(Schema.Number, "a whole number, 0 or more", wholeNumber, String)

/** Any whole number, negative included: a seed. */
export const WholeNumber = fromText(Schema.Number, "a whole number", (text) => {
  const n = /^\s*-?[0-9]+\s*$/.test(text) ? Number(text) : Number.NaN
  return Number.isSafeInteger(n) ? n : undefined
}, String)

/** A TCP port to listen on; 0 picks a free one. */
export const Port = fromText(Schema.Number, "a port number from 0 to 65535", (text) => {
  const n = wholeNumber(text)
  return n !== undefined && n <= 65535 ? n : undefined
}, String)

/** Bytes, with or without a unit: "16384", "16KiB", "1.5GB". */
export const ByteSize = fromText(Schema.Number, "a size in bytes such as 16384 or 16KiB", parseBytes, formatByteSize)

/** Seconds ("10"), or a duration as people write it ("500ms", "2s", "5m", "1h30m", "2 minutes", "500 millis"), above 0. */
export const DurationText = fromText(Schema.DurationFromSelf, "a number of seconds or a duration such as 500ms, 2s, 5m, 1h30m or \"2 minutes\", above 0", parseDuration, formatDuration)

/** HOST:PORT to listen on; port 0 picks a free one. */
export const ListenAddressText = fromText(
  Schema.Struct({ host: Schema.String, port: Schema.Number }),
  "HOST:PORT (port 0 picks a free one)",
  (text) => parseAddress(text, 0),
  ({ host, port }) => (host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`)
)

/** Bytes above 0: a limit or a slice size. */
export const PositiveByteSize = fromText(Schema.Number, "a size in bytes above 0 such as 16384 or 16KiB", (text) => {
  const n = parseBytes(text)
  return n !== undefined && n > 0 ? n : undefined
}, formatByteSize)

/** One HOST:PORT or several, comma-separated: the servers a sender spreads its datasets over. */
export const AddressListText = fromText(
  Schema.Array(Schema.Struct({ host: Schema.String, port: Schema.Number })),
  "HOST:PORT, or several separated by commas",
  (text) => {
    const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "")
    const addresses = parts.map((p) => parseAddress(p))
    return parts.length > 0 && addresses.every((a) => a !== undefined) ? addresses as Array<{ host: string; port: number }> : undefined
  },
  (list) => list.map(({ host, port }) => (host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`)).join(",")
)

/** "50MiB/s", "10MB/s", "1000000" (bytes per second); undefined unless above 0. */
export const parseRate = (text: string): number | undefined => {
  const bytes = parseBytes(text.trim().replace(/\/s$/i, ""))
  return bytes !== undefined && bytes > 0 ? bytes : undefined
}
