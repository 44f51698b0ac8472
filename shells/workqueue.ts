// A keyed, de-duplicating, rate-limited work queue with the semantics of
// client-go's workqueue (queue + dirty + processing sets):
//   - a key added while queued is queued once;
//   - a key added while its handler runs is re-queued once the handler ends,
//     so one key is never processed by two workers at the same time;
//   - addAfter(key, ms) parks the key until due; the earliest due time wins;
//   - addRateLimited(key) re-adds after a per-key exponential backoff
//     (base * 2^failures, capped), forget(key) resets it.
// Every operation is O(1) except delayed adds, which are O(log n) on a binary
// heap driven by a single timer armed for the earliest due item.
//
// The handler's outcome drives retries the way controller-runtime does:
// throw -> addRateLimited; return { requeueAfterMs } -> forget + addAfter;
// return nothing -> forget.

import type { Logger } from "./log.ts";

/** Time source and timers; injectable so tests run on a fake clock. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    // Queue and informer timers must not keep a finished process alive.
    t.unref?.();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

// void (not undefined) so plain `async (key) => { ... }` handlers type-check.
// biome-ignore lint/suspicious/noConfusingVoidType: see above
export type HandlerResult = void | { requeueAfterMs?: number };
export type Handler = (key: string) => Promise<HandlerResult>;

export interface WorkQueueMetrics {
  /** Called whenever the number of keys waiting to be picked up changes. */
  depth?(depth: number): void;
  /** Called for every accepted add (after de-duplication is decided it is still counted, like client-go). */
  add?(key: string): void;
  /** Called when a key is scheduled for a rate-limited retry. */
  retry?(key: string, attempt: number, delayMs: number): void;
  /** Called when a handler finishes. */
  processed?(key: string, durationMs: number, outcome: "ok" | "error"): void;
}

export interface WorkQueueOptions {
  name: string;
  handler: Handler;
  /** Number of handlers allowed to run at once. Default 1. */
  concurrency?: number;
  /** First retry delay. Default 5 ms. */
  baseDelayMs?: number;
  /** Retry delay cap. Default 5 minutes. */
  maxDelayMs?: number;
  clock?: Clock;
  metrics?: WorkQueueMetrics;
  logger?: Logger;
}

export interface WorkQueueStats {
  /** Keys ready to be handed to a worker. */
  depth: number;
  /** Keys whose handler is running. */
  processing: number;
  /** Keys parked by addAfter / addRateLimited. */
  waiting: number;
  /** Keys with a non-zero failure count. */
  failing: number;
  adds: number;
  retries: number;
}

export interface ShutdownOptions {
  /**
   * Also run handlers for keys already queued (not the delayed ones).
   * Default false: only in-flight handlers are awaited; reconcilers are
   * level-triggered, so dropped keys are seen again after restart.
   */
  drainQueued?: boolean;
}

interface DelayedEntry {
  due: number;
  seq: number;
  key: string;
}

/** FIFO of strings with O(1) push/shift (array + head index, compacted lazily). */
class Fifo {
  private items: string[] = [];
  private head = 0;
  get length(): number {
    return this.items.length - this.head;
  }
  push(s: string): void {
    this.items.push(s);
  }
  shift(): string | undefined {
    if (this.head >= this.items.length) return undefined;
    const s = this.items[this.head];
    this.head++;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return s;
  }
  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

/** Binary min-heap ordered by (due, seq). */
class DelayHeap {
  private readonly a: DelayedEntry[] = [];
  get size(): number {
    return this.a.length;
  }
  peek(): DelayedEntry | undefined {
    return this.a[0];
  }
  push(e: DelayedEntry): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): DelayedEntry | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last !== undefined) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && less(a[l]!, a[m]!)) m = l;
        if (r < a.length && less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
  clear(): void {
    this.a.length = 0;
  }
}

function less(x: DelayedEntry, y: DelayedEntry): boolean {
  return x.due < y.due || (x.due === y.due && x.seq < y.seq);
}

function positiveInt(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`${field}: must be a positive integer, got ${value}`);
  return value;
}

function nonNegative(value: number, field: string): number {
  if (!Number.isFinite(value) || value < 0)
    throw new Error(`${field}: must be a finite number >= 0, got ${value}`);
  return value;
}

export class WorkQueue {
  readonly name: string;
  private readonly handler: Handler;
  private readonly concurrency: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly clock: Clock;
  private readonly metrics: WorkQueueMetrics;
  private readonly logger: Logger | undefined;

  private readonly queue = new Fifo();
  /** Keys that need processing: queued ones plus ones re-added while processing. */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();

  /** Earliest pending due time per parked key; heap entries not matching `seq` here are stale. */
  private readonly waiting = new Map<string, { due: number; seq: number }>();
  private readonly heap = new DelayHeap();
  private seq = 0;
  private timer: unknown;
  private timerDue = Number.POSITIVE_INFINITY;

  private readonly failures = new Map<string, number>();

  private active = 0;
  private pumpScheduled = false;
  private shuttingDown = false;

  /** Keys ready and waiting for a worker (not those being processed or delayed). */
  get depth(): number {
    return this.queue.length;
  }
  private drainQueued = false;
  private idleWaiters: Array<() => void> = [];

  private adds = 0;
  private retries = 0;

