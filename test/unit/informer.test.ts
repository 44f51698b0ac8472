import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type DeleteInfo,
  Informer,
  type InformerOptions,
  type ListPage,
  type ListRequest,
  type ListWatch,
  objectKey,
  splitKey,
  type WatchEvent,
  type WatchHandle,
  type WatchRequest,
} from "../../shells/kube/informer.ts";
import { FakeClock } from "../support/fake-clock.ts";

interface Obj {
  metadata: { name: string; namespace?: string; resourceVersion?: string; managedFields?: unknown };
  spec?: { n: number };
}

interface ActiveWatch {
  req: WatchRequest;
  startedAt: number;
  onEvent: (e: WatchEvent) => void;
  onDone: (err?: unknown) => void;
  aborted: boolean;
}

/** An in-memory apiserver for one resource, with controllable failures. */
class FakeApi implements ListWatch {
  readonly objects = new Map<string, Obj>();
  rv = 100;
  readonly lists: ListRequest[] = [];
  readonly watches: ActiveWatch[] = [];
  /** Events produced by mutations, not yet delivered to the current watch. */
  pending: WatchEvent[] = [];
  failLists = 0;
  hangLists = 0;
  rejectWatches = 0;
  pageSize = 2;

  private readonly clock: FakeClock;
  constructor(clock: FakeClock) {
    this.clock = clock;
  }

  put(name: string, namespace = "ns1", n = 0): Obj {
    const key = namespace ? `${namespace}/${name}` : name;
    const existed = this.objects.has(key);
    this.rv++;
    const obj: Obj = {
      metadata: {
        name,
        namespace,
        resourceVersion: String(this.rv),
        managedFields: [{ manager: "kubectl" }],
      },
      spec: { n },
    };
    this.objects.set(key, obj);
    this.pending.push({ type: existed ? "MODIFIED" : "ADDED", object: structuredClone(obj) });
    return obj;
  }

  remove(name: string, namespace = "ns1"): void {
    const key = `${namespace}/${name}`;
    const obj = this.objects.get(key);
    if (obj === undefined) return;
    this.objects.delete(key);
    this.rv++;
    const gone = structuredClone(obj);
    gone.metadata.resourceVersion = String(this.rv);
    this.pending.push({ type: "DELETED", object: gone });
  }

  /** Delivers the queued mutation events to the current watch. */
  deliver(): void {
    const events = this.pending;
    this.pending = [];
    for (const e of events) this.current.onEvent(e);
  }

  get current(): ActiveWatch {
    const w = this.watches.at(-1);
    if (w === undefined) throw new Error("no watch started");
    return w;
  }

  async *list(req: ListRequest): AsyncIterable<ListPage> {
    this.lists.push(req);
    // A list reflects everything up to now; events from before it are moot.
    this.pending = [];
    if (this.failLists > 0) {
      this.failLists--;
      throw Object.assign(new Error("list failed"), { statusCode: 500 });
    }
    if (this.hangLists > 0) {
      this.hangLists--;
      await new Promise(() => {}); // never settles, ignores the signal
    }
    const items = [...this.objects.values()].map((o) => structuredClone(o));
    const rv = String(this.rv);
    if (items.length === 0) yield { items: [], resourceVersion: rv };
    for (let i = 0; i < items.length; i += this.pageSize) {
      yield { items: items.slice(i, i + this.pageSize), resourceVersion: rv };
    }
  }

  watch(
    req: WatchRequest,
    onEvent: (e: WatchEvent) => void,
    onDone: (err?: unknown) => void,
  ): Promise<WatchHandle> {
    if (this.rejectWatches > 0) {
      this.rejectWatches--;
      return Promise.reject(new Error("connect ECONNREFUSED"));
    }
    const w: ActiveWatch = { req, startedAt: this.clock.now(), onEvent, onDone, aborted: false };
    this.watches.push(w);
    return Promise.resolve({
      abort: () => {
        w.aborted = true;
      },
    });
  }
}

interface Recorded {
  adds: string[];
  updates: Array<[string, string]>;
  deletes: Array<[string, boolean]>;
}

