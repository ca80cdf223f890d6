/** What a server's connections count (README: Operating ferry). Updated per connection, frame or dataset, never per piece. */
import * as Metric from "effect/Metric"

export const connectionsAccepted = Metric.counter("ferry_serve_connections_accepted_total", {
  description: "Connections that passed the handshake.",
  incremental: true
})
export const connectionsRefused = Metric.counter("ferry_serve_connections_refused_total", {
  description: "Connections refused (a Refused message: a wrong token, a client certificate missing or untrusted, ...), or dropped for a frame that could not be read, by code.",
  incremental: true
})
export const receivedBytes = Metric.counter("ferry_serve_received_bytes_total", {
  description: "Compressed piece bytes received in pieces frames, framing not included.",
  incremental: true
})
export const datasetsFailed = Metric.counter("ferry_serve_datasets_failed_total", {
  description: "Datasets failed, by code: one per Failed answer to a sender (refusals at open included).",
  incremental: true
})
