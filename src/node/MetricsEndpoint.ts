/**
 * The metrics endpoint (`--metrics HOST:PORT`): an HTTP listener, off the
 * data path, that answers `GET /metrics` with Effect's metric registry in
 * Prometheus's text format (domain/Prometheus.ts), `GET /healthz` with 200
 * `ok` or 503 and one line saying why, and 404 anything else. The metrics
 * themselves are declared beside the code they measure; this only reads
 * them, when scraped.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as http from "node:http"
import { TransportError } from "../domain/Errors.js"
import { CONTENT_TYPE, exposition } from "../domain/Prometheus.js"
import { type Address, formatAddress } from "../domain/Units.js"

/** When the process started, as Prometheus's client libraries all say it. */
export const processStartTime = Metric.gauge("process_start_time_seconds", { description: "Start time of the process since the Unix epoch, in seconds." })

/** The kinds of metric ferry declares. */
export type AnyMetric = Metric.Metric.Counter<number> | Metric.Metric.Gauge<number> | Metric.Metric.Histogram<number>

export interface MetricsEndpointOptions {
  readonly host: string
  readonly port: number
  /** Metrics shown from the first scrape on (at zero until they change), rather than from their first update. */
  readonly metrics: ReadonlyArray<AnyMetric>
  /** Runs before each scrape: gauges that are read when scraped. */
  readonly refresh: Effect.Effect<void>
  /** None when healthy; else why not, in one line. */
  readonly health: Effect.Effect<Option.Option<string>>
}

/**
 * The families shown: ferry's and the process's. Effect's own runtime metrics (effect_fiber_*,
 * on by default) stay out: they have no help text and their counters lack the `_total` suffix.
 */
const shown = (name: string) => name.startsWith("ferry_") || name.startsWith("process_")

const text = (body: string, status = 200, contentType = "text/plain; charset=utf-8") => HttpServerResponse.text(body, { status, contentType })

/** Listens until the scope closes; answers the bound address (port 0 picks a free one) and logs it. */
export const serveMetrics = (options: MetricsEndpointOptions): Effect.Effect<Address, TransportError, Scope.Scope> =>
  Effect.gen(function*() {
    yield* Metric.set(processStartTime, Math.round(performance.timeOrigin) / 1000)
    // reading a metric registers it
    yield* Effect.sync(() => options.metrics.forEach((metric) => metric.unsafeValue([])))

    const app = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const path = request.url.split("?", 1)[0]
      if (path !== "/metrics" && path !== "/healthz") return text("not found\n", 404)
      if (request.method !== "GET" && request.method !== "HEAD") {
        return HttpServerResponse.text("only GET\n", { status: 405, headers: { allow: "GET, HEAD" } })
      }
      if (path === "/healthz") {
        const problem = yield* options.health
        return Option.isNone(problem) ? text("ok\n") : text(`${problem.value}\n`, 503)
      }
      yield* options.refresh
      const snapshot = yield* Metric.snapshot
      return text(exposition(snapshot.filter((pair) => shown(pair.metricKey.name))), 200, CONTENT_TYPE)
    })

    const wanted = formatAddress(options)
    const server = yield* NodeHttpServer.make(() => http.createServer(), { host: options.host, port: options.port }).pipe(
      Effect.mapError((e) => {
        const cause = e.cause as NodeJS.ErrnoException | undefined
        const why = cause?.code === "EADDRINUSE" ? "the address is in use" : cause?.code === "EADDRNOTAVAIL" ? "no such address on this machine" : String(cause?.message ?? e.message)
        return new TransportError({ address: wanted, reason: `cannot serve metrics: ${why}` })
      })
    )
    yield* server.serve(app)
    const bound = server.address._tag === "TcpAddress" ? { host: server.address.hostname, port: server.address.port } : { host: options.host, port: options.port }
    yield* Effect.logInfo(`metrics on http://${formatAddress(bound)}/metrics`)
    return bound
  })
