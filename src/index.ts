/**
 * ferry as a library: the send and serve pipelines as Effects, their
 * options, what they report (a summary, progress as a SubscriptionRef, and
 * events), and the layers they run on: live ones (TCP, worker threads, the
 * real disk) and in-process ones (the same pipelines, in one process).
 */
export {
  defaultSendOptions,
  exitCodeOf,
  send,
  watchPolicy,
  type DatasetFailure,
  type SendEnvironment,
  type SendOptions,
  type SendSummary
} from "./client/Client.js"
export type { DatasetReport } from "./client/Transfer.js"
export { parseOnCommit, type OnCommit } from "./client/Cleanup.js"
export { Progress, ProgressLive, describe as describeProgress, type DatasetProgress, type Phase, type Snapshot } from "./client/Progress.js"
export { defaultServeOptions, serve, type ServeOptions } from "./server/Server.js"
export { ClientInProcess, ClientLive, TransportInProcess, SampleLive, ServerInProcess, ServerLive, type ClientLayerOptions, type ServerLayerOptions } from "./Layers.js"
export { makeDataset, SampleMaker, type DatasetSpec, type SampleMade } from "./services/SampleMaker.js"
export { Monitor, MonitorLive, type MonitorService } from "./services/Monitor.js"
export { ThrottleLive } from "./services/Throttle.js"
export { PieceStore, defaultStoreLimits, type Commit, type StoreLimits } from "./services/PieceStore.js"
export { formatAddress, type Address } from "./domain/Units.js"
export * from "./domain/Dataset.js"
export * from "./domain/Errors.js"
export * from "./domain/Codes.js"
export * as Events from "./domain/Events.js"
export { cli, exitCode } from "./Cli.js"
export { ExitCode } from "./domain/ExitCode.js"
