import * as v8 from "node:v8"
import * as vm from "node:vm"

/** What a budget asks of a connection whose frame is still arriving when room must be made. */
export interface BudgetHolder {
  /** Bytes of its frame still arriving (allocated, not complete): what dropping it would give back. */
  readonly arriving: () => number
  /** Drops the connection, giving back everything it holds, before returning. */
  readonly evict: (reason: string) => void
}

/**
 * Frame memory of one server, across all its connections (--memory). A frame's body is taken
 * from it at the frame's header, before it is allocated, and given back once the frame has been
 * handled, so the bodies of every connection together never pass `bytes`. A connection that
 * finds no room waits (its socket is not read) until there is; and when frames still arriving
 * hold the room, the connection with the largest of them is dropped for it: a client that
 * starts large frames and never finishes them cannot hold the server's memory, nor lock others out.
 */
export class FrameBudget {
  private used = 0
  private readonly waiting: Array<{ readonly holder: BudgetHolder; readonly bytes: number; readonly wake: () => void }> = []
  private readonly holders = new Set<BudgetHolder>()
  /** Over half the budget was taken since the last collection. */
  private high = false
  private collecting: ReturnType<typeof setTimeout> | undefined
  private gc: (() => void) | undefined

  constructor(readonly bytes: number) {}

  /**
   * Frame bodies live outside V8's heap, and V8 only weighs them when it next allocates: an idle
   * server after a peak (connections dropped, or gone) would keep them all. So once most of a
   * peak has been given back, or a connection dropped for room, a full collection is run, once,
   * a moment later: it costs tens of milliseconds, after an event that is rare.
   */
  private collectSoon(): void {
    if (this.collecting !== undefined) return
    this.collecting = setTimeout(() => {
      this.collecting = undefined
      try {
        if (this.gc === undefined) {
          v8.setFlagsFromString("--expose-gc")
          this.gc = vm.runInNewContext("gc") as () => void
        }
        this.gc()
      } catch {
        // no collection on demand here: V8 collects in its own time
      }
    }, 1_000)
    this.collecting.unref()
  }

  /** Bytes taken now. */
  get taken(): number {
    return this.used
  }

  /** Takes `n` bytes if there is room now, and no one waits before. */
  tryTake(n: number): boolean {
    if (this.waiting.length > 0 || this.used + n > this.bytes) return false
    this.used += n
    if (this.used > this.bytes / 2) this.high = true
    return true
  }

  give(n: number): void {
    this.used = Math.max(0, this.used - n)
    if (this.high && this.used <= this.bytes / 8) {
      this.high = false
      this.collectSoon()
    }
    while (this.waiting.length > 0 && this.used + this.waiting[0]!.bytes <= this.bytes) {
      const w = this.waiting.shift()!
      this.used += w.bytes
      if (this.used > this.bytes / 2) this.high = true
      w.wake()
    }
  }

  /** A connection that may hold a frame still arriving; `leave` once it is gone. */
  join(holder: BudgetHolder): void {
    this.holders.add(holder)
  }

  leave(holder: BudgetHolder): void {
    this.holders.delete(holder)
    const i = this.waiting.findIndex((w) => w.holder === holder)
    if (i >= 0) this.waiting.splice(i, 1)
    this.give(0)
  }

  /**
   * Waits for `n` bytes: `wake` runs once they are taken for the holder. Meanwhile, the connections
   * whose frames still arriving hold the room are dropped, the largest first, until it fits.
   */
  wait(holder: BudgetHolder, n: number, wake: () => void): void {
    this.waiting.push({ holder, bytes: n, wake })
    let arrivingElsewhere = 0
    for (const h of this.holders) if (h !== holder) arrivingElsewhere += h.arriving()
    while (this.waiting.length > 0 && this.waiting.some((w) => w.holder === holder) && this.used + n > this.bytes && arrivingElsewhere > 0) {
      let largest: BudgetHolder | undefined
      for (const h of this.holders) if (h !== holder && h.arriving() > (largest?.arriving() ?? 0)) largest = h
      if (largest === undefined) break
      arrivingElsewhere -= largest.arriving()
      this.holders.delete(largest)
      this.collectSoon()
      largest.evict(`the server's frame memory (--memory ${this.bytes}) is full; dropped this connection, whose unfinished frame was the largest`)
    }
    this.give(0)
  }
}
