/** @effect/cli's own output (help, version, command-line errors), made what ferry promises. */
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { envName } from "../CliOptions.js"

const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g

/** Paragraphs @effect/cli adds to every option; each option's own lines already say it, and precisely. */
const BOILERPLATE = new Set([
  "A user-defined piece of text.",
  "A true or false value.",
  "This option can be set from environment variables.",
  "This setting is optional."
])

/**
 * Help as ferry shows it: usage lines name the program (`ferry send ...`, not
 * `$ send ...`), no boilerplate, colour only when wanted.
 */
export const tidyHelp = (text: string, color: boolean): string => {
  const lines = text.split("\n").flatMap((line) => {
    const plain = line.replace(ANSI, "")
    if (BOILERPLATE.has(plain.trim())) return []
    if (plain.startsWith("$ ")) {
      const usage = plain.slice(2)
      return [usage === "ferry" || usage.startsWith("ferry ") ? usage : `ferry ${usage}`]
    }
    // a command's usage and description, padded into one line as wide as the longest usage: two lines instead
    const listed = /^(\s*)- (\S.*?\S) {2,}(\S.*)$/.exec(plain)
    if (listed !== null) return [`${listed[1]}- ferry ${listed[2]}`, `${listed[1]}  ${listed[3]}`]
    return [color ? line : plain]
  })
  return lines.join("\n").replace(/\n{3,}/g, "\n\n").replace(/\n+$/, "")
}

/** A command-line error as one line: @effect/cli words it as paragraphs, which become clauses. */
export const errorLine = (doc: HelpDoc.HelpDoc): string =>
  HelpDoc.toAnsiText(doc)
    .replace(ANSI, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .map((l) => l.replace(/^Expected to find option: '--([a-z-]+)'$/, (_, flag: string) => `missing --${flag} (or ${envName(flag)})`))
    .join("; ")

const Direct = Symbol.for("ferry/Cli/direct")

/** The console @effect/cli prints through, holding the one it replaces. */
export interface CliConsole extends Console.Console {
  readonly [Direct]: Console.Console
}

/** Help tidied; errors left to `cli`, which prints each as one line (@effect/cli prints, then fails with it). */
export const cliConsole = (direct: Console.Console, color: boolean): CliConsole => ({
  ...direct,
  [Direct]: direct,
  log: (...args) => direct.log(...args.map((a) => (typeof a === "string" ? tidyHelp(a, color) : a))),
  error: () => Effect.void
})

/** A command's own output goes to the console @effect/cli's was put over, untouched. */
export const directOutput = <A, E, R>(program: Effect.Effect<A, E, R>) =>
  Effect.consoleWith((console) => (Direct in console ? Effect.withConsole(program, (console as CliConsole)[Direct]) : program))
