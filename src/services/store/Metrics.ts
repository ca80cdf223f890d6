/**
 * What the piece store counts (README: Operating ferry): per batch or per
 * dataset, never per piece.
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

export const writtenBytes = Metric.counter("ferry_serve_written_bytes_total", {
  description: "Original bytes written: slices inflated, verified and written at their place.",
  incremental: true
})
export const piecesVerified = Metric.counter("ferry_serve_pieces_verified_total", {
  description: "Pieces inflated, verified against their gzip trailer and written.",
  incremental: true
})
export const badPieces = Metric.counter("ferry_serve_bad_pieces_total", {
  description: "Batches refused for a bad piece, by reason (the failure code: BadPiece, BadIndex, DuplicatePiece, BadFrame).",
  incremental: true
})
export const batchesWritten = Metric.counter("ferry_serve_batches_total", {
  description: "Batches of pieces verified and written.",
  incremental: true
})
export const batchSeconds = Metric.histogram(
  "ferry_serve_batch_seconds",
  MetricBoundaries.fromIterable([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]),
  "Time to verify and write one batch, from handing it to the inflate threads (waiting for one included) until it is recorded, in seconds."
)
export const datasetsOpened = Metric.counter("ferry_serve_datasets_opened_total", {
  description: "Datasets taken up for writing, new or resumed (once each, however many connections carry it).",
  incremental: true
})
export const datasetsCommitted = Metric.counter("ferry_serve_datasets_committed_total", {
  description: "Datasets committed: file synced and renamed into place, marker written.",
  incremental: true
})
export const datasetsInProgress = Metric.gauge("ferry_serve_datasets_in_progress", {
  description: "Datasets being written now (leased, files open)."
})
