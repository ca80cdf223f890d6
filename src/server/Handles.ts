/**
 * The datasets one connection has open, by the handle its client gave each,
 * held by one Ref: the frame handlers that open, write to, seal and close
 * them run concurrently. A handle is taken before its dataset is opened, so
 * that two opens of one handle, or one open too many, are told at once.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as HashSet from "effect/HashSet"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import type { Session } from "../services/PieceStore.js"

/** A dataset open on a connection: its session, in a scope of its own that closes its share of the dataset. */
export interface OpenDataset {
  readonly session: Session
  readonly scope: Scope.CloseableScope
}

type Slot = { readonly _tag: "Opening" } | { readonly _tag: "Open"; readonly open: OpenDataset }

interface Table {
  readonly slots: HashMap.HashMap<number, Slot>
  /** Handles whose dataset failed: their batches still in flight are dropped quietly. */
  readonly dropped: HashSet.HashSet<number>
}

/** What a handle stands for now. */
export type Found = { readonly _tag: "Open"; readonly open: OpenDataset } | { readonly _tag: "Dropped" } | { readonly _tag: "Unknown" }

/** Why a handle could not be taken. */
export type Refusal = { readonly _tag: "InUse" } | { readonly _tag: "Full"; readonly open: number }

export interface Handles {
  /** Takes `handle` for a dataset about to be opened; refused when it is taken, or when `max` are. */
  readonly take: (handle: number) => Effect.Effect<Option.Option<Refusal>>
  /** The dataset of a handle taken is open: it takes the handle's writes from now on. */
  readonly opened: (handle: number, open: OpenDataset) => Effect.Effect<void>
  readonly find: (handle: number) => Effect.Effect<Found>
  /** Ends a dataset's session on this connection, closing its share of the dataset (one still opening is left to its opener). */
  readonly close: (handle: number) => Effect.Effect<void>
  /** The dataset failed: its handle is given back (opening or open), and its batches still in flight are dropped quietly. */
  readonly drop: (handle: number) => Effect.Effect<void>
  /** Closes every dataset open. */
  readonly closeAll: Effect.Effect<void>
}

const closeOpen = (slot: Option.Option<Slot>): Effect.Effect<void> =>
  Option.isSome(slot) && slot.value._tag === "Open" ? Scope.close(slot.value.open.scope, Exit.void) : Effect.void

export const makeHandles = (max: number): Effect.Effect<Handles> =>
  Effect.map(Ref.make<Table>({ slots: HashMap.empty(), dropped: HashSet.empty() }), (table): Handles => ({
    take: (handle) =>
      Ref.modify(table, (t): [Option.Option<Refusal>, Table] =>
        HashMap.has(t.slots, handle)
          ? [Option.some({ _tag: "InUse" }), t]
          : HashMap.size(t.slots) >= max
          ? [Option.some({ _tag: "Full", open: HashMap.size(t.slots) }), t]
          : [Option.none(), { ...t, slots: HashMap.set(t.slots, handle, { _tag: "Opening" }) }]
      ),
    opened: (handle, open) =>
      Ref.update(table, (t) => ({ slots: HashMap.set(t.slots, handle, { _tag: "Open", open }), dropped: HashSet.remove(t.dropped, handle) })),
    find: (handle) =>
      Effect.map(Ref.get(table), (t): Found => {
        const slot = HashMap.get(t.slots, handle)
        if (Option.isSome(slot) && slot.value._tag === "Open") return slot.value
        return HashSet.has(t.dropped, handle) ? { _tag: "Dropped" } : { _tag: "Unknown" }
      }),
    close: (handle) =>
      Effect.flatMap(
        Ref.modify(table, (t): [Option.Option<Slot>, Table] => {
          const slot = HashMap.get(t.slots, handle)
          return Option.isSome(slot) && slot.value._tag === "Open" ? [slot, { ...t, slots: HashMap.remove(t.slots, handle) }] : [Option.none(), t]
        }),
        closeOpen
      ),
    drop: (handle) =>
      Effect.flatMap(
        Ref.modify(table, (t): [Option.Option<Slot>, Table] => [HashMap.get(t.slots, handle), { slots: HashMap.remove(t.slots, handle), dropped: HashSet.add(t.dropped, handle) }]),
        closeOpen
      ),
    closeAll: Effect.flatMap(
      Ref.modify(table, (t): [ReadonlyArray<Slot>, Table] => {
        const open = Array.from(HashMap.values(t.slots)).filter((slot) => slot._tag === "Open")
        return [open, { ...t, slots: HashMap.filter(t.slots, (slot) => slot._tag !== "Open") }]
      }),
      (slots) => Effect.forEach(slots, (slot) => closeOpen(Option.some(slot)), { discard: true })
    )
  }))
