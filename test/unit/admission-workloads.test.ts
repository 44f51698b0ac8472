// The workloads webhook (webhook/workloads.ts) with fake lookups: the person
// is checked where they act (the workload), the workload is stamped, the
// stamp follows Deployment → ReplicaSet and CronJob → Job only through the
// controllers, and every UPDATE that changes the spec is re-authorized.
import { describe, expect, it } from "vitest";
import { STAMP_ANNOTATION, verifyStamp } from "../../core/admission/stamp.ts";
import type { AdmissionResult, UserInfo } from "../../webhook/admission.ts";
import { TASK_LABEL, WORKLOAD_CONTROLLER_USERNAMES } from "../../webhook/task-use.ts";
import { createWorkloadAdmission } from "../../webhook/workloads.ts";
import {
  addObject,
  addTask,
  alice,
  bob,
  cronjobController,
  deploymentController,
  type Fakes,
  fakes,
  keys,
  makeTask,
  mallory,
  NOW,
  NS,
  request,
  SA,
  stampFor,
} from "./identity-admission-fixtures.ts";
import { applyPatch } from "./json-patch.ts";

const APPS = (kind: string) => ({ group: "apps", version: "v1", kind });
const BATCH = (kind: string) => ({ group: "batch", version: "v1", kind });

type Obj = { metadata: Record<string, unknown>; spec: Record<string, unknown> };

const template = (
  task: string | null = "t1",
  sa: string | null = SA,
  annotations?: Record<string, string>,
) => ({
  metadata: {
    labels: { app: "web", ...(task === null ? {} : { [TASK_LABEL]: task }) },
    ...(annotations ? { annotations } : {}),
  },
  spec: {
    ...(sa === null ? {} : { serviceAccountName: sa }),
    containers: [{ name: "agent", image: "example.invalid/agent:1" }],
  },
});

function deployment(
  opts: {
    name?: string | null;
    task?: string | null;
    sa?: string | null;
    annotations?: Record<string, string>;
    image?: string;
  } = {},
): Obj {
  const t = template(opts.task === undefined ? "t1" : opts.task, opts.sa === undefined ? SA : opts.sa);
  if (opts.image) (t.spec.containers[0] as { image: string }).image = opts.image;
  return {
    metadata: {
      ...(opts.name === null ? { generateName: "web-" } : { name: opts.name ?? "web" }),
      labels: opts.task === null ? {} : { [TASK_LABEL]: opts.task ?? "t1" },
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
    },
    spec: { replicas: 1, selector: { matchLabels: { app: "web" } }, template: t },
  };
}

function setup() {
  const f = fakes(WORKLOAD_CONTROLLER_USERNAMES);
  addTask(f, makeTask("t1"));
  addTask(f, makeTask("t2"));
  const handler = createWorkloadAdmission(f.deps);
  const admit = (
    kind: { group: string; version: string; kind: string },
    resource: string,
    object: unknown,
    user: UserInfo,
    opts: { operation?: "CREATE" | "UPDATE" | "DELETE"; oldObject?: unknown } = {},
  ) => handler(request(kind, resource, user, object, opts));
  return { f, admit };
}

function stampOf(r: AdmissionResult, object: Obj): string {
  expect(r.allowed).toBe(true);
  const out = applyPatch(object, r.patch!);
  return (out.metadata.annotations as Record<string, string>)[STAMP_ANNOTATION]!;
}

function expectRefused(r: AdmissionResult, code: number, ...parts: string[]): void {
  expect(r.allowed).toBe(false);
  expect(r.code).toBe(code);
  for (const p of parts) expect(r.message).toContain(p);
}

