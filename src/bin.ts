/** Entry point of bin/ferry. */
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { cli, ExitCode } from "./Cli.js"

cli(process.argv).pipe(
  // @effect/cli has already printed what was wrong with the command line
  Effect.catchIf(ValidationError.isValidationError, () =>
    Effect.sync(() => {
      process.exitCode = ExitCode.Usage
    })),
  Effect.provide(NodeContext.layer),
  (program) =>
    NodeRuntime.runMain(program, {
      disableErrorReporting: true,
      disablePrettyLogger: true,
      teardown: (exit, onExit) =>
        onExit(
          Exit.isFailure(exit)
            ? Cause.isInterruptedOnly(exit.cause) ? ExitCode.Interrupted : ExitCode.Failed
            : Number(process.exitCode ?? 0)
        )
    })
)