function setup(extra: Partial<InformerOptions<Obj>> = {}) {
  const clock = new FakeClock();
  const api = new FakeApi(clock);
  const informer = new Informer<Obj>({
    name: "test",
    listWatch: api,
    clock,
    random: () => 0,
    watchdogMs: 60_000,
    watchTimeoutSeconds: 30,
    backoff: { baseMs: 500, maxMs: 4000 },
    ...extra,
  });
  const rec: Recorded = { adds: [], updates: [], deletes: [] };
  const rvOf = (o: Obj) => `${objectKey(o)}@${o.metadata.resourceVersion}`;
  informer.onAdd((o) => rec.adds.push(objectKey(o)));
  informer.onUpdate((a, b) => rec.updates.push([rvOf(a), rvOf(b)]));
  informer.onDelete((o, info: DeleteInfo) => rec.deletes.push([objectKey(o), info.finalStateUnknown]));
  return { clock, api, informer, rec };
}

describe("Informer list and watch", () => {
  it("lists (paginated), syncs, then watches from the list's resourceVersion with bookmarks", async () => {
    const { api, informer, rec, clock } = setup({
      labelSelector: "app=x",
      fieldSelector: "metadata.name!=z",
    });
    api.put("a");
    api.put("b");
    api.put("c", "ns2");
    expect(informer.hasSynced()).toBe(false);
    informer.start();
    await informer.waitForSync();
    expect(informer.hasSynced()).toBe(true);
    expect(rec.adds.sort()).toEqual(["ns1/a", "ns1/b", "ns2/c"]);
    expect(api.lists[0]).toMatchObject({ labelSelector: "app=x", fieldSelector: "metadata.name!=z" });
    await clock.advance(0);
    expect(api.watches).toHaveLength(1);
    expect(api.current.req).toEqual({
      resourceVersion: "103",
      allowWatchBookmarks: true,
      timeoutSeconds: 30,
      labelSelector: "app=x",
      fieldSelector: "metadata.name!=z",
    });
    expect(informer.get("ns1/a")?.metadata.managedFields).toBeUndefined();
    expect(informer.list("ns1").map(objectKey).sort()).toEqual(["ns1/a", "ns1/b"]);
    expect(informer.list("nope")).toEqual([]);
    expect(informer.list()).toHaveLength(3);
    await informer.stop();
  });

  it("applies ADDED/MODIFIED/DELETED/BOOKMARK events to the cache and handlers", async () => {
    const { api, informer, rec, clock } = setup();
    api.put("a");
    api.put("b");
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    api.put("c"); // 103
    api.put("a", "ns1", 7); // 104
    api.remove("b"); // 105
    api.deliver();
    api.current.onEvent({ type: "BOOKMARK", object: { metadata: { resourceVersion: "150" } } });
    expect(rec.adds).toEqual(["ns1/a", "ns1/b", "ns1/c"]);
    expect(rec.updates).toEqual([["ns1/a@101", "ns1/a@104"]]);
    expect(rec.deletes).toEqual([["ns1/b", false]]);
    expect(informer.get("ns1/a")?.spec?.n).toBe(7);
    expect(informer.get("ns1/b")).toBeUndefined();
    expect(informer.list("ns1").map(objectKey).sort()).toEqual(["ns1/a", "ns1/c"]);
    expect(informer.resourceVersion()).toBe("150");

    // A normal end after events restarts at once from the last resourceVersion, without relisting.
    api.current.onDone();
    await clock.advance(0);
    expect(api.watches).toHaveLength(2);
    expect(api.current.req.resourceVersion).toBe("150");
    expect(api.lists).toHaveLength(1);
    await informer.stop();
  });

  it("drops managedFields by default, keeps them on request, and applies the transform", async () => {
    const { api, informer } = setup({
      transform: (o) => ({ metadata: o.metadata }),
    });
    api.put("a", "ns1", 3);
    informer.start();
    await informer.waitForSync();
    expect(informer.get("ns1/a")).toEqual({
      metadata: { name: "a", namespace: "ns1", resourceVersion: "101" },
    });
    await informer.stop();

    const second = setup({ keepManagedFields: true });
    second.api.put("a");
    second.informer.start();
    await second.informer.waitForSync();
    expect(second.informer.get("ns1/a")?.metadata.managedFields).toEqual([{ manager: "kubectl" }]);
    await second.informer.stop();
  });
});

