// Identity injection against the real kube-apiserver: it calls Custody's
// pods and workloads webhooks (webhook/pods.ts, webhook/workloads.ts) over
// TLS, served by the admission server with a certificate from a fresh CA, and
// the kube-controller-manager's deployment and ReplicaSet controllers create
// the workload's objects through them.
//
// No operator runs: tasks are created as admin with a requester record this
// test signs with the webhook's own key, and their phase is set through the
// status subresource. Only the pods and workloads webhooks are registered,
// scoped by namespaceSelector to this test's namespace, and every
// registration is removed in afterAll, even after a failure, so no
// fail-closed webhook outlives the test. Users act through RBAC Roles without
// rights on Secrets, exec or service-account tokens (the trust boundary the
// docs state).
import { spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { INJECTED_ENV_NAMES, SVID_MOUNT_PATH, SVID_VOLUME_NAME } from "../../core/admission/injection.ts";
import { signRequesterRecord } from "../../core/admission/record.ts";
import { STAMP_ANNOTATION, verifyStamp } from "../../core/admission/stamp.ts";
import type { AgentTask, AgentTaskSpecInput } from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { createEs256Signer, createKeyRing } from "../../core/provenance/sign.ts";
import { generateCa } from "../../core/x509/ca.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { type AdmissionServer, startAdmissionServer } from "../../shells/https/admission-server.ts";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { KubeApiError, KubeRest } from "../../shells/kube/rest.ts";
import { createLogger } from "../../shells/log.ts";
import { type AdmissionRequest, allow } from "../../webhook/admission.ts";
import { createAdmissionLookups } from "../../webhook/lookups.ts";
import { createPodAdmission } from "../../webhook/pods.ts";
import {
  applyWebhookConfiguration,
  buildWebhookConfiguration,
  type MutatingWebhookConfiguration,
  PODS_PATH,
  PODS_WEBHOOK,
  removeRegistration,
  WORKLOADS_PATH,
  WORKLOADS_WEBHOOK,
} from "../../webhook/registration.ts";
import { WebhookServingCert } from "../../webhook/serving-cert.ts";
import {
  POD_CONTROLLER_USERNAMES,
  TASK_LABEL,
  WORKLOAD_CONTROLLER_USERNAMES,
} from "../../webhook/task-use.ts";
import { createWorkloadAdmission } from "../../webhook/workloads.ts";
import { eventually } from "../support/eventually.ts";
import { installCustody } from "../support/operator-process.ts";
import { retryWhileUnavailable } from "../support/unavailable.ts";

const env = inject("localEnv");
const suffix = randomUUID().slice(0, 8);
const ns = `pod-injection-${suffix}`;
const NS_LABEL = "custody-test/pod-injection";
const SIDECAR_LABEL = "custody-test/add-sidecar";
const CONFIG = `custody-test-pod-injection-${suffix}`;
// Sorts after CONFIG: the API server calls configurations in name order, so
// this one mutates the pod after Custody did, and Custody is re-invoked.
const SIDECAR_CONFIG = `custody-test-pod-injection-zz-${suffix}`;
const SA = "agent-sa";
const log = createLogger({ name: "pod-injection-test", level: "error" });

const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
const signer = createEs256Signer(pair.privateKey);
const keys = createKeyRing([pair.publicKey]);

let admin: KubeRest;
const as: Record<"alice" | "bob" | "mallory", KubeRest> = {} as never;
let servingCert: WebhookServingCert | undefined;
let server: AdmissionServer | undefined;
/** Every pods review the API server sent, by pod name or generateName (re-invocations included). */
const podReviews = new Map<string, AdmissionRequest[]>();
/**
 * The tasks as this test stored them, served to the webhooks as the
 * operator's informer cache would serve them (createAdmissionLookups'
 * cache lookup; a miss falls back to a GET). Why not a GET every time: other
 * test files run operators against the same cluster, and an operator
 * reconciles tasks in every namespace; it cannot verify this test's records
 * (signed with this test's key) and marks the tasks Denied or Revoked under
 * the test's feet.
 */
const taskView = new Map<string, AgentTask>();
let counter = 0;

interface Pod {
  metadata: {
    name: string;
    uid?: string;
    labels?: Record<string, string>;
    ownerReferences?: Array<{ kind: string; name: string }>;
  };
  spec: {
    serviceAccountName?: string;
    volumes?: Array<{ name: string; projected?: { sources: Array<Record<string, { name: string }>> } }>;
    containers: Array<{
      name: string;
      volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
      env?: Array<{ name: string; value?: string }>;
    }>;
  };
}

function podBody(
  task: string,
  opts: { sa?: string; labels?: Record<string, string>; extra?: object } = {},
): Pod {
  return {
    metadata: { name: `p-${++counter}`, labels: { [TASK_LABEL]: task, ...opts.labels }, ...opts.extra },
    spec: {
      serviceAccountName: opts.sa ?? SA,
      containers: [{ name: "agent", image: "example.invalid/agent:1" }],
    },
  } as unknown as Pod;
}

const createPod = (user: KubeRest, body: Pod) => user.post<Pod>(`/api/v1/namespaces/${ns}/pods`, body);

async function refusal(p: Promise<unknown>): Promise<KubeApiError> {
  const outcome = await p.then(
    (v) => v,
    (e: unknown) => e,
  );
  if (!(outcome instanceof KubeApiError))
    throw new Error(`expected a refusal, got ${JSON.stringify(outcome)}`);
  return outcome;
}

function taskSpec(): AgentTaskSpecInput {
  return { agent: { name: "coder" }, scope: ["read:repo/*"], serviceAccountName: SA, ttl: "1h" };
}

/**
 * An AgentTask as the AgentTask webhook would have admitted it: the record
 * (signed with the same key the pods webhook verifies with) names
 * `requester`, issued just now so it verifies against creationTimestamp.
 */
async function createTask(name: string, requester: string, phase?: string): Promise<void> {
  const spec = taskSpec();
  const record = signRequesterRecord(signer, {
    v: 1,
    namespace: ns,
    name,
    issuedAt: new Date().toISOString(),
    specDigest: identitySpecDigest(spec as Record<string, unknown>),
    requester: { username: requester },
    delegator: { kind: "User", name: requester },
    proof: { method: "requester" },
  });
  await retryWhileUnavailable(
    () =>
      admin.post(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`, {
        apiVersion: "custody.dev/v1alpha1",
        kind: "AgentTask",
        metadata: { name, annotations: { "custody.dev/requester-record": record } },
        spec,
      }),
    { delayMs: 200 },
  );
  const stored = phase
    ? await admin.patch<AgentTask>(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/${name}/status`, {
        status: { phase },
      })
    : await admin.get<AgentTask>(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/${name}`);
  taskView.set(name, stored);
}

function role(name: string, rules: object[]) {
  return admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
    metadata: { name },
    rules,
  });
}

function bind(roleName: string, user: string) {
  return admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    metadata: { name: `${roleName}-${user}` },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: roleName },
    subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: user }],
  });
}

/**
 * Runs kubectl as `user` with the object on stdin; resolves with its exit
 * status and stderr (where warnings go). Asynchronous: the webhook answering
 * kubectl's request runs in this very process.
 */
function kubectlCreate(user: string, body: object): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      join(env.binDir, "kubectl"),
      ["--kubeconfig", env.kubeconfig, "--context", user, "-n", ns, "create", "-f", "-", "-o", "name"],
      { stdio: ["pipe", "ignore", "pipe"], timeout: 30_000 },
    );
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
    });
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stderr }));
    child.stdin.end(JSON.stringify({ apiVersion: "v1", kind: "Pod", ...body }));
  });
}

function expectInjected(pod: Pod, containers: string[]): void {
  const volumes = (pod.spec.volumes ?? []).filter((v) => v.name === SVID_VOLUME_NAME);
  expect(volumes).toHaveLength(1);
  const sources = volumes[0]!.projected!.sources;
  expect(sources[0]!.secret!.name).toBe(`custody-svid-${pod.metadata.labels![TASK_LABEL]}`);
  for (const name of containers) {
    const c = pod.spec.containers.find((x) => x.name === name)!;
    expect((c.volumeMounts ?? []).filter((m) => m.name === SVID_VOLUME_NAME)).toEqual([
      { name: SVID_VOLUME_NAME, mountPath: SVID_MOUNT_PATH, readOnly: true },
    ]);
    const ours = (c.env ?? []).filter((e) => (INJECTED_ENV_NAMES as readonly string[]).includes(e.name));
    expect(ours.map((e) => e.name).sort()).toEqual([...INJECTED_ENV_NAMES].sort());
    expect(ours.find((e) => e.name === "CUSTODY_SPIFFE_ID")?.value).toBe(
      `spiffe://custody.local/ns/${ns}/agent/coder/task/${pod.metadata.labels![TASK_LABEL]}`,
    );
  }
}

beforeAll(async () => {
  admin = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "admin" }));
  for (const u of ["alice", "bob", "mallory"] as const) {
    as[u] = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: u }));
  }
  installCustody(env);
  await admin.post("/api/v1/namespaces", { metadata: { name: ns, labels: { [NS_LABEL]: suffix } } });
  for (const sa of [SA, "other-sa"]) {
    await admin.post(`/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: sa } });
  }

  // Nobody here may read Secrets, exec into pods or mint tokens: with those,
  // the credential is theirs to take anyway (docs/admission.md).
  const podsAndDeployments = [
    { apiGroups: [""], resources: ["pods"], verbs: ["create", "get", "list", "delete"] },
    {
      apiGroups: ["apps"],
      resources: ["deployments"],
      verbs: ["create", "get", "list", "update", "patch", "delete"],
    },
  ];
  await role("workload-author", podsAndDeployments);
  await role("task-user", [{ apiGroups: ["custody.dev"], resources: ["agenttasks"], verbs: ["get", "use"] }]);
  await bind("workload-author", "alice");
  await bind("task-user", "alice");
  await bind("workload-author", "mallory");
  await bind("workload-author", "bob");

  // "carol" asked for the shared tasks: alice passes by her `use` grant;
  // bob passes for t-bob only as its recorded requester.
  await createTask("t-ready", "carol", "Issued");
  await createTask("t-pending", "carol", "Pending");
  await createTask("t-revoked", "carol", "Revoked");
  await createTask("t-bob", "bob", "Issued");

  const ca = generateCa({
    trustDomain: "custody.local",
    now: new Date(Date.now() - 60_000),
    validityMs: 24 * 3_600_000,
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
  servingCert = new WebhookServingCert({
    ca: () => ca,
    service: { name: "custody-webhook", namespace: "custody-system" },
    ipAddresses: ["127.0.0.1"],
    onRotate: (c) => server?.setCertificate(c.certPem, c.keyPem),
    log,
  });
  const base = {
    keys,
    signer,
    trustDomain: "custody.local",
    now: Date.now,
    ...createAdmissionLookups(admin, (namespace, name) =>
      namespace === ns ? taskView.get(name) : undefined,
    ),
  };
  const pods = createPodAdmission({ ...base, controllerUsernames: POD_CONTROLLER_USERNAMES });
  server = await startAdmissionServer({
    host: "127.0.0.1",
    port: 0,
    routes: {
      [PODS_PATH]: async (req) => {
        const meta = (req.object as { metadata: { name?: string; generateName?: string } }).metadata;
        const name = meta.name || meta.generateName || "";
        podReviews.set(name, [...(podReviews.get(name) ?? []), req]);
        return pods(req);
      },
      [WORKLOADS_PATH]: createWorkloadAdmission({
        ...base,
        controllerUsernames: WORKLOAD_CONTROLLER_USERNAMES,
      }),
      // Stands in for another mutator (a service mesh, say) that adds a container after Custody.
      "/test/add-sidecar": async (req) => {
        const pod = req.object as Pod;
        if (pod.spec.containers.some((c) => c.name === "sidecar")) return allow();
        return allow([
          {
            op: "add",
            path: "/spec/containers/-",
            value: { name: "sidecar", image: "example.invalid/mesh:1" },
          },
        ]);
      },
    },
    tls: servingCert.current,
    log,
  });

  // Custody's registration, only its pods and workloads webhooks (the
  // AgentTask webhook is another test's), scoped to this namespace.
  const url = `https://127.0.0.1:${server.port}`;
  const config = buildWebhookConfiguration({
    name: CONFIG,
    clientConfig: { url },
    caBundlePem: ca.certPem,
    namespaceSelector: { matchLabels: { [NS_LABEL]: suffix } },
  });
  config.webhooks = config.webhooks.filter((w) => w.name === PODS_WEBHOOK || w.name === WORKLOADS_WEBHOOK);
  expect(config.webhooks).toHaveLength(2);
  await applyWebhookConfiguration(admin, config);
  const sidecar: MutatingWebhookConfiguration = {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: SIDECAR_CONFIG },
    webhooks: [
      {
        name: "sidecar.test.custody.dev",
        clientConfig: {
          url: `${url}/test/add-sidecar`,
          caBundle: Buffer.from(ca.certPem).toString("base64"),
        },
        rules: [
          {
            operations: ["CREATE"],
            apiGroups: [""],
            apiVersions: ["v1"],
            resources: ["pods"],
            scope: "Namespaced",
          },
        ],
        failurePolicy: "Fail",
        matchPolicy: "Equivalent",
        namespaceSelector: { matchLabels: { [NS_LABEL]: suffix } },
        objectSelector: { matchLabels: { [SIDECAR_LABEL]: "yes" } },
        sideEffects: "None",
        timeoutSeconds: 5,
        admissionReviewVersions: ["v1"],
        reinvocationPolicy: "Never",
      },
    ],
  };
  await applyWebhookConfiguration(admin, sidecar);

  // A configuration reaches the API server's admission chain a moment after
  // it is written: wait until a pod comes back injected (and with the sidecar).
  await eventually(
    async () => {
      const probe = await createPod(admin, podBody("t-ready", { labels: { [SIDECAR_LABEL]: "yes" } }));
      await admin.delete(`/api/v1/namespaces/${ns}/pods/${probe.metadata.name}`);
      const injected = (probe.spec.volumes ?? []).some((v) => v.name === SVID_VOLUME_NAME);
      const sidecarAdded = probe.spec.containers.some((c) => c.name === "sidecar");
      if (!injected || !sidecarAdded) throw new Error("webhooks not in effect yet");
    },
    { timeoutMs: 30_000, intervalMs: 250 },
  );
});

