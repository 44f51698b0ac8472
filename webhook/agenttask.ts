/**
 * Admission for AgentTasks (CREATE and UPDATE, failurePolicy Fail, every
 * namespace). On CREATE it proves who delegates and signs what it proved into
 * the requester record; on UPDATE it keeps the record and the identity fixed.
 *
 * The spec is a claim. Proof rests only on what the API server authenticated
 * (userInfo), what its authorizer answers (SubjectAccessReview), a signature
 * from a configured assertion issuer, or a pod's bound service-account token.
 */

import { MAX_JWS_LENGTH } from "../core/admission/jws.ts";
import {
  DELEGATION_ASSERTION_ANNOTATION,
  declaredDelegator,
  isSameRequester,
  REQUESTER_RECORD_ANNOTATION,
  type RecordDelegator,
  type RequesterRecord,
  requesterAsDelegator,
  signRequesterRecord,
  verifyRequesterRecord,
} from "../core/admission/record.ts";
import { type AgentTask, type AgentTaskSpec, parseAgentTaskSpec } from "../core/api/v1alpha1.ts";
import { IDENTITY_FIELDS, identitySpecDigest } from "../core/delegation.ts";
import { ValidationError } from "../core/errors.ts";
import { credentialSecretName, TASK_LABEL } from "../core/names.ts";
import { canonicalize } from "../core/provenance/canonical-json.ts";
import type { KeyRing, Signer } from "../core/provenance/sign.ts";
import {
  type AdmissionHandler,
  type AdmissionRequest,
  type AdmissionResult,
  allow,
  deny,
  type JsonPatchOperation,
  pointerSegment,
  type UserInfo,
} from "./admission.ts";

const POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX = "system:serviceaccount:";

export interface VerifiedAssertion {
  issuer: string;
  subject: string;
  jti: string;
  /** Hex SHA-256 of the token: what the record keeps instead of the token. */
  digest: string;
  /** Until when a replay could still verify (exp plus clock skew): the jti is remembered that long. */
  acceptedUntil: Date;
}

export interface AgentTaskAdmissionDeps {
  signer: Signer;
  /** Verifies records of parent tasks (the webhook's own keys). */
  keys: KeyRing;
  now: () => number;
  /** May this user impersonate that principal? (SubjectAccessReview verb impersonate.) */
  canImpersonate(user: UserInfo, delegator: RecordDelegator): Promise<boolean>;
  getPod(namespace: string, name: string): Promise<PodView | undefined>;
  getTask(namespace: string, name: string): Promise<AgentTask | undefined>;
  /** Absent when no assertion issuer is configured: assertions are then refused. */
  assertions?: {
    verify(
      token: string,
      context: { requester: string; namespace: string; name: string; spec: AgentTaskSpec },
    ): Promise<VerifiedAssertion>;
  };
  /** Accepts a jti once across replicas and restarts; throws on a replay. */
  claimJti?: (issuer: string, jti: string, acceptedUntil: Date) => Promise<void>;
  recordMaxSkewMs?: number;
  /**
   * Namespaces whose pods are never sent to Custody's pod checks: a
   * credential there could be worn by anyone who may create pods, so no task
   * is admitted there.
   */
  excludedNamespaces?: ReadonlySet<string>;
}

/** What the sub-agent proof reads of the pod named in a bound token. */
export interface PodView {
  metadata: { uid?: string; labels?: Record<string, string>; deletionTimestamp?: string };
  spec?: {
    serviceAccountName?: string;
    volumes?: Array<{
      secret?: { secretName?: string };
      projected?: { sources?: Array<{ secret?: { name?: string } }> };
    }>;
  };
}

