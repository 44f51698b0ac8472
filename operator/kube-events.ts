// Kubernetes Events for task transitions (events.k8s.io/v1). Off the hot
// path: issuance never waits for an Event, and a failed Event is logged, not
// retried, because Events are best-effort by Kubernetes' own design. Like
// client-go's event recorder, a token bucket bounds the API server writes
// Events may take (they compete with the writes that issue credentials);
// Events beyond it are shed and counted. Status and provenance are the record.
import { randomBytes } from "node:crypto";
import { API_VERSION, KIND } from "../core/api/v1alpha1.ts";
import type { KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { eventsPath } from "./resources.ts";

export interface EventTarget {
  namespace: string;
  name: string;
  uid?: string | undefined;
  resourceVersion?: string | undefined;
}

export class TaskEventRecorder {
  #inflight = 0;
  #dropped = 0;
  readonly #rest: KubeRest;
  readonly #log: Logger;
  readonly #instance: string;
  readonly #maxInflight: number;
  readonly #ratePerSecond: number;
  readonly #burst: number;
  #tokens: number;
  #refilledAt = Date.now();

  constructor(
    rest: KubeRest,
    log: Logger,
    instance: string,
    {
      maxInflight = 16,
      ratePerSecond = 25,
      burst = 100,
    }: { maxInflight?: number; ratePerSecond?: number; burst?: number } = {},
  ) {
    this.#rest = rest;
    this.#log = log;
    this.#instance = instance;
    this.#maxInflight = maxInflight;
    this.#ratePerSecond = ratePerSecond;
    this.#burst = burst;
    this.#tokens = burst;
  }

  #take(): boolean {
    const now = Date.now();
    this.#tokens = Math.min(
      this.#burst,
      this.#tokens + ((now - this.#refilledAt) / 1000) * this.#ratePerSecond,
    );
    this.#refilledAt = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  get dropped(): number {
    return this.#dropped;
  }

  emit(target: EventTarget, type: "Normal" | "Warning", reason: string, action: string, note: string): void {
    if (this.#inflight >= this.#maxInflight || !this.#take()) {
      // Shed load rather than queue without bound: the status and the
      // provenance stream are the records that matter.
      this.#dropped++;
      return;
    }
    this.#inflight++;
    const now = new Date();
    const body = {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: `${target.name}.${randomBytes(8).toString("hex")}`, namespace: target.namespace },
      eventTime: now.toISOString().replace("Z", "000Z"),
      reportingController: "custody.dev/operator",
      reportingInstance: this.#instance,
      action,
      reason,
      note: note.slice(0, 1024),
      type,
      regarding: {
        apiVersion: API_VERSION,
        kind: KIND,
        namespace: target.namespace,
        name: target.name,
        uid: target.uid,
        resourceVersion: target.resourceVersion,
      },
    };
    this.#rest
      .post(eventsPath(target.namespace), body)
      .catch((err: unknown) => {
        this.#log.debug("event not recorded", {
          object: `${target.namespace}/${target.name}`,
          reason,
          error: String(err),
        });
      })
      .finally(() => {
        this.#inflight--;
      });
  }
}
