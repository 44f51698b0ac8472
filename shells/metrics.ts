// The operator's Prometheus metrics (prom-client), on a registry of its own
// so tests and multiple instances never share global state.
//
// Label values come only from closed sets defined here: a reason outside the
// set is counted as "Other". Reasons originate in code, but a free-form
// string (an error message, a user's revocationReason) reaching a label would
// create a series per distinct value and grow Prometheus without bound.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { WorkQueueMetrics } from "./workqueue.ts";

/** Reasons a task is Denied (core/chain.ts DenyReason and core/lifecycle.ts). */
export const DENIAL_REASONS = [
  "InvalidSpec",
  "DeadlinePassed",
  "CycleDetected",
  "DepthExceeded",
  "ParentDenied",
  "ParentExpired",
  "ParentRevoked",
  "ParentFailed",
  "ParentInvalid",
  "AncestorDenied",
  "AncestorExpired",
  "AncestorRevoked",
  "AncestorFailed",
  "AncestorReplaced",
  "ScopeEscalation",
  "AudienceEscalation",
  "TtlExceedsParent",
  "DeadlineExceedsParent",
  "DelegationUnproven",
  "RequesterUnproven",
  "PolicyDenied",
  "Other",
] as const;

/** Reasons a task is Failed or an issuance attempt failed. */
export const FAILURE_REASONS = [
  "CAUnavailable",
  "SigningFailed",
  "MintFailed",
  "CredentialWriteFailed",
  "StatusWriteFailed",
  "ProvenanceUnavailable",
  "ApiError",
  "Conflict",
  "Timeout",
  "Other",
] as const;

/**
 * Revocation reasons that name an ancestor: the task was revoked because its
 * parent (or a higher ancestor) expired, was revoked or was deleted. Any other
 * reason (e.g. "Revoked" for spec.revoked) counts as a direct revocation.
 */
export const CASCADE_REVOCATION_REASONS: ReadonlySet<string> = new Set([
  "ParentRevoked",
  "ParentExpired",
  "ParentDeleted",
  "AncestorRevoked",
  "AncestorExpired",
  "AncestorDeleted",
]);

export type DenialReason = (typeof DENIAL_REASONS)[number];
export type FailureReason = (typeof FAILURE_REASONS)[number];
export type IssuanceKind = "issued" | "renewed";
export type TransitionKind = "denied" | "expired" | "revoked" | "failed";

/** Create-to-Issued spans webhook-free fast paths (ms) to retries under load (tens of seconds). */
export const CREATE_TO_ISSUED_BUCKETS_SECONDS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
] as const;

export interface OperatorMetricsOptions {
  /** Register prom-client's default process/Node.js metrics (RSS, CPU, heap, event loop lag). Default true. */
  defaultMetrics?: boolean;
}

function closed<T extends string>(allowed: readonly T[], value: string): T {
  return (allowed as readonly string[]).includes(value) ? (value as T) : ("Other" as T);
}

export class OperatorMetrics {
  readonly registry: Registry;
  readonly #createToIssued: Histogram<never>;
  readonly #queueDepth: Gauge<"queue">;
  readonly #issuances: Counter<"kind">;
  readonly #revocations: Counter<"cascade">;
  readonly #expirations: Counter<never>;
  readonly #denials: Counter<"reason">;
  readonly #failures: Counter<"reason">;
  readonly #leader: Gauge<never>;
  readonly #provenanceBacklog: Gauge<never>;
  readonly #admission: Histogram<"path" | "allowed">;