interface TaskObject {
  metadata?: {
    name?: string;
    generateName?: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec?: unknown;
}

export function createAgentTaskAdmission(deps: AgentTaskAdmissionDeps): AdmissionHandler {
  return async (req) => {
    if (req.operation === "CREATE") return admitCreate(deps, req);
    if (req.operation === "UPDATE") return admitUpdate(req);
    return allow();
  };
}

async function admitCreate(deps: AgentTaskAdmissionDeps, req: AdmissionRequest): Promise<AdmissionResult> {
  const obj = (req.object ?? {}) as TaskObject;
  const name = obj.metadata?.name ?? req.name ?? "";
  const namespace = req.namespace ?? obj.metadata?.namespace ?? "";
  if (!name) {
    return deny(
      422,
      "metadata.name: is required; generateName is not supported for AgentTasks because the admission " +
        "record binds the task's name, which is not known at admission (rule no-generate-name)",
    );
  }
  if (deps.excludedNamespaces?.has(namespace)) {
    return deny(
      403,
      `metadata.namespace: ${namespace} is excluded from Custody's pod admission, so a credential there ` +
        "could be worn by any pod; create AgentTasks in another namespace (rule excluded-namespace)",
    );
  }
  let spec: AgentTaskSpec;
  try {
    spec = parseAgentTaskSpec(obj.spec);
  } catch (err) {
    if (!(err instanceof ValidationError)) throw err;
    // Mutating admission runs before the API server's schema and CEL checks,
    // which refuse this spec with every violation named; a record is not
    // signed for it. (Should a spec the CRD accepts fail here, the task has
    // no record and the operator denies it with the same field message.)
    return allow();
  }
  if (!req.userInfo.username) return deny(403, "the request has no authenticated user (rule authenticated)");
  const user = { ...req.userInfo, username: req.userInfo.username };

  const annotations = obj.metadata?.annotations ?? {};
  const assertionToken = annotations[DELEGATION_ASSERTION_ANNOTATION];
  let proven: { delegator: RecordDelegator; proof: RequesterRecord["proof"] };
  try {
    proven = spec.parentRef
      ? await proveSubAgent(deps, user, namespace, spec)
      : await proveDelegator(deps, req, user, namespace, name, spec, assertionToken);
  } catch (err) {
    if (!(err instanceof ValidationError)) throw err;
    // The issuer's key endpoint failing is not the requester's fault: retryable.
    return deny(err.rule === "jwks-unavailable" ? 503 : 403, err.message);
  }

  const record: RequesterRecord = {
    v: 1,
    namespace,
    name,
    issuedAt: new Date(deps.now()).toISOString(),
    specDigest: identitySpecDigest(spec as unknown as Record<string, unknown>),
    requester: {
      username: user.username,
      ...(user.uid ? { uid: user.uid } : {}),
      ...(user.groups ? { groups: [...user.groups] } : {}),
      ...(user.extra ? { extra: user.extra } : {}),
    },
    delegator: proven.delegator,
    ...(obj.metadata?.labels && Object.keys(obj.metadata.labels).length > 0
      ? { labels: { ...obj.metadata.labels } }
      : {}),
    proof: proven.proof,
  };
  const token = signRequesterRecord(deps.signer, record);
  if (token.length > MAX_JWS_LENGTH) {
    // Refused now rather than stored and denied later: the operator does not read records this large.
    return deny(
      422,
      `${REQUESTER_RECORD_ANNOTATION}: the requester's authentication (${user.groups?.length ?? 0} groups and ` +
        `extra attributes) makes the record ${token.length} bytes, more than ${MAX_JWS_LENGTH} (rule record-size)`,
    );
  }
  const patch: JsonPatchOperation[] = [];
  if (!obj.metadata?.annotations) {
    patch.push({ op: "add", path: "/metadata/annotations", value: { [REQUESTER_RECORD_ANNOTATION]: token } });
  } else {
    // "add" replaces an existing member: a record sent by the client is never kept.
    patch.push({
      op: "add",
      path: `/metadata/annotations/${pointerSegment(REQUESTER_RECORD_ANNOTATION)}`,
      value: token,
    });
    if (assertionToken !== undefined) {
      patch.push({
        op: "remove",
        path: `/metadata/annotations/${pointerSegment(DELEGATION_ASSERTION_ANNOTATION)}`,
      });
    }
  }
  return allow(patch);
}

async function proveDelegator(
  deps: AgentTaskAdmissionDeps,
  req: AdmissionRequest,
  user: UserInfo & { username: string },
  namespace: string,
  name: string,
  spec: AgentTaskSpec,
  assertionToken: string | undefined,
): Promise<{ delegator: RecordDelegator; proof: RequesterRecord["proof"] }> {
  const self = requesterAsDelegator(user);
  if (!spec.delegator) return { delegator: self, proof: { method: "requester" } };
  const claimed = declaredDelegator(spec.delegator);
  if (isRequester(claimed, user)) {
    // The requester delegating as itself: keep what authentication said (uid, groups).
    const delegator = claimed.kind === self.kind ? { ...self } : claimed;
    return { delegator, proof: { method: "requester" } };
  }
  if (assertionToken !== undefined) {
    if (!deps.assertions) {
      throw refusal(
        `metadata.annotations[${DELEGATION_ASSERTION_ANNOTATION}]`,
        "assertion-issuer",
        "no assertion issuer is configured in this Custody installation",
      );
    }
    const verified = await deps.assertions.verify(assertionToken, {
      requester: user.username,
      namespace,
      name,
      spec,
    });
    // Dry runs change nothing: the jti is claimed only by a real create.
    if (!req.dryRun) await deps.claimJti?.(verified.issuer, verified.jti, verified.acceptedUntil);
    return {
      delegator: claimed,
      proof: {
        method: "assertion",
        assertion: {
          issuer: verified.issuer,
          subject: verified.subject,
          jti: verified.jti,
          digest: verified.digest,
        },
      },
    };
  }
  if (claimed.kind !== "Workflow" && (await deps.canImpersonate(user, claimed))) {
    return { delegator: claimed, proof: { method: "impersonate" } };
  }
  throw refusal(
    "spec.delegator",
    "delegator-proof",
    `${user.username} may not act for ${claimed.kind} ${qualified(claimed)}: ` +
      (claimed.kind === "Workflow"
        ? "a Workflow delegator needs a signed assertion"
        : `it needs the right to impersonate that ${claimed.kind.toLowerCase()} or a signed assertion`) +
      ` in the annotation ${DELEGATION_ASSERTION_ANNOTATION}`,
  );
}

async function proveSubAgent(
  deps: AgentTaskAdmissionDeps,
  user: UserInfo & { username: string },
  namespace: string,
  spec: AgentTaskSpec,
): Promise<{ delegator: RecordDelegator; proof: RequesterRecord["proof"] }> {
  const parentName = spec.parentRef!.name;
  if (spec.delegator) {
    throw refusal(
      "spec.delegator",
      "sub-agent-delegator",
      "must be absent on a sub-agent: its delegator is its parent task, named by spec.parentRef",
    );
  }
  const parent = await deps.getTask(namespace, parentName);
  if (!parent) {
    throw refusal(
      "spec.parentRef.name",
      "parent-exists",
      `AgentTask ${namespace}/${parentName} does not exist`,
    );
  }
  const delegator: RecordDelegator = {
    kind: "AgentTask",
    name: parentName,
    ...(parent.metadata.uid ? { uid: parent.metadata.uid } : {}),
  };

  // 1. A pod that carries the parent's identity, proven by its bound token.
  const podName = user.extra?.[POD_NAME_EXTRA]?.[0];
  const podUid = user.extra?.[POD_UID_EXTRA]?.[0];
  if (podName && podUid && user.username.startsWith(`${SA_PREFIX}${namespace}:`)) {
    const why = await podCarriesParent(deps, user.username, namespace, podName, podUid, parentName);
    if (why === undefined)
      return { delegator, proof: { method: "parent-pod", pod: { name: podName, uid: podUid } } };
    throw refusal("spec.parentRef", "parent-pod", `the requesting pod ${namespace}/${podName} ${why}`);
  }

  // 2. The parent's own requester, or someone who may act for its delegator.
  let parentRecord: RequesterRecord;
  try {
    parentRecord = verifyRequesterRecord(
      parent.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION],
      deps.keys,
      {
        namespace,
        name: parentName,
        spec: parent.spec as unknown as Record<string, unknown>,
        creationTimestamp: parent.metadata.creationTimestamp,
      },
      deps.recordMaxSkewMs,
    );
  } catch (err) {
    if (!(err instanceof ValidationError)) throw err;
    throw refusal(
      "spec.parentRef",
      "parent-record",
      `the parent's admission record does not verify: ${err.message}`,
    );
  }
  if (isSameRequester(parentRecord.requester, user)) {
    return { delegator, proof: { method: "parent-delegator" } };
  }
  const parentDelegator = parentRecord.delegator;
  if (parentDelegator.kind !== "AgentTask" && parentDelegator.kind !== "Workflow") {
    if (isRequester(parentDelegator, user) || (await deps.canImpersonate(user, parentDelegator))) {
      return { delegator, proof: { method: "parent-delegator" } };
    }
  }
  throw refusal(
    "spec.parentRef",
    "sub-agent-proof",
    `${user.username} may not delegate from AgentTask ${namespace}/${parentName}: create sub-agents from a pod ` +
      "that carries the parent's identity (its service-account token), or as the parent's requester or delegator",
  );
}

