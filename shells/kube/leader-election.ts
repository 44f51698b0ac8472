// Leader election on a coordination.k8s.io/v1 Lease, with client-go's
// semantics (k8s.io/client-go/tools/leaderelection):
//   - a candidate tries every retryPeriod: creates the Lease if absent, waits
//     while another holder's lease is unexpired, else takes it over with an
//     update that carries the resourceVersion it read (optimistic concurrency:
//     of two candidates racing for the same version exactly one wins);
//   - expiry is judged on OUR clock: a lease counts as expired once
//     leaseDurationSeconds have passed since we last saw the record change, so
//     clock offsets between nodes do not matter (only their rates);
//   - the leader renews every retryPeriod and steps down (fences itself) when
//     no renewal has succeeded for renewDeadline, which is shorter than the
//     lease duration, so it has stopped before anyone else may take over;
//   - on graceful shutdown it releases the lease (holder "", duration 1 s) so a
//     standby takes over at its next retry instead of waiting for expiry.
//
// Why stepping down at the deadline is safe: the deadline is measured from the
// moment we SENT the last successful write. That write was committed after it
// was sent, and any rival observes it after it was committed; a rival's
// takeover must carry the resourceVersion of that latest record (an older one
// gets 409), so it cannot succeed before sendTime + leaseDuration, which is
// later than our sendTime + renewDeadline.
//
// Departure from client-go: leaseTransitions is incremented on every
// acquisition by an elector that was not leading, including re-acquiring a
// lease that still names us (after a step-down or a restart with the same
// identity). client-go keeps the counter in that case; we need a fresh epoch
// per term because the epoch fences provenance writers, and work from a
// fenced term must not share its epoch with the next one.

import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import { type Clock, systemClock } from "../workqueue.ts";
import { isConflict, isNotFound, type KubeRest } from "./rest.ts";

/** The Lease's spec (coordination.k8s.io/v1 LeaseSpec, the fields election uses). */
export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  /** MicroTime: RFC 3339 with microseconds. */
  acquireTime?: string;
  /** MicroTime: RFC 3339 with microseconds. */
  renewTime?: string;
  leaseTransitions?: number;
}

export interface StoredLease {
  resourceVersion: string;
  spec: LeaseSpec;
  /** The object's metadata as read, echoed back on update (keeps labels, annotations, uid). */
  metadata?: Record<string, unknown>;
}

/**
 * The three calls election needs. Implementations throw an error for which
 * isConflict() holds (HTTP 409) when a create finds the Lease existing or an
 * update carries a stale resourceVersion.
 */
export interface LeaseStore {
  /** The Lease, or undefined if it does not exist. */
  get(): Promise<StoredLease | undefined>;
  create(spec: LeaseSpec): Promise<StoredLease>;
  /** Replaces the spec, conditional on `current.resourceVersion`. */
  update(current: StoredLease, spec: LeaseSpec): Promise<StoredLease>;
}

type LeaseTarget = { rest: KubeRest; store?: never } | { store: LeaseStore; rest?: never };

export type LeaderElectorOptions = LeaseTarget & {
  namespace: string;
  name: string;
  /** This candidate's unique identity (e.g. pod name + a per-process random suffix). */
  identity: string;
  /** How long a lease is honoured after its last observed change. Default 15 s; whole seconds. */
  leaseDurationMs?: number;
  /** A leader that has not renewed for this long steps down. Default 10 s. */
  renewDeadlineMs?: number;
  /** Interval between acquire/renew attempts. Default 2 s. */
  retryPeriodMs?: number;
  clock?: Clock;
  log?: Logger;
  /**
   * Called when we become leader. `epoch` is the Lease's leaseTransitions as
   * written by our acquisition; `signal` aborts when this term ends.
   * Not awaited: like client-go's `go run(ctx)`, it may run for the whole term.
   */
  onStartedLeading(epoch: number, signal: AbortSignal): void | Promise<void>;
  /**
   * Called when a term ends (renew deadline passed, lease lost, or stop()).
   * Must stop all leader-only work. Awaited by stop() before the lease is
   * released; on a deadline step-down it cannot be waited for (the lease may
   * be taken by others soon), so fencing must happen synchronously.
   */
  onStoppedLeading(): void | Promise<void>;
  /** Called when the observed holder changes to a new non-empty identity (ours included). */
  onNewLeader?(identity: string): void;
};

const LEASES_API = "/apis/coordination.k8s.io/v1";