describe("Informer 410 Gone", () => {
  it("relists on an ERROR 410 event and emits synthetic events so the cache converges", async () => {
    const { api, informer, rec, clock } = setup();
    api.put("a");
    api.put("b");
    api.put("c");
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    const firstWatch = api.current;
    rec.adds.length = 0;
    await clock.advance(20_000); // a quiet but healthy watch

    // Changes the informer never hears about (watch history compacted).
    api.remove("a");
    api.put("b", "ns1", 9);
    api.put("d");
    api.pending = [];
    firstWatch.onEvent({ type: "ERROR", object: { kind: "Status", code: 410, reason: "Expired" } });
    await clock.advance(0);

    expect(firstWatch.aborted).toBe(true);
    expect(api.lists).toHaveLength(2);
    expect(rec.deletes).toEqual([["ns1/a", true]]);
    expect(rec.updates).toEqual([["ns1/b@102", "ns1/b@105"]]);
    expect(rec.adds).toEqual(["ns1/d"]);
    expect([...informer.keys()].sort()).toEqual(["ns1/b", "ns1/c", "ns1/d"]);
    expect(api.watches).toHaveLength(2);
    expect(api.current.req.resourceVersion).toBe("106");
    expect(informer.stats().relists).toBe(2);
    await informer.stop();
  });

  it("relists when the watch request itself fails with HTTP 410", async () => {
    const { api, informer, rec, clock } = setup();
    api.put("a");
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    api.remove("a");
    api.pending = [];
    api.current.onDone(Object.assign(new Error("Gone"), { statusCode: 410 }));
    // 410 on a watch that started from a list made a moment ago is suspicious: back off first.
    await clock.advance(499);
    expect(api.lists).toHaveLength(1);
    await clock.advance(1);
    expect(api.lists).toHaveLength(2);
    expect(rec.deletes).toEqual([["ns1/a", true]]);
    expect(informer.size).toBe(0);
    await informer.stop();
  });
});

describe("Informer watchdog", () => {
  it("restarts a silent watch from the last resourceVersion; events and bookmarks postpone it", async () => {
    const { api, informer, clock } = setup();
    api.put("a");
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    expect(api.watches).toHaveLength(1);

    await clock.advance(50_000);
    api.current.onEvent({ type: "BOOKMARK", object: { metadata: { resourceVersion: "200" } } });
    await clock.advance(59_000); // 109 s: 59 s since the bookmark
    expect(api.watches).toHaveLength(1);
    expect(api.current.aborted).toBe(false);

    await clock.advance(1_000); // 60 s of silence
    expect(api.watches[0]!.aborted).toBe(true);
    expect(api.watches).toHaveLength(2);
    expect(api.current.req.resourceVersion).toBe("200");
    expect(api.lists).toHaveLength(1);

    // A second silent period restarts again (a watch lasting 60 s counts as healthy: no backoff).
    await clock.advance(60_000);
    expect(api.watches).toHaveLength(3);
    expect(api.current.startedAt).toBe(170_000);
    await informer.stop();
  });

  it("ignores events that arrive on a watch after it was abandoned", async () => {
    const { api, informer, rec, clock } = setup();
    informer.start();
    await informer.waitForSync();
    await clock.advance(60_000);
    const old = api.watches[0]!;
    expect(old.aborted).toBe(true);
    old.onEvent({
      type: "ADDED",
      object: { metadata: { name: "late", namespace: "ns1", resourceVersion: "999" } },
    });
    old.onDone(new Error("aborted"));
    await clock.advance(0);
    expect(rec.adds).toEqual([]);
    expect(informer.resourceVersion()).toBe("100");
    expect(api.watches).toHaveLength(2);
    await informer.stop();
  });
});

