/**
 * The requester record: what admission proved about an AgentTask at CREATE,
 * signed by the webhook's key and kept in an annotation. The operator issues
 * only when the record verifies, names this task, binds its identity-defining
 * spec, and was signed within seconds of the object's creation (so a record
 * copied from a deleted task of the same name does not verify).
 *
 * The record is the only source of the delegator the operator trusts: the
 * spec says who is claimed; the record says who the API server authenticated
 * and how the claim was proven.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import type { AgentTaskSpec, Delegator, StatusDelegator } from "../api/v1alpha1.ts";
import { identitySpecDigest } from "../delegation.ts";
import { ValidationError } from "../errors.ts";
import type { KeyRing, Signer } from "../provenance/sign.ts";
import { signJws, verifyJws } from "./jws.ts";

export const REQUESTER_RECORD_ANNOTATION = "custody.dev/requester-record";
export const DELEGATION_ASSERTION_ANNOTATION = "custody.dev/delegation-assertion";
/** JWS `typ` of a requester record: a workload stamp (another typ) never verifies as one. */
export const REQUESTER_RECORD_TYP = "custody-requester-record+jws";
export const RECORD_FIELD = `metadata.annotations[${REQUESTER_RECORD_ANNOTATION}]`;
/** How far the record's issuedAt may be from the object's creationTimestamp (whole seconds there). */
export const DEFAULT_RECORD_MAX_SKEW_MS = 5_000;

const SA_PREFIX = "system:serviceaccount:";

const UserInfoSchema = z.object({
  username: z.string().max(512),
  uid: z.string().max(128).optional(),
  groups: z.array(z.string().max(512)).max(256).optional(),
  extra: z.record(z.string().max(256), z.array(z.string().max(1024)).max(64)).optional(),
});

export const PROOF_METHODS = [
  /** The delegator is the requester itself (the default). */
  "requester",
  /** The requester may impersonate the delegator (SubjectAccessReview verb impersonate). */
  "impersonate",
  /** A signed assertion from a configured issuer, bound to this requester and task. */
  "assertion",
  /** A sub-agent created by a pod that carries the parent's identity (its bound token). */
  "parent-pod",
  /** A sub-agent created by the parent's own requester, or by someone who may impersonate its delegator. */
  "parent-delegator",
] as const;
export type ProofMethod = (typeof PROOF_METHODS)[number];

export const RequesterRecordSchema = z.object({
  v: z.literal(1),
  namespace: z.string().min(1).max(63),
  name: z.string().min(1).max(63),
  /** RFC 3339 with milliseconds, from the webhook's clock. */
  issuedAt: z.iso.datetime(),
  /** identitySpecDigest(spec) at admission (hex). */
  specDigest: z.string().regex(/^[0-9a-f]{64}$/),
  /** Exactly as the API server authenticated the request. */
  requester: UserInfoSchema,
  /** Who the task acts for, as proven. For a sub-agent: the parent task. */
  delegator: z.object({
    kind: z.enum(["User", "Group", "ServiceAccount", "Workflow", "AgentTask"]),
    name: z.string().min(1).max(512),
    namespace: z.string().max(63).optional(),
    uid: z.string().max(128).optional(),
    groups: z.array(z.string().max(512)).max(256).optional(),
  }),
  /**
   * The task's labels at CREATE: what policy selectors match, so that
   * relabelling a task later cannot move it out of (or into) a policy.
   */
  labels: z.record(z.string().max(317), z.string().max(63)).optional(),
  proof: z.object({
    method: z.enum(PROOF_METHODS),
    /** Only what identifies the assertion; never the token itself. */
    assertion: z
      .object({
        issuer: z.string().max(512),
        subject: z.string().max(512),
        jti: z.string().max(128),
        digest: z.string().regex(/^[0-9a-f]{64}$/),
      })
      .optional(),
    /** The pod whose bound token created a sub-agent. */
    pod: z.object({ name: z.string().max(253), uid: z.string().max(128) }).optional(),
  }),
});
export type RequesterRecord = z.output<typeof RequesterRecordSchema>;
export type RecordDelegator = RequesterRecord["delegator"];