describe("workloads webhook: stamping", () => {
  it("stamps a Deployment created by the task's requester", async () => {
    const { admit } = setup();
    const d = deployment();
    const r = await admit(APPS("Deployment"), "deployments", d, alice);
    // No annotations yet: the map is added whole.
    expect(r.patch).toEqual([
      { op: "add", path: "/metadata/annotations", value: { [STAMP_ANNOTATION]: expect.any(String) } },
    ]);
    const stamp = verifyStamp(stampOf(r, d), keys, {
      kind: "Deployment",
      namespace: NS,
      name: "web",
      task: "t1",
      taskUid: "uid-t1",
    });
    expect(stamp).toMatchObject({ requester: "alice", issuedAt: new Date(NOW).toISOString() });
  });

  it("stamps for someone allowed verb use, and replaces an incoming (copied) stamp", async () => {
    const { admit, f } = setup();
    f.useGrants.add(`bob/${NS}/t1`);
    const copied = stampFor("Deployment", "web", "t1", { requester: "alice" });
    const d = deployment({ annotations: { "other/x": "y", [STAMP_ANNOTATION]: copied } });
    const r = await admit(APPS("Deployment"), "deployments", d, bob);
    // An existing annotation map: one member, its key escaped (RFC 6901).
    expect(r.patch).toEqual([
      { op: "add", path: "/metadata/annotations/custody.dev~1authorization", value: expect.any(String) },
    ]);
    const token = stampOf(r, d);
    expect(token).not.toBe(copied);
    expect(
      verifyStamp(token, keys, { kind: "Deployment", namespace: NS, name: "web", task: "t1" }).requester,
    ).toBe("bob");
    expect(applyPatch(d, r.patch!).metadata.annotations).toMatchObject({ "other/x": "y" });
  });

  it.each([
    ["StatefulSet", APPS("StatefulSet"), "statefulsets"],
    ["DaemonSet", APPS("DaemonSet"), "daemonsets"],
    ["ReplicaSet", APPS("ReplicaSet"), "replicasets"],
    ["Job", BATCH("Job"), "jobs"],
  ])("stamps a %s from its spec.template", async (kind, gvk, resource) => {
    const { admit } = setup();
    const d = deployment();
    const token = stampOf(await admit(gvk, resource, d, alice), d);
    expect(verifyStamp(token, keys, { kind, namespace: NS, name: "web", task: "t1" }).kind).toBe(kind);
  });

  it("reads a CronJob's task from spec.jobTemplate.spec.template", async () => {
    const { admit } = setup();
    const cj: Obj = {
      metadata: { name: "nightly", labels: { [TASK_LABEL]: "t1" } },
      spec: { schedule: "0 0 * * *", jobTemplate: { spec: { template: template("t1", "other-sa") } } },
    };
    expectRefused(
      await admit(BATCH("CronJob"), "cronjobs", cj, alice),
      422,
      "spec.jobTemplate.spec.template.spec.serviceAccountName",
    );
    (cj.spec.jobTemplate as { spec: { template: unknown } }).spec.template = template();
    expect(stampOf(await admit(BATCH("CronJob"), "cronjobs", cj, alice), cj)).toBeTruthy();
  });

  it("refuses a creator who may not use the task", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(APPS("Deployment"), "deployments", deployment(), mallory),
      403,
      '"mallory"',
      "a Deployment",
      "rule use-task",
      "spec.template.metadata.labels[custody.dev/agent-task]: ",
    );
  });

  it("refuses generateName without a name: the stamp binds the name", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(APPS("Deployment"), "deployments", deployment({ name: null }), alice),
      422,
      "metadata.name",
      "generate-name",
    );
  });

  it("refuses a template under another service account, a missing or Revoked task", async () => {
    const { admit, f } = setup();
    expectRefused(
      await admit(APPS("Deployment"), "deployments", deployment({ sa: "other" }), alice),
      422,
      "spec.template.spec.serviceAccountName",
      "rule service-account",
    );
    expectRefused(
      await admit(APPS("Deployment"), "deployments", deployment({ task: "nope" }), alice),
      422,
      `AgentTask ${NS}/nope does not exist`,
      "spec.template.metadata.labels[custody.dev/agent-task]",
    );
    addTask(f, makeTask("t1", { status: { phase: "Revoked" } }));
    expectRefused(await admit(APPS("Deployment"), "deployments", deployment(), alice), 403, "is Revoked");
  });

  it("admits with a warning when the task is Pending", async () => {
    const { admit, f } = setup();
    addTask(f, makeTask("t1", { status: { phase: "Pending" } }));
    const r = await admit(APPS("Deployment"), "deployments", deployment(), alice);
    expect(r.allowed).toBe(true);
    expect(r.warnings?.[0]).toContain("is Pending");
  });

  it("refuses a template its pods could not be injected from, naming the template's annotation", async () => {
    const { admit } = setup();
    const d = deployment();
    (d.spec.template as ReturnType<typeof template>) = template("t1", SA, {
      "custody.dev/inject-containers": "nope",
    });
    expectRefused(
      await admit(APPS("Deployment"), "deployments", d, alice),
      422,
      "spec.template.metadata.annotations[custody.dev/inject-containers]",
    );
  });

  it("refuses a workload whose own label names another task than its template", async () => {
    const { admit } = setup();
    const d = deployment();
    (d.metadata.labels as Record<string, string>)[TASK_LABEL] = "t2";
    expectRefused(await admit(APPS("Deployment"), "deployments", d, alice), 422, "rule label-match");
  });

  it("removes a stamp from a workload whose template does not opt in", async () => {
    const { admit } = setup();
    const d = deployment({ task: null, annotations: { [STAMP_ANNOTATION]: stampFor("Deployment", "web") } });
    expect(await admit(APPS("Deployment"), "deployments", d, mallory)).toEqual({
      allowed: true,
      patch: [{ op: "remove", path: "/metadata/annotations/custody.dev~1authorization" }],
    });
    expect(await admit(APPS("Deployment"), "deployments", deployment({ task: null }), mallory)).toEqual({
      allowed: true,
    });
  });
});

