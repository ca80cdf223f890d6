/** The destination's state folder, checked once at start and by the health probe. */
import * as Effect from "effect/Effect"
import { DestinationError } from "../../domain/Errors.js"
import { describeCode, Destination } from "../Destination.js"
import { STATE_FOLDER } from "./Leases.js"

/** Checks that the destination can be used at all: a real folder, writable, its state folder not a link. */
export const checkDestination: Effect.Effect<void, DestinationError, Destination> = Effect.gen(function*() {
  const dest = yield* Destination
  const unusable = (reason: string) => new DestinationError({ dest: dest.root, reason })
  const describe = (e: { readonly code: string; readonly detail: string }) =>
    unusable(e.code === "EROFS" ? "is on a read-only filesystem; ferry needs to write there" : `cannot create state folder ${STATE_FOLDER} (${describeCode(e.code, e.detail)})`)
  const kind = yield* dest.kind(STATE_FOLDER).pipe(Effect.mapError(describe))
  if (kind === "link") return yield* Effect.fail(unusable(`${STATE_FOLDER} is a symbolic link; ferry keeps its work inside --dest and will not follow it`))
  yield* dest.ensureDir(STATE_FOLDER).pipe(Effect.mapError(describe))
  // a probe write: a read-only mount may still let folders be listed, and mkdir there can answer ENOENT
  const probe = `${STATE_FOLDER}/.probe-${process.pid}`
  yield* dest.writeFile(probe, Buffer.from("ferry\n")).pipe(Effect.mapError(describe))
  yield* dest.remove(probe).pipe(Effect.ignore)
})

