/**
 * The rules the pods and workloads webhooks share: which task a label names,
 * whether that task may be worn at all (its state), whether the pod (template)
 * runs under the task's service account, and whether whoever asked may use
 * the task. Handlers compose these; lookups and the SubjectAccessReview come
 * in through the deps so the rules can be tested without a cluster.
 */

import {
  DEFAULT_RECORD_MAX_SKEW_MS,
  isSameRequester,
  REQUESTER_RECORD_ANNOTATION,
  type RecordVerifier,
  verifyRequesterRecord,
} from "../core/admission/record.ts";
import { STAMP_ANNOTATION, verifyStamp, type WorkloadStamp } from "../core/admission/stamp.ts";
import type { AgentTask } from "../core/api/v1alpha1.ts";
import { ValidationError } from "../core/errors.ts";
import { TASK_LABEL } from "../core/names.ts";
import type { KeyRing, Signer } from "../core/provenance/sign.ts";
import { validateDnsLabel } from "../core/spiffe.ts";
import { type AdmissionResult, deny, type UserInfo } from "./admission.ts";

export { TASK_LABEL };
export const TASK_LABEL_FIELD = `metadata.labels[${TASK_LABEL}]`;

export interface IdentityAdmissionDeps {
  /** Verifies requester records and workload stamps. */
  keys: KeyRing;
  /** Signs workload stamps (the webhook's key; its kid is in `keys`). */
  signer: Signer;
  trustDomain: string;
  /** Milliseconds since the epoch. */
  now(): number;
  /** The task, or undefined when it does not exist. */
  getTask(namespace: string, name: string): Promise<AgentTask | undefined>;
  /** A workload object (apps/v1 or batch/v1) by kind and name, or undefined when it does not exist. */
  getObject(apiVersion: string, kind: string, namespace: string, name: string): Promise<unknown | undefined>;
  /** SubjectAccessReview for the user: verb `use` on agenttasks.custody.dev `name` in `namespace`. */
  canUseTask(user: UserInfo, namespace: string, name: string): Promise<boolean>;
  /**
   * Usernames of the controllers that create objects from stamped owners
   * (POD_CONTROLLER_USERNAMES for the pods webhook, WORKLOAD_CONTROLLER_USERNAMES
   * for the workloads webhook).
   */
  controllerUsernames: ReadonlySet<string>;
  /** How far a requester record's issuedAt may be from the task's creation. */
  verifyRecordMaxSkewMs?: number;
  /** A memoizing record verifier (createRecordVerifier); without one, each pod verifies the record afresh. */
  verifyRecord?: RecordVerifier;
}

const KCM_SA = "system:serviceaccount:kube-system:";
/**
 * kube-controller-manager runs each controller under its own service account
 * with --use-service-account-credentials (test/env/up.sh, and kubeadm's
 * default); without it, all of them act as system:kube-controller-manager.
 */
export const POD_CONTROLLER_USERNAMES: ReadonlySet<string> = new Set([
  `${KCM_SA}replicaset-controller`,
  `${KCM_SA}statefulset-controller`,
  `${KCM_SA}daemon-set-controller`,
  `${KCM_SA}job-controller`,
  "system:kube-controller-manager",
]);
/** Controllers that create workloads from workloads: ReplicaSets from Deployments, Jobs from CronJobs. */
export const WORKLOAD_CONTROLLER_USERNAMES: ReadonlySet<string> = new Set([
  `${KCM_SA}deployment-controller`,
  `${KCM_SA}cronjob-controller`,
  "system:kube-controller-manager",
]);

type Json = Record<string, unknown>;
export const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
export const stringMap = (v: unknown): Record<string, unknown> => (isObject(v) ? v : {});

/** Reads and checks the task name in the opt-in label (a task name is a DNS label). */
export function taskNameFrom(value: unknown, field: string): string | AdmissionResult {
  if (typeof value !== "string")
    return deny(422, `${field}: must be the name of an AgentTask (rule task-name)`);
  try {
    return validateDnsLabel(value, field);
  } catch (e) {
    if (e instanceof ValidationError)
      return deny(422, `${field}: ${e.message} (the value names an AgentTask)`);
    throw e;
  }
}