describe("workloads webhook: UPDATE", () => {
  // One token: ECDSA signatures differ each time, and the stored stamp is compared as bytes.
  const token = stampFor("Deployment", "web");
  const stamped = () => deployment({ annotations: { [STAMP_ANNOTATION]: token } });

  it("refuses someone who may edit the Deployment but not use the task changing its image", async () => {
    const { admit } = setup();
    const old = stamped();
    const changed = stamped();
    (changed.spec.template as ReturnType<typeof template>).spec.containers[0]!.image =
      "example.invalid/evil:1";
    expectRefused(
      await admit(APPS("Deployment"), "deployments", changed, mallory, {
        operation: "UPDATE",
        oldObject: old,
      }),
      403,
      '"mallory"',
      "rule use-task",
    );
  });

  it("refuses them scaling it through the object, and moving it to another task", async () => {
    const { admit } = setup();
    const scaled = stamped();
    scaled.spec.replicas = 10;
    expectRefused(
      await admit(APPS("Deployment"), "deployments", scaled, mallory, {
        operation: "UPDATE",
        oldObject: stamped(),
      }),
      403,
      "rule use-task",
    );
    const moved = deployment({
      task: "t2",
      annotations: { [STAMP_ANNOTATION]: stampFor("Deployment", "web") },
    });
    expectRefused(
      await admit(APPS("Deployment"), "deployments", moved, mallory, {
        operation: "UPDATE",
        oldObject: stamped(),
      }),
      403,
      "AgentTask team/t2",
    );
  });

  it("re-stamps a change by someone who may use the task", async () => {
    const { admit } = setup();
    const changed = stamped();
    (changed.spec.template as ReturnType<typeof template>).spec.containers[0]!.image =
      "example.invalid/agent:2";
    const r = await admit(APPS("Deployment"), "deployments", changed, alice, {
      operation: "UPDATE",
      oldObject: stamped(),
    });
    expect(stampOf(r, changed)).not.toBe(token);
  });

  it("lets a metadata-only change with the stored stamp through (controller annotations, finalizers)", async () => {
    const { admit, f } = setup();
    const old = stamped();
    const annotated = stamped();
    (annotated.metadata.annotations as Record<string, string>)["deployment.kubernetes.io/revision"] = "2";
    annotated.metadata.finalizers = ["foregroundDeletion"];
    for (const user of [deploymentController, mallory]) {
      expect(
        await admit(APPS("Deployment"), "deployments", annotated, user, {
          operation: "UPDATE",
          oldObject: old,
        }),
      ).toEqual({
        allowed: true,
      });
    }
    // Even once the task is revoked: refusing would wedge the deletion of the workload.
    addTask(f, makeTask("t1", { status: { phase: "Revoked" } }));
    expect(
      (
        await admit(APPS("Deployment"), "deployments", annotated, mallory, {
          operation: "UPDATE",
          oldObject: old,
        })
      ).allowed,
    ).toBe(true);
  });

  it("does not let a metadata-only change swap in a stamp from elsewhere", async () => {
    const { admit } = setup();
    const old = deployment();
    const forged = deployment({ annotations: { [STAMP_ANNOTATION]: stampFor("Deployment", "web") } });
    expectRefused(
      await admit(APPS("Deployment"), "deployments", forged, mallory, {
        operation: "UPDATE",
        oldObject: old,
      }),
      403,
      "rule use-task",
    );
  });

  it("does not let a metadata-only change replace the stored stamp", async () => {
    const { admit } = setup();
    const other = deployment({
      annotations: { [STAMP_ANNOTATION]: stampFor("Deployment", "web", "t1", { taskUid: "old" }) },
    });
    expectRefused(
      await admit(APPS("Deployment"), "deployments", other, mallory, {
        operation: "UPDATE",
        oldObject: stamped(),
      }),
      403,
      "rule use-task",
    );
  });

  it("lets an unchanged spec through whatever its stored stamp (pods are made from the spec, admitted on the stamp)", async () => {
    const { admit } = setup();
    const bad = deployment({ annotations: { [STAMP_ANNOTATION]: stampFor("Deployment", "other") } });
    const relabelled = structuredClone(bad);
    (relabelled.metadata.labels as Record<string, string>).team = "x";
    expect(
      await admit(APPS("Deployment"), "deployments", relabelled, mallory, {
        operation: "UPDATE",
        oldObject: bad,
      }),
    ).toEqual({ allowed: true });
  });

  it("lets a scale-down through, also by the deployment controller for a ReplicaSet of a revoked task", async () => {
    const { admit, f } = setup();
    const old = stamped();
    old.spec.replicas = 3;
    const down = stamped();
    down.spec.replicas = 1;
    expect(
      await admit(APPS("Deployment"), "deployments", down, mallory, { operation: "UPDATE", oldObject: old }),
    ).toEqual({ allowed: true });
    addTask(f, makeTask("t1", { status: { phase: "Revoked" } }));
    const rsOld = deployment({ name: "web-5d8f", annotations: { [STAMP_ANNOTATION]: token } });
    const rsZero = structuredClone(rsOld);
    rsZero.spec.replicas = 0;
    expect(
      await admit(APPS("ReplicaSet"), "replicasets", rsZero, deploymentController, {
        operation: "UPDATE",
        oldObject: rsOld,
      }),
    ).toEqual({ allowed: true });
    // Scaling up again is a new attachment: the task's state and the requester are checked.
    expectRefused(
      await admit(APPS("ReplicaSet"), "replicasets", rsOld, deploymentController, {
        operation: "UPDATE",
        oldObject: rsZero,
      }),
      403,
      "is Revoked",
    );
  });

  it("does nothing on DELETE (not routed here)", async () => {
    const { admit } = setup();
    expect(
      await admit(APPS("Deployment"), "deployments", undefined, mallory, {
        operation: "DELETE",
        oldObject: stamped(),
      }),
    ).toEqual({
      allowed: true,
    });
  });
});

