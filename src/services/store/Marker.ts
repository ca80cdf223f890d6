/**
 * A growing dataset's marker (`send --early`): its real size, checked
 * against the pieces held, admitted for the rest, then the state cut down
 * to it; from then on the dataset is an ordinary one.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { expectedCount } from "../../domain/Dataset.js"
import { StoreError } from "../../domain/Errors.js"
import { markerDisagreement, sealedManifest } from "../../domain/Growing.js"
import { limitProblem, type StoreLimits } from "../../domain/Limits.js"
import { type Active, failAll } from "./Active.js"
import type { Admission } from "./Admission.js"
import { refuse } from "./Commit.js"
import { highestHeld } from "./Growing.js"

/** What is held after a marker, over the real count. */
export interface Marked {
  readonly held: number
  readonly bitmap: string
}

export const makeMarker = (limits: StoreLimits, admission: Admission) => (entry: Active) => (size: number): Effect.Effect<Marked, StoreError> =>
  entry.settling.withPermits(1)(Effect.gen(function*() {
    const { failure } = yield* Ref.get(entry.status)
    if (Option.isSome(failure)) return yield* Effect.fail(failure.value)
    const name = entry.manifest.dataset
    const growing = entry.growing
    if (growing === undefined) {
      // another session of it brought the marker first
      if (entry.manifest.size === size) return { held: entry.state.bitmap.held, bitmap: entry.state.bitmap.toBase64() }
      return yield* refuse(name, "Conflict", `${name}.done says ${size} bytes, but another sender's marker said ${entry.manifest.size}`)
    }
    const { spec, bound } = growing
    const count = expectedCount(size, spec.sliceSize)
    const bitmap = entry.state.bitmap
    const disagreement = markerDisagreement(spec, bound, size, highestHeld(bitmap), count >= 1 && count <= bound && bitmap.has(count - 1))
    const problem = disagreement ?? limitProblem(sealedManifest(spec, size), limits)?.reason
    if (problem !== undefined) {
      // no sender can vouch for these pieces: the state goes when the last user lets go
      yield* Ref.update(entry.status, (s) => ({ ...s, discard: true }))
      const error = new StoreError({ dataset: name, code: "BadManifest", reason: problem })
      yield* failAll(entry, error)
      return yield* Effect.fail(error)
    }
    const sealed = sealedManifest(spec, size)
    yield* admission.admitSealed(entry, sealed)
    yield* Effect.logDebug(`${name}: its marker says ${size} bytes (${sealed.count} pieces, ${entry.state.bitmap.held} held)`)
    return { held: entry.state.bitmap.held, bitmap: entry.state.bitmap.toBase64() }
  }))