/** Formats epoch milliseconds as a Kubernetes MicroTime (RFC 3339, 6 fractional digits, UTC). */
export function formatMicroTime(ms: number): string {
  const d = new Date(Math.floor(ms));
  if (Number.isNaN(d.getTime())) throw new Error(`formatMicroTime: ${ms} is not a valid time`);
  // toISOString gives milliseconds (".123Z"); our clocks have no finer resolution.
  return `${d.toISOString().slice(0, -1)}000Z`;
}

/** A LeaseStore over the Kubernetes API for the Lease `namespace/name`. */
export function kubeLeaseStore(rest: KubeRest, namespace: string, name: string): LeaseStore {
  const collection = `${LEASES_API}/namespaces/${encodeURIComponent(namespace)}/leases`;
  const path = `${collection}/${encodeURIComponent(name)}`;
  type LeaseObject = { metadata?: Record<string, unknown> & { resourceVersion?: string }; spec?: LeaseSpec };
  const toStored = (o: LeaseObject): StoredLease => {
    const rv = o.metadata?.resourceVersion;
    if (typeof rv !== "string" || rv === "") {
      throw new Error(`Lease ${namespace}/${name}: metadata.resourceVersion missing in the API response`);
    }
    return { resourceVersion: rv, spec: o.spec ?? {}, metadata: o.metadata ?? {} };
  };
  return {
    async get() {
      try {
        return toStored(await rest.get<LeaseObject>(path));
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    async create(spec) {
      return toStored(
        await rest.post<LeaseObject>(collection, {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name, namespace },
          spec,
        }),
      );
    },
    async update(current, spec) {
      return toStored(
        await rest.put<LeaseObject>(path, {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { ...current.metadata, name, namespace, resourceVersion: current.resourceVersion },
          spec,
        }),
      );
    },
  };
}

type Attempt = { ok: true; transitions: number; sentAt: number } | { ok: false; heldBy?: string };

const TIMED_OUT = Symbol("timed out");

export class LeaderElector {
  readonly #store: LeaseStore;
  readonly #lease: string;
  readonly #identity: string;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #onStarted: LeaderElectorOptions["onStartedLeading"];
  readonly #onStopped: LeaderElectorOptions["onStoppedLeading"];
  readonly #onNewLeader: LeaderElectorOptions["onNewLeader"];

  // What we last saw of the record, and when (on our clock) it last changed.
  #observedKey: string | undefined;
  #observedAt = 0;
  #reportedLeader = "";

  #leading = false;
  #epoch: number | undefined;
  /** Our clock time after which we must not act as leader. */
  #validUntil = 0;
  #deadlineTimer: unknown;
  #term: AbortController | undefined;

  #running: Promise<void> | undefined;
  #stopped = false;
  #stopping: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(options: LeaderElectorOptions) {
    const { namespace, name, identity } = options;
    if (!namespace) throw new Error("LeaderElector namespace: must be a non-empty string");
    if (!name) throw new Error("LeaderElector name: must be a non-empty string");
    if (!identity) throw new Error("LeaderElector identity: must be a non-empty string");
    const leaseDurationMs = options.leaseDurationMs ?? 15_000;
    const renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    const retryPeriodMs = options.retryPeriodMs ?? 2_000;
    if (!Number.isInteger(leaseDurationMs / 1000) || leaseDurationMs < 1000) {
      throw new Error(
        `LeaderElector leaseDurationMs: must be a whole number of seconds >= 1000 (the Lease stores seconds), got ${leaseDurationMs}`,
      );
    }
    if (!(retryPeriodMs > 0))
      throw new Error(`LeaderElector retryPeriodMs: must be > 0, got ${retryPeriodMs}`);
    if (!(renewDeadlineMs > retryPeriodMs)) {
      throw new Error(
        `LeaderElector renewDeadlineMs: must be greater than retryPeriodMs (${retryPeriodMs}), got ${renewDeadlineMs}`,
      );
    }
    if (!(leaseDurationMs > renewDeadlineMs)) {
      throw new Error(
        `LeaderElector leaseDurationMs: must be greater than renewDeadlineMs (${renewDeadlineMs}), got ${leaseDurationMs}`,
      );
    }
    this.#store = options.store ?? kubeLeaseStore(options.rest, namespace, name);
    this.#lease = `${namespace}/${name}`;
    this.#identity = identity;
    this.#leaseDurationMs = leaseDurationMs;
    this.#renewDeadlineMs = renewDeadlineMs;
    this.#retryPeriodMs = retryPeriodMs;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log ?? silentLogger;
    this.#onStarted = options.onStartedLeading;
    this.#onStopped = options.onStoppedLeading;
    this.#onNewLeader = options.onNewLeader;
  }

  get identity(): string {
    return this.#identity;
  }

  /**
   * True while we hold the lease and are inside the renew deadline. Checks the
   * clock as well as the flag, so a caller fencing a write gets the right
   * answer even if the step-down timer is late (e.g. a blocked event loop).
   */
  isLeader(): boolean {
    return this.#leading && this.#clock.now() < this.#validUntil;
  }

  /** The current term's epoch (leaseTransitions at acquisition), or undefined when not leading. */
  epoch(): number | undefined {
    return this.isLeader() ? this.#epoch : undefined;
  }

  /** Competes for (and holds) the lease until stop(); resolves once stopped. */
  run(): Promise<void> {
    if (this.#running) throw new Error(`LeaderElector ${this.#lease}: run() was already called`);
    if (this.#stopped) throw new Error(`LeaderElector ${this.#lease}: run() after stop()`);
    this.#running = this.#loop();
    return this.#running;
  }

  /** Steps down (awaiting onStoppedLeading), then releases the lease if it still names us. */
  stop(): Promise<void> {
    if (!this.#stopping) this.#stopping = this.#shutdown();
    return this.#stopping;
  }

  async #shutdown(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#stepDown("shutting down");
    // Let an in-flight attempt finish (bounded by renewDeadline) so it cannot
    // renew the lease after the release below.
    await this.#running;
    try {
      const current = await this.#store.get();
      if (current === undefined || current.spec.holderIdentity !== this.#identity) return;
      const now = this.#clock.now();
      await this.#store.update(current, {
        holderIdentity: "",
        leaseDurationSeconds: 1,
        acquireTime: formatMicroTime(now),
        renewTime: formatMicroTime(now),
        leaseTransitions: current.spec.leaseTransitions ?? 0,
      });
      this.#log.info("released lease", { lease: this.#lease, identity: this.#identity });
    } catch (err) {
      // Not fatal: the lease simply expires; a standby waits leaseDuration.
      this.#log.warn("could not release lease", { lease: this.#lease, error: err });
    }
  }

  async #loop(): Promise<void> {
    while (!this.#stopped) {
      const wasLeading = this.#leading;
      const result = await this.#attemptWithTimeout(wasLeading);
      if (this.#stopped) break;
      if (result.ok) {
        if (this.#leading) {
          this.#extendTerm(result.sentAt);
        } else if (!wasLeading) {
          this.#startTerm(result.transitions, result.sentAt);
        }
        // else: the term ended (deadline) while this renewal was in flight.
        // Its epoch is spent; the next attempt starts a new term with a new one.
      } else if (this.#leading && result.heldBy !== undefined && result.heldBy !== this.#identity) {
        void this.#stepDown(`lease is now held by ${result.heldBy || "nobody"}`);
      }
      // A failed renewal is retried at the next period; the deadline timer
      // ends the term if none succeeds in time.
      await this.#sleep(this.#retryPeriodMs);
    }
  }

  // An attempt whose calls hang must not hold up the loop (or stop()) past the
  // renew deadline; its late outcome is dropped, which is safe: a write that
  // lands later only keeps the lease ours longer, and rivals keep waiting.
  async #attemptWithTimeout(wasLeading: boolean): Promise<Attempt> {
    let timer: unknown;
    const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
      timer = this.#clock.setTimeout(() => resolve(TIMED_OUT), this.#renewDeadlineMs);
    });
    const attempt = this.#tryAcquireOrRenew(wasLeading).catch((err: unknown): Attempt => {
      this.#log.warn(wasLeading ? "failed to renew lease" : "failed to acquire lease", {
        lease: this.#lease,
        error: err,
      });
      return { ok: false };
    });
    try {
      const r = await Promise.race([attempt, timeout]);
      if (r === TIMED_OUT) {
        this.#log.warn("lease request timed out", { lease: this.#lease, timeoutMs: this.#renewDeadlineMs });
        return { ok: false };
      }
      return r;
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }

  async #tryAcquireOrRenew(wasLeading: boolean): Promise<Attempt> {
    const durationSeconds = this.#leaseDurationMs / 1000;
    const current = await this.#store.get();
    if (current === undefined) {
      const sentAt = this.#clock.now();
      const spec: LeaseSpec = {
        holderIdentity: this.#identity,
        leaseDurationSeconds: durationSeconds,
        acquireTime: formatMicroTime(sentAt),
        renewTime: formatMicroTime(sentAt),
        leaseTransitions: 0,
      };
      try {
        this.#observe(await this.#store.create(spec));
      } catch (err) {
        if (!isConflict(err)) throw err;
        this.#log.debug("lease was created by another candidate first", { lease: this.#lease });
        return { ok: false };
      }
      return { ok: true, transitions: 0, sentAt };
    }

    this.#observe(current);
    const holder = current.spec.holderIdentity ?? "";
    const heldMs = (current.spec.leaseDurationSeconds ?? 0) * 1000;
    if (holder !== "" && holder !== this.#identity && this.#observedAt + heldMs > this.#clock.now()) {
      return { ok: false, heldBy: holder };
    }
    if (wasLeading && holder !== this.#identity) {
      // Expired and taken from us while we thought we led (possible only if
      // our timers ran far too late). Never take it back silently.
      return { ok: false, heldBy: holder };
    }

    const renewing = wasLeading && holder === this.#identity;
    const oldTransitions = current.spec.leaseTransitions ?? 0;
    const transitions = renewing ? oldTransitions : oldTransitions + 1;
    const sentAt = this.#clock.now();
    const spec: LeaseSpec = {
      holderIdentity: this.#identity,
      leaseDurationSeconds: durationSeconds,
      acquireTime: renewing ? (current.spec.acquireTime ?? formatMicroTime(sentAt)) : formatMicroTime(sentAt),
      renewTime: formatMicroTime(sentAt),
      leaseTransitions: transitions,
    };
    try {
      this.#observe(await this.#store.update(current, spec));
    } catch (err) {
      if (!isConflict(err)) throw err;
      this.#log.debug("lost an optimistic-concurrency race for the lease", { lease: this.#lease });
      return { ok: false };
    }
    return { ok: true, transitions, sentAt };
  }

  #observe(lease: StoredLease): void {
    const s = lease.spec;
    const key = JSON.stringify([
      s.holderIdentity ?? "",
      s.leaseDurationSeconds ?? 0,
      s.acquireTime ?? "",
      s.renewTime ?? "",
      s.leaseTransitions ?? 0,
    ]);
    if (key !== this.#observedKey) {
      this.#observedKey = key;
      this.#observedAt = this.#clock.now();
    }
    const holder = s.holderIdentity ?? "";
    if (holder !== "" && holder !== this.#reportedLeader) {
      this.#reportedLeader = holder;
      this.#log.info("new leader observed", { lease: this.#lease, leader: holder });
      try {
        this.#onNewLeader?.(holder);
      } catch (err) {
        this.#log.error("onNewLeader failed", { error: err });
      }
    }
  }

  #startTerm(epoch: number, sentAt: number): void {
    this.#leading = true;
    this.#epoch = epoch;
    this.#term = new AbortController();
    this.#extendTerm(sentAt);
    this.#log.info("became leader", { lease: this.#lease, identity: this.#identity, epoch });
    try {
      const r = this.#onStarted(epoch, this.#term.signal);
      if (r instanceof Promise)
        r.catch((err: unknown) => this.#log.error("onStartedLeading failed", { error: err }));
    } catch (err) {
      this.#log.error("onStartedLeading failed", { error: err });
    }
  }

  #extendTerm(sentAt: number): void {
    this.#validUntil = sentAt + this.#renewDeadlineMs;
    if (this.#deadlineTimer !== undefined) this.#clock.clearTimeout(this.#deadlineTimer);
    const check = () => {
      this.#deadlineTimer = undefined;
      if (!this.#leading) return;
      const left = this.#validUntil - this.#clock.now();
      if (left > 0) {
        this.#deadlineTimer = this.#clock.setTimeout(check, left);
        return;
      }
      void this.#stepDown(`no successful renewal within renewDeadline (${this.#renewDeadlineMs} ms)`);
    };
    this.#deadlineTimer = this.#clock.setTimeout(check, Math.max(0, this.#validUntil - this.#clock.now()));
  }

  async #stepDown(reason: string): Promise<void> {
    if (!this.#leading) return;
    this.#leading = false;
    this.#epoch = undefined;
    this.#validUntil = 0;
    if (this.#deadlineTimer !== undefined) this.#clock.clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
    this.#term?.abort(new Error(`leadership of ${this.#lease} ended: ${reason}`));
    this.#term = undefined;
    this.#log.info("stopped leading", { lease: this.#lease, identity: this.#identity, reason });
    try {
      await this.#onStopped();
    } catch (err) {
      this.#log.error("onStoppedLeading failed", { error: err });
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = this.#clock.setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        this.#clock.clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}
