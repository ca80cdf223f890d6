/**
 * Effect's metrics as Prometheus reads them: the text exposition format
 * 0.0.4, from a snapshot of the registry (`Metric.snapshot`). One family per
 * name, with its HELP (the metric's description) and TYPE lines, then its
 * samples; counters and gauges as they are, histograms as cumulative
 * `_bucket{le=...}` lines ending with `+Inf`, then `_sum` and `_count`,
 * summaries as `{quantile=...}` lines, `_sum` and `_count`. Pure: no I/O.
 */
import type * as MetricKey from "effect/MetricKey"
import * as MetricKeyType from "effect/MetricKeyType"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

/** The Content-Type of an exposition. */
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

/** HELP text: backslash and line feed escaped. */
export const escapeHelp = (text: string): string => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")

/** A label value between double quotes: backslash, double quote and line feed escaped. */
export const escapeLabelValue = (text: string): string => text.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

/** A metric name Prometheus accepts (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other characters become `_`. */
export const metricName = (name: string): string => {
  const safe = name.replace(/[^a-zA-Z0-9_:]/g, "_")
  return safe === "" || /^[0-9]/.test(safe) ? `_${safe}` : safe
}

/** A label name Prometheus accepts (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`, which is reserved). */
export const labelName = (name: string): string => {
  const safe = name.replace(/[^a-zA-Z0-9_]/g, "_")
  const leading = safe === "" || /^[0-9]/.test(safe) ? `_${safe}` : safe
  return leading.startsWith("__") ? `x${leading}` : leading
}

/** A sample value as Go's ParseFloat reads it. */
export const formatValue = (value: number | bigint): string => {
  if (typeof value === "bigint") return value.toString()
  if (Number.isNaN(value)) return "NaN"
  if (value === Infinity) return "+Inf"
  if (value === -Infinity) return "-Inf"
  return String(value)
}

type Labels = ReadonlyArray<readonly [string, string]>

/** A metric's tags as labels: names made valid, one value per name (the last), `reserved` names left out. */
const labelsOf = (key: MetricKey.MetricKey.Untyped, reserved: string | undefined): Labels => {
  const byName = new Map<string, string>()
  for (const tag of key.tags) {
    const name = labelName(tag.key)
    if (name === reserved) continue
    byName.delete(name)
    byName.set(name, tag.value)
  }
  return [...byName]
}

const renderLabels = (labels: Labels): string =>
  labels.length === 0 ? "" : `{${labels.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(",")}}`

const sample = (name: string, labels: Labels, value: number | bigint) => `${name}${renderLabels(labels)} ${formatValue(value)}`

type Kind = "counter" | "gauge" | "histogram" | "summary"

const kindOf = (key: MetricKey.MetricKey.Untyped): Kind | undefined => {
  const type = key.keyType
  if (MetricKeyType.isCounterKey(type) || MetricKeyType.isFrequencyKey(type)) return "counter"
  if (MetricKeyType.isGaugeKey(type)) return "gauge"
  if (MetricKeyType.isHistogramKey(type)) return "histogram"
  if (MetricKeyType.isSummaryKey(type)) return "summary"
  return undefined
}

/** The sample lines of one series (a metric and its labels). */
const samplesOf = (name: string, pair: MetricPair.MetricPair.Untyped): Array<string> => {
  const state: unknown = pair.metricState
  const key = pair.metricKey
  if (MetricState.isCounterState(state)) return [sample(name, labelsOf(key, undefined), state.count)]
  if (MetricState.isGaugeState(state)) return [sample(name, labelsOf(key, undefined), state.value)]
  if (MetricState.isFrequencyState(state)) {
    const labels = labelsOf(key, "key")
    return [...state.occurrences].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([value, count]) => sample(name, [...labels, ["key", value]], count))
  }
  if (MetricState.isHistogramState(state)) {
    const labels = labelsOf(key, "le")
    const lines: Array<string> = []
    // buckets are cumulative; the +Inf one is the count, whatever the boundaries say
    for (const [bound, count] of state.buckets) {
      if (Number.isFinite(bound)) lines.push(sample(`${name}_bucket`, [...labels, ["le", formatValue(bound)]], count))
    }
    lines.push(sample(`${name}_bucket`, [...labels, ["le", "+Inf"]], state.count))
    lines.push(sample(`${name}_sum`, labels, state.sum), sample(`${name}_count`, labels, state.count))
    return lines
  }
  if (MetricState.isSummaryState(state)) {
    const labels = labelsOf(key, "quantile")
    return [
      ...state.quantiles.map(([q, value]) => sample(name, [...labels, ["quantile", formatValue(q)]], Option.getOrElse(value, () => Number.NaN))),
      sample(`${name}_sum`, labels, state.sum),
      sample(`${name}_count`, labels, state.count)
    ]
  }
  return []
}

/** The label a kind of metric adds to its samples, which a tag of that name would clash with. */
const reservedOf = (key: MetricKey.MetricKey.Untyped): string | undefined => {
  const type = key.keyType
  return MetricKeyType.isFrequencyKey(type) ? "key" : MetricKeyType.isHistogramKey(type) ? "le" : MetricKeyType.isSummaryKey(type) ? "quantile" : undefined
}

const labelKey = (key: MetricKey.MetricKey.Untyped): string => renderLabels(labelsOf(key, reservedOf(key)))

/**
 * The exposition of a registry snapshot. Families are sorted by name, series by labels. A name
 * registered with two types keeps the series of the first type; two series with the same labels
 * (the same name and tags, another description) keep the first: an exposition never repeats one.
 */
export const exposition = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const families = new Map<string, { kind: Kind; help: string | undefined; series: Map<string, MetricPair.MetricPair.Untyped> }>()
  for (const pair of pairs) {
    const kind = kindOf(pair.metricKey)
    if (kind === undefined) continue
    const name = metricName(pair.metricKey.name)
    let family = families.get(name)
    if (family === undefined) {
      family = { kind, help: undefined, series: new Map() }
      families.set(name, family)
    }
    if (family.kind !== kind) continue
    family.help ??= Option.getOrUndefined(pair.metricKey.description)
    const labels = labelKey(pair.metricKey)
    if (!family.series.has(labels)) family.series.set(labels, pair)
  }
  const out: Array<string> = []
  for (const name of [...families.keys()].sort()) {
    const family = families.get(name)!
    if (family.help !== undefined) out.push(`# HELP ${name} ${escapeHelp(family.help)}`)
    out.push(`# TYPE ${name} ${family.kind}`)
    for (const labels of [...family.series.keys()].sort()) out.push(...samplesOf(name, family.series.get(labels)!))
  }
  return out.length === 0 ? "" : `${out.join("\n")}\n`
}
