// The pods webhook (webhook/pods.ts) with fake lookups: every rule that
// decides whether a pod may wear a task's identity, and the patch it gets.
import { describe, expect, it } from "vitest";
import { SVID_MOUNT_PATH, SVID_VOLUME_NAME } from "../../core/admission/injection.ts";
import type { AdmissionResult, UserInfo } from "../../webhook/admission.ts";
import { createPodAdmission } from "../../webhook/pods.ts";
import { POD_CONTROLLER_USERNAMES, TASK_LABEL } from "../../webhook/task-use.ts";
import {
  addObject,
  addTask,
  alice,
  bob,
  type Fakes,
  fakes,
  foreignSigner,
  jobController,
  makeTask,
  mallory,
  NOW,
  NS,
  request,
  rsController,
  SA,
  stampFor,
} from "./identity-admission-fixtures.ts";
import { applyPatch } from "./json-patch.ts";

const POD = { group: "", version: "v1", kind: "Pod" };

type Pod = {
  metadata: Record<string, unknown> & { labels?: Record<string, string> };
  spec: Record<string, unknown>;
};

function pod(
  opts: {
    task?: string | null;
    sa?: string | null;
    ownerReferences?: unknown[];
    annotations?: Record<string, string>;
  } = {},
): Pod {
  return {
    metadata: {
      name: "agent-pod",
      ...(opts.task === null ? {} : { labels: { [TASK_LABEL]: opts.task ?? "t1" } }),
      ...(opts.ownerReferences ? { ownerReferences: opts.ownerReferences } : {}),
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
    },
    spec: {
      ...(opts.sa === null ? {} : { serviceAccountName: opts.sa ?? SA }),
      containers: [{ name: "agent", image: "example.invalid/agent:1" }],
    },
  };
}

const rsRef = (name = "web-abc", uid = "rs-uid", extra: Record<string, unknown> = {}) => ({
  apiVersion: "apps/v1",
  kind: "ReplicaSet",
  name,
  uid,
  controller: true,
  blockOwnerDeletion: true,
  ...extra,
});

function setup(): { f: Fakes; admit: (p: unknown, user: UserInfo) => Promise<AdmissionResult> } {
  const f = fakes(POD_CONTROLLER_USERNAMES);
  addTask(f, makeTask("t1"));
  const handler = createPodAdmission(f.deps);
  return { f, admit: (p, user) => handler(request(POD, "pods", user, p)) };
}

function expectRefused(r: AdmissionResult, code: number, ...parts: string[]): void {
  expect(r.allowed).toBe(false);
  expect(r.code).toBe(code);
  for (const p of parts) expect(r.message).toContain(p);
}

describe("pods webhook: injection", () => {
  it("injects the task's requester's pod: volume, mount and environment", async () => {
    const { admit, f } = setup();
    const p = pod();
    const r = await admit(p, alice);
    expect(r.allowed).toBe(true);
    expect(r.warnings).toBeUndefined();
    const out = applyPatch(p, r.patch!);
    expect((out.spec.volumes as Array<{ name: string }>).map((v) => v.name)).toEqual([SVID_VOLUME_NAME]);
    const c = (out.spec.containers as Array<Record<string, unknown>>)[0]!;
    expect(c.volumeMounts).toEqual([{ name: SVID_VOLUME_NAME, mountPath: SVID_MOUNT_PATH, readOnly: true }]);
    expect(c.env).toContainEqual({
      name: "CUSTODY_SPIFFE_ID",
      value: `spiffe://custody.local/ns/${NS}/agent/coder/task/t1`,
    });
    // The requester needs no SubjectAccessReview: the signed record says who it is.
    expect(f.sarCalls).toEqual([]);
  });

  it("adds nothing when re-invoked on the pod it already patched", async () => {
    const { admit } = setup();
    const first = await admit(pod(), alice);
    const again = await admit(applyPatch(pod(), first.patch!), alice);
    expect(again).toEqual({ allowed: true });
  });

  it("never mutates a pod that does not opt in", async () => {
    const { admit } = setup();
    expect(await admit(pod({ task: null }), mallory)).toEqual({ allowed: true });
  });

  it("refuses a pod it cannot inject, naming the annotation", async () => {
    const { admit } = setup();
    const r = await admit(pod({ annotations: { "custody.dev/inject-containers": "sidecar" } }), alice);
    expectRefused(
      r,
      422,
      "metadata.annotations[custody.dev/inject-containers]",
      '"sidecar"',
      "unknown-container",
    );
  });
});

