// A resilient list-then-watch informer with an in-memory cache.
//
// Why not client-node's makeInformer/ListWatch: its watches can stop without
// any signal (a half-open TCP connection delivers nothing and no error), a
// non-410 error stops the ListWatch for good unless the caller restarts it,
// and a 410 relist only emits deletes for whole vanished namespaces' objects
// through callbacks registered before the relist. This informer instead:
//   - lists (paginated), then watches from the list's resourceVersion with
//     allowWatchBookmarks, so quiet resources still see periodic events;
//   - restarts the watch from the last seen resourceVersion when it ends or
//     fails, with exponential backoff on repeated failures;
//   - on 410 Gone (HTTP status or ERROR event) re-lists and converges the
//     cache, emitting synthetic add/update/delete for the gap;
//   - runs a watchdog: no event for `watchdogMs` aborts and restarts the
//     watch (the server's timeoutSeconds is shorter, so a healthy watch always
//     ends or produces a bookmark before the watchdog fires).
//
// It is generic over the `ListWatch` interface below; restListWatch in
// shells/kube/rest.ts binds it to a real apiserver. Everything time-related goes through an
// injectable Clock so unit tests run on fake timers.

import type { Logger } from "../log.ts";
import { type Clock, systemClock } from "../workqueue.ts";

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  resourceVersion?: string;
  managedFields?: unknown;
}

export interface KubeObject {
  metadata?: ObjectMeta;
}

export interface ListRequest {
  labelSelector?: string;
  fieldSelector?: string;
  /** Aborted when the list times out or the informer stops. */
  signal: AbortSignal;
}

/** One page of a (possibly paginated) list; the last page's resourceVersion is the list's. */
export interface ListPage {
  items: unknown[];
  resourceVersion: string;
}

export interface WatchRequest {
  resourceVersion: string;
  labelSelector?: string;
  fieldSelector?: string;
  timeoutSeconds: number;
  allowWatchBookmarks: true;
}

export interface WatchEvent {
  /** ADDED | MODIFIED | DELETED | BOOKMARK | ERROR */
  type: string;
  object: unknown;
}

export interface WatchHandle {
  abort(): void;
}

export interface ListWatch {
  list(req: ListRequest): AsyncIterable<ListPage>;
  /**
   * Starts a watch. `onDone` is called once when the stream ends: with no
   * error for a normal end, otherwise with the error (an error carrying
   * `statusCode` or `code` 410 means the resourceVersion is too old).
   * It may be called before the returned promise settles.
   */
  watch(
    req: WatchRequest,
    onEvent: (event: WatchEvent) => void,
    onDone: (err?: unknown) => void,
  ): Promise<WatchHandle>;
}

export interface DeleteInfo {
  /**
   * True when the delete was inferred by a relist (the object vanished while
   * the watch was down); the object passed is then the last state we saw.
   */
  finalStateUnknown: boolean;
}

export interface BackoffOptions {
  /** Delay after the first failure. Default 500 ms. */
  baseMs?: number;
  /** Cap. Default 30 s. */
  maxMs?: number;
  /** Fraction of the delay randomly taken off (0..1) to spread reconnects. Default 0.2. */
  jitter?: number;
}

export interface InformerOptions<T extends KubeObject> {
  /** For logs, e.g. "agenttasks". */
  name: string;
  listWatch: ListWatch;
  labelSelector?: string;
  fieldSelector?: string;
  /** Applied to every object before it is cached and handed to handlers (e.g. to drop fields). */
  transform?: (obj: T) => T;
  /** managedFields are dropped before caching unless this is true. */
  keepManagedFields?: boolean;
  /** Restart the watch when no event arrived for this long. Default 5 min. */
  watchdogMs?: number;
  /** Server-side watch timeout; must be shorter than the watchdog. Default 240 s. */
  watchTimeoutSeconds?: number;
  /** Abort a list that has not completed after this long. Default 2 min. */
  listTimeoutMs?: number;
  /** A watch that lasted this long or delivered an event resets the backoff. Default 10 s. */
  minHealthyWatchMs?: number;
  backoff?: BackoffOptions;
  clock?: Clock;
  /** Source of jitter; default Math.random. */
  random?: () => number;
  logger?: Logger;
}

