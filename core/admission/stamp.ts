/**
 * The workload stamp: what the workloads webhook proved when someone created
 * or changed a workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
 * CronJob) whose pod template opts into a task's identity. A JWS signed by
 * the webhook's key, kept in the workload's `custody.dev/authorization`
 * annotation.
 *
 * Why it exists: a workload's pods are created by a controller, so at pod
 * admission the requester is the controller, not the person. The person is
 * checked where they act (on the workload), and the pods webhook admits a
 * controller-created pod only when its owner carries a stamp for that very
 * owner and task. The stamp binds kind, namespace and name (a stamp copied to
 * another object does not verify) and the task's uid (a stamp does not carry
 * over to a new task re-created under the same name). The webhook replaces
 * any incoming value, so a copied stamp is never trusted as such.
 */
import { z } from "zod";
import { ValidationError } from "../errors.ts";
import type { KeyRing, Signer } from "../provenance/sign.ts";
import { signJws, verifyJws } from "./jws.ts";

export const STAMP_ANNOTATION = "custody.dev/authorization";
/** JWS `typ` of a stamp: a requester record (another typ) never verifies as one. */
export const STAMP_TYP = "custody-workload-stamp+jws";
export const STAMP_FIELD = `metadata.annotations[${STAMP_ANNOTATION}]`;

export const WORKLOAD_KINDS = [
  "Deployment",
  "StatefulSet",
  "DaemonSet",
  "ReplicaSet",
  "Job",
  "CronJob",
] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

export const WorkloadStampSchema = z.object({
  v: z.literal(1),
  kind: z.enum(WORKLOAD_KINDS),
  namespace: z.string().min(1).max(63),
  name: z.string().min(1).max(253),
  /** The task whose identity the workload's pods may wear. */
  task: z.string().min(1).max(63),
  taskUid: z.string().min(1).max(128),
  /** Who was authorized: the person (or, through a controller, the person who stamped the owner). */
  requester: z.string().min(1).max(512),
  /** RFC 3339 with milliseconds, from the webhook's clock. */
  issuedAt: z.iso.datetime(),
});
export type WorkloadStamp = z.output<typeof WorkloadStampSchema>;

export interface StampSubject {
  kind: string;
  namespace: string;
  name: string;
  task: string;
  /** When given, the stamp must name this task uid (always given by the webhooks). */
  taskUid?: string;
}

export function signStamp(signer: Signer, stamp: WorkloadStamp): string {
  return signJws(signer, STAMP_TYP, stamp);
}

/**
 * Verifies the stamp and that it was issued for this object and task.
 * Throws ValidationError(field, rule) naming why it does not.
 */
export function verifyStamp(token: unknown, keys: KeyRing, subject: StampSubject): WorkloadStamp {
  const payload = verifyJws(token, keys, STAMP_TYP, STAMP_FIELD);
  const parsed = WorkloadStampSchema.safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw fail("shape", `has no valid ${issue.path.join(".") || "payload"}: ${issue.message}`);
  }
  const stamp = parsed.data;
  if (stamp.kind !== subject.kind || stamp.namespace !== subject.namespace || stamp.name !== subject.name) {
    throw fail(
      "subject",
      `was issued for ${stamp.kind} ${stamp.namespace}/${stamp.name}, not for ${subject.kind} ` +
        `${subject.namespace}/${subject.name}`,
    );
  }
  if (stamp.task !== subject.task) {
    throw fail("task", `was issued for AgentTask ${stamp.task}, not for ${subject.task}`);
  }
  if (subject.taskUid !== undefined && stamp.taskUid !== subject.taskUid) {
    throw fail(
      "task-uid",
      `was issued for an earlier AgentTask named ${stamp.task} (uid ${stamp.taskUid}), not the current one`,
    );
  }
  return stamp;
}

function fail(rule: string, message: string): ValidationError {
  return new ValidationError(STAMP_FIELD, rule, `${STAMP_FIELD}: ${message} (rule ${rule})`);
}
