// A deterministic clock for unit tests of timer-driven shells (work queue,
// informer, leader election): timers fire only inside advance(), in due order.
import type { Clock } from "../../shells/workqueue.ts";

export const flush = (): Promise<void> => new Promise<void>((r) => setImmediate(r));

export class FakeClock implements Clock {
  private t: number;
  private nextId = 0;
  private readonly timers = new Map<number, { due: number; fn: () => void }>();
  constructor(start = 0) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.nextId;
    this.timers.set(id, { due: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  get pendingTimers(): number {
    return this.timers.size;
  }
  async advance(ms: number): Promise<void> {
    const target = this.t + ms;
    for (;;) {
      await flush();
      let next: [number, { due: number; fn: () => void }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].due <= target && (next === undefined || entry[1].due < next[1].due)) next = entry;
      }
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.t = next[1].due;
      next[1].fn();
    }
    this.t = target;
    await flush();
  }
}