export interface InformerStats {
  objects: number;
  relists: number;
  watchRestarts: number;
  consecutiveFailures: number;
  resourceVersion: string;
  lastEventAt: number | undefined;
}

type WatchOutcome =
  | { kind: "closed" }
  | { kind: "gone"; detail: string }
  | { kind: "error"; error: unknown }
  | { kind: "stalled" }
  | { kind: "stopped" };

class StoppedError extends Error {
  constructor(name: string) {
    super(`informer ${name}: stopped`);
    this.name = "InformerStoppedError";
  }
}

/** Cache key of an object: "namespace/name", or "name" for cluster-scoped objects. */
export function objectKey(obj: KubeObject): string {
  const name = obj.metadata?.name;
  if (!name) throw new Error("objectKey: metadata.name must be a non-empty string");
  const ns = obj.metadata?.namespace;
  return ns ? `${ns}/${name}` : name;
}

/** Inverse of objectKey. */
export function splitKey(key: string): { namespace: string | undefined; name: string } {
  const i = key.indexOf("/");
  return i < 0 ? { namespace: undefined, name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/** Status code of a list/watch error or ERROR-event Status, if it has one. */
export function statusCodeOf(err: unknown): number | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const e = err as { statusCode?: unknown; code?: unknown; status?: unknown };
  for (const c of [e.statusCode, e.code, e.status]) if (typeof c === "number") return c;
  return undefined;
}

function positive(value: number, field: string): number {
  if (!Number.isFinite(value) || value <= 0)
    throw new Error(`${field}: must be a positive number, got ${value}`);
  return value;
}

export class Informer<T extends KubeObject> {
  readonly name: string;
  private readonly lw: ListWatch;
  private readonly labelSelector: string | undefined;
  private readonly fieldSelector: string | undefined;
  private readonly transform: ((obj: T) => T) | undefined;
  private readonly keepManagedFields: boolean;
  private readonly watchdogMs: number;
  private readonly watchTimeoutSeconds: number;
  private readonly listTimeoutMs: number;
  private readonly minHealthyWatchMs: number;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;
  private readonly jitter: number;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger | undefined;

  private readonly cache = new Map<string, T>();
  /** namespace ("" for cluster-scoped) -> keys, so list(namespace) is not a full scan. */
  private readonly byNamespace = new Map<string, Set<string>>();

  private addHandlers: Array<(obj: T) => void> = [];
  private updateHandlers: Array<(oldObj: T, newObj: T) => void> = [];
  private deleteHandlers: Array<(obj: T, info: DeleteInfo) => void> = [];

  private rv = "";
  private synced = false;
  private syncWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private started = false;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private stopCurrentWatch: (() => void) | undefined;
  private stopCurrentList: (() => void) | undefined;
  private cancelSleep: (() => void) | undefined;

  private failures = 0;
  private relists = 0;
  private watchRestarts = 0;
  private lastEventAt: number | undefined;

  constructor(options: InformerOptions<T>) {
    if (!options.name) throw new Error("Informer name: must be a non-empty string");
    this.name = options.name;
    this.lw = options.listWatch;
    this.labelSelector = options.labelSelector;
    this.fieldSelector = options.fieldSelector;
    this.transform = options.transform;
    this.keepManagedFields = options.keepManagedFields ?? false;
    this.watchdogMs = positive(options.watchdogMs ?? 5 * 60_000, "Informer watchdogMs");
    this.watchTimeoutSeconds = positive(options.watchTimeoutSeconds ?? 240, "Informer watchTimeoutSeconds");
    if (!Number.isInteger(this.watchTimeoutSeconds)) {
      throw new Error(`Informer watchTimeoutSeconds: must be an integer, got ${this.watchTimeoutSeconds}`);
    }
    if (this.watchTimeoutSeconds * 1000 >= this.watchdogMs) {
      throw new Error(
        `Informer watchTimeoutSeconds: must be shorter than watchdogMs (${this.watchdogMs} ms), got ${this.watchTimeoutSeconds} s`,
      );
    }
    this.listTimeoutMs = positive(options.listTimeoutMs ?? 120_000, "Informer listTimeoutMs");
    this.minHealthyWatchMs = positive(options.minHealthyWatchMs ?? 10_000, "Informer minHealthyWatchMs");
    this.backoffBaseMs = positive(options.backoff?.baseMs ?? 500, "Informer backoff.baseMs");
    this.backoffMaxMs = positive(options.backoff?.maxMs ?? 30_000, "Informer backoff.maxMs");
    if (this.backoffMaxMs < this.backoffBaseMs) {
      throw new Error(
        `Informer backoff.maxMs: must be >= baseMs (${this.backoffBaseMs}), got ${this.backoffMaxMs}`,
      );
    }
    this.jitter = options.backoff?.jitter ?? 0.2;
    if (!(this.jitter >= 0 && this.jitter <= 1)) {
      throw new Error(`Informer backoff.jitter: must be within 0..1, got ${this.jitter}`);
    }
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.log = options.logger;
  }

  // ---- handlers -----------------------------------------------------------

  /** Registers an add handler; returns a function that unregisters it. */
  onAdd(fn: (obj: T) => void): () => void {
    this.addHandlers = [...this.addHandlers, fn];
    return () => {
      this.addHandlers = this.addHandlers.filter((h) => h !== fn);
    };
  }

  onUpdate(fn: (oldObj: T, newObj: T) => void): () => void {
    this.updateHandlers = [...this.updateHandlers, fn];
    return () => {
      this.updateHandlers = this.updateHandlers.filter((h) => h !== fn);
    };
  }

  onDelete(fn: (obj: T, info: DeleteInfo) => void): () => void {
    this.deleteHandlers = [...this.deleteHandlers, fn];
    return () => {
      this.deleteHandlers = this.deleteHandlers.filter((h) => h !== fn);
    };
  }

  // ---- cache reads --------------------------------------------------------

  /** The cached object for "namespace/name" (or "name" if cluster-scoped). */
  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  /** Cached objects, all or of one namespace. */
  list(namespace?: string): T[] {
    if (namespace === undefined) return [...this.cache.values()];
    const keys = this.byNamespace.get(namespace);
    if (keys === undefined) return [];
    const out: T[] = [];
    for (const k of keys) {
      const o = this.cache.get(k);
      if (o !== undefined) out.push(o);
    }
    return out;
  }

  keys(): IterableIterator<string> {
    return this.cache.keys();
  }

  get size(): number {
    return this.cache.size;
  }

  /** True once the first full list has been applied to the cache. */
  hasSynced(): boolean {
    return this.synced;
  }

  /** Resolves once synced; rejects if the informer stops first or `timeoutMs` passes. */
  waitForSync(timeoutMs?: number): Promise<void> {
    if (this.synced) return Promise.resolve();
    if (this.stopped) return Promise.reject(new StoppedError(this.name));
    return new Promise((resolve, reject) => {
      let timer: unknown;
      const waiter = {
        resolve: () => {
          if (timer !== undefined) this.clock.clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          if (timer !== undefined) this.clock.clearTimeout(timer);
          reject(e);
        },
      };
      this.syncWaiters.push(waiter);
      if (timeoutMs !== undefined) {
        timer = this.clock.setTimeout(() => {
          this.syncWaiters = this.syncWaiters.filter((w) => w !== waiter);
          reject(new Error(`informer ${this.name}: not synced within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  /** The resourceVersion the next watch would start from. */
  resourceVersion(): string {
    return this.rv;
  }

  stats(): InformerStats {
    return {
      objects: this.cache.size,
      relists: this.relists,
      watchRestarts: this.watchRestarts,
      consecutiveFailures: this.failures,
      resourceVersion: this.rv,
      lastEventAt: this.lastEventAt,
    };
  }

  // ---- lifecycle ----------------------------------------------------------

  start(): void {
    if (this.started) throw new Error(`informer ${this.name}: start called twice`);
    this.started = true;
    this.loop = this.run().catch((err: unknown) => {
      // run() handles its own errors; reaching here is a bug worth shouting about.
      this.log?.error("informer loop crashed", { informer: this.name, error: err });
    });
  }

  /** Stops list/watch and timers; resolves when the loop has exited. The cache stays readable. */
  async stop(): Promise<void> {
    if (this.stopped) return this.loop;
    this.stopped = true;
    this.stopCurrentWatch?.();
    this.stopCurrentList?.();
    this.cancelSleep?.();
    const waiters = this.syncWaiters;
    this.syncWaiters = [];
    for (const w of waiters) w.reject(new StoppedError(this.name));
    await this.loop;
  }

  // ---- the loop -----------------------------------------------------------

  private async run(): Promise<void> {
    let needList = true;
    let justListed = false;
    while (!this.stopped) {
      if (needList) {
        try {
          await this.relist();
          needList = false;
          justListed = true;
        } catch (err) {
          if (this.stopped) break;
          this.failures++;
          const delay = this.backoffDelay();
          this.log?.warn("list failed; retrying", {
            informer: this.name,
            error: err,
            attempt: this.failures,
            retryInMs: delay,
          });
          await this.sleep(delay);
          continue;
        }
      }

      const fromFreshList = justListed;
      justListed = false;
      const started = this.clock.now();
      const { outcome, events } = await this.watchOnce();
      if (this.stopped || outcome.kind === "stopped") break;
      this.watchRestarts++;

      // 410 right after resuming from an old resourceVersion is expected (the
      // history was compacted while we were away): relist at once. 410 on a
      // watch started from a list we just made means something is off; back off.
      const expectedGone = outcome.kind === "gone" && !fromFreshList;
      const healthy = events > 0 || expectedGone || this.clock.now() - started >= this.minHealthyWatchMs;
      if (healthy) this.failures = 0;
      else this.failures++;

      const fields = { informer: this.name, resourceVersion: this.rv, events, attempt: this.failures };
      switch (outcome.kind) {
        case "closed":
          this.log?.debug("watch ended; restarting", fields);
          break;
        case "gone":
          needList = true;
          this.log?.info("watch resourceVersion expired; relisting", { ...fields, detail: outcome.detail });
          break;
        case "error":
          this.log?.warn("watch failed; restarting", { ...fields, error: outcome.error });
          break;
        case "stalled":
          this.log?.warn("watch silent past watchdog; restarting", {
            ...fields,
            watchdogMs: this.watchdogMs,
          });
          break;
      }
      if (!healthy) await this.sleep(this.backoffDelay());
    }
  }

  private backoffDelay(): number {
    const n = Math.max(1, this.failures);
    const full = Math.min(this.backoffBaseMs * 2 ** (n - 1), this.backoffMaxMs);
    return Math.round(full * (1 - this.jitter * this.random()));
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.cancelSleep = undefined;
        resolve();
      };
      const h = this.clock.setTimeout(done, ms);
      this.cancelSleep = () => {
        this.clock.clearTimeout(h);
        done();
      };
    });
  }

  /** Lists everything and converges the cache to it, emitting the differences. */
  private async relist(): Promise<void> {
    const ac = new AbortController();
    const timer = this.clock.setTimeout(
      () => ac.abort(new Error(`list did not complete within ${this.listTimeoutMs} ms`)),
      this.listTimeoutMs,
    );
    this.stopCurrentList = () => ac.abort(new StoppedError(this.name));
    const req: ListRequest = { signal: ac.signal };
    if (this.labelSelector !== undefined) req.labelSelector = this.labelSelector;
    if (this.fieldSelector !== undefined) req.fieldSelector = this.fieldSelector;
    const it = this.lw.list(req)[Symbol.asyncIterator]();
    try {
      const seen = new Set<string>();
      let rv = "";
      for (;;) {
        // Raced against the signal so a source that ignores it cannot hang us.
        const step = await raceAbort(it.next(), ac.signal);
        if (step.done) break;
        const page = step.value;
        for (const raw of page.items) {
          const obj = this.prepare(raw);
          if (obj === undefined) continue;
          const key = objectKey(obj);
          seen.add(key);
          this.upsert(key, obj);
        }
        rv = page.resourceVersion;
      }
      if (!rv) throw new Error("list returned no resourceVersion");
      let deleted = 0;
      for (const [key, old] of this.cache) {
        if (seen.has(key)) continue;
        this.remove(key);
        deleted++;
        this.emitDelete(old, { finalStateUnknown: true });
      }
      this.rv = rv;
      this.relists++;
      this.log?.info("listed", {
        informer: this.name,
        objects: this.cache.size,
        deleted,
        resourceVersion: rv,
        relist: this.relists > 1,
      });
      if (!this.synced) {
        this.synced = true;
        const waiters = this.syncWaiters;
        this.syncWaiters = [];
        for (const w of waiters) w.resolve();
      }
    } catch (err) {
      void it.return?.()?.catch(() => {});
      throw err;
    } finally {
      this.clock.clearTimeout(timer);
      this.stopCurrentList = undefined;
    }
  }

  /** Runs one watch until it ends, fails, goes silent, or the informer stops. */
  private watchOnce(): Promise<{ outcome: WatchOutcome; events: number }> {
    // stop() may have run while the list was finishing; it found no watch to abort.
    if (this.stopped) return Promise.resolve({ outcome: { kind: "stopped" }, events: 0 });
    return new Promise((resolve) => {
      let settled = false;
      let events = 0;
      let handle: WatchHandle | undefined;
      let watchdog: unknown;

      const finish = (outcome: WatchOutcome) => {
        if (settled) return;
        settled = true;
        this.clock.clearTimeout(watchdog);
        this.stopCurrentWatch = undefined;
        handle?.abort();
        resolve({ outcome, events });
      };
      const armWatchdog = () => {
        if (watchdog !== undefined) this.clock.clearTimeout(watchdog);
        watchdog = this.clock.setTimeout(() => finish({ kind: "stalled" }), this.watchdogMs);
      };
      this.stopCurrentWatch = () => finish({ kind: "stopped" });
      armWatchdog();

      const onEvent = (ev: WatchEvent) => {
        // Events buffered in an aborted stream must not touch the cache.
        if (settled) return;
        if (ev.type === "ERROR") {
          const code = statusCodeOf(ev.object);
          const status = (ev.object ?? {}) as { reason?: unknown; message?: unknown };
          const detail = `ERROR event: ${code ?? "?"} ${String(status.reason ?? "")} ${String(status.message ?? "")}`;
          if (code === 410 || status.reason === "Expired" || status.reason === "Gone") {
            finish({ kind: "gone", detail });
          } else {
            finish({ kind: "error", error: new Error(`watch ${detail}`) });
          }
          return;
        }
        events++;
        this.lastEventAt = this.clock.now();
        armWatchdog();
        this.applyWatchEvent(ev);
      };
      const onDone = (err?: unknown) => {
        if (err === undefined || err === null) finish({ kind: "closed" });
        else if (statusCodeOf(err) === 410) finish({ kind: "gone", detail: "HTTP 410" });
        else finish({ kind: "error", error: err });
      };

      const req: WatchRequest = {
        resourceVersion: this.rv,
        timeoutSeconds: this.watchTimeoutSeconds,
        allowWatchBookmarks: true,
      };
      if (this.labelSelector !== undefined) req.labelSelector = this.labelSelector;
      if (this.fieldSelector !== undefined) req.fieldSelector = this.fieldSelector;
      let started: Promise<WatchHandle>;
      try {
        started = this.lw.watch(req, onEvent, onDone);
      } catch (err) {
        finish({ kind: "error", error: err });
        return;
      }
      started.then(
        (h) => {
          handle = h;
          if (settled) h.abort();
        },
        (err: unknown) => onDone(err ?? new Error("watch failed to start")),
      );
    });
  }

  private applyWatchEvent(ev: WatchEvent): void {
    const newRv = (ev.object as KubeObject | undefined)?.metadata?.resourceVersion;
    switch (ev.type) {
      case "ADDED":
      case "MODIFIED": {
        const obj = this.prepare(ev.object);
        if (obj !== undefined) this.upsert(objectKey(obj), obj);
        break;
      }
      case "DELETED": {
        const obj = this.prepare(ev.object);
        if (obj !== undefined) {
          this.remove(objectKey(obj));
          this.emitDelete(obj, { finalStateUnknown: false });
        }
        break;
      }
      case "BOOKMARK":
        break;
      default:
        this.log?.warn("ignoring watch event of unknown type", { informer: this.name, type: ev.type });
        return;
    }
    if (newRv) this.rv = newRv;
  }

  /** Validates, strips and transforms a raw object; undefined (and a log line) if unusable. */
  private prepare(raw: unknown): T | undefined {
    const meta = (raw as KubeObject | null | undefined)?.metadata;
    if (typeof raw !== "object" || raw === null || typeof meta?.name !== "string" || meta.name === "") {
      this.log?.warn("ignoring object without metadata.name", { informer: this.name });
      return undefined;
    }
    if (!this.keepManagedFields && meta.managedFields !== undefined) delete meta.managedFields;
    if (this.transform === undefined) return raw as T;
    try {
      return this.transform(raw as T);
    } catch (err) {
      this.log?.error("transform failed; object ignored", {
        informer: this.name,
        object: objectKey(raw as KubeObject),
        error: err,
      });
      return undefined;
    }
  }

  private upsert(key: string, obj: T): void {
    const old = this.cache.get(key);
    if (old === undefined) {
      this.cache.set(key, obj);
      this.indexAdd(key, obj);
      this.emit(this.addHandlers, (h) => h(obj));
      return;
    }
    const oldRv = old.metadata?.resourceVersion;
    // A relist returns unchanged objects too; same resourceVersion = same object.
    if (oldRv !== undefined && oldRv === obj.metadata?.resourceVersion) return;
    this.cache.set(key, obj);
    this.emit(this.updateHandlers, (h) => h(old, obj));
  }

  private remove(key: string): void {
    const old = this.cache.get(key);
    if (old === undefined) return;
    this.cache.delete(key);
    const ns = old.metadata?.namespace ?? "";
    const set = this.byNamespace.get(ns);
    if (set !== undefined) {
      set.delete(key);
      if (set.size === 0) this.byNamespace.delete(ns);
    }
  }

  private indexAdd(key: string, obj: T): void {
    const ns = obj.metadata?.namespace ?? "";
    let set = this.byNamespace.get(ns);
    if (set === undefined) {
      set = new Set();
      this.byNamespace.set(ns, set);
    }
    set.add(key);
  }

  private emitDelete(obj: T, info: DeleteInfo): void {
    this.emit(this.deleteHandlers, (h) => h(obj, info));
  }

  private emit<H>(handlers: readonly H[], call: (h: H) => void): void {
    for (const h of handlers) {
      try {
        call(h);
      } catch (err) {
        this.log?.error("informer handler threw", { informer: this.name, error: err });
      }
    }
  }
}

function raceAbort<V>(p: Promise<V>, signal: AbortSignal): Promise<V> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}
