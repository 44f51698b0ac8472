import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type Handler, WorkQueue, type WorkQueueOptions } from "../../shells/workqueue.ts";
import { FakeClock, flush } from "../support/fake-clock.ts";

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function makeQueue(handler: Handler, extra: Partial<WorkQueueOptions> = {}) {
  const clock = new FakeClock();
  const q = new WorkQueue({ name: "test", handler, clock, ...extra });
  return { q, clock };
}

describe("WorkQueue de-duplication", () => {
  it("processes a key added several times while queued once", async () => {
    const seen: string[] = [];
    const { q } = makeQueue(async (k) => {
      seen.push(k);
    });
    q.add("a");
    q.add("a");
    q.add("b");
    q.add("a");
    expect(q.stats().depth).toBe(2);
    await flush();
    expect(seen).toEqual(["a", "b"]);
  });

  it("re-queues a key added while it is processing, after processing ends, never concurrently", async () => {
    const gate = deferred();
    let running = 0;
    let maxRunning = 0;
    let calls = 0;
    const { q } = makeQueue(
      async () => {
        calls++;
        running++;
        maxRunning = Math.max(maxRunning, running);
        if (calls === 1) await gate.promise;
        running--;
      },
      { concurrency: 4 },
    );
    q.add("a");
    await flush();
    expect(calls).toBe(1);
    q.add("a");
    q.add("a");
    await flush();
    // Still blocked in the first call: the re-add waits in the dirty set.
    expect(calls).toBe(1);
    expect(q.stats().depth).toBe(0);
    gate.resolve();
    await flush();
    expect(calls).toBe(2);
    expect(maxRunning).toBe(1);
  });

  it("never exceeds the configured concurrency", async () => {
    const gates = new Map<string, () => void>();
    let running = 0;
    let maxRunning = 0;
    const done: string[] = [];
    const { q } = makeQueue(
      (k) =>
        new Promise<void>((resolve) => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          gates.set(k, () => {
            running--;
            done.push(k);
            resolve();
          });
        }),
      { concurrency: 3 },
    );
    for (let i = 0; i < 10; i++) q.add(`k${i}`);
    await flush();
    expect(running).toBe(3);
    expect(q.stats()).toMatchObject({ depth: 7, processing: 3 });
    while (done.length < 10) {
      for (const [k, open] of [...gates]) {
        gates.delete(k);
        open();
      }
      await flush();
    }
    expect(maxRunning).toBe(3);
    expect(done.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `k${i}`).sort());
  });
});

describe("WorkQueue delayed adds", () => {
  it("keeps the earliest due time when a key is parked twice", async () => {
    const at: number[] = [];
    const { q, clock } = makeQueue(async () => {
      at.push(clock.now());
    });
    q.addAfter("a", 1000);
    q.addAfter("a", 100);
    q.addAfter("b", 50);
    q.addAfter("b", 500); // later than the pending one: ignored
    await clock.advance(2000);
    expect(at).toEqual([50, 100]);
    expect(q.stats().waiting).toBe(0);
  });

  it("uses one timer for any number of parked keys and releases them in due order", async () => {
    const order: string[] = [];
    const { q, clock } = makeQueue(async (k) => {
      order.push(k);
    });
    for (let i = 0; i < 1000; i++) q.addAfter(`k${i}`, 1000 - i);
    expect(clock.pendingTimers).toBe(1);
    expect(q.stats().waiting).toBe(1000);
    await clock.advance(1000);
    expect(order).toHaveLength(1000);
    expect(order[0]).toBe("k999");
    expect(order[999]).toBe("k0");
  });

  it("treats a non-positive delay as an immediate add", async () => {
    const seen: string[] = [];
    const { q } = makeQueue(async (k) => {
      seen.push(k);
    });
    q.addAfter("a", 0);
    q.addAfter("b", -5);
    await flush();
    expect(seen).toEqual(["a", "b"]);
  });

  it("requeues after requeueAfterMs returned by the handler", async () => {
    const at: number[] = [];
    const { q, clock } = makeQueue(async () => {
      at.push(clock.now());
      return at.length < 3 ? { requeueAfterMs: 250 } : undefined;
    });
    q.add("a");
    await clock.advance(10_000);
    expect(at).toEqual([0, 250, 500]);
  });
});

