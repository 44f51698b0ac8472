// The AgentTask reconciler. One key at a time (the work queue guarantees it),
// idempotent, acting on current state rather than on events:
//
//   decide (pure, core/lifecycle.ts) → one of:
//     issue   → ensure finalizer → mint in memory → record `issued`/`renewed`
//               and await Kafka's ack → write the Secret → write status
//     deny / expire / revoke → delete the credential, record, write status
//     wait    → requeue at the renewal time or deadline
//
// Nothing reaches a Secret before its provenance record is acknowledged.
import { randomBytes, randomInt } from "node:crypto";
import {
  checkRecordMatchesSpec,
  createRecordVerifier,
  DEFAULT_RECORD_MAX_SKEW_MS,
  REQUESTER_RECORD_ANNOTATION,
  RECORD_FIELD as REQUESTER_RECORD_FIELD,
  type RecordVerifier,
  type RequesterRecord,
  statusDelegatorOf,
} from "../core/admission/record.ts";
import type {
  AgentTask,
  AgentTaskSpec,
  AgentTaskStatus,
  ChainLink,
  StatusDelegator,
} from "../core/api/v1alpha1.ts";
import { type ChainAccepted, DEFAULT_MAX_DEPTH, evaluateChain } from "../core/chain.ts";
import { delegationContextOf, delegationInfo, rootChain } from "../core/delegation.ts";
import { DEFAULT_TTL, formatDuration, parseTtl } from "../core/duration.ts";
import { ValidationError } from "../core/errors.ts";
import { type Decision, decide, sameStatus, setCondition, validityWindow } from "../core/lifecycle.ts";
import { combinedVersion, type PolicyDecision } from "../core/policy/decide.ts";
import { sha256Hex } from "../core/provenance/chain.ts";
import {
  type DelegationContext,
  digestSensitive,
  eventReasons,
  type ProvenanceSalt,
} from "../core/provenance/events.ts";
import type { KeyRing } from "../core/provenance/sign.ts";
import { buildTaskSpiffeId } from "../core/spiffe.ts";
import {
  type CertificateAuthority,
  generateLeafKeyPair,
  type MintedSvid,
  mintSvid,
  serialFromRandom,
  X509Error,
} from "../core/x509/index.ts";
import { isAlreadyExists, isConflict, isNotFound, KubeApiError, type KubeRest } from "../shells/kube/rest.ts";
import type { Logger } from "../shells/log.ts";
import type { HandlerResult } from "../shells/workqueue.ts";
import {
  JWT_KID_ANNOTATION,
  JWT_REFRESH_ANNOTATION,
  type JwtSvidMinter,
  type MintedJwtSvids,
} from "./jwt-svids.ts";
import type { TaskEventRecorder } from "./kube-events.ts";
import { issuanceFacts, type PolicyStore, rootDelegatorGroups, selectionFacts } from "./policies.ts";
import { deterministicEventId, type ProvenanceRecorder, ProvenanceUnavailableError } from "./provenance.ts";
import {
  caFingerprint,
  credentialSecretName,
  FINALIZER,
  ISSUER_CA_ANNOTATION,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  SERIAL_ANNOTATION,
  SPIFFE_ID_ANNOTATION,
  secretPath,
  TASK_LABEL,
  taskPath,
  taskStatusPath,
} from "./resources.ts";
import type { TrustBundlePublisher } from "./trust-bundle.ts";

export interface ReconcilerMetrics {
  issued(kind: "issued" | "renewed", createToReadyMs: number | undefined): void;
  transition(kind: "denied" | "expired" | "revoked" | "failed", reason: string): void;
  /** An attempt that failed and will be retried (reason from a closed set). */
  failure(reason: string): void;
}

export interface TaskReconcilerDeps {
  rest: KubeRest;
  /** The cached task for a key ("namespace/name"), or undefined once it is gone. */
  getTask: (key: string) => AgentTask | undefined;
  /** The cached task's resourceVersion, without parsing it (getTask's cache). */
  cachedResourceVersion?: (key: string) => string | undefined;
  /** The serial of each task's credential Secret as last observed or written. */
  credentials: CredentialIndex;
  ca: () => CertificateAuthority;
  /** Roots written as the Secret's ca.crt (the CA's roots plus extra anchors). */
  trustAnchorsPem?: string;
  recorder: ProvenanceRecorder;
  events: TaskEventRecorder;
  bundles: TrustBundlePublisher;
  trustDomain: string;
  /** Public keys of the admission webhook: a task issues only with a requester record they verify. */
  recordKeys: KeyRing;
  /** A memoizing verifier of recordKeys to share (the webhook's); one of its own otherwise. */
  verifyRecord?: RecordVerifier;
  /** How far the record's issuedAt may be from creationTimestamp. */
  recordMaxSkewMs?: number;
  renewJitter: number;
  /** Most AgentTask hops above a task (issue 5's cap; default 5). */
  maxChainDepth?: number;
  /** Labels marked sensitive are recorded only as HMACs under this salt. */
  salt?: ProvenanceSalt;
  log: Logger;
  metrics?: ReconcilerMetrics;
  now?: () => number;
  /** Tests only: called at named points of the seam (e.g. to crash after an acknowledged `issued`). */
  failpoint?: (name: string) => void;
  /** JWT-SVIDs for tasks that name audiences (operator/jwt-svids.ts); none without it. */
  jwt?: JwtSvidMinter;
  /** The policies in force (operator/policies.ts); without it every task is decided by "none" (allow). */
  policies?: PolicyStore;
  /**
   * Called once the credential Secret of a task that held one is deleted to
   * take access away (revocation, denial, deletion, expiry), before its events and status,
   * which may wait for Kafka: copies of its certificates are published as
   * revoked at once (the trust bundle's revoked.txt). Resolves true once they
   * are; a deleted task keeps its finalizer until then.
   */
  credentialWithdrawn?: (task: AgentTask) => Promise<boolean> | undefined;
}

/**
 * Serial per task key, fed by our own writes and by the Secret watch. Our
 * writes are recorded at once so that a reconcile that runs before the watch
 * delivers them does not mint twice.
 */
export class CredentialIndex {
  readonly #serials = new Map<string, string>();
  /** Keys whose Secret this installation's CA issued (see ISSUER_CA_ANNOTATION). */
  readonly #issuedHere = new Set<string>();
  issuedHere(key: string): boolean {
    return this.#issuedHere.has(key);
  }
  /** When each task's JWT-SVIDs are due for refresh (the Secret's annotation, or our last write). */
  readonly #tokensDue = new Map<string, number>();
  tokensRefreshAt(key: string): number | undefined {
    return this.#tokensDue.get(key);
  }
  setTokensRefreshAt(key: string, at: number | undefined): void {
    if (at === undefined || Number.isNaN(at)) this.#tokensDue.delete(key);
    else this.#tokensDue.set(key, at);
  }
  get(key: string): string | undefined {
    return this.#serials.get(key);
  }
  set(key: string, serial: string | undefined, issuedHere = true): void {
    if (serial === undefined) {
      this.#serials.delete(key);
      this.#tokensDue.delete(key);
      this.#issuedHere.delete(key);
    } else {
      this.#serials.set(key, serial);
      if (issuedHere) this.#issuedHere.add(key);
      else this.#issuedHere.delete(key);
    }
  }
  get size(): number {
    return this.#serials.size;
  }
}

/**
 * What the `requested` event records of spec.agent: model, tools and labels,
 * except the values of labels marked sensitive, which appear only as HMACs
 * (`sensitive.digests["labels.<key>"]`). Without a salt they are left out.
 */
export function runtimeContext(agent: AgentTaskSpec["agent"], salt: ProvenanceSalt | undefined) {
  const marked = new Set(agent.sensitiveLabels ?? []);
  const labels: Record<string, string> = {};
  const secret: Record<string, string> = {};
  for (const [k, v] of Object.entries(agent.labels ?? {})) {
    if (marked.has(k)) secret[`labels.${k}`] = v;
    else labels[k] = v;
  }
  return {
    ...(agent.model ? { model: { ...agent.model } } : {}),
    ...(agent.tools && agent.tools.length > 0 ? { tools: agent.tools.map((t) => ({ ...t })) } : {}),
    ...(Object.keys(labels).length > 0 ? { labels } : {}),
    ...(salt && Object.keys(secret).length > 0
      ? { sensitive: digestSensitive(salt.key, salt.id, secret) }
      : {}),
  };
}

