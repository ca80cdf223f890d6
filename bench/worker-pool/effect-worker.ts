import * as Runner from "@effect/platform/WorkerRunner"
import * as NodeWorkerRunner from "@effect/platform-node/NodeWorkerRunner"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
const Live = Runner.layer((n: number) => Effect.succeed(n + 1)).pipe(Layer.provide(NodeWorkerRunner.layer))
NodeRuntime.runMain(Runner.launch(Live))