afterAll(async () => {
  // Registrations first: a fail-closed webhook must never outlive its server.
  for (const name of [CONFIG, SIDECAR_CONFIG]) await removeRegistration(admin, name).catch(() => undefined);
  servingCert?.stop();
  await server?.close();
  // An operator of another test may have put its finalizer on these tasks; with
  // no operator left to remove it, the namespace would never finish deleting.
  for (const name of taskView.keys()) {
    const path = `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/${name}`;
    await admin?.delete(path).catch(() => undefined);
    await admin?.patch(path, { metadata: { finalizers: null } }).catch(() => undefined);
  }
  await admin?.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  for (const r of [admin, ...Object.values(as)]) r?.close();
});

describe("pods that opt in", () => {
  it("get the volume, the read-only mount and the environment", async () => {
    const pod = await createPod(as.alice, podBody("t-ready"));
    expectInjected(pod, ["agent"]);
    // What the API server stored, not only what it answered.
    expectInjected(await admin.get<Pod>(`/api/v1/namespaces/${ns}/pods/${pod.metadata.name}`), ["agent"]);
  });

  it("are injected once when another mutator makes the API server re-invoke Custody", async () => {
    const created = await createPod(as.alice, podBody("t-ready", { labels: { [SIDECAR_LABEL]: "yes" } }));
    const stored = await admin.get<Pod>(`/api/v1/namespaces/${ns}/pods/${created.metadata.name}`);
    // Re-invoked: Custody saw the pod a second time, now with the sidecar and its own volume.
    const reviews = podReviews.get(created.metadata.name) ?? [];
    expect(reviews).toHaveLength(2);
    expect((reviews[1]!.object as Pod).spec.volumes?.filter((v) => v.name === SVID_VOLUME_NAME)).toHaveLength(
      1,
    );
    // One volume; each container (the sidecar added after the first call included) mounts it once.
    expectInjected(stored, ["agent", "sidecar"]);
  });

  it("are admitted for the task's recorded requester without a use grant", async () => {
    expectInjected(await createPod(as.bob, podBody("t-bob")), ["agent"]);
    const e = await refusal(createPod(as.bob, podBody("t-ready")));
    expect(e.code).toBe(403);
  });

  it("are admitted with a warning while the task is Pending", async () => {
    const r = await kubectlCreate("alice", podBody("t-pending"));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/Warning: AgentTask pod-injection-[0-9a-f]+\/t-pending is Pending: admitted/);
  });
});

