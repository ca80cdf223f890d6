/**
 * Entry point of bin/ferry. Signals are the commands' to handle (Cli.ts:
 * `serve` stops cleanly, `send` says what a rerun resumes), so the runtime
 * does not turn them into an interruption of its own.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Effect from "effect/Effect"
import { cli, exitCode } from "./Cli.js"

const keepAlive = setInterval(() => {}, 2 ** 31 - 1)
Effect.runFork(cli(process.argv).pipe(Effect.provide(NodeContext.layer))).addObserver((exit) => {
  clearInterval(keepAlive)
  // ending naturally lets stdout drain into a pipe; whatever still holds the loop gets a moment
  process.exitCode = exitCode(exit)
  setTimeout(() => process.exit(), 1000).unref()
})
