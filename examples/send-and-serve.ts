// A whole transfer in one program: a sample dataset, a server on port 0, a sender, the results.
import { Effect } from "effect"
import { ClientLive, defaultSendOptions, defaultServeOptions, makeDataset, SampleLive, send, serve, ServerLive } from "ferry"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const root = mkdtempSync(join(tmpdir(), "ferry-example-"))
const outbox = join(root, "outbox")

const program = Effect.gen(function*() {
  yield* makeDataset({ dir: outbox, name: "abc", size: 8 * 1024 * 1024, sliceSize: 16 * 1024 })
  const server = yield* serve({ ...defaultServeOptions, host: "127.0.0.1", port: 0 })
  const summary = yield* send({ ...defaultSendOptions, dir: outbox, addresses: [server] })
  for (const r of summary.committed) console.log(`${r.dataset}: committed ${r.size} bytes, crc32 ${r.crc32}`)
  for (const f of summary.failed) console.log(`${f.dataset}: failed: ${f.error.message}`)
})

program.pipe(
  Effect.scoped,
  Effect.provide([ServerLive({ dest: join(root, "inbox") }), ClientLive(), SampleLive]),
  Effect.runPromise
)