/** Why the pod does not carry the parent's identity, or undefined when it does. */
async function podCarriesParent(
  deps: AgentTaskAdmissionDeps,
  username: string,
  namespace: string,
  podName: string,
  podUid: string,
  parentName: string,
): Promise<string | undefined> {
  const pod = await deps.getPod(namespace, podName);
  if (!pod) return "does not exist";
  if (pod.metadata.uid !== podUid) return "is not the pod the token was bound to (uid differs)";
  if (pod.metadata.deletionTimestamp) return "is being deleted";
  const sa = username.slice(`${SA_PREFIX}${namespace}:`.length);
  if ((pod.spec?.serviceAccountName ?? "default") !== sa)
    return "does not run under the token's service account";
  if (pod.metadata.labels?.[TASK_LABEL] !== parentName)
    return `does not carry the label ${TASK_LABEL}=${parentName}`;
  const secret = credentialSecretName(parentName);
  const mounts = (pod.spec?.volumes ?? []).some(
    (v) =>
      v.secret?.secretName === secret || (v.projected?.sources ?? []).some((s) => s.secret?.name === secret),
  );
  if (!mounts) return `does not mount the parent's credential Secret ${secret}`;
  return undefined;
}

function isRequester(d: RecordDelegator, user: UserInfo & { username: string }): boolean {
  switch (d.kind) {
    case "User":
      return d.name === user.username;
    case "Group":
      // Membership is not Kubernetes' rule for acting as a group (anyone is
      // in system:authenticated): a Group delegator needs impersonate rights.
      return false;
    case "ServiceAccount":
      return user.username === `${SA_PREFIX}${d.namespace ?? ""}:${d.name}`;
    default:
      return false;
  }
}