describe("Informer failures and backoff", () => {
  it("restarts a failing watch with exponential backoff, reset by a watch that delivers events", async () => {
    const { api, informer, clock } = setup();
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    // Each failure without events doubles the delay before the next watch, up to the 4 s cap.
    for (const delay of [500, 1000, 2000, 4000, 4000]) {
      const before = api.watches.length;
      api.current.onDone(new Error("ECONNRESET"));
      await clock.advance(delay - 1);
      expect(api.watches).toHaveLength(before);
      await clock.advance(1);
      expect(api.watches).toHaveLength(before + 1);
    }
    expect(informer.stats().consecutiveFailures).toBe(5);

    api.put("x");
    api.deliver();
    api.current.onDone(new Error("ECONNRESET"));
    await clock.advance(0);
    expect(api.watches).toHaveLength(7);
    expect(api.current.startedAt).toBe(clock.now());

    api.current.onDone(new Error("ECONNRESET"));
    await clock.advance(499);
    expect(api.watches).toHaveLength(7);
    await clock.advance(1);
    expect(api.watches).toHaveLength(8);
    expect(api.lists).toHaveLength(1);
    expect(api.current.req.resourceVersion).toBe("101");
    await informer.stop();
  });

  it("treats a non-410 ERROR event and a rejected watch start as failures", async () => {
    const { api, informer, clock } = setup();
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    api.current.onEvent({ type: "ERROR", object: { code: 500, message: "internal" } });
    expect(api.watches[0]!.aborted).toBe(true);
    api.rejectWatches = 1;
    await clock.advance(500); // first retry: start rejected
    expect(api.watches).toHaveLength(1);
    await clock.advance(999);
    expect(api.watches).toHaveLength(1);
    await clock.advance(1); // second retry after 1000 ms
    expect(api.watches).toHaveLength(2);
    expect(api.lists).toHaveLength(1);
    await informer.stop();
  });

  it("retries a failing list with backoff and only syncs when a list succeeds", async () => {
    const { api, informer, clock } = setup();
    api.put("a");
    api.failLists = 2;
    informer.start();
    const early = informer.waitForSync(100).catch((e: unknown) => e);
    await clock.advance(100);
    expect(String(await early)).toMatch(/not synced within 100 ms/);
    expect(informer.hasSynced()).toBe(false);
    expect(api.lists).toHaveLength(1);
    await clock.advance(400); // 500 ms after the first failure
    expect(api.lists).toHaveLength(2);
    expect(informer.hasSynced()).toBe(false);
    await clock.advance(1000);
    expect(api.lists).toHaveLength(3);
    expect(informer.hasSynced()).toBe(true);
    expect(informer.get("ns1/a")).toBeDefined();
    await informer.stop();
  });

  it("times out a list that never answers and retries", async () => {
    const { api, informer, clock } = setup({ listTimeoutMs: 5000 });
    api.hangLists = 1;
    informer.start();
    await clock.advance(4999);
    expect(api.lists[0]!.signal.aborted).toBe(false);
    await clock.advance(1);
    expect(api.lists[0]!.signal.aborted).toBe(true);
    await clock.advance(500);
    expect(api.lists).toHaveLength(2);
    expect(informer.hasSynced()).toBe(true);
    await informer.stop();
  });

  it("keeps going when a handler or the transform throws", async () => {
    const { api, informer, clock } = setup({
      transform: (o) => {
        if (o.metadata.name === "bad") throw new Error("nope");
        return o;
      },
    });
    informer.onAdd(() => {
      throw new Error("handler bug");
    });
    api.put("a");
    api.put("bad");
    informer.start();
    await informer.waitForSync();
    await clock.advance(0);
    expect([...informer.keys()]).toEqual(["ns1/a"]);
    api.put("b");
    api.deliver();
    expect(informer.get("ns1/b")).toBeDefined();
    await informer.stop();
  });
});