describe("workloads webhook: controller-created workloads", () => {
  const rs = (owner?: Record<string, unknown>): Obj => {
    const o = deployment({ name: "web-5d8f" });
    if (owner) o.metadata.ownerReferences = [owner];
    return o;
  };
  const deployRef = (uid = "d-uid", extra: Record<string, unknown> = {}) => ({
    apiVersion: "apps/v1",
    kind: "Deployment",
    name: "web",
    uid,
    controller: true,
    ...extra,
  });

  function withStampedDeployment(
    f: Fakes,
    stamp = stampFor("Deployment", "web", "t1", { requester: "alice" }),
  ): void {
    addObject(f, "apps/v1", "Deployment", "web", "d-uid", stamp);
  }

  it("stamps the deployment controller's ReplicaSet from its stamped Deployment, keeping the person", async () => {
    const { admit, f } = setup();
    withStampedDeployment(f);
    const r0 = rs(deployRef());
    const r = await admit(APPS("ReplicaSet"), "replicasets", r0, deploymentController);
    const stamp = verifyStamp(stampOf(r, r0), keys, {
      kind: "ReplicaSet",
      namespace: NS,
      name: "web-5d8f",
      task: "t1",
      taskUid: "uid-t1",
    });
    expect(stamp.requester).toBe("alice");
    expect(f.sarCalls).toEqual([]);
  });

  it("stamps the cronjob controller's Job from its stamped CronJob", async () => {
    const { admit, f } = setup();
    addObject(f, "batch/v1", "CronJob", "nightly", "cj-uid", stampFor("CronJob", "nightly"));
    const job = deployment({ name: "nightly-28000000" });
    job.metadata.ownerReferences = [
      { apiVersion: "batch/v1", kind: "CronJob", name: "nightly", uid: "cj-uid", controller: true },
    ];
    expect(stampOf(await admit(BATCH("Job"), "jobs", job, cronjobController), job)).toBeTruthy();
  });

  it.each([
    [
      "the Deployment has another uid",
      (f: Fakes) => addObject(f, "apps/v1", "Deployment", "web", "other", stampFor("Deployment", "web")),
      "another uid",
    ],
    [
      "the Deployment is not stamped",
      (f: Fakes) => addObject(f, "apps/v1", "Deployment", "web", "d-uid"),
      "no valid stamp",
    ],
    [
      "the Deployment is stamped for another task",
      (f: Fakes) => withStampedDeployment(f, stampFor("Deployment", "web", "t2")),
      "rule task",
    ],
    ["the Deployment does not exist", () => undefined, "does not exist"],
  ])("refuses the deployment controller's ReplicaSet when %s", async (_w, arrange, why) => {
    const { admit, f } = setup();
    arrange(f);
    expectRefused(
      await admit(APPS("ReplicaSet"), "replicasets", rs(deployRef()), deploymentController),
      403,
      "stamped owner",
      why,
    );
  });

  it("does not let a controller stamp a kind that has no owner kind (a Deployment)", async () => {
    const { admit } = setup();
    expectRefused(
      await admit(APPS("Deployment"), "deployments", deployment(), deploymentController),
      403,
      "rule use-task",
    );
  });

  it("refuses a user's ReplicaSet with a forged ownerReference to a stamped Deployment", async () => {
    const { admit, f } = setup();
    withStampedDeployment(f);
    const r = await admit(APPS("ReplicaSet"), "replicasets", rs(deployRef()), mallory);
    expectRefused(r, 403, '"mallory"', "rule use-task");
    expect(r.message).not.toContain("stamped owner");
  });
});
