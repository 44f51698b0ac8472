// Custody's ValidatingAdmissionPolicies (webhook/manifests/) against the real
// kube-apiserver, with no webhook registered: a pod may reference a task's
// credential Secret only under that task's opt-in label; a workload whose pod
// template opts in carries the label itself; an AgentTask's requester record
// never changes after creation and a delegation assertion is never stored.
// Each refusal is checked for the admin and for mallory, whose Role allows
// no more than creating and changing these objects in the test namespace.
import { randomUUID } from "node:crypto";
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  RbacAuthorizationV1Api,
  type V1Container,
  type V1CronJob,
  type V1Deployment,
  type V1EphemeralContainer,
  type V1Pod,
  type V1Volume,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { kubeConfigFor } from "../env/local-env.ts";
import { eventually } from "../support/eventually.ts";
import { installCustody } from "../support/operator-process.ts";
import { retryWhileUnavailable } from "../support/unavailable.ts";

const env = inject("localEnv");
const ns = `admission-${randomUUID().slice(0, 8)}`;
const group = "custody.dev";
const version = "v1alpha1";
const plural = "agenttasks";
const TASK_LABEL = "custody.dev/agent-task";
const RECORD = "custody.dev/requester-record";
const ASSERTION = "custody.dev/delegation-assertion";
const image = "example.invalid/agent:1";

type User = "admin" | "mallory";
const USERS: User[] = ["admin", "mallory"];

interface Clients {
  core: CoreV1Api;
  apps: AppsV1Api;
  batch: BatchV1Api;
  custom: CustomObjectsApi;
}
const clients = {} as Record<User, Clients>;
let admin: KubeConfig;

interface Refusal {
  code?: number;
  message: string;
}

/** Resolves to the API server's refusal (code and Status message); fails when the call succeeds. */
async function refusal(call: Promise<unknown>): Promise<Refusal> {
  const outcome = await call.then(
    () => undefined,
    (e: { code?: number; body?: unknown }) => e,
  );
  if (!outcome) throw new Error("expected the API server to refuse the request, but it was admitted");
  let message = String(outcome.body);
  try {
    message = (JSON.parse(message) as { message?: string }).message ?? message;
  } catch {
    // not a Status: keep the raw body
  }
  return { code: outcome.code, message };
}

const uniq = (prefix: string) => `${prefix}-${randomUUID().slice(0, 6)}`;

const container = (extra: Partial<V1Container> = {}): V1Container => ({ name: "main", image, ...extra });

function pod(
  name: string,
  opts: {
    label?: string;
    volumes?: V1Volume[];
    containers?: V1Container[];
    initContainers?: V1Container[];
    imagePullSecrets?: Array<{ name: string }>;
  } = {},
): V1Pod {
  return {
    metadata: { name, labels: opts.label === undefined ? {} : { [TASK_LABEL]: opts.label } },
    spec: {
      automountServiceAccountToken: false,
      containers: opts.containers ?? [container()],
      initContainers: opts.initContainers,
      volumes: opts.volumes,
      imagePullSecrets: opts.imagePullSecrets,
    },
  };
}

const secretVolume = (secretName: string): V1Volume => ({ name: "svid", secret: { secretName } });
const envFromSecret = (name: string) => [
  { name: "TLS_KEY", valueFrom: { secretKeyRef: { name, key: "tls.key" } } },
];

const createPod = (user: User, body: V1Pod) =>
  clients[user].core.createNamespacedPod({ namespace: ns, body });

/** The message every refusal of a Secret reference carries, whatever the field. */
function expectCredentialRefusal(r: Refusal, path: string, secret: string, labelled?: string) {
  const task = secret.slice("custody-svid-".length);
  expect(r.code).toBe(403);
  expect(r.message).toContain("custody-pod-credential-references");
  expect(r.message).toContain(`${path} references Secret "${secret}"`);
  expect(r.message).toContain(`only when labelled custody.dev/agent-task: ${task}`);
  expect(r.message).toContain(
    labelled === undefined
      ? "(this pod has no such label)"
      : `(this pod is labelled custody.dev/agent-task: ${labelled})`,
  );
  expect(r.message).toContain("label the pod custody.dev/agent-task: <task>");
}

function deployment(
  name: string,
  own: Record<string, string>,
  template: Record<string, string>,
): V1Deployment {
  return {
    metadata: { name, labels: own },
    spec: {
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name, ...template } },
        spec: { automountServiceAccountToken: false, containers: [container()] },
      },
    },
  };
}