describe("Informer lifecycle", () => {
  it("stop aborts the watch, rejects waiters, clears timers and starts nothing more", async () => {
    const { api, informer, clock } = setup();
    api.failLists = 1;
    informer.start();
    const waiting = informer.waitForSync();
    await clock.advance(500);
    await clock.advance(0);
    expect(api.watches).toHaveLength(1);
    await informer.stop();
    expect(api.current.aborted).toBe(true);
    await expect(waiting).resolves.toBeUndefined(); // it synced before stop

    const second = setup();
    second.api.failLists = 100;
    second.informer.start();
    const pending = second.informer.waitForSync();
    await second.clock.advance(0);
    await second.informer.stop();
    await expect(pending).rejects.toThrow(/stopped/);
    await expect(second.informer.waitForSync()).rejects.toThrow(/stopped/);
    expect(second.clock.pendingTimers).toBe(0);
    await second.clock.advance(100_000);
    expect(second.api.lists).toHaveLength(1);
  });

  it("rejects a watch timeout that is not shorter than the watchdog", () => {
    const clock = new FakeClock();
    expect(
      () =>
        new Informer<Obj>({
          name: "x",
          listWatch: new FakeApi(clock),
          watchdogMs: 60_000,
          watchTimeoutSeconds: 60,
        }),
    ).toThrow(/watchTimeoutSeconds: must be shorter than watchdogMs/);
  });

  it("objectKey and splitKey round-trip namespaced and cluster-scoped keys", () => {
    expect(objectKey({ metadata: { name: "a", namespace: "ns" } })).toBe("ns/a");
    expect(objectKey({ metadata: { name: "node1" } })).toBe("node1");
    expect(splitKey("ns/a")).toEqual({ namespace: "ns", name: "a" });
    expect(splitKey("node1")).toEqual({ namespace: undefined, name: "node1" });
    expect(() => objectKey({ metadata: {} })).toThrow(/metadata.name/);
  });
});

describe("Informer property: handler replay converges to server state", () => {
  it("holds across arbitrary mutations, deliveries, gaps (410) and silent stalls", async () => {
    const name = fc.constantFrom("a", "b", "c", "d", "e");
    const op = fc.oneof(
      fc.record({ kind: fc.constant("put" as const), name, n: fc.integer({ min: 0, max: 9 }) }),
      fc.record({ kind: fc.constant("remove" as const), name }),
      fc.record({ kind: fc.constant("deliver" as const) }),
      fc.record({ kind: fc.constant("gap" as const) }),
      fc.record({ kind: fc.constant("drop" as const) }),
      fc.record({ kind: fc.constant("stall" as const) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
        const { api, informer, clock } = setup();
        // What a consumer building state only from handler calls would see.
        const replay = new Map<string, number | undefined>();
        informer.onAdd((o) => replay.set(objectKey(o), o.spec?.n));
        informer.onUpdate((_a, b) => replay.set(objectKey(b), b.spec?.n));
        informer.onDelete((o) => replay.delete(objectKey(o)));
        api.put("a");
        informer.start();
        await informer.waitForSync();
        await clock.advance(0);
        for (const o of ops) {
          if (o.kind === "put") api.put(o.name, "ns1", o.n);
          else if (o.kind === "remove") api.remove(o.name);
          else if (o.kind === "deliver") api.deliver();
          else if (o.kind === "gap") {
            // History lost: the watch learns it is too old.
            api.pending = [];
            api.current.onEvent({ type: "ERROR", object: { code: 410 } });
            await clock.advance(5000);
          } else if (o.kind === "drop") {
            // Connection reset; undelivered events are re-sent from the last seen resourceVersion.
            const since = Number(informer.resourceVersion());
            api.current.onDone(new Error("ECONNRESET"));
            await clock.advance(5000);
            api.pending = api.pending.filter(
              (e) => Number((e.object as Obj).metadata.resourceVersion) > since,
            );
          } else {
            // Silence until the watchdog fires; the new watch resumes from the last resourceVersion.
            await clock.advance(60_000);
          }
        }
        api.deliver();
        const server = new Map([...api.objects].map(([k, v]) => [k, v.spec?.n]));
        const cache = new Map(informer.list().map((o) => [objectKey(o), o.spec?.n]));
        expect(cache).toEqual(server);
        expect(replay).toEqual(server);
        await informer.stop();
      }),
      { numRuns: 200 },
    );
  });
});
