/** `ferry fake`: sample datasets. */
import * as Command from "@effect/cli/Command"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { flag, setting } from "../CliOptions.js"
import { DatasetName } from "../domain/Dataset.js"
import {
  ByteSize,
  Count,
  formatBytes,
  fromText,
  PositiveByteSize,
  WholeNumber
} from "../domain/Units.js"
import { makeDataset, SampleMakerLive } from "../services/SampleMaker.js"
import { logging, run, Text } from "./common.js"

const NameText = fromText(Schema.String, "lowercase letters a-z, at most 64", (text) => (Schema.is(DatasetName)(text) ? text : undefined), String)

export const fakeCommand = Command.make(
  "fake",
  {
    path: setting("path", Text, "DIR", "Folder to write the dataset into (created if needed).").required,
    name: setting("name", NameText, "NAME", "Dataset name, lowercase letters a-z.").withDefault("abc"),
    size: setting("size", ByteSize, "BYTES", "Size of the original file (bytes, or with a unit: 1.6GB, 64MiB).").withDefault(64 * 1024 ** 2),
    slice: setting("slice", PositiveByteSize, "BYTES", "Slice size: the uncompressed size of each piece.").withDefault(16 * 1024),
    seed: setting("seed", WholeNumber, "N", "Seed of the content: the same seed makes the same file.").withDefault(1),
    first: setting("first", Count, "N", "Number of the first piece.").withDefault(0),
    noMarker: flag("no-marker", "Do not write NAME.done (to try the wait for the marker)."),
    ...logging
  },
  (flags) =>
    run(
      flags,
      Effect.gen(function*() {
        const started = Date.now()
        const made = yield* makeDataset({ dir: flags.path, name: flags.name, size: flags.size, sliceSize: flags.slice, seed: flags.seed, firstNumber: flags.first, withoutMarker: flags.noMarker })
        const ratio = made.compressed > 0 ? (flags.size / made.compressed).toFixed(2) : "-"
        yield* Effect.logInfo(`made ${flags.name}: ${made.pieces} pieces of ${flags.slice} bytes, ${flags.size} bytes (${formatBytes(made.compressed)} gzipped, ${ratio}x) in ${flags.path} in ${((Date.now() - started) / 1000).toFixed(1)} s${flags.noMarker ? ", no marker" : ""}`)
        yield* Console.log(`sha256 ${made.sha256}  ${flags.name}`)
        yield* Console.log(`crc32 ${made.crc32.toString(16).padStart(8, "0")}  ${flags.name}`)
      }).pipe(
        Effect.provide(SampleMakerLive())
      )
    )
).pipe(Command.withDescription("Make a realistic sample dataset: gzip pieces, marker, and the sha256 of the original."))