describe("pods webhook: the task", () => {
  it("refuses a pod naming a missing task", async () => {
    const { admit } = setup();
    const r = await admit(pod({ task: "nope" }), alice);
    expectRefused(r, 422, `AgentTask ${NS}/nope does not exist`, "metadata.labels[custody.dev/agent-task]");
  });

  it("refuses a label value that cannot name a task", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(pod({ task: "Not_A_Task" }), alice),
      422,
      "metadata.labels[custody.dev/agent-task]",
    );
  });

  it.each([
    ["Revoked", { phase: "Revoked" as const }, "is Revoked"],
    ["Denied", { phase: "Denied" as const }, "is Denied"],
    ["Expired", { phase: "Expired" as const }, "is Expired"],
  ])("refuses a %s task, naming the phase", async (_p, status, text) => {
    const { admit, f } = setup();
    addTask(f, makeTask("t1", { status }));
    expectRefused(await admit(pod(), alice), 403, text, "rule task-state", `AgentTask ${NS}/t1`);
  });

  it("names the Ready condition's reason of a refused task", async () => {
    const { admit, f } = setup();
    addTask(
      f,
      makeTask("t1", {
        status: {
          phase: "Denied",
          conditions: [
            {
              type: "Ready",
              status: "False",
              reason: "DelegatorUnproven",
              message: "m",
              lastTransitionTime: "2030-01-01T00:00:00Z",
            },
          ],
        },
      }),
    );
    expectRefused(await admit(pod(), alice), 403, "reason DelegatorUnproven");
  });

  it("refuses a task revoked in spec before the operator has caught up", async () => {
    const { admit, f } = setup();
    addTask(f, makeTask("t1", { extra: { revoked: true, revocationReason: "leaked" } }));
    expectRefused(await admit(pod(), alice), 403, "spec.revoked is true: leaked");
  });

  it("refuses a task being deleted or past its deadline", async () => {
    const { admit, f } = setup();
    const deleting = makeTask("t1");
    (deleting.metadata as unknown as Record<string, unknown>).deletionTimestamp = "2030-01-01T00:00:09Z";
    addTask(f, deleting);
    expectRefused(await admit(pod(), alice), 403, "is being deleted");
    addTask(f, makeTask("t1", { extra: { deadline: new Date(NOW - 1).toISOString() } }));
    expectRefused(await admit(pod(), alice), 403, "passed its deadline");
  });

  it.each([
    ["Pending", { phase: "Pending" as const }, "is Pending"],
    ["Failed (retried)", { phase: "Failed" as const }, "is Failed"],
    ["not reconciled yet", {}, "has not been reconciled yet"],
  ])("admits a pod of a %s task with a warning that the volume mounts later", async (_w, status, text) => {
    const { admit, f } = setup();
    addTask(f, makeTask("t1", { status }));
    const r = await admit(pod(), alice);
    expect(r.allowed).toBe(true);
    expect(r.patch?.length).toBeGreaterThan(0);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings![0]).toContain(text);
    expect(r.warnings![0]).toContain("mounts once");
  });
});

describe("pods webhook: service account", () => {
  it("refuses a pod under another service account, naming both", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(pod({ sa: "other" }), alice),
      422,
      "spec.serviceAccountName",
      '"other"',
      `"${SA}"`,
      "rule service-account",
    );
  });

  it("reads an absent serviceAccountName as default", async () => {
    const { admit, f } = setup();
    expectRefused(await admit(pod({ sa: null }), alice), 422, '"default"');
    addTask(f, makeTask("t1", { serviceAccountName: "default" }));
    expect((await admit(pod({ sa: null }), alice)).allowed).toBe(true);
  });
});

describe("pods webhook: who may attach the identity", () => {
  it("admits someone the API server allows verb use on the task, asking with their whole userInfo", async () => {
    const { admit, f } = setup();
    f.useGrants.add(`bob/${NS}/t1`);
    const withExtra = {
      ...bob,
      uid: "bob-uid",
      extra: { "authentication.kubernetes.io/credential-id": ["X509SHA256=ab"] },
    };
    expect((await admit(pod(), withExtra)).allowed).toBe(true);
    expect(f.sarCalls).toEqual([{ user: withExtra, namespace: NS, name: "t1" }]);
  });

  it("refuses a creator who may not use the task", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(pod(), mallory),
      403,
      '"mallory" may not attach the identity',
      "rule use-task",
      `AgentTask ${NS}/t1`,
    );
  });

  it("does not take the requester's word from a record signed by another key or for another task", async () => {
    const { admit, f } = setup();
    addTask(f, makeTask("t1", { recordSigner: foreignSigner }));
    expectRefused(await admit(pod(), alice), 403, "rule use-task");
    addTask(f, makeTask("t1", { recordFor: "t0" }));
    expectRefused(await admit(pod(), alice), 403, "rule use-task");
  });

  it("does not take a same-named principal with another uid for the requester", async () => {
    const { admit } = setup();
    expectRefused(await admit(pod(), { ...alice, uid: "another-alice" }), 403, "rule use-task");
  });

  it("fails (for the server to refuse and log) when the SubjectAccessReview fails", async () => {
    const { admit, f } = setup();
    f.fail.sar = true;
    await expect(admit(pod(), mallory)).rejects.toThrow(/connection reset/);
  });
});