describe("WorkQueue rate limiting", () => {
  it("retries a failing key with exponential backoff from 5 ms, capped at the max", async () => {
    const at: number[] = [];
    const { q, clock } = makeQueue(
      async () => {
        at.push(clock.now());
        throw new Error("boom");
      },
      { maxDelayMs: 100 },
    );
    q.add("a");
    await clock.advance(1000);
    const gaps = at.slice(1).map((t, i) => t - at[i]!);
    expect(gaps.slice(0, 7)).toEqual([5, 10, 20, 40, 80, 100, 100]);
    expect(q.numRequeues("a")).toBe(at.length);
  });

  it("uses 5 ms base and 5 min cap by default", () => {
    const delays: number[] = [];
    const { q } = makeQueue(async () => {}, { metrics: { retry: (_k, _n, d) => delays.push(d) } });
    for (let i = 0; i < 20; i++) q.addRateLimited("a");
    expect(delays.slice(0, 3)).toEqual([5, 10, 20]);
    expect(delays.at(-1)).toBe(300_000);
    expect(Math.max(...delays)).toBe(300_000);
  });

  it("forget resets the backoff; success forgets automatically", async () => {
    let fail = true;
    const { q, clock } = makeQueue(async () => {
      if (fail) throw new Error("boom");
    });
    q.addRateLimited("x");
    q.addRateLimited("x");
    expect(q.numRequeues("x")).toBe(2);
    q.forget("x");
    expect(q.numRequeues("x")).toBe(0);

    q.add("a");
    await clock.advance(5 + 10 + 20);
    expect(q.numRequeues("a")).toBe(4);
    fail = false;
    await clock.advance(40);
    expect(q.numRequeues("a")).toBe(0);
    expect(q.stats().failing).toBe(0);
  });
});

describe("WorkQueue metrics", () => {
  it("reports adds, retries, depth and processing outcomes", async () => {
    const depths: number[] = [];
    const outcomes: string[] = [];
    let adds = 0;
    let retries = 0;
    const { q, clock } = makeQueue(
      async (k) => {
        if (k === "bad") throw new Error("x");
      },
      {
        metrics: {
          add: () => adds++,
          retry: () => retries++,
          depth: (d) => depths.push(d),
          processed: (k, _ms, outcome) => outcomes.push(`${k}:${outcome}`),
        },
      },
    );
    q.add("good");
    q.add("good");
    q.add("bad");
    expect(depths).toEqual([1, 2]);
    await flush();
    expect(adds).toBe(3);
    expect(outcomes).toEqual(["good:ok", "bad:error"]);
    expect(retries).toBe(1);
    expect(q.stats()).toMatchObject({ adds: 3, retries: 1, depth: 0, waiting: 1 });
    await q.shutdown();
    expect(clock.pendingTimers).toBe(0);
  });
});

describe("WorkQueue shutdown", () => {
  it("waits for in-flight handlers, drops queued and delayed keys, and ignores new adds", async () => {
    const gate = deferred();
    const seen: string[] = [];
    const { q, clock } = makeQueue(async (k) => {
      seen.push(k);
      if (k === "a") await gate.promise;
    });
    q.add("a");
    q.add("b");
    q.addAfter("c", 10);
    await flush();
    let resolved = false;
    const done = q.shutdown().then(() => {
      resolved = true;
    });
    q.add("d");
    await flush();
    expect(resolved).toBe(false);
    gate.resolve();
    await done;
    await clock.advance(100);
    expect(seen).toEqual(["a"]);
    expect(clock.pendingTimers).toBe(0);
    expect(q.isShuttingDown()).toBe(true);
  });

  it("with drainQueued processes keys already queued before resolving", async () => {
    const seen: string[] = [];
    const { q } = makeQueue(async (k) => {
      seen.push(k);
    });
    q.add("a");
    q.add("b");
    q.add("c");
    await q.shutdown({ drainQueued: true });
    expect(seen).toEqual(["a", "b", "c"]);
  });

  it("resolves immediately when idle", async () => {
    const { q } = makeQueue(async () => {});
    await expect(q.shutdown()).resolves.toBeUndefined();
  });
});

