// Fakes for the pods and workloads webhooks: a key, tasks with signed
// requester records, workload objects, and a SubjectAccessReview answered
// from a set, all in memory.
import { generateKeyPairSync } from "node:crypto";
import { signRequesterRecord } from "../../core/admission/record.ts";
import { signStamp, type WorkloadKind } from "../../core/admission/stamp.ts";
import type { AgentTask, AgentTaskStatus } from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { createEs256Signer, createKeyRing } from "../../core/provenance/sign.ts";
import type { AdmissionRequest, UserInfo } from "../../webhook/admission.ts";
import type { IdentityAdmissionDeps } from "../../webhook/task-use.ts";

const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
export const signer = createEs256Signer(pair.privateKey);
export const keys = createKeyRing([pair.publicKey]);
const otherPair = generateKeyPairSync("ec", { namedCurve: "P-256" });
/** A key Custody does not know: what a forger would sign with. */
export const foreignSigner = createEs256Signer(otherPair.privateKey);

export const NOW = Date.parse("2030-01-01T00:00:10.000Z");
export const NS = "team";
export const SA = "agent-sa";

export const alice: UserInfo = { username: "alice", uid: "alice-uid", groups: ["agent-builders"] };
export const bob: UserInfo = { username: "bob", groups: ["agent-builders"] };
export const mallory: UserInfo = { username: "mallory", groups: ["system:authenticated"] };
export const rsController: UserInfo = { username: "system:serviceaccount:kube-system:replicaset-controller" };
export const deploymentController: UserInfo = {
  username: "system:serviceaccount:kube-system:deployment-controller",
};
export const cronjobController: UserInfo = {
  username: "system:serviceaccount:kube-system:cronjob-controller",
};
export const jobController: UserInfo = { username: "system:serviceaccount:kube-system:job-controller" };

export function makeTask(
  name = "t1",
  opts: {
    status?: AgentTaskStatus;
    requester?: UserInfo;
    serviceAccountName?: string;
    uid?: string;
    recordSigner?: typeof signer;
    recordFor?: string;
    extra?: Partial<AgentTask["spec"]>;
  } = {},
): AgentTask {
  const spec: AgentTask["spec"] = {
    agent: { name: "coder" },
    scope: ["read:x/*"],
    serviceAccountName: opts.serviceAccountName ?? SA,
    ttl: "1h",
    ...opts.extra,
  };
  const requester = opts.requester ?? alice;
  const record = signRequesterRecord(opts.recordSigner ?? signer, {
    v: 1,
    namespace: NS,
    name: opts.recordFor ?? name,
    issuedAt: new Date(NOW - 5_000).toISOString(),
    specDigest: identitySpecDigest(spec),
    requester: { username: requester.username!, ...(requester.uid ? { uid: requester.uid } : {}) },
    delegator: { kind: "User", name: requester.username! },
    proof: { method: "requester" },
  });
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: {
      name,
      namespace: NS,
      uid: opts.uid ?? `uid-${name}`,
      creationTimestamp: new Date(NOW - 5_000).toISOString().replace(/\.\d+Z$/, "Z"),
      annotations: { "custody.dev/requester-record": record },
    },
    spec,
    status: opts.status ?? { phase: "Issued" },
  };
}

export interface Fakes {
  deps: IdentityAdmissionDeps;
  tasks: Map<string, AgentTask>;
  objects: Map<string, unknown>;
  /** `${username}/${namespace}/${task}` allowed verb use. */
  useGrants: Set<string>;
  sarCalls: Array<{ user: UserInfo; namespace: string; name: string }>;
  fail: { sar?: boolean };
}

export function fakes(controllerUsernames: ReadonlySet<string>): Fakes {
  const tasks = new Map<string, AgentTask>();
  const objects = new Map<string, unknown>();
  const useGrants = new Set<string>();
  const sarCalls: Fakes["sarCalls"] = [];
  const fail: Fakes["fail"] = {};
  const deps: IdentityAdmissionDeps = {
    keys,
    signer,
    trustDomain: "custody.local",
    now: () => NOW,
    getTask: async (ns, name) => structuredClone(tasks.get(`${ns}/${name}`)),
    getObject: async (apiVersion, kind, ns, name) =>
      structuredClone(objects.get(`${apiVersion}/${kind}/${ns}/${name}`)),
    canUseTask: async (user, namespace, name) => {
      sarCalls.push({ user, namespace, name });
      if (fail.sar)
        throw new Error("POST /apis/authorization.k8s.io/v1/subjectaccessreviews: connection reset");
      return useGrants.has(`${user.username}/${namespace}/${name}`);
    },
    controllerUsernames,
  };
  return { deps, tasks, objects, useGrants, sarCalls, fail };
}

export function addTask(f: Fakes, task: AgentTask): AgentTask {
  f.tasks.set(`${task.metadata.namespace}/${task.metadata.name}`, task);
  return task;
}

export function stampFor(
  kind: WorkloadKind,
  name: string,
  task = "t1",
  opts: { taskUid?: string; requester?: string; signWith?: typeof signer } = {},
): string {
  return signStamp(opts.signWith ?? signer, {
    v: 1,
    kind,
    namespace: NS,
    name,
    task,
    taskUid: opts.taskUid ?? `uid-${task}`,
    requester: opts.requester ?? "alice",
    issuedAt: new Date(NOW).toISOString(),
  });
}

/** Puts a workload object (with metadata.uid and an optional stamp) where getObject finds it. */
export function addObject(
  f: Fakes,
  apiVersion: string,
  kind: string,
  name: string,
  uid: string,
  stamp?: string,
): void {
  f.objects.set(`${apiVersion}/${kind}/${NS}/${name}`, {
    apiVersion,
    kind,
    metadata: {
      name,
      namespace: NS,
      uid,
      ...(stamp ? { annotations: { "custody.dev/authorization": stamp } } : {}),
    },
  });
}

export function request(
  kind: { group: string; version: string; kind: string },
  resource: string,
  userInfo: UserInfo,
  object: unknown,
  opts: { operation?: AdmissionRequest["operation"]; oldObject?: unknown; name?: string } = {},
): AdmissionRequest {
  const meta = (object as { metadata?: { name?: string } } | undefined)?.metadata;
  return {
    uid: "req-1",
    kind,
    resource: { group: kind.group, version: kind.version, resource },
    namespace: NS,
    ...((opts.name ?? meta?.name) ? { name: opts.name ?? meta?.name } : {}),
    operation: opts.operation ?? "CREATE",
    userInfo,
    object,
    ...(opts.oldObject !== undefined ? { oldObject: opts.oldObject } : {}),
  };
}