describe("pods webhook: controller-created pods", () => {
  const owned = () => pod({ ownerReferences: [rsRef()] });

  it("admits a ReplicaSet controller's pod whose owner exists with that uid and carries a stamp for the task", async () => {
    const { admit, f } = setup();
    addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "web-abc"));
    const r = await admit(owned(), rsController);
    expect(r.allowed).toBe(true);
    expect(r.patch?.length).toBeGreaterThan(0);
    expect(f.sarCalls).toEqual([]);
  });

  it("admits a Job controller's pod owned by a stamped Job", async () => {
    const { admit, f } = setup();
    addObject(f, "batch/v1", "Job", "run-1", "job-uid", stampFor("Job", "run-1"));
    const p = pod({
      ownerReferences: [
        { apiVersion: "batch/v1", kind: "Job", name: "run-1", uid: "job-uid", controller: true },
      ],
    });
    expect((await admit(p, jobController)).allowed).toBe(true);
  });

  it.each([
    ["the owner does not exist", () => undefined, [rsRef()], "does not exist"],
    [
      "the owner has another uid (re-created under the name)",
      (f: Fakes) =>
        addObject(f, "apps/v1", "ReplicaSet", "web-abc", "new-uid", stampFor("ReplicaSet", "web-abc")),
      [rsRef()],
      "another uid",
    ],
    [
      "the owner carries no stamp",
      (f: Fakes) => addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid"),
      [rsRef()],
      "no valid stamp",
    ],
    [
      "the owner's stamp names another task",
      (f: Fakes) =>
        addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "web-abc", "t2")),
      [rsRef()],
      "rule task",
    ],
    [
      "the owner's stamp was copied from another ReplicaSet",
      (f: Fakes) =>
        addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "other-rs")),
      [rsRef()],
      "rule subject",
    ],
    [
      "the owner's stamp is for an earlier task of the same name",
      (f: Fakes) =>
        addObject(
          f,
          "apps/v1",
          "ReplicaSet",
          "web-abc",
          "rs-uid",
          stampFor("ReplicaSet", "web-abc", "t1", { taskUid: "old" }),
        ),
      [rsRef()],
      "rule task-uid",
    ],
    [
      "the owner's stamp is signed by an unknown key",
      (f: Fakes) =>
        addObject(
          f,
          "apps/v1",
          "ReplicaSet",
          "web-abc",
          "rs-uid",
          stampFor("ReplicaSet", "web-abc", "t1", { signWith: foreignSigner }),
        ),
      [rsRef()],
      "rule kid",
    ],
    [
      "the ownerReference is not the controller",
      (f: Fakes) =>
        addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "web-abc")),
      [rsRef("web-abc", "rs-uid", { controller: false })],
      "no controller ownerReference",
    ],
    [
      "the ownerReference has a foreign apiVersion",
      (f: Fakes) =>
        addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "web-abc")),
      [rsRef("web-abc", "rs-uid", { apiVersion: "evil.example/v1" })],
      "evil.example/v1 ReplicaSet",
    ],
    [
      "the ownerReference is a Deployment (pods are never made by the deployment controller)",
      (f: Fakes) => addObject(f, "apps/v1", "Deployment", "web", "d-uid", stampFor("Deployment", "web")),
      [{ apiVersion: "apps/v1", kind: "Deployment", name: "web", uid: "d-uid", controller: true }],
      "not one of ReplicaSet",
    ],
  ])("refuses a controller's pod when %s", async (_w, arrange, refs, why) => {
    const { admit, f } = setup();
    arrange(f);
    const r = await admit(pod({ ownerReferences: refs }), rsController);
    expectRefused(r, 403, "rule use-task", "stamped owner", why);
  });

  it("refuses a user's bare pod with a forged ownerReference to a stamped ReplicaSet", async () => {
    const { admit, f } = setup();
    addObject(f, "apps/v1", "ReplicaSet", "web-abc", "rs-uid", stampFor("ReplicaSet", "web-abc"));
    const r = await admit(owned(), mallory);
    expectRefused(r, 403, '"mallory" may not attach', "rule use-task");
    // A user is the requester: the owner path is not even considered for them.
    expect(r.message).not.toContain("stamped owner");
  });
});