describe("WorkQueue options", () => {
  it("rejects bad options with the field name", () => {
    expect(() => makeQueue(async () => {}, { concurrency: 0 })).toThrow(/concurrency/);
    expect(() => makeQueue(async () => {}, { baseDelayMs: -1 })).toThrow(/baseDelayMs/);
    expect(() => makeQueue(async () => {}, { baseDelayMs: 10, maxDelayMs: 5 })).toThrow(/maxDelayMs/);
  });
});

describe("WorkQueue scale", () => {
  it("handles 20k keys with cheap operations", async () => {
    let processed = 0;
    const { q, clock } = makeQueue(
      async () => {
        processed++;
      },
      { concurrency: 8 },
    );
    const t0 = performance.now();
    for (let i = 0; i < 20_000; i++) q.add(`ns/task-${i}`);
    for (let i = 0; i < 20_000; i++) q.add(`ns/task-${i}`); // all duplicates
    for (let i = 0; i < 20_000; i++) q.addAfter(`ns/later-${i}`, 1 + (i % 977));
    const enqueueMs = performance.now() - t0;
    expect(clock.pendingTimers).toBe(1);
    await clock.advance(1000);
    expect(processed).toBe(40_000);
    // Generous bound; a per-op O(n) structure would take seconds here.
    expect(enqueueMs).toBeLessThan(500);
  });
});

describe("WorkQueue property: every add is eventually followed by a processing, never concurrently per key", () => {
  it("holds for arbitrary interleavings of adds and handler completions", async () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant("add" as const), key: fc.constantFrom("a", "b", "c", "d") }),
      fc.record({
        kind: fc.constant("addAfter" as const),
        key: fc.constantFrom("a", "b", "c", "d"),
        ms: fc.integer({ min: 1, max: 50 }),
      }),
      fc.record({ kind: fc.constant("complete" as const), fail: fc.boolean() }),
      fc.record({ kind: fc.constant("tick" as const), ms: fc.integer({ min: 1, max: 30 }) }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 60 }),
        fc.integer({ min: 1, max: 3 }),
        async (ops, concurrency) => {
          const pending: Array<{ key: string; finish: (fail: boolean) => void }> = [];
          const running = new Set<string>();
          const lastAdd = new Map<string, number>();
          const lastStart = new Map<string, number>();
          let step = 0;
          let overlap = false;
          const { q, clock } = makeQueue(
            (key) =>
              new Promise<void>((resolve, reject) => {
                if (running.has(key)) overlap = true;
                running.add(key);
                lastStart.set(key, step++);
                pending.push({
                  key,
                  finish: (fail) => {
                    running.delete(key);
                    if (fail) reject(new Error("fail"));
                    else resolve();
                  },
                });
              }),
            { concurrency, baseDelayMs: 1, maxDelayMs: 8 },
          );
          for (const o of ops) {
            if (o.kind === "add") {
              lastAdd.set(o.key, step++);
              q.add(o.key);
            } else if (o.kind === "addAfter") {
              lastAdd.set(o.key, step++);
              q.addAfter(o.key, o.ms);
            } else if (o.kind === "complete") {
              pending.shift()?.finish(o.fail);
            } else {
              await clock.advance(o.ms);
            }
            await flush();
          }
          // Settle: let everything finish successfully.
          for (
            let i = 0;
            i < 500 && (pending.length > 0 || q.stats().waiting > 0 || q.stats().depth > 0);
            i++
          ) {
            pending.shift()?.finish(false);
            await clock.advance(60);
          }
          expect(overlap).toBe(false);
          for (const [key, added] of lastAdd) {
            expect(lastStart.get(key) ?? -1).toBeGreaterThan(added);
          }
          expect(q.stats()).toMatchObject({ depth: 0, processing: 0, waiting: 0 });
        },
      ),
      { numRuns: 150 },
    );
  });
});