export function signRequesterRecord(signer: Signer, record: RequesterRecord): string {
  return signJws(signer, REQUESTER_RECORD_TYP, record);
}

export interface RecordSubject {
  namespace: string;
  name: string;
  spec: AgentTaskSpec | Record<string, unknown>;
  /** metadata.creationTimestamp (RFC 3339, whole seconds). */
  creationTimestamp: string | undefined;
}

/**
 * Verifies the record and that it belongs to this very object. Throws
 * ValidationError(field, rule) with a message an operator can act on.
 */
export function verifyRequesterRecord(
  token: unknown,
  keys: KeyRing,
  subject: RecordSubject,
  maxSkewMs = DEFAULT_RECORD_MAX_SKEW_MS,
): RequesterRecord {
  const payload = verifyJws(token, keys, REQUESTER_RECORD_TYP, RECORD_FIELD);
  const parsed = RequesterRecordSchema.safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw fail("shape", `has no valid ${issue.path.join(".") || "payload"}: ${issue.message}`);
  }
  const record = parsed.data;
  if (record.namespace !== subject.namespace || record.name !== subject.name) {
    throw fail(
      "subject",
      `was signed for ${record.namespace}/${record.name}, not for ${subject.namespace}/${subject.name}`,
    );
  }
  if (record.specDigest !== identitySpecDigest(subject.spec as Record<string, unknown>)) {
    throw fail("spec-digest", "does not match the task's identity-defining spec");
  }
  const created = Date.parse(subject.creationTimestamp ?? "");
  if (Number.isNaN(created)) throw fail("created", "cannot be checked: the task has no creationTimestamp");
  // creationTimestamp is truncated to whole seconds: allow that second too.
  const skew = created - Date.parse(record.issuedAt);
  if (skew < -maxSkewMs - 1000 || skew > maxSkewMs) {
    throw fail(
      "issued-at",
      `was signed at ${record.issuedAt}, ${Math.round(Math.abs(skew) / 1000)} s from the task's creation ` +
        `(${subject.creationTimestamp}); a record copied from another object does not verify`,
    );
  }
  return record;
}

export type RecordVerifier = (
  token: unknown,
  subject: RecordSubject & { uid?: string | undefined },
) => RequesterRecord;

/**
 * verifyRequesterRecord with a memo: the webhook checks a task's record on
 * every pod that opts in, and the operator on every reconcile, while an ES256
 * verification costs ~0.1-0.3 ms of CPU. A result is reused only for the same
 * token on the same object (uid and creationTimestamp), whose identity fields
 * the API server keeps immutable; failures are never cached.
 */
export function createRecordVerifier(
  keys: KeyRing,
  maxSkewMs = DEFAULT_RECORD_MAX_SKEW_MS,
  capacity = 4096,
): RecordVerifier {
  const verified = new Map<string, RequesterRecord>();
  return (token, subject) => {
    // The token by its SHA-256, not itself: a key holding the ~1 KB token
    // (a fresh string per parsed task) would keep thousands of copies alive.
    const memoKey =
      typeof token === "string" && subject.uid
        ? `${subject.uid}|${subject.creationTimestamp ?? ""}|${subject.namespace}/${subject.name}|${createHash("sha256").update(token).digest("base64url")}`
        : undefined;
    const hit = memoKey !== undefined ? verified.get(memoKey) : undefined;
    if (hit) return hit;
    const record = verifyRequesterRecord(token, keys, subject, maxSkewMs);
    if (memoKey !== undefined) {
      // Oldest first out: Maps iterate in insertion order.
      if (verified.size >= capacity) verified.delete(verified.keys().next().value as string);
      verified.set(memoKey, record);
    }
    return record;
  };
}

const POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid";

