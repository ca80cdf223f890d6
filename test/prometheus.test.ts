/**
 * The Prometheus text format of a metrics snapshot (domain/Prometheus.ts):
 * properties over arbitrary names, labels, values and kinds, read back by a
 * strict reader of the format written here and, where it can be had, by
 * Prometheus's own (promtool); and the metrics ferry declares follow the
 * naming conventions.
 */
import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import { spawnSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import * as MetricKeyType from "effect/MetricKeyType"
import * as MetricLabel from "effect/MetricLabel"
import * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import { failedDatasets } from "../src/client/Client.js"
import { senderMetrics } from "../src/client/Metrics.js"
import { reconnections } from "../src/client/Uplink.js"
import { escapeHelp, escapeLabelValue, exposition, formatValue, labelName, metricName } from "../src/domain/Prometheus.js"
import { connectionsRefused, datasetsFailed } from "../src/server/Counters.js"
import { serverMetrics } from "../src/server/Metrics.js"
import { processStartTime } from "../src/node/MetricsEndpoint.js"
import { badPieces } from "../src/services/store/Metrics.js"
import { workerBusySeconds, workerThreads } from "../src/node/WorkerPool.js"

type Labels = ReadonlyArray<readonly [string, string]>

/** A strict reader of one exposition: the format's grammar, line by line (what promtool checks, and duplicates, which it does not). */
const read = (text: string) => {
  const families: Array<{ name: string; type: string; help: string | undefined; samples: Array<{ name: string; labels: Labels; value: string }> }> = []
  const lines = text.split("\n")
  expect(lines.pop()).toBe("") // ends with a line feed
  let help: { name: string; text: string } | undefined
  for (const line of lines) {
    const comment = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line)
    if (comment !== null) {
      if (comment[1] === "HELP") {
        expect(comment[3]).toMatch(/^([^\\\n]|\\\\|\\n)*$/)
        help = { name: comment[2]!, text: comment[3]!.replace(/\\(\\|n)/g, (_, c: string) => (c === "n" ? "\n" : "\\")) }
      } else {
        expect(comment[3]).toMatch(/^(counter|gauge|histogram|summary)$/)
        expect(families.map((f) => f.name)).not.toContain(comment[2])
        families.push({ name: comment[2]!, type: comment[3]!, help: help?.name === comment[2] ? help.text : undefined, samples: [] })
        help = undefined
      }
      continue
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    expect(m, `not a sample line: ${JSON.stringify(line)}`).not.toBeNull()
    const labels: Array<[string, string]> = []
    const rest = m![2] ?? ""
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)/y
    while (label.lastIndex < rest.length) {
      const l = label.exec(rest)
      expect(l, `bad labels: ${rest}`).not.toBeNull()
      expect(l![1]!.startsWith("__")).toBe(false)
      labels.push([l![1]!, l![2]!.replace(/\\(\\|"|n)/g, (_, c: string) => (c === "n" ? "\n" : c))])
    }
    expect(new Set(labels.map(([k]) => k)).size).toBe(labels.length)
    expect(m![3]).toMatch(/^(-?[0-9.]+(e[+-]?[0-9]+)?|[+-]Inf|NaN)$/)
    const family = families.at(-1)
    expect(family, "a sample before any TYPE line").toBeDefined()
    expect([family!.name, `${family!.name}_bucket`, `${family!.name}_sum`, `${family!.name}_count`]).toContain(m![1])
    family!.samples.push({ name: m![1]!, labels, value: m![3]! })
  }
  for (const f of families) {
    const keys = f.samples.map((s) => `${s.name}${JSON.stringify(s.labels)}`)
    expect(new Set(keys).size, `a series twice in ${f.name}`).toBe(keys.length)
  }
  return families
}

const le = (text: string) => (text === "+Inf" ? Infinity : Number(text))

const name = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_]{0,12}$/)
const anyText = fc.string({ unit: fc.constantFrom("a", "b", " ", "\"", "\\", "\n", "{", "}", "=", ",", "é", "-", ".") , maxLength: 12 })
const tags = fc.array(fc.tuple(fc.oneof(name, anyText), anyText), { maxLength: 3 })
const number = fc.oneof(fc.integer({ min: 0, max: 2 ** 40 }), fc.double({ noNaN: false }), fc.constantFrom(Infinity, -Infinity, Number.NaN, 0.1, 1e-9))
const description = fc.option(anyText, { nil: undefined })

const withTags = <K extends MetricKey.MetricKey.Untyped>(key: K, t: ReadonlyArray<readonly [string, string]>): K =>
  MetricKey.taggedWithLabels(key, t.map(([k, v]) => MetricLabel.make(k, v))) as K

const pair = fc.oneof(
  fc.record({ name: fc.oneof(name, anyText), tags, description, count: fc.integer({ min: 0, max: 2 ** 40 }) }).map((p) =>
    MetricPair.unsafeMake(withTags(MetricKey.counter(p.name, { description: p.description }), p.tags), MetricState.counter(p.count))
  ),
  fc.record({ name, tags, description, value: number }).map((p) =>
    MetricPair.unsafeMake(withTags(MetricKey.gauge(p.name, { description: p.description }), p.tags), MetricState.gauge(p.value))
  ),
  fc.record({ name, tags, description, bounds: fc.uniqueArray(fc.double({ min: 1e-6, max: 1e6, noNaN: true }), { maxLength: 5 }), counts: fc.array(fc.nat(1000), { minLength: 6, maxLength: 6 }) }).map((p) => {
    const bounds = MetricBoundaries.fromIterable(p.bounds)
    const sorted = [...bounds.values].sort((a, b) => a - b)
    let cumulated = 0
    const buckets = sorted.map((b, i) => [b, (cumulated += p.counts[i]!)] as const)
    return MetricPair.unsafeMake(
      withTags(MetricKey.histogram(p.name, bounds, p.description), p.tags),
      MetricState.histogram({ buckets, count: cumulated, min: 0, max: 0, sum: cumulated / 2 })
    )
  })
)

describe("Prometheus text format", () => {
  it("escapes label values and help text as the format says", () => {
    expect(escapeLabelValue("a\"b\\c\nd")).toBe("a\\\"b\\\\c\\nd")
    expect(escapeHelp("a \"quoted\" \\ and\na line")).toBe("a \"quoted\" \\\\ and\\na line")
    expect(formatValue(Number.NaN)).toBe("NaN")
    expect(formatValue(Infinity)).toBe("+Inf")
    expect(formatValue(-Infinity)).toBe("-Inf")
    expect(formatValue(12n)).toBe("12")
    expect(formatValue(0.25)).toBe("0.25")
    expect(metricName("ferry.bytes-sent")).toBe("ferry_bytes_sent")
    expect(metricName("9lives")).toBe("_9lives")
    expect(labelName("__name__")).toBe("x__name__")
    expect(labelName("a:b")).toBe("a_b")
    expect(exposition([])).toBe("")
  })

  it("a counter, a labelled counter and a histogram, exactly", () => {
    const text = exposition([
      MetricPair.unsafeMake(MetricKey.counter("ferry_x_total", { description: "Things." }), MetricState.counter(3)),
      MetricPair.unsafeMake(withTags(MetricKey.counter("ferry_y_total", { description: "Others." }), [["code", "a\"b"]]), MetricState.counter(1)),
      MetricPair.unsafeMake(
        MetricKey.histogram("ferry_h_seconds", MetricBoundaries.fromIterable([0.5, 1]), "Times."),
        MetricState.histogram({ buckets: [[0.5, 1], [1, 3], [Infinity, 4]], count: 4, min: 0.1, max: 7, sum: 9.5 })
      )
    ])
    expect(text).toBe(
      [
        "# HELP ferry_h_seconds Times.",
        "# TYPE ferry_h_seconds histogram",
        "ferry_h_seconds_bucket{le=\"0.5\"} 1",
        "ferry_h_seconds_bucket{le=\"1\"} 3",
        "ferry_h_seconds_bucket{le=\"+Inf\"} 4",
        "ferry_h_seconds_sum 9.5",
        "ferry_h_seconds_count 4",
        "# HELP ferry_x_total Things.",
        "# TYPE ferry_x_total counter",
        "ferry_x_total 3",
        "# HELP ferry_y_total Others.",
        "# TYPE ferry_y_total counter",
        "ferry_y_total{code=\"a\\\"b\"} 1",
        ""
      ].join("\n")
    )
  })

  it("any snapshot reads back: grammar, one TYPE per family, no series twice, labels and help round-trip, cumulative buckets", () => {
    fc.assert(
      fc.property(fc.array(pair, { maxLength: 8 }), (pairs) => {
        const families = read(exposition(pairs))
        for (const p of pairs) {
          const family = families.find((f) => f.name === metricName(p.metricKey.name))
          expect(family).toBeDefined()
          const help = Option.getOrUndefined(p.metricKey.description)
          if (help !== undefined && family!.help !== undefined) expect(typeof family!.help).toBe("string")
          // the last value given to a label name is the one shown (the kind's own label aside)
          const expected = new Map<string, string>()
          for (const t of p.metricKey.tags) expected.set(labelName(t.key), t.value)
          expected.delete("le")
          const shown = family!.samples.filter((s) => s.name === family!.name || s.name === `${family!.name}_count`)
          if (family!.type === (MetricState.isCounterState(p.metricState) ? "counter" : MetricState.isGaugeState(p.metricState) ? "gauge" : "histogram")) {
            expect(shown.some((s) => [...expected].every(([k, v]) => s.labels.some(([lk, lv]) => lk === k && lv === v)))).toBe(true)
          }
        }
        for (const f of families.filter((f) => f.type === "histogram")) {
          const series = new Map<string, Array<{ le: string; count: number }>>()
          for (const s of f.samples.filter((s) => s.name === `${f.name}_bucket`)) {
            const rest = JSON.stringify(s.labels.filter(([k]) => k !== "le"))
            const le = s.labels.find(([k]) => k === "le")![1]
            series.set(rest, [...(series.get(rest) ?? []), { le, count: Number(s.value) }])
          }
          for (const [rest, buckets] of series) {
            expect(buckets.at(-1)!.le).toBe("+Inf")
            for (let i = 1; i < buckets.length; i++) {
              expect(le(buckets[i]!.le)).toBeGreaterThan(le(buckets[i - 1]!.le))
              expect(buckets[i]!.count).toBeGreaterThanOrEqual(buckets[i - 1]!.count)
            }
            const count = f.samples.find((s) => s.name === `${f.name}_count` && JSON.stringify(s.labels) === rest)
            expect(Number(count!.value)).toBe(buckets.at(-1)!.count)
          }
        }
      }),
      { numRuns: 300 }
    )
  })

  it("Prometheus's own parser reads any snapshot (promtool check metrics: no parse error)", () => {
    const promtool = spawnSync(process.execPath, [fileURLToPath(new URL("../scripts/promtool.mjs", import.meta.url))], { encoding: "utf8", timeout: 300_000 })
    expect(promtool.stderr.trim()).toBe("")
    expect(promtool.status).toBe(0)
    const samples = fc.sample(fc.array(pair, { minLength: 1, maxLength: 8 }), { numRuns: 25, seed: 42 })
    for (const pairs of samples) {
      const text = exposition(pairs)
      const r = spawnSync(promtool.stdout.trim(), ["check", "metrics"], { input: text, encoding: "utf8" })
      // 0: clean; 3: lint remarks only (random names lack help text or _total); 1: the parser refused it
      expect(r.stderr + r.stdout, text).not.toMatch(/error while linting|parsing error/)
      expect([0, 3], text).toContain(r.status)
    }
  })
})

describe("ferry's metrics", () => {
  it("are named ferry_..., counters end in _total, quantities are in base units, each says what it counts; promtool's lint agrees", () => {
    // reading a metric registers it; the labelled ones with a label of each kind
    for (const m of [...serverMetrics, ...senderMetrics, processStartTime]) m.unsafeValue([])
    for (const [m, label] of [[connectionsRefused, "code"], [datasetsFailed, "code"], [badPieces, "reason"], [failedDatasets, "code"], [reconnections, "server"]] as const) {
      Metric.tagged(m, label, "x").unsafeValue([])
    }
    Metric.tagged(workerThreads, "pool", "inflate").unsafeValue([])
    Metric.tagged(Metric.tagged(workerBusySeconds, "pool", "inflate"), "thread", "0").unsafeValue([])
    const ours = Metric.unsafeSnapshot().filter((p) => p.metricKey.name.startsWith("ferry_") || p.metricKey.name.startsWith("process_"))
    const names = new Set(ours.map((p) => p.metricKey.name))
    expect(names.size).toBeGreaterThanOrEqual(26)
    for (const p of ours) {
      const key = p.metricKey
      expect(key.name).toMatch(/^(ferry_(serve|send|worker)_[a-z_]+|process_start_time_seconds)$/)
      expect(Option.getOrElse(key.description, () => "").length).toBeGreaterThan(10)
      expect(key.name.endsWith("_total")).toBe(MetricKeyType.isCounterKey(key.keyType))
      if (/bytes|seconds|time/.test(key.name)) expect(key.name).toMatch(/_(bytes|seconds)(_total|_per_second)?$/)
    }
    const promtool = spawnSync(process.execPath, [fileURLToPath(new URL("../scripts/promtool.mjs", import.meta.url))], { encoding: "utf8", timeout: 300_000 })
    expect(promtool.stderr.trim()).toBe("")
    expect(promtool.status).toBe(0)
    const r = spawnSync(promtool.stdout.trim(), ["check", "metrics"], { input: exposition(ours), encoding: "utf8" })
    expect(r.stdout + r.stderr).toBe("")
    expect(r.status).toBe(0)
  })
})
