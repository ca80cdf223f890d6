/** `ferry send`: its options, and the run, handed to the sender pipeline (client/Client.ts). */
import * as Command from "@effect/cli/Command"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { OnCommitText } from "../client/Cleanup.js"
import { senderEndpoint } from "../client/Metrics.js"
import { defaultSendOptions, exitCodeOf, send, type SendOptions, watchPolicy } from "../client/Client.js"
import { FAR_CONNECTIONS, NEAR_ROUND_TRIP_MS } from "../client/Uplink.js"
import { makeBoard, Progress, runBoard, runProgressReports, summary as rateSummary } from "../client/Progress.js"
import { encodeEvent, type FerryEvent, stamp } from "../domain/Events.js"
import { flag, optionalFile, setting } from "../CliOptions.js"
import { TimetableText } from "../domain/Timetable.js"
import {
  AddressListText,
  Count,
  DurationText,
  fromText,
  PositiveCount,
} from "../domain/Units.js"
import { type LogOutput, logExit, stderrOutput } from "../Logging.js"
import { ClientLive } from "../Layers.js"
import { MonitorLive } from "../services/Monitor.js"
import { Throttle, ThrottleLive } from "../services/Throttle.js"
import { ExitCode } from "../domain/ExitCode.js"
import { Credentials } from "../services/Credentials.js"
import {
  certificatePair,
  credentialsLayer,
  handshakeTimeout,
  logging,
  metricsOption,
  nextSignal,
  printingEvents,
  reloadOnHangup,
  Reported,
  run,
  serveMetrics,
  signalExit,
  Text,
  tokenOption
} from "./common.js"

const Connections = fromText(
  Schema.Union(Schema.Number, Schema.Literal("auto")),
  "auto or a whole number above 0",
  (text): number | "auto" | undefined => (text.trim() === "auto" ? "auto" : Schema.decodeOption(PositiveCount)(text).pipe(Option.getOrUndefined)),
  String
)

/** stdout: one line per dataset as it finishes, or every event as a JSON line. */
const resultLine = (event: FerryEvent): string | undefined => {
  switch (event.event) {
    case "committed":
      return event.alreadyCommitted
        ? `${event.dataset}: already committed on the server (${event.bytes} bytes, crc32 ${event.crc32}), nothing sent`
        : `${event.dataset}: committed ${event.bytes} bytes in ${event.pieces} pieces (${event.sent} sent), crc32 ${event.crc32}`
    case "failed":
      return `${event.dataset}: failed (${event.code}): ${event.message}`
    default:
      return undefined
  }
}