/** The failure metric's reason for a reconcile that threw (a closed set: shells/metrics.ts FAILURE_REASONS). */
export function failureReason(err: unknown): string {
  if (err instanceof ProvenanceUnavailableError) return "ProvenanceUnavailable";
  if (err instanceof KubeApiError) return err.code === 409 ? "Conflict" : "ApiError";
  const text = err instanceof Error ? `${err.name} ${err.message}` : String(err);
  return /timed? ?out|ETIMEDOUT/i.test(text) ? "Timeout" : "Other";
}

/** How soon a task waiting for the provenance stream is tried again. */
const PROVENANCE_RETRY_MS = 5_000;
/** How long a deleted task of another installation is left to it before its finalizer is released anyway. */
const FOREIGN_FINALIZE_GRACE_MS = 5 * 60_000;
/**
 * How long a deleted task's finalizer waits for the revocation list to hold
 * its certificates when the list cannot be written (the ConfigMap would pass
 * 1 MiB, a policy refuses it): then it goes anyway, as it did before the list
 * was awaited, and the provenance stream keeps the revocation.
 */
const WITHDRAWN_LIST_GRACE_MS = 5 * 60_000;
/** How long finalize waits for the list before it lets the worker go, and when it comes back. */
const WITHDRAWN_LIST_PATIENCE_MS = 2_000;
const WITHDRAWN_LIST_RETRY_MS = 2_000;

/** `p`'s answer if it comes within `ms`; false otherwise (it may still come, later). */
async function answeredWithin(p: Promise<boolean>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const patience = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  return Promise.race([p, patience]).finally(() => clearTimeout(timer));
}

/** How long ago the task's deletion was asked for (NaN without a deletionTimestamp). */
function deletingForMs(task: AgentTask, now: number): number {
  return now - Date.parse((task.metadata as { deletionTimestamp?: string }).deletionTimestamp ?? "");
}

/** Events a task has once per fact (terminal transitions, an abandoned serial): their ids derive from it. */
const ONCE_PER_TASK: ReadonlySet<string> = new Set([
  "dev.custody.task.delegation.refused",
  "dev.custody.task.denied",
  "dev.custody.task.expired",
  "dev.custody.task.revoked",
  "dev.custody.task.deleted",
  "dev.custody.task.issuance.abandoned",
  "dev.custody.task.policy.revoked",
]);

/** How long an acknowledgement may take before the attempt gives up waiting for it. */
const ACK_PATIENCE_MS = 3_000;

/** True once `ack` resolved; false when it has not within ACK_PATIENCE_MS (it may still, later). */
function acknowledgedInTime(ack: Promise<void>): Promise<boolean> {
  return answeredWithin(
    ack.then(() => true),
    ACK_PATIENCE_MS,
  );
}

/**
 * Status writes change the task's resourceVersion; until the informer has
 * seen our write, its cached copy is stale. We remember what we wrote and
 * reconcile from that instead of from the stale copy.
 */
export class WrittenState {
  readonly #byKey = new Map<string, { rv: string; task: AgentTask }>();
  /** `cachedRv`: the informer's resourceVersion of a key (its watch event may beat our write's response). */
  readonly #cachedRv: (key: string) => string | undefined;
  constructor(cachedRv: (key: string) => string | undefined = () => undefined) {
    this.#cachedRv = cachedRv;
  }
  remember(key: string, task: AgentTask): void {
    const rv = task.metadata.resourceVersion;
    if (!rv) return;
    // Already in the cache: nothing to bridge. Kept, it would stay until the
    // task's next reconcile (a renewal, tens of minutes on): a whole parsed
    // object per task.
    const cached = this.#cachedRv(key);
    if (cached === rv || newerRv(cached, rv)) {
      this.#byKey.delete(key);
      return;
    }
    // managedFields are the API server's bookkeeping, which no reconcile reads.
    const { managedFields: _dropped, ...metadata } = task.metadata as AgentTask["metadata"] & {
      managedFields?: unknown;
    };
    this.#byKey.set(key, { rv, task: { ...task, metadata } });
  }
  /** The freshest copy: ours if the cache has not caught up with it yet. */
  freshest(key: string, cached: AgentTask): AgentTask {
    const mine = this.#byKey.get(key);
    if (!mine) return cached;
    if (cached.metadata.resourceVersion === mine.rv || newerRv(cached.metadata.resourceVersion, mine.rv)) {
      this.#byKey.delete(key);
      return cached;
    }
    return mine.task;
  }
  /** From the informer: once it has our write (or a newer one), drop our copy. */
  observed(key: string, rv: string | undefined): void {
    const mine = this.#byKey.get(key);
    if (mine && (rv === mine.rv || newerRv(rv, mine.rv))) this.#byKey.delete(key);
  }
  forget(key: string): void {
    this.#byKey.delete(key);
  }
}

/** resourceVersions are opaque, but etcd's are integers; only compare those. */
function newerRv(a: string | undefined, b: string): boolean {
  if (!a || !/^\d+$/.test(a) || !/^\d+$/.test(b)) return false;
  return a.length > b.length || (a.length === b.length && a > b);
}

const PRINCIPAL_KIND_OF: Record<string, "user" | "group" | "serviceaccount" | "workflow" | "agent"> = {
  User: "user",
  Group: "group",
  ServiceAccount: "serviceaccount",
  Workflow: "workflow",
  AgentTask: "agent",
};

const ISSUE_REASON_TEXT = {
  NoCertificate: "issuing the first certificate",
  SpecChanged: "the spec changed",
  RenewalDue: "renewal is due",
  CredentialMissing: "the credential Secret is missing or differs from status",
  PolicyChanged: "a policy change narrowed what the task may hold",
} as const;

/** What the pod watch keeps of a pod that carries a Custody identity. */
export interface InjectedPod {
  namespace: string;
  name: string;
  uid: string;
  /** Containers that mount the credential volume. */
  containers: string[];
}

export interface TaskReconciler {
  reconcile(key: string): Promise<HandlerResult>;
  /**
   * Records `injected` for a pod that exists and mounts the task's current
   * credential; false when the task has no certificate yet (call again once
   * it is Issued). The id derives from the pod uid and serial: seeing the pod
   * again (a re-list, a new leader) yields a recognisable duplicate.
   */
  recordInjected(taskKey: string, pod: InjectedPod): Promise<boolean>;
  /** Tell the reconciler the informer now has this resourceVersion of the task. */
  observed(key: string, resourceVersion: string | undefined): void;
}