describe("pods refused, each with its message", () => {
  it("under another service account", async () => {
    const e = await refusal(createPod(as.alice, podBody("t-ready", { sa: "other-sa" })));
    expect(e.code).toBe(422);
    expect(e.message).toContain('admission webhook "pods.custody.dev" denied the request');
    expect(e.message).toContain(
      `spec.serviceAccountName: is "other-sa", but AgentTask ${ns}/t-ready binds its identity`,
    );
    expect(e.message).toContain("rule service-account");
  });

  it("whose creator may not use the task", async () => {
    const e = await refusal(createPod(as.mallory, podBody("t-ready")));
    expect(e.code).toBe(403);
    expect(e.message).toContain(`"mallory" may not attach the identity of AgentTask ${ns}/t-ready to a pod`);
    expect(e.message).toContain("rule use-task");
  });

  it("naming a missing task", async () => {
    const e = await refusal(createPod(as.alice, podBody("t-missing")));
    expect(e.code).toBe(422);
    expect(e.message).toContain(`AgentTask ${ns}/t-missing does not exist`);
  });

  it("naming a Revoked task", async () => {
    const e = await refusal(createPod(as.alice, podBody("t-revoked")));
    expect(e.code).toBe(403);
    expect(e.message).toContain(`AgentTask ${ns}/t-revoked is Revoked`);
    expect(e.message).toContain("rule task-state");
  });
});

