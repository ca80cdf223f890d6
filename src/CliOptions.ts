/**
 * How ferry's options are read: every option is a flag, else the environment
 * variable FERRY_<FLAG> (`--max-connections` is FERRY_MAX_CONNECTIONS), else
 * its default. Flag and variable are decoded by the same schema, and an error
 * names the one that was wrong: `--max-frame must be ...` or `FERRY_MAX_FRAME
 * must be ...`. Defaults are the pipelines' own values, shown in --help as the
 * schema writes them (16777216 shows as 16MiB).
 */
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { parseToken } from "./domain/Auth.js"
import { fromText } from "./domain/Units.js"

/** `max-connections` → `FERRY_MAX_CONNECTIONS`. */
export const envName = (flag: string): string => `FERRY_${flag.toUpperCase().replace(/-/g, "_")}`

/** A value that cannot be used: the command line is wrong (exit 2). */
export const usageError = (message: string) => ValidationError.invalidValue(HelpDoc.p(message))

/** Text given for an option, and where: `--max-frame` or `FERRY_MAX_FRAME`, so that an error can say which. */
interface Given {
  readonly from: string
  readonly text: string
}

const fromEnv = (env: string) => Config.map(Config.string(env), (text): Given => ({ from: env, text }))

/** The flag's text, else the environment variable's. */
const given = (flag: string): Options.Options<Given> =>
  Options.text(flag).pipe(
    Options.map((text): Given => ({ from: `--${flag}`, text })),
    Options.withFallbackConfig(fromEnv(envName(flag)))
  )

const decodeGiven = <A>(schema: Schema.Schema<A, string>) => ({ from, text }: Given) =>
  Either.match(Schema.decodeEither(schema)(text), {
    onLeft: (error) => Effect.fail(usageError(`${from} ${ParseResult.ArrayFormatter.formatErrorSync(error)[0]?.message ?? "is not valid"}`)),
    onRight: Effect.succeed
  })

/** How an option shows in --help: its placeholder in the usage line, what it is, whether it must be given, its variable. */
const described = (flag: string, placeholder: string | undefined, description: string, presence: string) => <A>(self: Options.Options<A>) =>
  (placeholder === undefined ? self : Options.withPseudoName(self, placeholder)).pipe(
    Options.withDescription(description),
    Options.withDescription(`${presence}; or ${envName(flag)} in the environment.`)
  )

/** An option holding a value of a schema, taken one of three ways. */
export interface Setting<A> {
  /** Must be given, as the flag or in the environment. */
  readonly required: Options.Options<A>
  /** May be left out for `fallback`, which --help shows as the schema writes it. */
  readonly withDefault: (fallback: A) => Options.Options<A>
  readonly optional: Options.Options<Option.Option<A>>
}

/** `--flag PLACEHOLDER`, decoded by `schema` from the flag or from FERRY_FLAG. */
export const setting = <A>(flag: string, schema: Schema.Schema<A, string>, placeholder: string, description: string): Setting<A> => {
  const read = given(flag).pipe(Options.mapEffect(decodeGiven(schema)))
  return {
    required: read.pipe(described(flag, placeholder, description, "Required")),
    withDefault: (fallback) =>
      read.pipe(described(flag, placeholder, description, `Default: ${Schema.encodeSync(schema)(fallback)}`), Options.withDefault(fallback)),
    optional: read.pipe(described(flag, placeholder, description, "Optional"), Options.optional)
  }
}

const Switch = fromText(Schema.Boolean, "true or false (1 or 0)", (text) => {
  const word = text.trim().toLowerCase()
  return ["1", "true", "yes", "on"].includes(word) ? true : ["0", "false", "no", "off", ""].includes(word) ? false : undefined
}, String)

/** A flag without a value; FERRY_<FLAG>=1 (or true, yes, on) in the environment does the same. */
export const flag = (name: string, description: string): Options.Options<boolean> =>
  Options.boolean(name).pipe(
    Options.withFallbackConfig(fromEnv(envName(name))),
    Options.mapEffect((value) => (typeof value === "boolean" ? Effect.succeed(value) : decodeGiven(Switch)(value))),
    described(name, undefined, description, "Off unless given")
  )

const readGiven = ({ from, text: file }: Given) =>
  Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFile(file)).pipe(
    Effect.map((bytes) => Buffer.from(bytes)),
    Effect.mapError((e) => usageError(`${from} ${file}: ${e._tag === "SystemError" && e.reason === "NotFound" ? "no such file" : e.message}`))
  )

/** A file read with the command line, and where it was named (the flag or variable, and the path), to be read again on a reload. */
export interface GivenFile {
  readonly flag: string
  readonly path: string
  readonly bytes: Buffer
}

/** An optional file, read with the command line, so that a missing one is a usage error. */
export const optionalFile = (name: string, description: string): Options.Options<Option.Option<GivenFile>> =>
  given(name).pipe(
    Options.mapEffect((file) => Effect.map(readGiven(file), (bytes): GivenFile => ({ flag: file.from, path: file.text, bytes }))),
    described(name, "FILE", description, "Optional"),
    Options.optional
  )

/** The shared secret, and the file it was read from (none for FERRY_TOKEN). */
export interface GivenToken {
  readonly token: string
  readonly file: { readonly flag: string; readonly path: string } | undefined
}

/**
 * The shared secret: the file named by --token-file (or FERRY_TOKEN_FILE),
 * else the token itself in FERRY_TOKEN; undefined when none is given.
 */
export const token = (description: string): Options.Options<GivenToken | undefined> =>
  given("token-file").pipe(
    Options.mapEffect((file) =>
      Effect.map(readGiven(file), (bytes) => ({ from: `${file.from} ${file.text}`, text: bytes.toString("utf8"), file: { flag: file.from, path: file.text } }))
    ),
    Options.withFallbackConfig(Config.map(Config.redacted("FERRY_TOKEN"), (secret) => ({ from: "FERRY_TOKEN", text: Redacted.value(secret), file: undefined }))),
    Options.mapEffect(({ file, from, text }) => {
      const parsed = parseToken(text)
      return "problem" in parsed ? Effect.fail(usageError(`${from}: ${parsed.problem}`)) : Effect.succeed({ token: parsed.token, file })
    }),
    Options.withPseudoName("FILE"),
    Options.withDescription(description),
    Options.withDescription(`Optional; or ${envName("token-file")} in the environment, or the token itself in FERRY_TOKEN.`),
    Options.optional,
    Options.map(Option.getOrUndefined)
  )

/** One of a few words: `choice(["text", "json"])` fails with "must be text or json, not ...". */
export const choice = <const L extends string>(words: readonly [L, ...Array<L>]): Schema.Schema<L, string> =>
  fromText(
    Schema.Literal(...words),
    words.length === 1 ? words[0] : `${words.slice(0, -1).join(", ")} or ${words.at(-1)}`,
    (text) => words.find((w) => w === text.trim()),
    (word) => word
  )