export function createTaskReconciler(deps: TaskReconcilerDeps): TaskReconciler {
  const now = deps.now ?? Date.now;
  const written = new WrittenState(deps.cachedResourceVersion);
  // Issued events appended but not acknowledged in time: until they are,
  // Kafka is taken to be away even before a send has failed, so no attempt
  // appends another certificate behind them.
  let lateAcks = 0;
  const verifyRecord =
    deps.verifyRecord ??
    createRecordVerifier(deps.recordKeys, deps.recordMaxSkewMs ?? DEFAULT_RECORD_MAX_SKEW_MS);
  const { rest, log } = deps;

  return { reconcile, observed: (key, rv) => written.observed(key, rv), recordInjected };

  async function recordInjected(taskKey: string, pod: InjectedPod): Promise<boolean> {
    const cached = deps.getTask(taskKey);
    if (!cached) return false;
    const task = written.freshest(taskKey, cached);
    const serial = task.status?.certificate?.serial;
    if (task.status?.phase !== "Issued" || !serial || pod.containers.length === 0) return false;
    const context = contextOf(task);
    await deps.recorder.record(
      "dev.custody.task.injected",
      task.status?.spiffeID ?? `${context.namespace}/${context.name}`,
      {
        context,
        pod: { namespace: pod.namespace, name: pod.name.slice(0, 253), uid: pod.uid },
        containers: pod.containers.slice(0, 256).map((c) => c.slice(0, 253)),
        serial,
      },
      context.rootUid,
      deterministicEventId("injected", pod.uid, serial),
    );
    return true;
  }

  async function reconcile(key: string): Promise<HandlerResult> {
    try {
      return await reconcileOnce(key);
    } catch (err) {
      // Kafka away: whatever needs no event (deleting a credential) is done;
      // the rest is retried soon, not after a failure's growing backoff.
      if (err instanceof ProvenanceUnavailableError) {
        deps.metrics?.failure("ProvenanceUnavailable");
        log.debug("provenance unavailable; retrying", { object: key, error: err.message });
        return { requeueAfterMs: PROVENANCE_RETRY_MS };
      }
      throw err;
    }
  }

  async function reconcileOnce(key: string): Promise<HandlerResult> {
    const cached = deps.getTask(key);
    if (!cached) {
      written.forget(key);
      deps.credentials.set(key, undefined);
      return;
    }
    let task = written.freshest(key, cached);
    const ns = task.metadata.namespace ?? "";
    const name = task.metadata.name;

    if (isDeleting(task)) {
      // The finalizer policy sets the same finalizer on every AgentTask in the
      // cluster, so a task another installation admitted (its key signed the
      // record) and this one never issued is the other's to revoke, record
      // and release: finalizing it here would delete its credential and
      // release it before its own installation recorded the revocation.
      const proven = proveRequester(task);
      if ("error" in proven && proven.foreign && !deps.credentials.issuedHere(key)) {
        const since = deletingForMs(task, now());
        // One that was issued stays its installation's, however long (its
        // revocation is for it to record): only a never-issued task is let go.
        if (since < FOREIGN_FINALIZE_GRACE_MS || task.status?.certificate) {
          log.debug("deleted task of another installation: left to it", { object: key });
          return { requeueAfterMs: Math.max(60_000, FOREIGN_FINALIZE_GRACE_MS - since) };
        }
        // Its installation did not release it (uninstalled, or this one's
        // admission key was replaced): the finalizer only, lest the deletion
        // (and its namespace's) hang; nothing of ours to revoke or record.
        log.info("deleted task of an absent installation: finalizer released", { object: key });
        await releaseFinalizer(task);
        return;
      }
      return finalize(task, key);
    }

    const t = now();
    let decision: Decision = decide(task, { serial: deps.credentials.get(key) }, t);

    // No credential without proof of who asked: the webhook's signed record
    // must verify and belong to this very object (see core/admission/record.ts).
    let admission: RequesterRecord | undefined;
    if (decision.kind === "issue" || decision.kind === "wait") {
      const proven = proveRequester(task);
      if ("error" in proven) {
        // Signed by a key this installation does not hold: another
        // installation's task. Never a credential from us, and no status or
        // revocation either, even once the other one has issued it (its status
        // and Secret are the other's, its CA named on the Secret): two
        // installations must not fight over each other's tasks. Only a
        // credential our own CA issued (our admission key lost, say) is
        // revoked below rather than parked. The record cannot be swapped for
        // a foreign one later: a ValidatingAdmissionPolicy keeps it immutable.
        if (proven.foreign && !deps.credentials.issuedHere(key)) {
          log.debug("task signed by another installation's admission key: left alone", { object: key });
          return { requeueAfterMs: 10 * 60_000 };
        }
        const holdsCredential = task.status?.phase === "Issued" || deps.credentials.get(key) !== undefined;
        if (holdsCredential) return cascadeRevoke(task, key, "RequesterUnproven", proven.error, t);
        return denyTask(task, key, "RequesterUnproven", proven.error, t, "delegation");
      }
      admission = proven.record;
    }

    // A sub-agent: the chain rules depend on the ancestors' current state,
    // so they are checked on every pass that could keep or mint a credential.
    let accepted: ChainAccepted | undefined;
    if (task.spec?.parentRef?.name && (decision.kind === "issue" || decision.kind === "wait")) {
      const result = evaluateChain(task, (n) => deps.getTask(`${ns}/${n}`), {
        maxDepth: deps.maxChainDepth ?? DEFAULT_MAX_DEPTH,
        now: t,
      });
      const holdsCredential = task.status?.phase === "Issued" || deps.credentials.get(key) !== undefined;
      const deleted = deletedAncestor(task, (n) => deps.getTask(`${ns}/${n}`));
      if (deleted && holdsCredential) {
        return cascadeRevoke(task, key, deleted.reason, deleted.message, t);
      }
      if (!result.ok) {
        // A task that holds a credential and now breaks a chain rule (a dead
        // ancestor, or a parent that narrowed its scope, ttl or deadline) is
        // revoked, not merely denied: its certificate must be listed and
        // recorded as revoked, because copies stay valid until notAfter.
        if (result.kind === "deny" && holdsCredential) {
          return cascadeRevoke(task, key, result.reason, result.message, t);
        }
        if (result.kind === "deny") {
          return denyTask(task, key, result.reason, result.message, t, "delegation");
        }
        // Waiting for an ancestor: a credential already issued stays until
        // the ancestor settles; a new one is not minted.
        if (task.status?.phase !== "Issued") {
          await writeStatus(key, task, pendingStatus(task, result.reason, result.message, t));
        }
        return { requeueAfterMs: 30_000 };
      }
      accepted = result;
    }

    // Policy: what the policies in force say now. At issuance and renewal it
    // decides the credential; while one is held, a changed policy version is
    // judged at once (revoke, reissue narrower, or only recorded).
    let policy: PolicyDecision | undefined;
    if (deps.policies && (decision.kind === "issue" || decision.kind === "wait")) {
      // The chain as the credential will carry it (a root task's first
      // issuance included), so the delegator is spelled the same every time.
      const chainNow = accepted
        ? accepted.chain
        : (task.status?.delegationChain ??
          (admission
            ? rootChain(statusDelegatorOf(admission), { name, uid: task.metadata.uid ?? "" }, task.spec.scope)
            : undefined));
      const groups = rootDelegatorGroups(task, admission, chainNow, deps.getTask);
      const selection = selectionFacts(task, admission, chainNow, groups);
      const selected = deps.policies.select(selection);
      // A pass that holds a credential under an unchanged policy version has
      // nothing to decide: only the version is compared (no rule runs).
      const unchanged =
        decision.kind === "wait" && combinedVersion(selected) === (task.status?.policyVersion ?? "none");
      if (!unchanged) {
        const stage = decision.kind === "issue" && decision.why === "RenewalDue" ? "renewal" : "issuance";
        policy = deps.policies.decide(issuanceFacts(task, selection, chainNow ?? [], stage, t), selected);
      }
    }
    if (
      policy &&
      decision.kind === "wait" &&
      task.status?.phase === "Issued" &&
      policy.version !== (task.status.policyVersion ?? "none")
    ) {
      const verdict = judgePolicyChange(task, policy);
      if (verdict === "revoke")
        return revokeByPolicy(task, key, policy, `revoked by policy: ${policy.reasons.join("; ")}`, t);
      if (verdict === "record") {
        await recordPolicyDecision(task, policy, "policy-change");
        await writeStatus(key, task, {
          ...task.status,
          ...policyStatus(policy, task.status.grantedScope, task.status.grantedTtl),
        });
        return { requeueAfterMs: Math.max(1000, decision.wakeAt - t) };
      }
      // Narrower: reissue now, under the new policy.
      decision = {
        kind: "issue",
        why: "PolicyChanged",
        spec: task.spec,
        ttlMs: parseTtl(task.spec.ttl ?? DEFAULT_TTL, "spec.ttl"),
      };
    }

    switch (decision.kind) {
      case "done":
        return;
      case "wait": {
        const tokensDue = await refreshJwtSvids(
          task,
          key,
          t,
          accepted?.effectiveDeadline ?? task.spec.deadline,
        );
        return { requeueAfterMs: Math.max(1000, Math.min(decision.wakeAt, tokensDue) - t) };
      }
      case "deny":
        return denyTask(task, key, decision.reason, decision.message, t, "issuance");
      case "expire":
      case "revoke": {
        const serial = task.status?.certificate?.serial;
        const serials = liveSerials(task, t);
        await deleteCredential(task, key);
        const phase = decision.kind === "expire" ? "Expired" : "Revoked";
        const reason = decision.kind === "expire" ? "DeadlinePassed" : "Revoked";
        if (decision.kind === "expire") {
          await record("dev.custody.task.expired", task, {
            serial: serial ?? "0",
            // Without a certificate, the deadline it could not outlive (not
            // the clock: a retry must derive the same event id).
            notAfter: task.status?.certificate?.notAfter ?? task.spec.deadline ?? new Date(t).toISOString(),
          });
        } else {
          await record("dev.custody.task.revoked", task, {
            serials,
            reason: decision.message.slice(0, 1024),
          });
        }
        await writeStatus(key, task, terminalStatus(task, phase, reason, decision.message, t));
        deps.events.emit(
          target(task),
          "Normal",
          reason,
          phase === "Expired" ? "Expire" : "Revoke",
          decision.message,
        );
        deps.metrics?.transition(decision.kind === "expire" ? "expired" : "revoked", reason);
        return;
      }
      case "issue":
        break;
    }

    // ---- issue or renew
    if (policy && !policy.allowed) {
      // Recorded after the credential is gone (denyTask, cascadeRevoke), before the verdict.
      const decided = () =>
        recordPolicyDecision(task, policy, decision.why === "RenewalDue" ? "renewal" : "issuance");
      const message = `denied by policy: ${policy.reasons.join("; ")}`.slice(0, 4096);
      const holds = task.status?.phase === "Issued" || deps.credentials.get(key) !== undefined;
      if (holds) return revokeByPolicy(task, key, policy, message, t, decided);
      return denyTask(task, key, "PolicyDenied", message, t, "policy", decided);
    }
    // No credential before its `issued` event is acknowledged: while the
    // stream cannot take one, nothing is minted and the task says why.
    if (!deps.recorder.healthy || lateAcks > 0) {
      deps.metrics?.failure("ProvenanceUnavailable");
      await sayWaitingForProvenance(task, key, t);
      return { requeueAfterMs: PROVENANCE_RETRY_MS };
    }
    if (!(task.metadata as { finalizers?: string[] }).finalizers?.includes(FINALIZER)) {
      task = await addFinalizer(task, key);
    }
    await deps.bundles.ensure(ns);

    const ca = deps.ca();
    const spec = decision.spec;
    const uid = task.metadata.uid ?? "";
    const delegator = accepted ? delegatorOfChain(accepted.chain, task) : statusDelegatorOf(admission!);
    const chain = accepted ? accepted.chain : rootChain(delegator, { name, uid }, spec.scope);
    const deadline = accepted ? accepted.effectiveDeadline : spec.deadline;
    const spiffeId = buildTaskSpiffeId({
      trustDomain: deps.trustDomain,
      namespace: ns,
      agent: spec.agent.name,
      task: name,
    });
    const grantedScope = policy ? [...policy.scope] : [...spec.scope];
    const ttlMs = Math.min(
      decision.ttlMs,
      policy?.maxTtlMs ?? Number.POSITIVE_INFINITY,
      accepted?.ttlCapMs ?? Number.POSITIVE_INFINITY,
    );
    const validity = validityWindow({
      now: t,
      ttlMs,
      deadline,
      caNotAfter: ca.notAfter.getTime(),
      jitter: deps.renewJitter,
      jitterUnit: randomInt(0, 1_000_000) / 1_000_000,
    });
    const keyPair = generateLeafKeyPair();
    let info: ReturnType<typeof delegationInfo>;
    let svid: MintedSvid;
    try {
      info = delegationInfo({
        taskUid: uid,
        delegator,
        spec,
        chain,
        policyVersion: policy?.version ?? "none",
        grantedScope,
      });
      svid = mintSvid({
        ca,
        spiffeId,
        subjectPublicKey: keyPair.publicKeySpki,
        serial: serialFromRandom(randomBytes(16)),
        notBefore: new Date(validity.notBefore),
        notAfter: new Date(validity.notAfter),
        delegation: info,
      });
    } catch (err) {
      // Bad input the schema let through, or a CA that cannot sign this
      // lifetime (expired, expiring): no credential, phase Failed, the field
      // named; looked at again later (a rotated CA heals it).
      if (!(err instanceof X509Error) && !(err instanceof ValidationError)) throw err;
      const message = `cannot mint: ${err.message}`;
      await writeStatus(key, task, failedStatus(task, "MintFailed", message, t));
      deps.events.emit(target(task), "Warning", "MintFailed", "Issue", message);
      deps.metrics?.transition("failed", "MintFailed");
      return { requeueAfterMs: 5 * 60_000 };
    }

    // JWT-SVIDs ride with the certificate: same Secret write, never past its notAfter.
    const jwts = deps.jwt?.wants(task)
      ? await deps.jwt.mint({
          task,
          spiffeId,
          chain,
          policyVersion: policy?.version ?? "none",
          certificateNotAfter: validity.notAfter,
          deadline,
          now: t,
        })
      : undefined;

    // The first issuance: say who asked and how the delegation was proven
    // (from the verified admission record). Not awaited on their own: the
    // stream is acknowledged in order, so awaiting `issued` below covers them.
    // Deterministic ids: a repeat after a crash is a recognisable duplicate.
    if (!task.status?.certificate && admission) {
      const firstEvents = recordRequested(task, admission, chain, spec);
      firstEvents.catch(() => undefined); // the `issued` await below reports a failure
    }

    // Provenance before the credential exists anywhere but in memory.
    const previousSerial = task.status?.certificate?.serial;
    const certificate = {
      serial: svid.serialHex,
      spiffeId,
      notBefore: new Date(validity.notBefore).toISOString(),
      notAfter: new Date(validity.notAfter).toISOString(),
      publicKeySha256: svid.publicKeySHA256,
    };
    const narrowedByPolicy = decision.why === "PolicyChanged";
    const policyStage = narrowedByPolicy
      ? "policy-change"
      : decision.why === "RenewalDue"
        ? "renewal"
        : "issuance";
    const renewing =
      (decision.why === "RenewalDue" || decision.why === "PolicyChanged") &&
      previousSerial !== undefined &&
      task.status?.phase === "Issued";
    // Until the Secret is written, the resume offsets a checkpoint anchors
    // must not move past this record: a crash in between is settled by the
    // next leader from there (core/provenance/abandoned.ts).
    const release = deps.recorder.pin?.() ?? (() => undefined);
    let pinned = false;
    try {
      await issueAndDeliver();
    } finally {
      if (!pinned) release();
    }
    async function issueAndDeliver() {
      // Recorded when a policy is in force (the default's "none" adds nothing to say).
      if (policy && policy.version !== "none") await recordPolicyDecision(task, policy, policyStage, chain);
      const announced = renewing
        ? record("dev.custody.task.renewed", task, { certificate, previousSerial }, chain, {
            unbounded: true,
          })
        : record("dev.custody.task.issued", task, { certificate }, chain, { unbounded: true });
      if (!(await acknowledgedInTime(announced))) {
        // Kafka went away after this event was appended. It stays queued and
        // is sent, with the same bytes, once Kafka is back; this attempt does
        // not hold a worker until then (revocations and expiries must not
        // queue behind it). Its certificate is never delivered: once the
        // event is acknowledged it is recorded as abandoned, and a later
        // attempt mints anew. Until then the resume offsets stay pinned, so
        // a successor after a crash settles it instead.
        abandonOnceAcknowledged(
          announced,
          "Kafka acknowledged the issued event only after the attempt stopped waiting for it",
        );
        await sayWaitingForProvenance(task, key, t).catch(() => undefined);
        throw new ProvenanceUnavailableError(
          `${certificate.serial}: the issued event was not acknowledged in time`,
        );
      }
      deps.failpoint?.("after-issued-ack");

      try {
        // The JWT-SVIDs' own event, before they exist anywhere but in memory;
        // if it fails, the announced certificate is not delivered either.
        if (jwts) await recordJwtSvids(task, spiffeId, jwts, chain);
        await writeCredential(task, key, svid, keyPair.privateKeyPem, ca, spiffeId, jwts);
      } catch (err) {
        // Announced but not delivered: say so now (the retry mints anew). A
        // crash here instead is settled by the next leader (core/provenance/abandoned.ts).
        abandonOnceAcknowledged(
          announced,
          // Only the status code and reason: an API error's message may echo object fields.
          err instanceof KubeApiError
            ? `the credential Secret could not be written (${err.code} ${err.reason})`
            : "the credential was not delivered (its JWT-SVIDs' event or the Secret write failed)",
        );
        throw err;
      }
    }
    /**
     * Records this attempt's serial as abandoned once its `issued` event is
     * acknowledged, whenever Kafka takes it (queued: not refused while the
     * stream is unhealthy). Until then nothing else is appended (lateAcks)
     * and the resume offsets stay pinned, so a successor after a crash
     * settles the serial instead.
     */
    function abandonOnceAcknowledged(acknowledged: Promise<void>, reason: string): void {
      pinned = true;
      lateAcks++;
      acknowledged
        .then(() =>
          record("dev.custody.task.issuance.abandoned", task, { serial: svid.serialHex, reason }, chain, {
            queued: true,
          }),
        )
        .catch((err: unknown) =>
          log.warn("abandoned issuance not recorded", { object: key, error: (err as Error).message }),
        )
        .finally(() => {
          // Only now: a new attempt's `issued` must follow this `abandoned`.
          lateAcks--;
          release();
        });
    }

    const nowIso = new Date(t).toISOString();
    let conditions = setCondition(
      task.status?.conditions,
      {
        type: "Ready",
        status: "True",
        reason: renewing ? "Renewed" : "Issued",
        message: `certificate ${svid.serialHex} valid until ${certificate.notAfter}`,
        observedGeneration: task.metadata.generation ?? 0,
      },
      nowIso,
    );
    conditions = setCondition(
      conditions,
      {
        type: "Issuing",
        status: "False",
        reason: "Issued",
        message: `issued because ${ISSUE_REASON_TEXT[decision.why]}; renewal at ${new Date(validity.renewalTime).toISOString()}`,
        observedGeneration: task.metadata.generation ?? 0,
      },
      nowIso,
    );
    conditions = setCondition(conditions, delegatorCondition(task, admission!), nowIso);
    const status: AgentTaskStatus = {
      phase: "Issued",
      spiffeID: spiffeId,
      delegator,
      delegationChain: chain,
      certificate: {
        serial: svid.serialHex,
        notBefore: certificate.notBefore,
        notAfter: certificate.notAfter,
        renewalTime: new Date(validity.renewalTime).toISOString(),
        publicKeySHA256: svid.publicKeySHA256,
        secretName: credentialSecretName(name),
        // The certificate this one replaces stays valid (in copies) until its
        // notAfter: a revocation must list it too. After a reissue forced by
        // a narrower policy the broader one stops counting as the task's at
        // once (token exchange, decisions), yet stays listed for revocation.
        ...(task.status?.certificate && Date.parse(task.status.certificate.notAfter) > t
          ? {
              previousSerial: task.status.certificate.serial,
              previousNotAfter: task.status.certificate.notAfter,
              ...(narrowedByPolicy ? { previousSuperseded: true } : {}),
            }
          : {}),
      },
      ...policyStatus(policy, grantedScope, formatDuration(ttlMs)),
      observedGeneration: task.metadata.generation ?? 0,
      conditions,
    };
    await writeStatus(key, task, status);
    const created = Date.parse(task.metadata.creationTimestamp ?? "");
    deps.metrics?.issued(
      renewing ? "renewed" : "issued",
      renewing || Number.isNaN(created) ? undefined : now() - created,
    );
    deps.events.emit(
      target(task),
      "Normal",
      renewing ? "Renewed" : "Issued",
      renewing ? "Renew" : "Issue",
      `certificate ${svid.serialHex} for ${spiffeId} valid until ${certificate.notAfter}`,
    );
    const wakeAt = Math.min(
      validity.renewalTime,
      deadline ? Date.parse(deadline) : Number.POSITIVE_INFINITY,
      jwts?.refreshAt ?? Number.POSITIVE_INFINITY,
    );
    return { requeueAfterMs: Math.max(1000, wakeAt - now()) };
  }

  // ---------------------------------------------------------------- helpers

  function proveRequester(
    task: AgentTask,
  ): { record: RequesterRecord } | { error: string; foreign: boolean } {
    try {
      const record = verifyRecord(task.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION], {
        namespace: task.metadata.namespace ?? "",
        name: task.metadata.name,
        uid: task.metadata.uid,
        spec: task.spec as unknown as Record<string, unknown>,
        creationTimestamp: task.metadata.creationTimestamp,
      });
      checkRecordMatchesSpec(record, task.spec);
      // A sub-agent was proven against one parent object: a parent deleted
      // and re-created under the same name is another task.
      const parentName = task.spec.parentRef?.name;
      const parentUid = parentName
        ? deps.getTask(`${task.metadata.namespace}/${parentName}`)?.metadata.uid
        : undefined;
      if (parentUid && record.delegator.uid && parentUid !== record.delegator.uid) {
        throw new ValidationError(
          REQUESTER_RECORD_FIELD,
          "parent-uid",
          `${REQUESTER_RECORD_FIELD}: was proven against parent ${parentName} uid ${record.delegator.uid}, ` +
            `but that name is now uid ${parentUid} (rule parent-uid)`,
        );
      }
      return { record };
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err;
      return {
        error:
          `${err.message}; without a verified admission record no credential is issued ` +
          "(was the task created while Custody's admission webhook was not registered?)",
        // Signed by a key this installation does not hold: another
        // installation's task (or a forgery), not ours to judge or revoke.
        foreign: err.rule === "kid",
      };
    }
  }

  /** The delegation context of an event: the chain being issued, else the one in status. */
  function contextOf(task: AgentTask, chain?: readonly ChainLink[]): DelegationContext {
    const uid = task.metadata.uid ?? "unknown";
    const links =
      chain ??
      task.status?.delegationChain ??
      rootChain(unprovenDelegator(task), { name: task.metadata.name, uid }, scopeOf(task));
    return delegationContextOf(task, links);
  }

  function recordRequested(
    task: AgentTask,
    admission: RequesterRecord,
    chain: readonly ChainLink[],
    spec: AgentTaskSpec,
  ): Promise<unknown> {
    const context = contextOf(task, chain);
    const subject = `${context.namespace}/${context.name}`;
    const { username, uid, groups } = admission.requester;
    const requested = deps.recorder.record(
      "dev.custody.task.requested",
      subject,
      {
        context,
        requester: {
          username: username.slice(0, 256),
          ...(uid ? { uid } : {}),
          ...(groups ? { groups: groups.slice(0, 256).map((g) => g.slice(0, 256)) } : {}),
        },
        admission: {
          uid: context.taskUid,
          recordDigest: sha256Hex(task.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION] ?? ""),
        },
        agent: spec.agent.name,
        ...runtimeContext(spec.agent, deps.salt),
        scope: [...spec.scope],
        ttl: spec.ttl,
      },
      context.rootUid,
      deterministicEventId("requested", context.taskUid),
    );
    const root = chain[0]!;
    const verified = deps.recorder.record(
      "dev.custody.task.delegation.verified",
      subject,
      {
        context,
        delegator: {
          kind: PRINCIPAL_KIND_OF[root.kind] ?? "agent",
          name: root.name.slice(0, 256),
          ...(root.uid ? { uid: root.uid } : {}),
        },
        depth: Math.max(0, chain.length - 2),
        scope: [...spec.scope],
      },
      context.rootUid,
      deterministicEventId("delegation.verified", context.taskUid),
    );
    return Promise.all([requested, verified]);
  }

  async function record(
    type: Parameters<ProvenanceRecorder["record"]>[0],
    task: AgentTask,
    data: Record<string, unknown>,
    chain?: readonly ChainLink[],
    opts: { queued?: boolean; unbounded?: boolean } = {},
  ): Promise<void> {
    // Fail fast rather than queue behind a failing send: the caller has
    // already deleted what must go at once, and retries the event itself.
    // (`queued`: an event that must be written whenever Kafka takes it.)
    if (!opts.queued && (!deps.recorder.healthy || lateAcks > 0))
      throw new ProvenanceUnavailableError(`${type} not recorded: the provenance stream is unavailable`);
    const context = contextOf(task, chain);
    const subject = task.status?.spiffeID ?? `${context.namespace}/${context.name}`;
    // A fact a task has once gets an id derived from it: the retry of an
    // attempt that stopped waiting appends a recognisable duplicate.
    // (The generation too: a denial re-judged after an edit is another fact,
    // even in the same words. An abandoned serial is one fact whatever the reason.)
    const id =
      type === "dev.custody.task.issuance.abandoned"
        ? deterministicEventId("abandoned", context.taskUid, String(data.serial))
        : ONCE_PER_TASK.has(type)
          ? deterministicEventId(
              type,
              context.taskUid,
              String(task.metadata.generation ?? 0),
              JSON.stringify(data),
            )
          : undefined;
    const ack = deps.recorder.record(type, subject, { context, ...data } as never, context.rootUid, id);
    if (opts.queued || opts.unbounded) return ack;
    if (await acknowledgedInTime(ack)) return;
    // Kafka went away after this event was appended: it is sent (same
    // bytes) once Kafka is back. This attempt stops waiting, so no worker is
    // held (what takes access away was done before it recorded), and is
    // retried; until the event is acknowledged nothing else is appended.
    lateAcks++;
    void ack
      .catch(() => undefined)
      .finally(() => {
        lateAcks--;
      });
    throw new ProvenanceUnavailableError(
      `${type} not acknowledged in time: the provenance stream is unavailable`,
    );
  }

  async function denyTask(
    task: AgentTask,
    key: string,
    reason: string,
    message: string,
    t: number,
    stage: "issuance" | "delegation" | "policy",
    /** Events that explain the verdict, recorded once the credential is gone. */
    before?: () => Promise<unknown>,
  ): Promise<HandlerResult> {
    // What takes access away first: the events follow (and may wait for Kafka).
    await deleteCredential(task, key);
    await before?.();
    // The delegation's own verdict first (its counterpart of `delegation.verified`), then the task's.
    if (stage === "delegation") {
      await record("dev.custody.task.delegation.refused", task, { reason, message: message.slice(0, 1024) });
    }
    await record("dev.custody.task.denied", task, { stage, reason, message: message.slice(0, 1024) });
    await writeStatus(key, task, deniedStatus(task, reason, message, t));
    deps.events.emit(target(task), "Warning", reason, "Deny", message);
    deps.metrics?.transition("denied", reason);
  }

  /** Policy took the credential away: recorded as such (with the policy's reasons), then revoked. */
  async function revokeByPolicy(
    task: AgentTask,
    key: string,
    policy: PolicyDecision,
    message: string,
    t: number,
    before?: () => Promise<unknown>,
  ): Promise<HandlerResult> {
    return cascadeRevoke(task, key, "PolicyRevoked", message, t, async () => {
      await before?.();
      await record("dev.custody.task.policy.revoked", task, {
        policyVersion: policy.version,
        serials: liveSerials(task, t),
        reasons: eventReasons(policy.reasons),
      });
    });
  }

  /** An ancestor was revoked, expired, deleted or replaced: this task's credential goes too. */
  async function cascadeRevoke(
    task: AgentTask,
    key: string,
    reason: string,
    message: string,
    t: number,
    /** Events that explain the revocation, recorded once the credential is gone. */
    before?: () => Promise<unknown>,
  ): Promise<HandlerResult> {
    const serials = liveSerials(task, t);
    await deleteCredential(task, key);
    await before?.();
    const ancestorUid = deadAncestorUid(task, (n) => deps.getTask(`${task.metadata.namespace ?? ""}/${n}`));
    await record("dev.custody.task.revoked", task, {
      serials,
      reason: message.slice(0, 1024),
      ...(ancestorUid ? { cascadeFromUid: ancestorUid } : {}),
    });
    await writeStatus(key, task, terminalStatus(task, "Revoked", reason, message, t));
    deps.events.emit(target(task), "Warning", reason, "Revoke", message);
    deps.metrics?.transition("revoked", reason);
  }

  async function addFinalizer(task: AgentTask, key: string): Promise<AgentTask> {
    const finalizers = [...((task.metadata as { finalizers?: string[] }).finalizers ?? []), FINALIZER];
    const updated = await rest.patch<AgentTask>(taskPath(task.metadata.namespace ?? "", task.metadata.name), {
      metadata: { finalizers, resourceVersion: task.metadata.resourceVersion },
    });
    written.remember(key, updated);
    return updated;
  }

  async function writeStatus(key: string, task: AgentTask, status: AgentTaskStatus): Promise<void> {
    if (sameStatus(task.status, status)) return;
    // A replace of the status subresource carrying the resourceVersion we
    // reconciled from: optimistic concurrency (409 when someone wrote since).
    // The API server takes only .status from it, and a replace costs it less
    // than a merge patch, which it would first apply to the stored object.
    try {
      const updated = await rest.put<AgentTask>(
        taskStatusPath(task.metadata.namespace ?? "", task.metadata.name),
        {
          apiVersion: task.apiVersion,
          kind: task.kind,
          metadata: {
            name: task.metadata.name,
            namespace: task.metadata.namespace,
            uid: task.metadata.uid,
            resourceVersion: task.metadata.resourceVersion,
          },
          spec: task.spec,
          status,
        },
      );
      written.remember(key, updated);
    } catch (err) {
      if (isConflict(err)) written.forget(key);
      throw err;
    }
  }

  async function writeCredential(
    task: AgentTask,
    key: string,
    svid: MintedSvid,
    privateKeyPem: string,
    ca: CertificateAuthority,
    spiffeId: string,
    jwts: MintedJwtSvids | undefined,
  ): Promise<void> {
    const ns = task.metadata.namespace ?? "";
    const secretName = credentialSecretName(task.metadata.name);
    const body = {
      apiVersion: "v1",
      kind: "Secret",
      type: "kubernetes.io/tls",
      metadata: {
        name: secretName,
        namespace: ns,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [TASK_LABEL]: task.metadata.name },
        annotations: {
          [SERIAL_ANNOTATION]: svid.serialHex,
          [SPIFFE_ID_ANNOTATION]: spiffeId,
          [ISSUER_CA_ANNOTATION]: caFingerprint(ca.certDer),
          ...(jwts ? jwtAnnotations(jwts) : {}),
        },
        ownerReferences: [
          {
            apiVersion: task.apiVersion,
            kind: task.kind,
            name: task.metadata.name,
            uid: task.metadata.uid,
            controller: true,
          },
        ],
      },
      // One write replaces every key at once, so a reader (or the kubelet's
      // atomic volume update) never sees a certificate with another's key.
      data: {
        "tls.crt": Buffer.from(svid.chainPem).toString("base64"),
        "tls.key": Buffer.from(privateKeyPem).toString("base64"),
        "ca.crt": Buffer.from(deps.trustAnchorsPem ?? ca.bundlePem).toString("base64"),
        "spiffe-id": Buffer.from(spiffeId).toString("base64"),
        ...(jwts ? base64Values(jwts.files) : {}),
      },
    };
    const existing = deps.credentials.get(key);
    // The response echoes the Secret, key included: nothing here reads it.
    const discard = { discardResponse: true };
    if (existing === undefined) {
      try {
        await rest.post(secretPath(ns), body, discard);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        await rest.put(secretPath(ns, secretName), body, discard);
      }
    } else {
      try {
        await rest.put(secretPath(ns, secretName), body, discard);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        await rest.post(secretPath(ns), body, discard);
      }
    }
    deps.credentials.set(key, svid.serialHex);
    deps.credentials.setTokensRefreshAt(key, jwts?.refreshAt);
  }

  /**
   * Keeps an Issued task's JWT-SVIDs fresh between certificate renewals:
   * at half their life, new tokens (the key that signs now, never past the
   * certificate) are recorded, then merged into the Secret. Returns when to
   * look again.
   */
  async function refreshJwtSvids(
    task: AgentTask,
    key: string,
    t: number,
    deadline: string | undefined,
  ): Promise<number> {
    const never = Number.POSITIVE_INFINITY;
    const cert = task.status?.certificate;
    const spiffeId = task.status?.spiffeID;
    const chain = task.status?.delegationChain;
    if (!deps.jwt?.wants(task) || task.status?.phase !== "Issued" || !cert || !spiffeId || !chain)
      return never;
    if (deps.credentials.get(key) !== cert.serial) return never;
    const due = deps.credentials.tokensRefreshAt(key);
    if (due !== undefined && due > t) return due;
    const notAfter = Date.parse(cert.notAfter);
    // Too close to the certificate's end to be worth it: its renewal brings new tokens.
    if (notAfter - t < 2000) return never;
    const jwts = await deps.jwt.mint({
      task,
      spiffeId,
      chain,
      policyVersion: task.status?.policyVersion ?? "none",
      certificateNotAfter: notAfter,
      deadline,
      now: t,
    });
    await recordJwtSvids(task, spiffeId, jwts, chain);
    const ns = task.metadata.namespace ?? "";
    // A JSON patch that first tests the serial: tokens land only beside the
    // certificate they were minted for, never on a Secret a renewal (or a
    // new leader) has replaced meanwhile.
    const ops: Array<{ op: string; path: string; value?: unknown }> = [
      { op: "test", path: `/metadata/annotations/${pointer(SERIAL_ANNOTATION)}`, value: cert.serial },
      ...Object.entries(jwtAnnotations(jwts)).map(([k, v]) => ({
        op: "add",
        path: `/metadata/annotations/${pointer(k)}`,
        value: v,
      })),
      ...Object.entries(base64Values(jwts.files)).map(([k, v]) => ({
        op: "add",
        path: `/data/${pointer(k)}`,
        value: v,
      })),
    ];
    try {
      // The response is the whole Secret, key included: not read.
      await rest.patch(secretPath(ns, credentialSecretName(task.metadata.name)), ops, "json", {
        discardResponse: true,
      });
    } catch (err) {
      // 422: the test failed (another certificate now); the next pass looks again.
      if (err instanceof KubeApiError && err.code === 422) {
        deps.credentials.setTokensRefreshAt(key, undefined);
        return t + 5000;
      }
      if (!isNotFound(err)) throw err;
      // Gone meanwhile: the next pass reissues the whole credential.
      deps.credentials.set(key, undefined);
      return t + 1000;
    }
    deps.credentials.setTokensRefreshAt(key, jwts.refreshAt);
    return jwts.refreshAt;
  }

  function recordPolicyDecision(
    task: AgentTask,
    policy: PolicyDecision,
    stage: "issuance" | "renewal" | "policy-change",
    chain?: readonly ChainLink[],
  ): Promise<void> {
    return record(
      "dev.custody.task.policy.decided",
      task,
      {
        policyVersion: policy.version,
        decision: policy.allowed ? "allow" : "deny",
        reasons: eventReasons(policy.reasons),
        stage,
        policies: policy.policies.map((p) =>
          `${p.kind}/${p.namespace ?? ""}/${p.name}@${p.version}`.slice(0, 512),
        ),
        ...(policy.maxTtlMs !== undefined ? { maxTtl: formatDuration(policy.maxTtlMs) } : {}),
        ...(policy.dropped.length > 0 ? { dropped: [...policy.dropped] } : {}),
      },
      chain,
    );
  }

  function recordJwtSvids(
    task: AgentTask,
    spiffeId: string,
    jwts: MintedJwtSvids,
    chain: readonly ChainLink[],
  ): Promise<void> {
    return record(
      "dev.custody.task.jwtsvid.issued",
      task,
      {
        spiffeId,
        kid: jwts.kid,
        issuedAt: new Date(jwts.issuedAt).toISOString(),
        expiresAt: new Date(jwts.expiresAt).toISOString(),
        tokens: jwts.tokens,
      },
      chain,
    );
  }

  /** `listed`: whether the revocation list holds its certificates (credentialWithdrawn), when it held any. */
  async function deleteCredential(task: AgentTask, key: string): Promise<{ listed?: Promise<boolean> }> {
    const ns = task.metadata.namespace ?? "";
    // Whether it held one (a Secret, or an Issued status whose Secret an
    // earlier attempt deleted): only then are its certificates real ones.
    const held = deps.credentials.get(key) !== undefined || task.status?.phase === "Issued";
    try {
      await rest.delete(secretPath(ns, credentialSecretName(task.metadata.name)));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    deps.credentials.set(key, undefined);
    return held ? { listed: deps.credentialWithdrawn?.(task) } : {};
  }

  /** A task awaiting its first credential says that it waits for Kafka (one that holds one keeps its status). */
  async function sayWaitingForProvenance(task: AgentTask, key: string, t: number): Promise<void> {
    if (task.status?.certificate) return;
    await writeStatus(
      key,
      task,
      pendingStatus(
        task,
        "ProvenanceUnavailable",
        "waiting for the provenance stream (Kafka): no credential is issued before its issued event " +
          "is acknowledged; issuance resumes when it is",
        t,
      ),
    );
  }

  async function releaseFinalizer(task: AgentTask): Promise<void> {
    const finalizers = (task.metadata as { finalizers?: string[] }).finalizers ?? [];
    try {
      await rest.patch(taskPath(task.metadata.namespace ?? "", task.metadata.name), {
        metadata: {
          finalizers: finalizers.filter((f) => f !== FINALIZER),
          resourceVersion: task.metadata.resourceVersion,
        },
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async function finalize(task: AgentTask, key: string): Promise<{ requeueAfterMs: number } | undefined> {
    const finalizers = (task.metadata as { finalizers?: string[] }).finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) return undefined;
    const serial = task.status?.certificate?.serial;
    const { listed } = await deleteCredential(task, key);
    // Once the task is gone, only the bundle remembers that copies of its
    // certificates are revoked: it must hold them before the finalizer goes.
    // Checked before any event (a retry records nothing twice), waited for
    // briefly (no worker is held), and within a grace: a list that cannot be
    // written must not keep the task forever.
    if (listed && !(await answeredWithin(listed, WITHDRAWN_LIST_PATIENCE_MS))) {
      // (Not `<`: without a deletionTimestamp the age is NaN, and the finalizer stays.)
      if (!(deletingForMs(task, now()) >= WITHDRAWN_LIST_GRACE_MS)) {
        log.info("revocation list not published yet; the finalizer stays", { object: key, serial });
        return { requeueAfterMs: WITHDRAWN_LIST_RETRY_MS };
      }
      log.error("revocation list not published; releasing the finalizer after the grace", {
        object: key,
        serial,
        graceMs: WITHDRAWN_LIST_GRACE_MS,
      });
    }
    if (serial && task.status?.phase === "Issued") {
      await record("dev.custody.task.revoked", task, {
        serials: liveSerials(task, now()),
        reason: "the AgentTask was deleted",
      });
    }
    await record("dev.custody.task.deleted", task, {});
    await releaseFinalizer(task);
    written.forget(key);
    log.info("task finalized", { object: key, serial });
    return undefined;
  }
}

// ---------------------------------------------------------------- status builders

/** The policy fields of a status: the version and policies that decided, what they granted. */
function policyStatus(
  policy: PolicyDecision | undefined,
  grantedScope: readonly string[] | undefined,
  grantedTtl: string | undefined,
): Pick<AgentTaskStatus, "policyVersion" | "policies" | "grantedScope" | "grantedTtl"> {
  return {
    policyVersion: policy?.version ?? "none",
    // Present even when empty, so that merging over an older status drops a removed policy's entry.
    policies: policy && policy.policies.length > 0 ? policy.policies.map((p) => ({ ...p })) : undefined,
    ...(grantedScope ? { grantedScope: [...grantedScope] } : {}),
    ...(grantedTtl ? { grantedTtl } : {}),
  };
}

/**
 * A held credential under a changed policy: revoke when no longer allowed,
 * reissue when the allowed ttl or scope shrank below what it holds, else
 * only record the new version.
 */
function judgePolicyChange(task: AgentTask, policy: PolicyDecision): "revoke" | "reissue" | "record" {
  if (!policy.allowed) return "revoke";
  const held = task.status?.grantedScope ?? task.spec.scope;
  if (held.some((g) => !policy.scope.includes(g))) return "reissue";
  const heldTtl = task.status?.grantedTtl ?? task.spec.ttl ?? DEFAULT_TTL;
  if (policy.maxTtlMs !== undefined && policy.maxTtlMs < parseTtl(heldTtl, "status.grantedTtl"))
    return "reissue";
  return "record";
}

function jwtAnnotations(jwts: MintedJwtSvids): Record<string, string> {
  return { [JWT_REFRESH_ANNOTATION]: String(jwts.refreshAt), [JWT_KID_ANNOTATION]: jwts.kid };
}

/** A JSON Pointer segment (RFC 6901). */
const pointer = (segment: string) => segment.replaceAll("~", "~0").replaceAll("/", "~1");

function base64Values(files: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(files)) out[k] = Buffer.from(v).toString("base64");
  return out;
}

type Lookup = (name: string) => AgentTask | undefined;

/** The ancestors by parentRef, parent first, each with its name and (if cached) task; bounded against cycles. */
function* ancestors(
  task: AgentTask,
  lookup: Lookup,
): Generator<{ name: string; parent: AgentTask | undefined; hops: number }> {
  let current: AgentTask | undefined = task;
  for (let hops = 0; current && hops < 32; hops++) {
    const name = current.spec?.parentRef?.name;
    if (!name) return;
    const parent = lookup(name);
    yield { name, parent, hops };
    current = parent;
  }
}

export const isDeleting = (t: AgentTask): boolean =>
  (t.metadata as { deletionTimestamp?: string }).deletionTimestamp !== undefined;

/** The first ancestor (walking up) that is revoked, expired, denied, failed or being deleted. */
function deadAncestorUid(task: AgentTask, lookup: Lookup): string | undefined {
  for (const { parent } of ancestors(task, lookup)) {
    const phase = parent?.status?.phase;
    if (
      parent &&
      (isDeleting(parent) ||
        parent.spec?.revoked === true ||
        (phase && phase !== "Issued" && phase !== "Pending"))
    ) {
      return parent.metadata.uid;
    }
  }
  return undefined;
}

/**
 * An ancestor that is being deleted or is gone although this task was issued
 * under it: deleting a task revokes its whole subtree.
 */
function deletedAncestor(task: AgentTask, lookup: Lookup): { reason: string; message: string } | undefined {
  for (const { name, parent, hops } of ancestors(task, lookup)) {
    if (parent && !isDeleting(parent)) continue;
    const who = hops === 0 ? "Parent" : "Ancestor";
    return {
      reason: `${who}Deleted`,
      message: `spec.parentRef.name: ${who.toLowerCase()} AgentTask "${name}" was deleted; its subtree is revoked`,
    };
  }
  return undefined;
}

/** The delegating principal at the root of an accepted chain. */
function delegatorOfChain(chain: readonly ChainLink[], task: AgentTask): StatusDelegator {
  const root = chain[0];
  if (!root || root.kind === "AgentTask") return unprovenDelegator(task);
  return { kind: root.kind, name: root.name, ...(root.uid ? { uid: root.uid } : {}) };
}

function failedStatus(task: AgentTask, reason: string, message: string, t: number): AgentTaskStatus {
  const issued = task.status?.phase === "Issued";
  const c = conditionsFor(
    task,
    t,
    { status: issued ? "True" : "False", reason, message },
    { reason, message },
  );
  // A task that still holds a valid certificate keeps it and its phase; the
  // conditions say renewal failed.
  if (issued) return { ...task.status, conditions: c.conditions };
  return { phase: "Failed", ...c };
}

function pendingStatus(task: AgentTask, reason: string, message: string, t: number): AgentTaskStatus {
  return {
    ...(task.status ?? {}),
    phase: "Pending",
    ...conditionsFor(task, t, { status: "False", reason, message }),
  };
}

/** The task's certificates that copies could still present: current and (until it expires) the one it renewed. */
export function liveSerials(task: AgentTask, t: number): string[] {
  const c = task.status?.certificate;
  if (!c) return [];
  const serials = [c.serial];
  if (c.previousSerial && c.previousNotAfter && Date.parse(c.previousNotAfter) > t)
    serials.push(c.previousSerial);
  return serials;
}

/** The serials that authenticate the task now: a certificate a narrowing policy superseded does not. */
export function currentSerials(task: AgentTask, t: number): string[] {
  const c = task.status?.certificate;
  const live = liveSerials(task, t);
  return c?.previousSuperseded ? live.filter((s) => s !== c.previousSerial) : live;
}

function scopeOf(task: AgentTask): string[] {
  return Array.isArray(task.spec?.scope) ? task.spec.scope.filter((s) => typeof s === "string") : [];
}

function target(task: AgentTask) {
  return {
    namespace: task.metadata.namespace ?? "",
    name: task.metadata.name,
    uid: task.metadata.uid,
    resourceVersion: task.metadata.resourceVersion,
  };
}

/**
 * A task never issued has no proven delegator; its provenance events (denied,
 * deleted) still need a chain context. What the spec claims is marked as a
 * claim (`unproven:`) so it never reads as a fact.
 */
export const UNPROVEN_PREFIX = "unproven:";

function unprovenDelegator(task: AgentTask): StatusDelegator {
  const d = task.spec?.delegator;
  if (d) {
    const name = d.namespace ? `system:serviceaccount:${d.namespace}:${d.name}` : d.name;
    return { kind: d.kind, name: `${UNPROVEN_PREFIX}${name}` };
  }
  return { kind: "User", name: `${UNPROVEN_PREFIX}requester` };
}

function delegatorCondition(task: AgentTask, record: RequesterRecord) {
  const how: Record<RequesterRecord["proof"]["method"], string> = {
    requester: "the delegator is the authenticated requester",
    impersonate: "the requester may impersonate the delegator (SubjectAccessReview)",
    assertion: `a signed assertion from ${record.proof.assertion?.issuer ?? "a configured issuer"} (jti ${record.proof.assertion?.jti ?? "?"})`,
    "parent-pod": `created by pod ${record.proof.pod?.name ?? "?"} carrying the parent's identity`,
    "parent-delegator": "created by the parent's requester or delegator",
  };
  return {
    type: "DelegatorProven",
    status: "True" as const,
    reason: PROOF_REASON[record.proof.method],
    message: `requested by ${record.requester.username}; ${how[record.proof.method]}`.slice(0, 1024),
    observedGeneration: task.metadata.generation ?? 0,
  };
}

const PROOF_REASON: Record<RequesterRecord["proof"]["method"], string> = {
  requester: "Requester",
  impersonate: "Impersonation",
  assertion: "SignedAssertion",
  "parent-pod": "ParentPod",
  "parent-delegator": "ParentDelegator",
};

/** Ready (and Issuing, when given) conditions for this generation, keeping transition times. */
function conditionsFor(
  task: AgentTask,
  t: number,
  ready: { status: "True" | "False"; reason: string; message: string },
  issuing?: { reason: string; message: string },
) {
  const nowIso = new Date(t).toISOString();
  const observedGeneration = task.metadata.generation ?? 0;
  let conditions = setCondition(
    task.status?.conditions,
    { type: "Ready", ...ready, observedGeneration },
    nowIso,
  );
  if (issuing) {
    conditions = setCondition(
      conditions,
      { type: "Issuing", status: "False", ...issuing, observedGeneration },
      nowIso,
    );
  }
  return { conditions, observedGeneration };
}

function deniedStatus(task: AgentTask, reason: string, message: string, t: number): AgentTaskStatus {
  const c = conditionsFor(
    task,
    t,
    { status: "False", reason, message },
    { reason, message: "no certificate is issued for a denied task" },
  );
  return { phase: "Denied", ...c };
}

function terminalStatus(
  task: AgentTask,
  phase: "Expired" | "Revoked",
  reason: string,
  message: string,
  t: number,
): AgentTaskStatus {
  const c = conditionsFor(
    task,
    t,
    { status: "False", reason, message },
    { reason, message: `${phase.toLowerCase()}: no further certificates` },
  );
  // The last certificate stays in status: it is what was revoked (or
  // expired), and the trust bundle lists revoked ones until their notAfter.
  return { ...(task.status ?? {}), phase, ...c };
}
