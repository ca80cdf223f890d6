/**
 * The `ferry` command line: send, serve, fake. This file declares the commands
 * and their options (read as CliOptions.ts says: flag, else FERRY_* variable,
 * else the pipeline's default) and maps them onto the pipelines' options.
 * Whatever goes wrong ends as one line on stderr, in the chosen log format,
 * and an exit code.
 */
import * as CliConfig from "@effect/cli/CliConfig"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as Terminal from "@effect/platform/Terminal"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { envName } from "./CliOptions.js"
import { VERSION } from "./domain/Version.js"
import { type LogFormat, logExit } from "./Logging.js"
import { ExitCode } from "./domain/ExitCode.js"
import { cliConsole, errorLine, tidyHelp } from "./cli/help.js"
import { logging, loggingFor, Reported } from "./cli/common.js"
import { sendCommand } from "./cli/send.js"
import { serveCommand } from "./cli/serve.js"
import { fakeCommand } from "./cli/fake.js"

export { ExitCode }
export { errorLine, tidyHelp }

/* ferry */

export const ferry = Command.make("ferry").pipe(
  Command.withDescription("Move chunked gzip datasets between machines and rebuild them."),
  Command.withSubcommands([sendCommand, serveCommand, fakeCommand])
)

const footer = HelpDoc.blocks([
  HelpDoc.h1("ENVIRONMENT"),
  HelpDoc.p(
    `Every option can also be set as FERRY_ and its name in capitals: --max-connections 512 is ${envName("max-connections")}=512, --debug is ${envName("debug")}=1. A flag wins over the environment, which wins over the default. FERRY_TOKEN holds the shared secret itself.`
  ),
  HelpDoc.h1("MORE"),
  HelpDoc.p("ferry COMMAND --help shows a command's options; ferry --version prints the version."),
  HelpDoc.p("Exit codes: 0 done, 1 the job failed, 2 the command line was wrong, 130 interrupted.")
])

const app = Command.run(ferry, { name: "ferry", version: VERSION, footer })

/**
 * The log format for the one line that says the command line is wrong. Commands read
 * `--log-format` with the rest of their options (their logger is made from the parsed
 * flags), but when that parse fails there are no parsed options to read it from: this
 * reads the one option on its own (flag, else FERRY_LOG_FORMAT, else text), with the
 * same declaration, and only for that line. A value it cannot read is text.
 */
export const usageLogFormat = (args: ReadonlyArray<string>) =>
  Options.processCommandLine(logging.logFormat, args, CliConfig.defaultConfig).pipe(
    Effect.map(([, , format]) => format),
    Effect.orElseSucceed((): LogFormat => "text")
  )

/** The command line is wrong: one line, exit 2. */
const usageFailure = (args: ReadonlyArray<string>, message: string) =>
  Effect.flatMap(usageLogFormat(args), (format) =>
    logExit(message, ExitCode.Usage).pipe(Effect.provide(loggingFor({ logFormat: format, debug: false })), Effect.as(ExitCode.Usage)))

/** The wizard asks its questions on a terminal: without one it would wait forever. */
const interactive = Effect.zipWith(
  Effect.flatMap(Terminal.Terminal, (t) => t.isTTY),
  Effect.sync(() => process.stdin.isTTY === true),
  (stdout, stdin) => stdout && stdin
)

/**
 * Runs ferry on `argv` (as process.argv: node, script, then the arguments) and
 * gives its exit code; every failure has been told on stderr by then.
 */
export const cli = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const args = argv.slice(2)
    if (args.includes("--wizard") && !(yield* interactive)) {
      return yield* usageFailure(args, "--wizard asks its questions on a terminal; give the options on the command line instead (ferry --help)")
    }
    // help in colour only on a terminal, and not when NO_COLOR is set (no-color.org)
    const noColor = yield* Effect.orElseSucceed(Config.string("NO_COLOR"), () => "")
    const color = (yield* Effect.flatMap(Terminal.Terminal, (t) => t.isTTY)) && noColor === ""
    const direct = yield* Effect.console
    return yield* app(argv).pipe(
      Effect.as(ExitCode.Ok),
      Effect.catchAll((e) => (e instanceof Reported ? Effect.succeed(e.exitCode) : usageFailure(args, errorLine(e.error)))),
      Effect.withConsole(cliConsole(direct, color)),
      Effect.provide(CliConfig.layer({ showBuiltIns: false })),
      Effect.catchAllDefect((defect) =>
        logExit(`internal error: ${defect instanceof Error ? defect.message : String(defect)}`, ExitCode.Failed).pipe(
          Effect.provide(loggingFor({ logFormat: "text", debug: false })),
          Effect.as(ExitCode.Failed)
        )
      )
    )
  })

/** The process's exit code once `cli` is done: its own, or 130 when interrupted (Ctrl-C). */
export const exitCode = (exit: Exit.Exit<unknown, unknown>): number =>
  Exit.isSuccess(exit)
    ? typeof exit.value === "number" ? exit.value : ExitCode.Ok
    : Cause.isInterruptedOnly(exit.cause)
    ? ExitCode.Interrupted
    : ExitCode.Failed