export type TaskLookup = { task: AgentTask; warnings: string[] } | { refusal: AdmissionResult };

/**
 * Loads the task named by the label and checks that its identity may be worn
 * now. Pending, Failed (retried) or not yet reconciled: admitted with a
 * warning, since the credential volume mounts once the Secret exists (the
 * kubelet holds the pod until then). Denied, Expired, Revoked, revoked in
 * spec, past its deadline or being deleted: refused, naming the state.
 */
export async function loadWearableTask(
  deps: IdentityAdmissionDeps,
  namespace: string,
  name: string,
  field: string,
): Promise<TaskLookup> {
  const task = await deps.getTask(namespace, name);
  const ref = `AgentTask ${namespace}/${name}`;
  if (!task) {
    return { refusal: deny(422, `${field}: ${ref} does not exist (rule task-exists)`) };
  }
  const refuse = (state: string): TaskLookup => ({
    refusal: deny(403, `${field}: ${ref} ${state}; its identity cannot be attached (rule task-state)`),
  });
  const metadata = task.metadata as AgentTask["metadata"] & { deletionTimestamp?: string };
  if (metadata.deletionTimestamp) return refuse(`is being deleted (since ${metadata.deletionTimestamp})`);
  if (task.spec?.revoked === true) {
    const why = task.spec.revocationReason ? `: ${task.spec.revocationReason}` : "";
    return refuse(`is revoked (spec.revoked is true${why})`);
  }
  const phase = task.status?.phase;
  const ready = task.status?.conditions?.find((c) => c.type === "Ready");
  const reason = ready?.reason ? `, reason ${ready.reason}` : "";
  if (phase === "Denied" || phase === "Expired" || phase === "Revoked") {
    return refuse(`is ${phase} (status.phase${reason})`);
  }
  const deadline = task.spec?.deadline ? Date.parse(task.spec.deadline) : Number.NaN;
  if (!Number.isNaN(deadline) && deadline <= deps.now()) {
    return refuse(`has passed its deadline (spec.deadline ${task.spec.deadline})`);
  }
  if (phase === "Issued") return { task, warnings: [] };
  const state = phase ? `is ${phase}${reason}` : "has not been reconciled yet";
  return {
    task,
    warnings: [
      `${ref} ${state}: admitted; the Custody credential volume mounts once the operator has issued ` +
        `the credential (the pod waits in ContainerCreating until then)`,
    ],
  };
}

/** spec.serviceAccountName of a pod (spec), as the API server reads it: the deprecated alias, then "default". */
export function serviceAccountOf(podSpec: unknown): string {
  const spec = stringMap(podSpec);
  if (typeof spec.serviceAccountName === "string" && spec.serviceAccountName) return spec.serviceAccountName;
  if (typeof spec.serviceAccount === "string" && spec.serviceAccount) return spec.serviceAccount;
  return "default";
}

/** The pod (template) must run under the task's service account: the task binds the identity to it. */
export function checkServiceAccount(
  podSpec: unknown,
  task: AgentTask,
  field: string,
): AdmissionResult | undefined {
  const sa = serviceAccountOf(podSpec);
  const want = task.spec?.serviceAccountName;
  if (sa === want) return undefined;
  return deny(
    422,
    `${field}: is ${JSON.stringify(sa)}, but AgentTask ${task.metadata.namespace ?? ""}/${task.metadata.name} ` +
      `binds its identity to service account ${JSON.stringify(want)} (rule service-account)`,
  );
}

/**
 * (a) The user is the task's own requester, as its signed record says. A
 * record that does not verify proves nothing here (the operator denies such
 * a task anyway), so it only makes (a) not apply.
 */
export function isTaskRequester(deps: IdentityAdmissionDeps, user: UserInfo, task: AgentTask): boolean {
  if (!user.username) return false;
  try {
    const subject = {
      namespace: task.metadata.namespace ?? "",
      name: task.metadata.name,
      uid: task.metadata.uid,
      spec: task.spec,
      creationTimestamp: task.metadata.creationTimestamp,
    };
    const token = task.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION];
    const record = deps.verifyRecord
      ? deps.verifyRecord(token, subject)
      : verifyRequesterRecord(
          token,
          deps.keys,
          subject,
          deps.verifyRecordMaxSkewMs ?? DEFAULT_RECORD_MAX_SKEW_MS,
        );
    return isSameRequester(record.requester, user);
  } catch (e) {
    if (e instanceof ValidationError) return false;
    throw e;
  }
}

