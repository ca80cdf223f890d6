/** Entry point of bin/ferry. */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import { cli, exitCode } from "./Cli.js"

cli(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  // cli reports every failure itself, through ferry's logger
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true, teardown: (exit, onExit) => onExit(exitCode(exit)) })
)