export const sendCommand = Command.make(
  "send",
  {
    path: setting("path", Text, "DIR", "Folder holding NAME-NNNNNNN.gz pieces and NAME.done markers.").required,
    address: setting("address", AddressListText, "HOST:PORT[,HOST:PORT...]", "Server to send to; with several, datasets are spread over them and move to another when one goes away.").required,
    watch: flag("watch", "Keep watching --path and send every dataset whose marker appears, until stopped (SIGTERM or Ctrl-C)."),
    early: flag("early", "Send a dataset's pieces as they appear, before its marker (each once it looks finished); commit once the marker is there, as without it."),
    onCommit: setting("on-commit", OnCommitText, "keep|delete|move:DIR", "What to do with a dataset's files once the server has committed it.").withDefault({ _tag: "Keep" }),
    json: flag("json", "Events on stdout as JSON lines (see the README), instead of one line per dataset."),
    allowEmpty: flag("allow-empty", "A folder with no dataset is not an error (exit 0, not 4)."),
    connections: setting(
      "connections",
      Connections,
      "N|auto",
      `TCP connections to each server. auto: 1 when the first connection is set up within ${NEAR_ROUND_TRIP_MS} ms (loopback, a LAN, nearby), ${FAR_CONNECTIONS} when the server is farther.`
    ).withDefault(defaultSendOptions.connections),
    parallel: setting("parallel", PositiveCount, "N", "Datasets sent at the same time.").withDefault(defaultSendOptions.parallelDatasets),
    retries: setting("retries", Count, "N", "Reconnections in a row without progress before giving up on a server.").withDefault(defaultSendOptions.retries),
    retryFor: setting("retry-for", DurationText, "DURATION", "Time spent reconnecting without progress before giving up on a server, or waiting on a server that cannot take a dataset.")
      .withDefault(Duration.decode(defaultSendOptions.retryFor)),
    markerTimeout: setting("marker-timeout", DurationText, "DURATION", "A dataset whose marker has not appeared after this long fails (default: wait forever).").optional,
    bwlimit: setting(
      "bwlimit",
      TimetableText,
      "RATE|TIMETABLE",
      "Most bytes per second all connections put on the wire, such as 50MiB/s, or a timetable in local time such as \"08:00,10MiB/s 18:00,off\" or \"Mon-08:00,10MiB/s Sat-00:00,off\" (default: no limit)."
    ).optional,
    progressInterval: setting("progress-interval", DurationText, "DURATION", "Time between two progress lines (or progress events with --json) when stderr is not a terminal.")
      .withDefault(Duration.seconds(5)),
    token: tokenOption,
    tls: flag("tls", "Use TLS, verifying the server against the system's roots."),
    tlsCa: optionalFile("tls-ca", "Use TLS, verifying the server against this CA certificate (PEM)."),
    clientCertificate: certificatePair(
      "Show this certificate (PEM) to a server that asks for one (serve --tls-client-ca); with --tls-key. Implies --tls.",
      "The private key (PEM) of --tls-cert."
    ),
    tlsServername: setting("tls-servername", Text, "NAME", "Name the server's certificate must carry (default: the host of --address).").optional,
    handshakeTimeout: handshakeTimeout(false),
    quiet: flag("quiet", "No progress display."),
    readers: setting("readers", PositiveCount, "N", "Threads reading piece files where the native addon is not built (default 2); with it, batches are read on libuv's thread pool.").optional,
    metrics: metricsOption,
    ...logging
  },
  (flags) => {
    const tty = process.stderr.isTTY === true && !flags.quiet && flags.logFormat === "text"
    const board = makeBoard(stderrOutput.write, () => ({ columns: process.stderr.columns || 80, rows: process.stderr.rows || 24 }))
    // on a terminal, everything printed while the board is up goes above it
    const output: LogOutput = tty ? { write: (line) => board.above(line) } : stderrOutput
    const results = tty && process.stdout.isTTY === true
      ? (text: string) => Effect.sync(() => board.above(`${text}\n`, (s) => void process.stdout.write(s)))
      : undefined
    return run(
      flags,
      Effect.gen(function*() {
        const started = Date.now()
        const ca = Option.getOrUndefined(flags.tlsCa)
        const pair = flags.clientCertificate
        // SIGHUP: the token, CA, certificate and key are read again, for the connections made after; the
        // --bwlimit in force is read off the clock again (its value is the command line's: no file to read)
        yield* reloadOnHangup(Effect.zipRight((yield* Credentials).reload, (yield* Throttle).reapply))
        const options: SendOptions = {
          ...defaultSendOptions,
          ...(flags.watch ? watchPolicy : {}),
          dir: flags.path,
          addresses: flags.address,
          connections: flags.connections,
          parallelDatasets: flags.parallel,
          retries: flags.watch ? watchPolicy.retries : flags.retries,
          retryFor: flags.watch ? watchPolicy.retryFor : flags.retryFor,
          token: flags.token?.token,
          tls: flags.tls || ca !== undefined || pair !== undefined
            ? { ca: ca?.bytes, servername: Option.getOrUndefined(flags.tlsServername), cert: pair?.cert.bytes, key: pair?.key.bytes }
            : undefined,
          handshakeTimeout: flags.handshakeTimeout,
          watch: flags.watch,
          early: flags.early,
          markerTimeout: Option.getOrUndefined(flags.markerTimeout),
          onCommit: flags.onCommit
        }
        if (Option.isSome(flags.metrics)) yield* serveMetrics({ ...flags.metrics.value, ...(yield* senderEndpoint) })
        if (!tty && !flags.quiet) {
          yield* runProgressReports({
            every: flags.progressInterval,
            events: flags.json,
            // periodic progress lines are not log events: they would break a stream of JSON log lines
            ...(flags.json || flags.logFormat === "json" ? {} : { line: (text: string) => Effect.sync(() => stderrOutput.write(`${text}\n`)) })
          })
        }
        const outcome = yield* Effect.raceFirst(
          Effect.map(send(options), (summary) => ({ _tag: "Done" as const, summary })),
          Effect.map(nextSignal, (signal) => ({ _tag: "Stopped" as const, signal }))
        ).pipe(
          (work) => printingEvents(flags.json, resultLine, work, results),
          // the board is left on screen before the summary, which comes below it
          (work) => (tty ? Effect.scoped(Effect.zipRight(runBoard(board), work)) : work)
        )
        const progress = yield* Progress
        const snapshot = yield* SubscriptionRef.get(progress.state)
        const committed = [...snapshot.values()].filter((p) => p.phase === "committed")
        const bytes = committed.reduce((n, p) => n + p.bytes - p.heldBytes, 0)
        if (outcome._tag === "Stopped") {
          const exitCode = signalExit(outcome.signal)
          yield* Effect.logWarning(`stopped by ${outcome.signal}: ${committed.length} dataset(s) committed; running the same command again sends only what is missing`)
          if (flags.json) yield* Console.log(encodeEvent(stamp({ event: "finished", committed: committed.length, failed: 0, exitCode })))
          return yield* Effect.fail(new Reported({ exitCode }))
        }
        const summary = outcome.summary
        const exitCode = exitCodeOf(summary, flags.allowEmpty)
        if (summary.found === 0 && summary.committed.length === 0) {
          const message = `${flags.path}: no dataset found (expected files named like abc-0000000.gz and abc.done)`
          if (exitCode !== ExitCode.Ok) return yield* Effect.zipRight(logExit(message, exitCode), Effect.fail(new Reported({ exitCode })))
          yield* Effect.logInfo(message)
        }
        yield* Effect.logInfo(`done: ${summary.committed.length} dataset(s) committed, ${summary.failed.length} failed, ${rateSummary(bytes, (Date.now() - started) / 1000)} sent`)
        if (flags.json) yield* Console.log(encodeEvent(stamp({ event: "finished", committed: summary.committed.length, failed: summary.failed.length, exitCode })))
        if (exitCode !== ExitCode.Ok) {
          const why = exitCode === ExitCode.Unreachable && summary.unreachable !== undefined
            ? summary.unreachable.message
            : summary.failed.length === 1 ? summary.failed[0]!.error.message : `${summary.failed.length} datasets failed (see above)`
          yield* logExit(why, exitCode)
          return yield* Effect.fail(new Reported({ exitCode }))
        }
      }).pipe(
        Effect.scoped,
        Effect.provide(Layer.mergeAll(
          credentialsLayer({ token: flags.token, pair: flags.clientCertificate, ca: Option.getOrUndefined(flags.tlsCa) }),
          ClientLive(Option.isSome(flags.readers) ? { readers: flags.readers.value } : {}),
          MonitorLive,
          Option.isSome(flags.bwlimit) ? ThrottleLive(flags.bwlimit.value) : Layer.empty
        ))
      ),
      output
    )
  }
).pipe(Command.withDescription("Send every dataset in a folder to ferry servers, waiting for markers that are not there yet; with --watch, keep sending as datasets appear."))