  constructor(options: WorkQueueOptions) {
    if (!options.name) throw new Error("WorkQueue name: must be a non-empty string");
    this.name = options.name;
    this.handler = options.handler;
    this.concurrency = positiveInt(options.concurrency ?? 1, "WorkQueue concurrency");
    this.baseDelayMs = nonNegative(options.baseDelayMs ?? 5, "WorkQueue baseDelayMs");
    this.maxDelayMs = nonNegative(options.maxDelayMs ?? 5 * 60_000, "WorkQueue maxDelayMs");
    if (this.maxDelayMs < this.baseDelayMs) {
      throw new Error(
        `WorkQueue maxDelayMs: must be >= baseDelayMs (${this.baseDelayMs}), got ${this.maxDelayMs}`,
      );
    }
    this.clock = options.clock ?? systemClock;
    this.metrics = options.metrics ?? {};
    this.logger = options.logger;
  }

  /** Queues `key` now (de-duplicated). Ignored after shutdown. */
  add(key: string): void {
    if (this.shuttingDown) return;
    this.adds++;
    this.metrics.add?.(key);
    if (this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return; // re-queued when its handler finishes
    this.queue.push(key);
    this.metrics.depth?.(this.queue.length);
    this.schedulePump();
  }

  /** Queues `key` after `delayMs`; if it is already parked, the earlier due time wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.shuttingDown) return;
    if (!(delayMs > 0)) {
      this.add(key);
      return;
    }
    const due = this.clock.now() + delayMs;
    const current = this.waiting.get(key);
    if (current !== undefined && current.due <= due) return;
    const seq = this.seq++;
    this.waiting.set(key, { due, seq });
    this.heap.push({ due, seq, key });
    this.armTimer();
  }

  /** Re-queues `key` after its exponential backoff and counts a failure. */
  addRateLimited(key: string): void {
    if (this.shuttingDown) return;
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = this.backoffFor(n);
    this.retries++;
    this.metrics.retry?.(key, n + 1, delay);
    this.addAfter(key, delay);
  }

  /** Clears the failure count of `key` (its next addRateLimited waits the base delay). */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Failures recorded for `key` since the last forget. */
  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  stats(): WorkQueueStats {
    return {
      depth: this.queue.length,
      processing: this.processing.size,
      waiting: this.waiting.size,
      failing: this.failures.size,
      adds: this.adds,
      retries: this.retries,
    };
  }

  isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  /**
   * Stops accepting keys, cancels delayed ones and resolves once no handler is
   * running (and, with drainQueued, once the queued keys are processed too).
   */
  shutdown(options: ShutdownOptions = {}): Promise<void> {
    if (!this.shuttingDown) {
      this.shuttingDown = true;
      this.drainQueued = options.drainQueued ?? false;
      if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
      this.timer = undefined;
      this.timerDue = Number.POSITIVE_INFINITY;
      this.heap.clear();
      this.waiting.clear();
      if (!this.drainQueued) {
        this.queue.clear();
        this.dirty.clear();
        this.metrics.depth?.(0);
      }
    }
    return new Promise((resolve) => {
      this.idleWaiters.push(resolve);
      this.checkIdle();
    });
  }

  private backoffFor(failures: number): number {
    // 2^failures overflows to Infinity for large n, which Math.min caps.
    return Math.min(this.baseDelayMs * 2 ** failures, this.maxDelayMs);
  }

  private armTimer(): void {
    const top = this.heap.peek();
    if (top === undefined || top.due >= this.timerDue) return;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timerDue = top.due;
    this.timer = this.clock.setTimeout(() => this.onTimer(), Math.max(0, top.due - this.clock.now()));
  }

  private onTimer(): void {
    this.timer = undefined;
    this.timerDue = Number.POSITIVE_INFINITY;
    const now = this.clock.now();
    for (let top = this.heap.peek(); top !== undefined && top.due <= now; top = this.heap.peek()) {
      this.heap.pop();
      const current = this.waiting.get(top.key);
      if (current === undefined || current.seq !== top.seq) continue; // superseded by an earlier due time
      this.waiting.delete(top.key);
      this.add(top.key);
    }
    this.armTimer();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    // Deferred so add() never runs a handler synchronously inside the caller
    // (e.g. inside an informer event callback).
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    if (this.shuttingDown && !this.drainQueued) return;
    while (this.active < this.concurrency) {
      const key = this.queue.shift();
      if (key === undefined) break;
      this.metrics.depth?.(this.queue.length);
      this.dirty.delete(key);
      this.processing.add(key);
      this.active++;
      void this.runOne(key);
    }
  }

  private async runOne(key: string): Promise<void> {
    const started = this.clock.now();
    let result: HandlerResult | undefined;
    let failed = false;
    try {
      result = await this.handler(key);
    } catch (err) {
      failed = true;
      this.logger?.warn("work item failed", {
        queue: this.name,
        object: key,
        attempt: this.numRequeues(key) + 1,
        error: err,
      });
    }
    this.metrics.processed?.(key, this.clock.now() - started, failed ? "error" : "ok");
    if (failed) {
      this.addRateLimited(key);
    } else {
      this.forget(key);
      const after = result?.requeueAfterMs;
      if (after !== undefined && after > 0) this.addAfter(key, after);
    }
    this.processing.delete(key);
    this.active--;
    if (this.dirty.has(key)) {
      this.queue.push(key);
      this.metrics.depth?.(this.queue.length);
    }
    this.pump();
    this.checkIdle();
  }

  private checkIdle(): void {
    if (!this.shuttingDown || this.active > 0) return;
    if (this.drainQueued && this.queue.length > 0) {
      this.pump();
      return;
    }
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