  constructor(options: OperatorMetricsOptions = {}) {
    this.registry = new Registry();
    const registers = [this.registry];
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });

    this.#createToIssued = new Histogram({
      name: "custody_task_create_to_issued_seconds",
      help: "Time from an AgentTask's creation to its first certificate being issued.",
      buckets: [...CREATE_TO_ISSUED_BUCKETS_SECONDS],
      registers,
    });
    this.#queueDepth = new Gauge({
      name: "custody_workqueue_depth",
      help: "Keys waiting in a work queue to be picked up by a worker.",
      labelNames: ["queue"],
      registers,
    });
    this.#issuances = new Counter({
      name: "custody_issuances_total",
      help: "Certificates issued, by kind: issued (first for a task or spec change) or renewed.",
      labelNames: ["kind"],
      registers,
    });
    this.#revocations = new Counter({
      name: "custody_revocations_total",
      help: "Tasks revoked, by whether the revocation cascaded from an ancestor.",
      labelNames: ["cascade"],
      registers,
    });
    this.#expirations = new Counter({
      name: "custody_expirations_total",
      help: "Tasks that reached their deadline and expired.",
      registers,
    });
    this.#denials = new Counter({
      name: "custody_denials_total",
      help: "Tasks denied, by reason.",
      labelNames: ["reason"],
      registers,
    });
    this.#failures = new Counter({
      name: "custody_failures_total",
      help: "Failures, by reason.",
      labelNames: ["reason"],
      registers,
    });
    this.#leader = new Gauge({
      name: "custody_leader",
      help: "1 while this replica holds the leader Lease, else 0.",
      registers,
    });
    this.#provenanceBacklog = new Gauge({
      name: "custody_provenance_backlog",
      help: "Provenance records accepted but not yet acknowledged by Kafka.",
      registers,
    });

    this.#admission = new Histogram({
      name: "custody_admission_duration_seconds",
      help: "Time the admission webhook spent on a review, by path and decision.",
      labelNames: ["path", "allowed"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });

    // Known label values start at 0, so rate() and absent() work from the
    // first scrape instead of only after the first event of each kind.
    for (const kind of ["issued", "renewed"]) this.#issuances.inc({ kind }, 0);
    for (const cascade of ["true", "false"]) this.#revocations.inc({ cascade }, 0);
    for (const reason of DENIAL_REASONS) this.#denials.inc({ reason }, 0);
    for (const reason of FAILURE_REASONS) this.#failures.inc({ reason }, 0);
    this.#leader.set(0);
    this.#provenanceBacklog.set(0);
  }

  /**
   * A certificate was issued or renewed. `createToIssuedMs` (first issuance
   * only) is observed in the latency histogram; a small negative value (the
   * apiserver's creationTimestamp is whole seconds, from another clock) counts
   * as 0, a non-finite one is not observed.
   */
  issued(kind: IssuanceKind, createToIssuedMs?: number): void {
    this.#issuances.inc({ kind: kind === "renewed" ? "renewed" : "issued" });
    if (kind === "issued" && createToIssuedMs !== undefined && Number.isFinite(createToIssuedMs)) {
      this.#createToIssued.observe(Math.max(0, createToIssuedMs) / 1000);
    }
  }

  /** A task reached Denied, Expired, Revoked or Failed for `reason`. */
  transition(kind: TransitionKind, reason: string): void {
    switch (kind) {
      case "denied":
        this.#denials.inc({ reason: closed(DENIAL_REASONS, reason) });
        return;
      case "failed":
        this.failure(reason);
        return;
      case "revoked":
        this.revoked(CASCADE_REVOCATION_REASONS.has(reason));
        return;
      case "expired":
        this.#expirations.inc();
        return;
    }
  }

  revoked(cascade: boolean): void {
    this.#revocations.inc({ cascade: cascade ? "true" : "false" });
  }

  /** A failure that did not (yet) change a task's phase, e.g. an issuance attempt that will be retried. */
  failure(reason: string): void {
    this.#failures.inc({ reason: closed(FAILURE_REASONS, reason) });
  }

  queueDepth(depth: number, queue = "agenttasks"): void {
    this.#queueDepth.set({ queue }, depth);
  }

  /** Hooks for a WorkQueue (shells/workqueue.ts); `queue` must be a fixed name, not data. */
  workQueue(queue: string): WorkQueueMetrics {
    return { depth: (n) => this.queueDepth(n, queue) };
  }

  leader(isLeader: boolean): void {
    this.#leader.set(isLeader ? 1 : 0);
  }

  admission(path: string, durationMs: number, allowed: boolean): void {
    this.#admission.observe({ path, allowed: String(allowed) }, durationMs / 1000);
  }

  provenanceBacklog(records: number): void {
    this.#provenanceBacklog.set(records);
  }

  /** The exposition for a /metrics response. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
