/**
 * ferry as a library: the client and server pipelines as Effects, with the
 * layers they need, live and in-memory.
 */
export * from "./client/Client.js"
export * from "./domain/Dataset.js"
export * from "./domain/Errors.js"
export * as Frame from "./domain/Frame.js"
export * as Protocol from "./domain/Protocol.js"
export { ExitCode, cli } from "./Cli.js"
export * from "./server/Server.js"
export * from "./services/DatasetScanner.js"
export * from "./services/GunzipPool.js"
export * from "./services/PieceReader.js"
export * from "./services/PieceStore.js"
export * from "./services/SampleMaker.js"
export * from "./services/Transport.js"