/** (a) or (b): the task's requester, or allowed verb `use` on the task by the API server's authorizers. */
export async function mayUseTask(
  deps: IdentityAdmissionDeps,
  user: UserInfo,
  task: AgentTask,
  namespace: string,
): Promise<boolean> {
  if (isTaskRequester(deps, user, task)) return true;
  return deps.canUseTask(user, namespace, task.metadata.name);
}

export interface OwnerRef {
  apiVersion?: unknown;
  kind?: unknown;
  name?: unknown;
  uid?: unknown;
  controller?: unknown;
}

/** The controller ownerReference (at most one has controller: true). */
export function controllerRefOf(metadata: unknown): OwnerRef | undefined {
  const refs = stringMap(metadata).ownerReferences;
  if (!Array.isArray(refs)) return undefined;
  return refs.find((r): r is OwnerRef => isObject(r) && r.controller === true);
}

/**
 * (c) The object was made by a controller from an owner that carries a valid
 * stamp for the same task and for itself: the owner exists, has the uid the
 * reference names (not a new object re-created under that name), and its
 * stamp verifies. Returns the owner's stamp, or why it does not hold.
 */
export async function stampedOwner(
  deps: IdentityAdmissionDeps,
  metadata: unknown,
  namespace: string,
  task: AgentTask,
  ownerKinds: Readonly<Record<string, string>>,
): Promise<{ stamp: WorkloadStamp; owner: string } | { why: string }> {
  const ref = controllerRefOf(metadata);
  const kinds = Object.keys(ownerKinds).join(", ");
  if (!ref) return { why: `it has no controller ownerReference (one of ${kinds})` };
  const kind = typeof ref.kind === "string" ? ref.kind : "";
  const apiVersion = Object.hasOwn(ownerKinds, kind) ? ownerKinds[kind] : undefined;
  if (!apiVersion || ref.apiVersion !== apiVersion) {
    return { why: `its controller ownerReference is ${String(ref.apiVersion)} ${kind}, not one of ${kinds}` };
  }
  if (typeof ref.name !== "string" || typeof ref.uid !== "string" || !ref.name || !ref.uid) {
    return { why: "its controller ownerReference has no name or uid" };
  }
  const owner = `${kind} ${namespace}/${ref.name}`;
  const object = await deps.getObject(apiVersion, kind, namespace, ref.name);
  if (object === undefined) return { why: `its owner ${owner} does not exist` };
  const ownerMeta = stringMap(stringMap(object).metadata);
  if (ownerMeta.uid !== ref.uid) {
    return { why: `its owner ${owner} has another uid than the ownerReference names` };
  }
  try {
    const stamp = verifyStamp(stringMap(ownerMeta.annotations)[STAMP_ANNOTATION], deps.keys, {
      kind,
      namespace,
      name: ref.name,
      task: task.metadata.name,
      taskUid: task.metadata.uid ?? "",
    });
    return { stamp, owner };
  } catch (e) {
    if (e instanceof ValidationError)
      return { why: `its owner ${owner} carries no valid stamp: ${e.message}` };
    throw e;
  }
}

/** The refusal for a requester who may not use the task. */
export function mayNotUse(
  user: UserInfo,
  task: AgentTask,
  namespace: string,
  what: string,
  controllerWhy?: string,
  field = TASK_LABEL_FIELD,
): AdmissionResult {
  const who = user.username ? JSON.stringify(user.username) : "an anonymous requester";
  const controller = controllerWhy
    ? `; as a workload controller it needs a stamped owner, but ${controllerWhy}`
    : "";
  return deny(
    403,
    `${field}: ${who} may not attach the identity of AgentTask ${namespace}/${task.metadata.name} ` +
      `to ${what}: not the task's requester, and may not "use" agenttasks.custody.dev ` +
      `${JSON.stringify(task.metadata.name)} in namespace ${namespace}${controller} (rule use-task)`,
  );
}

export function validationRefusal(e: ValidationError): AdmissionResult {
  return deny(422, e.message);
}