/**
 * Is `current` the very requester a record names? Same username and (when
 * both carry one) uid. A service account is not one party: whoever can create
 * a pod in its namespace can run as it. So a service-account requester counts
 * as "the same" only from the same pod (the bound token's pod uid); from
 * anywhere else it must be authorized like anyone (SubjectAccessReview).
 */
export function isSameRequester(
  recorded: { username: string; uid?: string | undefined; extra?: Record<string, string[]> | undefined },
  current: {
    username?: string | undefined;
    uid?: string | undefined;
    extra?: Record<string, string[]> | undefined;
  },
): boolean {
  if (!current.username || recorded.username !== current.username) return false;
  if (recorded.uid && current.uid && recorded.uid !== current.uid) return false;
  if (recorded.username.startsWith(SA_PREFIX)) {
    const pod = recorded.extra?.[POD_UID_EXTRA]?.[0];
    return pod !== undefined && current.extra?.[POD_UID_EXTRA]?.[0] === pod;
  }
  return true;
}

/** The delegator a requester is when no delegator is declared. */
export function requesterAsDelegator(user: {
  username: string;
  uid?: string;
  groups?: string[];
}): RecordDelegator {
  if (user.username.startsWith(SA_PREFIX)) {
    const [namespace, name] = user.username.slice(SA_PREFIX.length).split(":");
    return {
      kind: "ServiceAccount",
      name: name ?? "",
      ...(namespace ? { namespace } : {}),
      ...(user.uid ? { uid: user.uid } : {}),
    };
  }
  return {
    kind: "User",
    name: user.username,
    ...(user.uid ? { uid: user.uid } : {}),
    ...(user.groups && user.groups.length > 0 ? { groups: [...user.groups] } : {}),
  };
}

/** The delegator as spec.delegator declares it, in record form. */
export function declaredDelegator(d: Delegator): RecordDelegator {
  return { kind: d.kind, name: d.name, ...(d.namespace ? { namespace: d.namespace } : {}) };
}

/**
 * The delegator shown in status and bound into the certificate, from a
 * verified root task's record. ServiceAccounts read as Kubernetes names them
 * (system:serviceaccount:<ns>:<name>), so one principal has one spelling.
 */
export function statusDelegatorOf(record: RequesterRecord): StatusDelegator {
  const d = record.delegator;
  if (d.kind === "AgentTask") throw fail("delegator", "names a parent task; a root task needs a principal");
  const name = d.kind === "ServiceAccount" && d.namespace ? `${SA_PREFIX}${d.namespace}:${d.name}` : d.name;
  return {
    kind: d.kind,
    name,
    ...(d.uid ? { uid: d.uid } : {}),
    ...(d.groups && d.groups.length > 0 ? { groups: [...d.groups] } : {}),
  };
}

/**
 * The record must prove what the spec claims: the declared delegator, the
 * parent, or (neither declared) the requester itself. The spec digest binds
 * the spec; this binds the record's conclusion to it.
 */
export function checkRecordMatchesSpec(record: RequesterRecord, spec: AgentTaskSpec): void {
  const d = record.delegator;
  if (spec.parentRef) {
    if (d.kind !== "AgentTask" || d.name !== spec.parentRef.name)
      throw fail("delegator", `does not name the parent task ${spec.parentRef.name}`);
    return;
  }
  if (d.kind === "AgentTask") throw fail("delegator", "names a parent, but the task has no spec.parentRef");
  const expected = spec.delegator
    ? declaredDelegator(spec.delegator)
    : requesterAsDelegator(record.requester);
  if (
    d.kind !== expected.kind ||
    d.name !== expected.name ||
    (d.namespace ?? "") !== (expected.namespace ?? "")
  ) {
    throw fail(
      "delegator",
      `proves ${d.kind} ${d.name}, but the spec claims ${expected.kind} ${expected.name}`,
    );
  }
}

function fail(rule: string, message: string): ValidationError {
  return new ValidationError(RECORD_FIELD, rule, `${RECORD_FIELD}: ${message} (rule ${rule})`);
}