function cronJob(
  name: string,
  own: Record<string, string>,
  jobTemplate: Record<string, string>,
  template: Record<string, string>,
): V1CronJob {
  return {
    metadata: { name, labels: own },
    spec: {
      schedule: "0 0 1 1 *",
      suspend: true,
      jobTemplate: {
        metadata: { labels: jobTemplate },
        spec: {
          template: {
            metadata: { labels: template },
            spec: { restartPolicy: "Never", automountServiceAccountToken: false, containers: [container()] },
          },
        },
      },
    },
  };
}

function agentTask(name: string, annotations: Record<string, string>) {
  return {
    apiVersion: `${group}/${version}`,
    kind: "AgentTask",
    metadata: { name, namespace: ns, annotations },
    spec: {
      delegator: { kind: "User", name: "alice" },
      agent: { name: "code-reviewer" },
      scope: ["read:repos/acme/*"],
      audiences: ["https://api.github.example"],
      ttl: "1h",
      serviceAccountName: "code-reviewer",
    },
  };
}

interface Task {
  metadata: { name: string; annotations?: Record<string, string>; labels?: Record<string, string> };
}

const createTask = (user: User, body: unknown) =>
  retryWhileUnavailable(() =>
    clients[user].custom.createNamespacedCustomObject({ group, version, namespace: ns, plural, body }),
  );
const getTask = (user: User, name: string) =>
  clients[user].custom.getNamespacedCustomObject({
    group,
    version,
    namespace: ns,
    plural,
    name,
  }) as Promise<Task>;
const replaceTask = (user: User, body: Task) =>
  clients[user].custom.replaceNamespacedCustomObject({
    group,
    version,
    namespace: ns,
    plural,
    name: body.metadata.name,
    body,
  });

beforeAll(async () => {
  installCustody(env);
  admin = kubeConfigFor(env, "admin");
  for (const user of USERS) {
    const kc = user === "admin" ? admin : kubeConfigFor(env, user);
    clients[user] = {
      core: kc.makeApiClient(CoreV1Api),
      apps: kc.makeApiClient(AppsV1Api),
      batch: kc.makeApiClient(BatchV1Api),
      custom: kc.makeApiClient(CustomObjectsApi),
    };
  }
  const core = clients.admin.core;
  await core.createNamespace({ body: { metadata: { name: ns } } });
  // mallory: the rights the tests exercise, in this namespace only (no Secrets, exec or tokens).
  const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createNamespacedRole({
    namespace: ns,
    body: {
      metadata: { name: "workloads" },
      rules: [
        { apiGroups: [""], resources: ["pods"], verbs: ["create", "get", "update", "patch"] },
        { apiGroups: [""], resources: ["pods/ephemeralcontainers"], verbs: ["update", "patch"] },
        { apiGroups: ["apps"], resources: ["deployments"], verbs: ["create", "get", "update", "patch"] },
        {
          apiGroups: ["batch"],
          resources: ["cronjobs", "jobs"],
          verbs: ["create", "get", "update", "patch"],
        },
        { apiGroups: [group], resources: [plural], verbs: ["create", "get", "update", "patch"] },
      ],
    },
  });
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: {
      metadata: { name: "mallory-workloads" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "workloads" },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "mallory" }],
    },
  });
  await eventually(() => core.readNamespacedServiceAccount({ name: "default", namespace: ns }), {
    timeoutMs: 30_000,
  });
  // A policy takes effect once the API server's policy informers have seen it
  // (and, for AgentTasks, once the CRD is served): probe with dry runs.
  await eventually(
    async () => {
      const probe = (what: string, call: Promise<unknown>) =>
        refusal(call).then((r) => expect(r.code, what).toBe(403));
      await probe(
        "pod",
        core.createNamespacedPod({
          namespace: ns,
          dryRun: "All",
          body: pod("probe", { volumes: [secretVolume("custody-svid-probe")] }),
        }),
      );
      await probe(
        "deployment",
        clients.admin.apps.createNamespacedDeployment({
          namespace: ns,
          dryRun: "All",
          body: deployment("probe", {}, { [TASK_LABEL]: "probe" }),
        }),
      );
      await probe(
        "agenttask",
        clients.admin.custom.createNamespacedCustomObject({
          group,
          version,
          namespace: ns,
          plural,
          dryRun: "All",
          body: agentTask("probe", { [ASSERTION]: "x" }),
        }),
      );
    },
    { timeoutMs: 30_000, intervalMs: 200 },
  );
}, 120_000);

