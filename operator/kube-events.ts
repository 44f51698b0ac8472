// Kubernetes Events for task transitions (events.k8s.io/v1). Off the hot
// path: issuance never waits for an Event, and a failed Event is logged, not
// retried, because Events are best-effort by Kubernetes' own design. Like
// client-go's event recorder, a token bucket bounds the API server writes
// Events may take (they compete with the writes that issue credentials).
// Events beyond the bucket wait in a bounded queue, so a cascade that revokes
// a thousand tasks still leaves an Event on each; while the reconcilers are
// busy (`busy`) Events wait too, up to maxHoldMs, so that they are written
// after a cascade rather than during it. Only past the queue's bound are
// Events shed (and counted). Status and provenance are the record.
import { randomBytes } from "node:crypto";
import { API_VERSION, KIND } from "../core/api/v1alpha1.ts";
import type { KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import { fullBucket, type TokenBucket, takeToken } from "../shells/token-bucket.ts";
import { eventsPath } from "./resources.ts";

export interface EventTarget {
  namespace: string;
  name: string;
  uid?: string | undefined;
  resourceVersion?: string | undefined;
}

type EventBody = Record<string, unknown> & { metadata: { namespace: string } };

interface Queued {
  readonly body: EventBody;
  readonly at: number;
}

export class TaskEventRecorder {
  #inflight = 0;
  #dropped = 0;
  #queue: Queued[] = [];
  #head = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  readonly #maxQueued: number;
  readonly #busy: () => boolean;
  readonly #maxHoldMs: number;
  readonly #rest: KubeRest;
  readonly #log: Logger;
  readonly #instance: string;
  readonly #maxInflight: number;
  readonly #ratePerSecond: number;
  readonly #burst: number;
  readonly #bucket: TokenBucket;

  constructor(
    rest: KubeRest,
    log: Logger,
    instance: string,
    {
      maxInflight = 16,
      ratePerSecond = 50,
      burst = 100,
      maxQueued = 10_000,
      busy = () => false,
      maxHoldMs = 10_000,
    }: {
      maxInflight?: number;
      ratePerSecond?: number;
      burst?: number;
      maxQueued?: number;
      /** True while writes that matter more (reconciles) are waiting: Events hold back. */
      busy?: () => boolean;
      /** How long an Event may be held back while busy. */
      maxHoldMs?: number;
    } = {},
  ) {
    this.#maxQueued = maxQueued;
    this.#busy = busy;
    this.#maxHoldMs = maxHoldMs;
    this.#rest = rest;
    this.#log = log;
    this.#instance = instance;
    this.#maxInflight = maxInflight;
    this.#ratePerSecond = ratePerSecond;
    this.#burst = burst;
    this.#bucket = fullBucket(burst, Date.now());
  }

  #take(): boolean {
    return takeToken(this.#bucket, this.#ratePerSecond, this.#burst, Date.now());
  }

  get dropped(): number {
    return this.#dropped;
  }

  /** Events waiting for the bucket. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  emit(target: EventTarget, type: "Normal" | "Warning", reason: string, action: string, note: string): void {
    if (this.queued >= this.#maxQueued) {
      // Shed rather than queue without bound: the status and the provenance
      // stream are the records that matter.
      this.#dropped++;
      return;
    }
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
    this.#queue.push({ body, at: performance.now() });
    this.#pump();
  }

  /** Stops writing: what is still queued is not written (Events are best effort). */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #later(ms: number): void {
    // One timer at a time.
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      this.#pump();
    }, ms);
    this.#timer.unref?.();
  }

  #pump(): void {
    while (!this.#closed && this.queued > 0 && this.#inflight < this.#maxInflight) {
      const held = performance.now() - this.#queue[this.#head]!.at;
      if (held < this.#maxHoldMs && this.#busy()) {
        this.#later(Math.min(200, this.#maxHoldMs - held));
        return;
      }
      // The next token: come back then.
      if (!this.#take()) {
        this.#later(Math.ceil(1000 / this.#ratePerSecond));
        return;
      }
      const { body } = this.#queue[this.#head++]!;
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
      this.#inflight++;
      const regarding = body.regarding as { name: string };
      this.#rest
        .post(eventsPath(body.metadata.namespace), body, { discardResponse: true })
        .catch((err: unknown) => {
          this.#log.debug("event not recorded", {
            object: `${body.metadata.namespace}/${regarding.name}`,
            reason: body.reason,
            error: String(err),
          });
        })
        .finally(() => {
          this.#inflight--;
          this.#pump();
        });
    }
  }
}