function qualified(d: RecordDelegator): string {
  return d.namespace ? `${d.namespace}/${d.name}` : d.name;
}

function admitUpdate(req: AdmissionRequest): AdmissionResult {
  const obj = (req.object ?? {}) as TaskObject;
  const old = (req.oldObject ?? {}) as TaskObject;
  const record = obj.metadata?.annotations?.[REQUESTER_RECORD_ANNOTATION];
  const oldRecord = old.metadata?.annotations?.[REQUESTER_RECORD_ANNOTATION];
  // A server-side apply of the user's manifest (which never had the record)
  // would remove it: put it back rather than refuse the whole update.
  const restore: JsonPatchOperation[] = [];
  if (record === undefined && oldRecord !== undefined) {
    restore.push(
      obj.metadata?.annotations
        ? {
            op: "add",
            path: `/metadata/annotations/${pointerSegment(REQUESTER_RECORD_ANNOTATION)}`,
            value: oldRecord,
          }
        : { op: "add", path: "/metadata/annotations", value: { [REQUESTER_RECORD_ANNOTATION]: oldRecord } },
    );
  } else if (record !== oldRecord) {
    return deny(
      422,
      `metadata.annotations[${REQUESTER_RECORD_ANNOTATION}]: is immutable: it records who created the task ` +
        "(rule record-immutable)",
    );
  }
  const changed = changedIdentityField(obj.spec, old.spec);
  if (changed !== undefined) {
    return deny(
      422,
      `spec.${changed}: is immutable: it defines the identity; create a new AgentTask instead ` +
        "(rule identity-immutable)",
    );
  }
  // A re-sent assertion is stripped, not re-checked: the record already says what was proven.
  if (obj.metadata?.annotations?.[DELEGATION_ASSERTION_ANNOTATION] !== undefined) {
    restore.push({
      op: "remove",
      path: `/metadata/annotations/${pointerSegment(DELEGATION_ASSERTION_ANNOTATION)}`,
    });
  }
  return allow(restore);
}

/** The first identity-defining field that differs between two specs, if any. */
function changedIdentityField(spec: unknown, oldSpec: unknown): string | undefined {
  const a = (spec && typeof spec === "object" ? spec : {}) as Record<string, unknown>;
  const b = (oldSpec && typeof oldSpec === "object" ? oldSpec : {}) as Record<string, unknown>;
  return IDENTITY_FIELDS.find((f) => canonicalize(a[f] ?? null) !== canonicalize(b[f] ?? null));
}

function refusal(field: string, rule: string, message: string): ValidationError {
  return new ValidationError(field, rule, `${field}: ${message} (rule ${rule})`);
}