describe("Deployments", () => {
  interface Deployment {
    metadata: { name: string; uid: string; annotations?: Record<string, string> };
  }
  const deploymentBody = (name: string, task: string) => ({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name, labels: { [TASK_LABEL]: task } },
    spec: {
      replicas: 2,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name, [TASK_LABEL]: task } },
        spec: { serviceAccountName: SA, containers: [{ name: "agent", image: "example.invalid/agent:1" }] },
      },
    },
  });
  const deployments = `/apis/apps/v1/namespaces/${ns}/deployments`;

  it("created by a user who may use the task get their pods injected through the controllers", async () => {
    const d = await as.alice.post<Deployment>(deployments, deploymentBody("agent-web", "t-ready"));
    expect(
      verifyStamp(d.metadata.annotations?.[STAMP_ANNOTATION], keys, {
        kind: "Deployment",
        namespace: ns,
        name: "agent-web",
        task: "t-ready",
      }).requester,
    ).toBe("alice");

    // kube-controller-manager: the deployment controller creates a ReplicaSet
    // (stamped through the workloads webhook), the ReplicaSet controller its
    // pods (admitted by the pods webhook on that stamp).
    const pods = await eventually(
      async () => {
        const list = await admin.get<{ items: Pod[] }>(
          `/api/v1/namespaces/${ns}/pods?labelSelector=app%3Dagent-web`,
        );
        if (list.items.length < 2) throw new Error(`${list.items.length} pods so far`);
        return list.items;
      },
      { timeoutMs: 45_000, intervalMs: 250 },
    );
    for (const pod of pods) {
      expect(pod.metadata.ownerReferences?.[0]?.kind).toBe("ReplicaSet");
      expectInjected(pod, ["agent"]);
    }
    const rsName = pods[0]!.metadata.ownerReferences![0]!.name;
    // The ReplicaSet controller asked (its pods have generateName `<replicaset>-`).
    const reviews = podReviews.get(`${rsName}-`) ?? [];
    expect(reviews.length).toBeGreaterThanOrEqual(2);
    for (const r of reviews) {
      expect(r.userInfo.username).toBe("system:serviceaccount:kube-system:replicaset-controller");
    }
    const rs = await admin.get<Deployment>(`/apis/apps/v1/namespaces/${ns}/replicasets/${rsName}`);
    // The person stays on the stamp down the chain.
    expect(
      verifyStamp(rs.metadata.annotations?.[STAMP_ANNOTATION], keys, {
        kind: "ReplicaSet",
        namespace: ns,
        name: rsName,
        task: "t-ready",
      }).requester,
    ).toBe("alice");

    // A bare pod claiming that stamped ReplicaSet as its controller is still mallory's pod.
    const forged = podBody("t-ready", {
      extra: {
        ownerReferences: [
          { apiVersion: "apps/v1", kind: "ReplicaSet", name: rsName, uid: rs.metadata.uid, controller: true },
        ],
      },
    });
    const e = await refusal(createPod(as.mallory, forged));
    expect(e.code).toBe(403);
    expect(e.message).toContain('"mallory" may not attach');

    // Someone who may edit Deployments but may not use the task cannot change the image and keep the identity.
    const edit = await refusal(
      as.mallory.patch(`${deployments}/agent-web`, {
        spec: { template: { spec: { containers: [{ name: "agent", image: "example.invalid/evil:1" }] } } },
      }),
    );
    expect(edit.code).toBe(403);
    expect(edit.message).toContain('admission webhook "workloads.custody.dev" denied the request');
    expect(edit.message).toContain('"mallory" may not attach the identity of AgentTask');
  });

  it("created by a user who may not use the task are refused", async () => {
    const e = await refusal(as.mallory.post(deployments, deploymentBody("mallory-web", "t-ready")));
    expect(e.code).toBe(403);
    expect(e.message).toContain('admission webhook "workloads.custody.dev" denied the request');
    expect(e.message).toContain(
      `"mallory" may not attach the identity of AgentTask ${ns}/t-ready to a Deployment`,
    );
  });
});
