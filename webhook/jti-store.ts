/**
 * Accepts a delegation assertion's jti once, across webhook replicas and
 * restarts, with the API server as the arbiter: claiming creates a Lease
 * named after (issuer, jti) in the operator's namespace, and creation is
 * atomic, so of two concurrent claims exactly one succeeds and the other
 * gets AlreadyExists: a replay. Nothing is held in memory, so a restart
 * forgets nothing.
 *
 * The caller claims as the last step of admitting a task (after every other
 * check passed), because a claimed jti stays burned even if the request then
 * fails for another reason; the requester gets a fresh assertion. Burning
 * is the safe direction. Dry-run requests must not claim: they change
 * nothing (the webhook is registered with sideEffects NoneOnDryRun), so the
 * caller skips `claim` when request.dryRun is true.
 *
 * The Leases need no owner: `sweepExpired` deletes those whose assertion can
 * no longer be accepted by any replica. RBAC: create, list and delete on
 * coordination.k8s.io leases in the operator's namespace.
 */
import { createHash } from "node:crypto";
import { CLOCK_SKEW_SECONDS } from "../core/admission/assertion.ts";
import { COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL } from "../core/names.ts";
import { isAlreadyExists, isConflict, isNotFound, type KubeRest } from "../shells/kube/rest.ts";

export const JTI_LEASE_PREFIX = "custody-jti-";
export const JTI_COMPONENT = "assertion-jti";
/** RFC 3339: until when some replica may accept the assertion (its exp plus clock skew). */
export const JTI_EXPIRES_ANNOTATION = "custody.dev/assertion-accepted-until";
export const JTI_ISSUER_ANNOTATION = "custody.dev/assertion-issuer";
export const JTI_ANNOTATION = "custody.dev/assertion-jti";
export const JTI_TASK_ANNOTATION = "custody.dev/assertion-task";

const LABEL_SELECTOR = `${MANAGED_BY_LABEL}=${MANAGED_BY},${COMPONENT_LABEL}=${JTI_COMPONENT}`;

/**
 * After the recorded expiry, keep a Lease this much longer before sweeping:
 * the sweeping replica's clock may run ahead of another replica's, which
 * would still accept the assertion until its own clock passes the expiry.
 * Never less than the clock skew, so a caller that records exp instead of
 * acceptedUntil still never forgets a jti that is acceptable somewhere.
 */
export const DEFAULT_SWEEP_GRACE_MS = 5 * 60_000;
const MIN_SWEEP_GRACE_MS = CLOCK_SKEW_SECONDS * 1000;

/** The assertion was presented before: refuse the request. Carries no token. */
export class ReplayError extends Error {
  readonly issuer: string;
  readonly jti: string;
  constructor(issuer: string, jti: string) {
    super(
      `the assertion was already used: jti ${JSON.stringify(jti)} of issuer ${JSON.stringify(issuer)} ` +
        "is accepted only once; ask the issuer for a new assertion",
    );
    this.name = "ReplayError";
    this.issuer = issuer;
    this.jti = jti;
  }
}

/**
 * The Lease name for (issuer, jti): a digest, so any jti fits a DNS name and
 * two issuers using the same jti do not collide (the newline cannot occur in
 * an issuer, which is printable ASCII, so the pair is unambiguous).
 */
export function jtiLeaseName(issuer: string, jti: string): string {
  return `${JTI_LEASE_PREFIX}${createHash("sha256").update(`${issuer}\n${jti}`, "utf8").digest("hex").slice(0, 40)}`;
}

export interface JtiClaim {
  issuer: string;
  jti: string;
  /** CheckedAssertion.acceptedUntil (exp plus clock skew); exp itself is also safe, see the sweep grace. */
  acceptedUntil: Date;
  /** The task the assertion admitted, `namespace/name`, for whoever investigates a replay. */
  task?: string;
}

interface LeaseList {
  items?: Array<{
    metadata?: { name?: string; uid?: string; annotations?: Record<string, string> };
  }>;
  metadata?: { continue?: string };
}

export interface SweepResult {
  deleted: number;
  kept: number;
  /** Leases of ours without a readable expiry: kept (forgetting a jti could admit a replay). */
  unreadable: string[];
}

export class JtiStore {
  readonly #rest: KubeRest;
  readonly #namespace: string;
  readonly #graceMs: number;

  constructor(rest: KubeRest, options: { namespace: string; sweepGraceMs?: number }) {
    this.#rest = rest;
    this.#namespace = options.namespace;
    this.#graceMs = Math.max(MIN_SWEEP_GRACE_MS, options.sweepGraceMs ?? DEFAULT_SWEEP_GRACE_MS);
  }

  #collection(): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.#namespace)}/leases`;
  }

  /** Resolves when this is the jti's first use; throws ReplayError when it is not. */
  async claim(c: JtiClaim): Promise<void> {
    const lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        name: jtiLeaseName(c.issuer, c.jti),
        namespace: this.#namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [COMPONENT_LABEL]: JTI_COMPONENT },
        annotations: {
          [JTI_EXPIRES_ANNOTATION]: c.acceptedUntil.toISOString(),
          // Identifiers, not credentials: the signed record keeps them too.
          [JTI_ISSUER_ANNOTATION]: c.issuer,
          [JTI_ANNOTATION]: c.jti,
          ...(c.task ? { [JTI_TASK_ANNOTATION]: c.task } : {}),
        },
      },
      spec: {},
    };
    try {
      await this.#rest.post(this.#collection(), lease);
    } catch (err) {
      if (isAlreadyExists(err)) throw new ReplayError(c.issuer, c.jti);
      throw err;
    }
  }

  /**
   * Deletes the Leases whose assertions no replica can accept any more
   * (recorded expiry plus the grace before `now`). Called from the
   * operator's periodic sweep; safe to run on several replicas at once.
   */
  async sweepExpired(now: number): Promise<SweepResult> {
    const result: SweepResult = { deleted: 0, kept: 0, unreadable: [] };
    let cont: string | undefined;
    do {
      const q = new URLSearchParams({ labelSelector: LABEL_SELECTOR, limit: "500" });
      if (cont) q.set("continue", cont);
      const page = await this.#rest.get<LeaseList>(`${this.#collection()}?${q}`);
      for (const item of page.items ?? []) {
        const name = item.metadata?.name ?? "";
        const until = Date.parse(item.metadata?.annotations?.[JTI_EXPIRES_ANNOTATION] ?? "");
        if (Number.isNaN(until)) {
          result.unreadable.push(name);
          continue;
        }
        if (until + this.#graceMs > now) {
          result.kept++;
          continue;
        }
        try {
          // The uid precondition deletes exactly the Lease we read.
          await this.#rest.delete(`${this.#collection()}/${encodeURIComponent(name)}`, {
            apiVersion: "v1",
            kind: "DeleteOptions",
            preconditions: { uid: item.metadata?.uid },
          });
          result.deleted++;
        } catch (err) {
          // Another replica swept it first (gone), or it is not the Lease we read (uid).
          if (!isNotFound(err) && !isConflict(err)) throw err;
        }
      }
      cont = page.metadata?.continue || undefined;
    } while (cont);
    return result;
  }
}