afterAll(async () => {
  const { core, custom } = clients.admin ?? {};
  if (!core) return;
  // No operator runs here to remove the finalizer Custody's admission policy adds.
  const tasks = (await custom
    .listNamespacedCustomObject({ group, version, namespace: ns, plural })
    .catch(() => ({ items: [] }))) as { items: Array<Task & { metadata: { finalizers?: string[] } }> };
  for (const t of tasks.items) {
    t.metadata.finalizers = [];
    await replaceTask("admin", t).catch(() => undefined);
  }
  await core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe.each(USERS)("pods referencing a task's credential Secret, as %s", (user) => {
  it("refuses a pod mounting custody-svid-<task> without the opt-in label, naming the field", async () => {
    const r = await refusal(
      createPod(user, pod(uniq("unlabelled"), { volumes: [secretVolume("custody-svid-x")] })),
    );
    expectCredentialRefusal(r, "spec.volumes[0].secret.secretName", "custody-svid-x");
  });

  it("admits the pod labelled with that task", async () => {
    const created = await createPod(
      user,
      pod(uniq("labelled"), { label: "x", volumes: [secretVolume("custody-svid-x")] }),
    );
    expect(created.metadata?.uid).toBeTruthy();
  });

  it("refuses the pod labelled with another task", async () => {
    const r = await refusal(
      createPod(user, pod(uniq("other"), { label: "y", volumes: [secretVolume("custody-svid-x")] })),
    );
    expectCredentialRefusal(r, "spec.volumes[0].secret.secretName", "custody-svid-x", "y");
  });

  it("refuses a projected volume source", async () => {
    const volumes: V1Volume[] = [
      { name: "scratch", emptyDir: {} },
      {
        name: "bundle",
        projected: {
          sources: [{ configMap: { name: "custody-trust-bundle" } }, { secret: { name: "custody-svid-x" } }],
        },
      },
    ];
    const r = await refusal(createPod(user, pod(uniq("projected"), { volumes })));
    expectCredentialRefusal(r, "spec.volumes[1].projected.sources[1].secret.name", "custody-svid-x");
  });

  it("refuses an env secretKeyRef", async () => {
    const containers = [container({ env: [{ name: "A", value: "b" }, ...envFromSecret("custody-svid-x")] })];
    const r = await refusal(createPod(user, pod(uniq("env"), { label: "y", containers })));
    expectCredentialRefusal(
      r,
      "spec.containers[0].env[1].valueFrom.secretKeyRef.name",
      "custody-svid-x",
      "y",
    );
  });

  it("refuses an envFrom secretRef", async () => {
    const containers = [
      container(),
      container({ name: "sidecar", envFrom: [{ secretRef: { name: "custody-svid-x" } }] }),
    ];
    const r = await refusal(createPod(user, pod(uniq("envfrom"), { containers })));
    expectCredentialRefusal(r, "spec.containers[1].envFrom[0].secretRef.name", "custody-svid-x");
  });

  it("refuses a reference from an init container", async () => {
    const initContainers = [container({ name: "init", env: envFromSecret("custody-svid-x") })];
    const r = await refusal(createPod(user, pod(uniq("init"), { initContainers })));
    expectCredentialRefusal(r, "spec.initContainers[0].env[0].valueFrom.secretKeyRef.name", "custody-svid-x");
  });

  it("refuses the Secret handed to a CSI driver or used as an image pull secret", async () => {
    const csi = await refusal(
      createPod(
        user,
        pod(uniq("csi"), {
          volumes: [
            { name: "v", csi: { driver: "x.example", nodePublishSecretRef: { name: "custody-svid-x" } } },
          ],
        }),
      ),
    );
    expectCredentialRefusal(csi, "spec.volumes[0].csi.nodePublishSecretRef.name", "custody-svid-x");
    const pull = await refusal(
      createPod(user, pod(uniq("pull"), { imagePullSecrets: [{ name: "custody-svid-x" }] })),
    );
    expectCredentialRefusal(pull, "spec.imagePullSecrets[0].name", "custody-svid-x");
  });

  it("refuses an ephemeral container that references the Secret, added through the subresource", async () => {
    const name = uniq("debug");
    await createPod(user, pod(name));
    const add = async (ephemeral: V1EphemeralContainer) => {
      const current = await clients[user].core.readNamespacedPod({ name, namespace: ns });
      current.spec!.ephemeralContainers = [...(current.spec!.ephemeralContainers ?? []), ephemeral];
      return clients[user].core.replaceNamespacedPodEphemeralcontainers({
        name,
        namespace: ns,
        body: current,
      });
    };
    await add({ name: "harmless", image });
    const r = await refusal(
      add({ name: "thief", image, envFrom: [{ secretRef: { name: "custody-svid-x" } }] }),
    );
    expectCredentialRefusal(r, "spec.ephemeralContainers[1].envFrom[0].secretRef.name", "custody-svid-x");
  });

  it("refuses relabelling a pod away from the task whose Secret it mounts", async () => {
    const name = uniq("relabel");
    await createPod(user, pod(name, { label: "x", volumes: [secretVolume("custody-svid-x")] }));
    const current = await clients[user].core.readNamespacedPod({ name, namespace: ns });
    current.metadata!.labels = { [TASK_LABEL]: "y" };
    const r = await refusal(clients[user].core.replaceNamespacedPod({ name, namespace: ns, body: current }));
    expectCredentialRefusal(r, "spec.volumes[0].secret.secretName", "custody-svid-x", "y");
    // Changes that keep the label leave the pod admissible.
    current.metadata!.labels = { [TASK_LABEL]: "x", team: "platform" };
    await clients[user].core.replaceNamespacedPod({ name, namespace: ns, body: current });
  });

  it("admits pods referencing ordinary Secrets, labelled or not", async () => {
    const volumes = [secretVolume("custody-svidx"), { name: "b", secret: { secretName: "app-credentials" } }];
    const containers = [container({ env: envFromSecret("svid-custody-x") })];
    await createPod(user, pod(uniq("ordinary"), { volumes, containers }));
    await createPod(user, pod(uniq("ordinary-labelled"), { label: "y", volumes, containers }));
  });
});

describe.each(USERS)("workloads whose pod template opts in, as %s", (user) => {
  it("refuses a Deployment whose template opts in but whose own labels do not", async () => {
    const r = await refusal(
      clients[user].apps.createNamespacedDeployment({
        namespace: ns,
        body: deployment(uniq("unlabelled"), {}, { [TASK_LABEL]: "x" }),
      }),
    );
    expect(r.code).toBe(403);
    expect(r.message).toContain("custody-workload-opt-in-label");
    expect(r.message).toContain(
      'spec.template.metadata.labels["custody.dev/agent-task"] is "x" but metadata.labels["custody.dev/agent-task"] is absent',
    );
    expect(r.message).toContain("metadata.labels: custody.dev/agent-task: x");
  });

  it("refuses a Deployment labelled with another task than its template", async () => {
    const r = await refusal(
      clients[user].apps.createNamespacedDeployment({
        namespace: ns,
        body: deployment(uniq("mismatch"), { [TASK_LABEL]: "y" }, { [TASK_LABEL]: "x" }),
      }),
    );
    expect(r.code).toBe(403);
    expect(r.message).toContain('metadata.labels["custody.dev/agent-task"] is "y"');
  });

  it("admits a Deployment carrying the template's label, and refuses removing it later", async () => {
    const name = uniq("labelled");
    await clients[user].apps.createNamespacedDeployment({
      namespace: ns,
      body: deployment(name, { [TASK_LABEL]: "x" }, { [TASK_LABEL]: "x" }),
    });
    const current = await clients[user].apps.readNamespacedDeployment({ name, namespace: ns });
    current.metadata!.labels = {};
    // Unconditional: the deployment controller writes status meanwhile.
    current.metadata!.resourceVersion = undefined;
    const r = await refusal(
      clients[user].apps.replaceNamespacedDeployment({ name, namespace: ns, body: current }),
    );
    expect(r.code).toBe(403);
    expect(r.message).toContain("custody-workload-opt-in-label");
  });

  it("admits workloads that do not opt in", async () => {
    await clients[user].apps.createNamespacedDeployment({
      namespace: ns,
      body: deployment(uniq("plain"), {}, {}),
    });
  });

  it("refuses a CronJob whose job's pod template opts in unless it and the Jobs it creates carry the label", async () => {
    const opt = { [TASK_LABEL]: "x" };
    const create = (body: V1CronJob) => clients[user].batch.createNamespacedCronJob({ namespace: ns, body });
    const bare = await refusal(create(cronJob(uniq("bare"), {}, {}, opt)));
    expect(bare.code).toBe(403);
    expect(bare.message).toContain(
      'spec.jobTemplate.spec.template.metadata.labels["custody.dev/agent-task"] is "x" but metadata.labels["custody.dev/agent-task"] is absent',
    );
    // The controller copies jobTemplate.metadata.labels onto each Job: these would lack the label.
    const jobLabels = await refusal(create(cronJob(uniq("team"), opt, { team: "platform" }, opt)));
    expect(jobLabels.code).toBe(403);
    expect(jobLabels.message).toContain(
      'spec.jobTemplate.metadata.labels["custody.dev/agent-task"] is absent',
    );
    await create(cronJob(uniq("labelled"), opt, { ...opt, team: "platform" }, opt));
    // A Job created without labels inherits its pod template's.
    await create(cronJob(uniq("inherits"), opt, {}, opt));
  });

  it("refuses a Job whose template opts in without the label; one without any label inherits it", async () => {
    const job = (name: string, labels?: Record<string, string>) =>
      clients[user].batch.createNamespacedJob({
        namespace: ns,
        body: {
          metadata: { name, labels },
          spec: {
            suspend: true,
            template: {
              metadata: { labels: { [TASK_LABEL]: "x" } },
              spec: {
                restartPolicy: "Never",
                automountServiceAccountToken: false,
                containers: [container()],
              },
            },
          },
        },
      });
    const r = await refusal(job(uniq("job"), { app: "agent" }));
    expect(r.code).toBe(403);
    expect(r.message).toContain('spec.template.metadata.labels["custody.dev/agent-task"] is "x"');
    const inherited = await job(uniq("unlabelled-job"));
    expect(inherited.metadata?.labels?.[TASK_LABEL]).toBe("x");
  });
});

describe("AgentTask admission record", () => {
  const created: Record<string, string> = {};

  beforeAll(async () => {
    // Created by the admin as the webhook would leave it: with a record.
    for (const user of USERS) {
      created[user] = uniq(`recorded-${user}`);
      await createTask("admin", agentTask(created[user]!, { [RECORD]: "x" }));
    }
  });

  describe.each(USERS)("as %s", (user) => {
    it("refuses changing the requester record", async () => {
      const t = await getTask(user, created[user]!);
      t.metadata.annotations = { ...t.metadata.annotations, [RECORD]: "forged" };
      const r = await refusal(replaceTask(user, t));
      expect(r.code).toBe(403);
      expect(r.message).toContain("custody-agenttask-admission-record");
      expect(r.message).toContain('metadata.annotations["custody.dev/requester-record"] may not be changed');
    });

    it("refuses removing the requester record", async () => {
      const t = await getTask(user, created[user]!);
      delete t.metadata.annotations?.[RECORD];
      const r = await refusal(replaceTask(user, t));
      expect(r.code).toBe(403);
      expect(r.message).toContain('metadata.annotations["custody.dev/requester-record"] may not be removed');
    });

    it("refuses adding a requester record to a task created without one", async () => {
      const name = uniq(`unrecorded-${user}`);
      await createTask(user, agentTask(name, {}));
      const t = await getTask(user, name);
      t.metadata.annotations = { [RECORD]: "x" };
      const r = await refusal(replaceTask(user, t));
      expect(r.code).toBe(403);
      expect(r.message).toContain('metadata.annotations["custody.dev/requester-record"] may not be added');
    });

    it("admits an update that leaves the record as it was", async () => {
      const t = await getTask(user, created[user]!);
      t.metadata.labels = { team: "platform" };
      await replaceTask(user, t);
      expect((await getTask(user, created[user]!)).metadata.annotations?.[RECORD]).toBe("x");
    });

    it("refuses an AgentTask carrying a delegation assertion, on create and on update", async () => {
      const r = await refusal(
        createTask(user, agentTask(uniq(`asserted-${user}`), { [ASSERTION]: "eyJ.x.y" })),
      );
      expect(r.code).toBe(403);
      expect(r.message).toContain("custody-agenttask-admission-record");
      expect(r.message).toContain('metadata.annotations["custody.dev/delegation-assertion"] is present');
      expect(r.message).toContain("webhook did not process this request");

      const t = await getTask(user, created[user]!);
      t.metadata.annotations = { ...t.metadata.annotations, [ASSERTION]: "eyJ.x.y" };
      const u = await refusal(replaceTask(user, t));
      expect(u.code).toBe(403);
      expect(u.message).toContain('metadata.annotations["custody.dev/delegation-assertion"] is present');
    });
  });
});
