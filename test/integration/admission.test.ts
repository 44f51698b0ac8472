// Admission end to end: the real API server calls the operator's webhook over
// TLS; tasks are created by real users (client certificates) and by a pod's
// bound service-account token; the operator issues only on records it
// verifies. Users: alice, bob (group agent-builders), mallory; RBAC below.
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { exportJWK, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { REQUESTER_RECORD_ANNOTATION, type RequesterRecord } from "../../core/admission/record.ts";
import type { AgentTask } from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { type ClusterCredentials, loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { KubeRest } from "../../shells/kube/rest.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { startTestbed, TESTBED_LABEL, type Testbed } from "../support/testbed.ts";

const env = inject("localEnv");
const ISSUER = "https://idp.custody.test";
const idpKey = generateKeyPairSync("ec", { namedCurve: "P-256" });
let bed: Testbed;
let ns: string;
let admin: KubeRest;
const users: Record<"alice" | "bob" | "mallory", KubeRest> = {} as never;

const tasksPath = () => `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`;
const spec = (extra: Record<string, unknown> = {}) => ({
  agent: { name: "reviewer" },
  scope: ["read:repos/acme/*"],
  serviceAccountName: "agents",
  ttl: "1h",
  ...extra,
});
const taskBody = (name: string, s: Record<string, unknown>, annotations?: Record<string, string>) => ({
  apiVersion: "custody.dev/v1alpha1",
  kind: "AgentTask",
  metadata: { name, ...(annotations ? { annotations } : {}) },
  spec: s,
});

function recordOf(t: AgentTask): RequesterRecord {
  const token = t.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION] ?? "";
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as RequesterRecord;
}

async function refusal(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => "admitted",
    (e: Error) => e.message,
  );
}

function tokenClient(token: string): KubeRest {
  const creds: ClusterCredentials = {
    server: env.apiServer,
    ca: readFileSync(join(env.pki, "ca.crt")),
    insecureSkipTlsVerify: false,
    token: () => token,
    source: "test token",
  };
  return new KubeRest(creds, { connections: 1 });
}

async function assertion(claims: {
  requester: string;
  name: string;
  s: Record<string, unknown>;
  jti: string;
}) {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    custody: {
      delegator: claims.s.delegator,
      requester: claims.requester,
      namespace: ns,
      name: claims.name,
      specDigest: identitySpecDigest(claims.s),
    },
  })
    .setProtectedHeader({ alg: "ES256", kid: "idp-1", typ: "custody-delegation+jwt" })
    .setIssuer(ISSUER)
    .setSubject((claims.s.delegator as { name: string }).name)
    .setAudience("custody.dev")
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .setJti(claims.jti)
    .sign(idpKey.privateKey);
}

beforeAll(async () => {
  const jwk = { ...(await exportJWK(idpKey.publicKey)), kid: "idp-1", alg: "ES256", use: "sig" };
  bed = await startTestbed(env, "admit", [
    { CUSTODY_ASSERTION_ISSUERS: JSON.stringify([{ issuer: ISSUER, jwks: { keys: [jwk] } }]) },
  ]);
  ns = bed.ns;
  admin = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }), { connections: 1 });
  for (const u of ["alice", "bob", "mallory"] as const)
    users[u] = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: u }), {
      connections: 1,
    });
  const rbac = "/apis/rbac.authorization.k8s.io/v1";
  await admin.post(`${rbac}/namespaces/${ns}/roles`, {
    metadata: { name: "task-author" },
    rules: [
      { apiGroups: ["custody.dev"], resources: ["agenttasks"], verbs: ["create", "get", "list", "delete"] },
      { apiGroups: [""], resources: ["pods"], verbs: ["create", "get"] },
    ],
  });
  await admin.post(`${rbac}/namespaces/${ns}/rolebindings`, {
    metadata: { name: "task-authors" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "task-author" },
    subjects: ["alice", "bob", "mallory"].map((name) => ({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "User",
      name,
    })),
  });
  // The agents' own service account may create sub-agents (its pods prove which parent they carry).
  await admin.post(`/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: "agents" } });
  await admin.post(`${rbac}/namespaces/${ns}/rolebindings`, {
    metadata: { name: "agents-spawn" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "task-author" },
    subjects: [{ kind: "ServiceAccount", name: "agents", namespace: ns }],
  });
  // bob may act as alice (and nobody else): Kubernetes' own rule for delegation.
  const suffix = randomUUID().slice(0, 6);
  await admin.post(`${rbac}/clusterroles`, {
    metadata: { name: `impersonate-alice-${suffix}` },
    rules: [{ apiGroups: [""], resources: ["users"], verbs: ["impersonate"], resourceNames: ["alice"] }],
  });
  await admin.post(`${rbac}/clusterrolebindings`, {
    metadata: { name: `bob-impersonates-alice-${suffix}` },
    roleRef: {
      apiGroup: "rbac.authorization.k8s.io",
      kind: "ClusterRole",
      name: `impersonate-alice-${suffix}`,
    },
    subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "bob" }],
  });
  afterAll(async () => {
    await admin.delete(`${rbac}/clusterrolebindings/bob-impersonates-alice-${suffix}`).catch(() => undefined);
    await admin.delete(`${rbac}/clusterroles/impersonate-alice-${suffix}`).catch(() => undefined);
  });
}, 120_000);

afterAll(async () => {
  await bed?.teardown();
  admin?.close();
  for (const c of Object.values(users)) c.close();
});

describe("the requester record", () => {
  it("records who really created the task: two users by client certificate", async () => {
    await users.alice.post(tasksPath(), taskBody("by-alice", spec()));
    await users.bob.post(tasksPath(), taskBody("by-bob", spec()));
    const a = await bed.waitPhase<AgentTask>("by-alice", "Issued");
    const b = await bed.waitPhase<AgentTask>("by-bob", "Issued");
    expect(recordOf(a).requester).toMatchObject({
      username: "alice",
      groups: expect.arrayContaining(["agent-builders"]),
    });
    expect(recordOf(b).requester.username).toBe("bob");
    expect(a.status?.delegator).toMatchObject({ kind: "User", name: "alice" });
    expect(b.status?.delegator).toMatchObject({ kind: "User", name: "bob" });
    expect(a.status?.conditions?.find((c) => c.type === "DelegatorProven")).toMatchObject({
      status: "True",
      reason: "Requester",
    });
  });

  it("refuses a delegator claimed without proof, accepts one proven by impersonate rights", async () => {
    const claimed = spec({ delegator: { kind: "User", name: "alice" } });
    const msg = await refusal(users.mallory.post(tasksPath(), taskBody("mallory-as-alice", claimed)));
    expect(msg).toContain("spec.delegator: mallory may not act for User alice");
    expect(msg).toContain("rule delegator-proof");
    await users.bob.post(tasksPath(), taskBody("bob-for-alice", claimed));
    const t = await bed.waitPhase<AgentTask>("bob-for-alice", "Issued");
    expect(recordOf(t)).toMatchObject({ requester: { username: "bob" }, proof: { method: "impersonate" } });
    expect(t.status?.delegator).toMatchObject({ kind: "User", name: "alice" });
    // bob may act for alice only.
    const carol = await refusal(
      users.bob.post(
        tasksPath(),
        taskBody("bob-for-carol", spec({ delegator: { kind: "User", name: "carol" } })),
      ),
    );
    expect(carol).toContain("rule delegator-proof");
  });

  it("a client-sent record is replaced; a record forged or copied outside admission is refused by the operator", async () => {
    // Sent by the client: the webhook overwrites it with its own.
    const real = await bed.waitPhase<AgentTask>("by-alice", "Issued");
    const copied = real.metadata.annotations![REQUESTER_RECORD_ANNOTATION]!;
    await users.mallory.post(
      tasksPath(),
      taskBody("mallory-copies", spec(), { [REQUESTER_RECORD_ANNOTATION]: copied }),
    );
    const m = await bed.waitPhase<AgentTask>("mallory-copies", "Issued");
    expect(recordOf(m).requester.username).toBe("mallory");

    // A namespace the webhook does not cover (outside this installation's
    // selector): whatever record an object carries there is only a claim.
    const outside = `admit-outside-${randomUUID().slice(0, 6)}`;
    await admin.post("/api/v1/namespaces", { metadata: { name: outside } });
    try {
      const forged = `${copied.split(".")[0]}.${Buffer.from(
        JSON.stringify({
          ...recordOf(real),
          namespace: outside,
          name: "forged",
          requester: { username: "root" },
        }),
      ).toString("base64url")}.${copied.split(".")[2]}`;
      const outsidePath = `/apis/custody.dev/v1alpha1/namespaces/${outside}/agenttasks`;
      await admin.post(outsidePath, taskBody("forged", spec(), { [REQUESTER_RECORD_ANNOTATION]: forged }));
      await admin.post(outsidePath, taskBody("copied", spec(), { [REQUESTER_RECORD_ANNOTATION]: copied }));
      await admin.post(outsidePath, taskBody("none", spec()));
      const reasonOf = (name: string) =>
        eventually(async () => {
          const t = await admin.get<AgentTask>(`${outsidePath}/${name}`);
          if (t.status?.phase !== "Denied") throw new Error(`${name}: ${t.status?.phase}`);
          return t.status.conditions?.find((c) => c.type === "Ready")?.message ?? "";
        });
      expect(await reasonOf("forged")).toContain("rule signature");
      expect(await reasonOf("copied")).toContain("rule subject");
      expect(await reasonOf("none")).toContain("rule present");
      const secrets = await admin.get<{ items: unknown[] }>(
        `/api/v1/namespaces/${outside}/secrets?labelSelector=custody.dev/agent-task`,
      );
      expect(secrets.items).toEqual([]);
    } finally {
      await admin.delete(`/api/v1/namespaces/${outside}`).catch(() => undefined);
    }
  });

  it("a record copied onto a re-created task of the same name does not verify (issued-at)", async () => {
    await users.alice.post(tasksPath(), taskBody("reborn", spec()));
    const first = await bed.waitPhase<AgentTask>("reborn", "Issued");
    const record = first.metadata.annotations![REQUESTER_RECORD_ANNOTATION]!;
    await admin.delete(`${tasksPath()}/reborn`);
    await eventually(async () => {
      const gone = await admin.get(`${tasksPath()}/reborn`).then(
        () => false,
        () => true,
      );
      if (!gone) throw new Error("not gone yet");
    });
    await new Promise((r) => setTimeout(r, 7_000)); // past the 5 s window
    // Take the namespace out of the webhook's reach, re-create with the old record.
    await admin.patch(`/api/v1/namespaces/${ns}`, { metadata: { labels: { [TESTBED_LABEL]: null } } });
    try {
      await admin.post(tasksPath(), taskBody("reborn", spec(), { [REQUESTER_RECORD_ANNOTATION]: record }));
    } finally {
      await admin.patch(`/api/v1/namespaces/${ns}`, {
        metadata: { labels: { [TESTBED_LABEL]: bed.admissionConfigName.replace(/^custody-/, "") } },
      });
    }
    const t = await bed.waitPhase<AgentTask>("reborn", "Denied");
    expect(t.status?.conditions?.find((c) => c.type === "Ready")?.message).toContain("rule issued-at");
  }, 60_000);
});

describe("signed delegation assertions", () => {
  const wf = spec({ delegator: { kind: "Workflow", name: "nightly-release" } });

  it("accepts a bound assertion once; refuses it for another task and when replayed, also after a restart", async () => {
    const token = await assertion({ requester: "alice", name: "wf-1", s: wf, jti: `j-${randomUUID()}` });
    const annotations = { "custody.dev/delegation-assertion": token };
    // Bound to wf-1: another name does not verify.
    const other = await refusal(users.alice.post(tasksPath(), taskBody("wf-2", wf, annotations)));
    expect(other).toContain("rule name");
    // Bound to alice: bob cannot use it.
    expect(await refusal(users.bob.post(tasksPath(), taskBody("wf-1", wf, annotations)))).toContain(
      "rule requester",
    );

    await users.alice.post(tasksPath(), taskBody("wf-1", wf, annotations));
    const t = await bed.waitPhase<AgentTask>("wf-1", "Issued");
    expect(t.metadata.annotations?.["custody.dev/delegation-assertion"]).toBeUndefined();
    expect(recordOf(t).proof).toMatchObject({ method: "assertion", assertion: { issuer: ISSUER } });
    expect(JSON.stringify(t)).not.toContain(token);
    expect(t.status?.delegator).toMatchObject({ kind: "Workflow", name: "nightly-release" });

    // Replay: delete the task and create it again with the same token.
    await admin.delete(`${tasksPath()}/wf-1`);
    await eventually(async () => {
      if (
        await admin.get(`${tasksPath()}/wf-1`).then(
          () => true,
          () => false,
        )
      )
        throw new Error("not gone");
    });
    expect(await refusal(users.alice.post(tasksPath(), taskBody("wf-1", wf, annotations)))).toContain(
      "rule replay",
    );

    // After a restart of the operator (a new process, nothing in memory).
    await bed.restartOperator(0, {
      CUSTODY_ASSERTION_ISSUERS: JSON.stringify([
        {
          issuer: ISSUER,
          jwks: { keys: [{ ...(await exportJWK(idpKey.publicKey)), kid: "idp-1", alg: "ES256" }] },
        },
      ]),
    });
    expect(await refusal(users.alice.post(tasksPath(), taskBody("wf-1", wf, annotations)))).toContain(
      "rule replay",
    );
  }, 90_000);
});

describe("sub-agents", () => {
  it("accepts a sub-agent created with the parent pod's bound token, refuses another pod's", async () => {
    await users.alice.post(tasksPath(), taskBody("parent", spec()));
    await bed.waitPhase<AgentTask>("parent", "Issued");
    const pod = (name: string, label?: string) => ({
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name, ...(label ? { labels: { "custody.dev/agent-task": label } } : {}) },
      spec: {
        serviceAccountName: "agents",
        automountServiceAccountToken: false,
        containers: [{ name: "agent", image: "example.invalid/agent:1" }],
      },
    });
    // alice is the parent's requester, so she may attach its identity to a pod.
    const carrier = await users.alice.post<{
      metadata: { uid: string };
      spec: { volumes?: Array<{ name: string }> };
    }>(`/api/v1/namespaces/${ns}/pods`, pod("carrier", "parent"));
    expect(carrier.spec.volumes?.map((v) => v.name)).toContain("custody-svid");
    // Provenance records the injection once the pod exists, with its name and uid.
    const injected = await readTopic(env.kafkaBrokers, bed.topic, (rs) =>
      rs.some((r) => r.value.includes("dev.custody.task.injected") && r.value.includes(carrier.metadata.uid)),
    );
    const event = injected
      .map(
        (r) =>
          JSON.parse(r.value) as {
            type: string;
            data: { pod: { name: string; uid: string }; containers: string[] };
          },
      )
      .find((e) => e.type === "dev.custody.task.injected" && e.data.pod.uid === carrier.metadata.uid);
    expect(event?.data).toMatchObject({ pod: { name: "carrier" }, containers: ["agent"] });
    const stranger = await users.alice.post<{ metadata: { uid: string } }>(
      `/api/v1/namespaces/${ns}/pods`,
      pod("stranger"),
    );
    const tokenFor = async (podName: string, uid: string) =>
      (
        await admin.post<{ status: { token: string } }>(
          `/api/v1/namespaces/${ns}/serviceaccounts/agents/token`,
          {
            spec: {
              audiences: ["https://kubernetes.default.svc"],
              expirationSeconds: 600,
              boundObjectRef: { apiVersion: "v1", kind: "Pod", name: podName, uid },
            },
          },
        )
      ).status.token;
    const child = spec({ parentRef: { name: "parent" }, scope: ["read:repos/acme/api"] });

    const strangerClient = tokenClient(await tokenFor("stranger", stranger.metadata.uid));
    const refused = await refusal(strangerClient.post(tasksPath(), taskBody("child-of-stranger", child)));
    strangerClient.close();
    expect(refused).toContain("does not carry the label custody.dev/agent-task=parent");
    expect(refused).toContain("rule parent-pod");

    const carrierClient = tokenClient(await tokenFor("carrier", carrier.metadata.uid));
    await carrierClient.post(tasksPath(), taskBody("child", child));
    carrierClient.close();
    const t = await bed.waitPhase<AgentTask>("child", "Issued");
    expect(recordOf(t)).toMatchObject({
      requester: { username: `system:serviceaccount:${ns}:agents` },
      delegator: { kind: "AgentTask", name: "parent" },
      proof: { method: "parent-pod", pod: { name: "carrier", uid: carrier.metadata.uid } },
    });
    expect(t.status?.delegationChain?.map((l) => l.name)).toEqual(["alice", "parent", "child"]);

    // Another pod under the same service account (anyone who may create pods
    // there can start one) is not the child's requester: it may not wear it.
    const other = await users.alice.post<{ metadata: { uid: string } }>(
      `/api/v1/namespaces/${ns}/pods`,
      pod("other"),
    );
    const otherClient = tokenClient(await tokenFor("other", other.metadata.uid));
    const wear = await refusal(otherClient.post(`/api/v1/namespaces/${ns}/pods`, pod("wearer", "child")));
    otherClient.close();
    expect(wear).toContain(`"system:serviceaccount:${ns}:agents" may not attach the identity`);
    expect(wear).toContain("rule use-task");
  }, 60_000);
});

describe("excluded namespaces", () => {
  it("admits no AgentTask where pods are not checked (kube-system)", async () => {
    const selector = bed.admissionConfigName.replace(/^custody-/, "");
    // This installation's webhooks see only labelled namespaces: let it see kube-system for a moment.
    await admin.patch("/api/v1/namespaces/kube-system", {
      metadata: { labels: { [TESTBED_LABEL]: selector } },
    });
    try {
      const msg = await refusal(
        admin.post(
          "/apis/custody.dev/v1alpha1/namespaces/kube-system/agenttasks",
          taskBody("sneaky", spec()),
        ),
      );
      expect(msg).toContain("metadata.namespace: kube-system is excluded");
      expect(msg).toContain("rule excluded-namespace");
    } finally {
      await admin.patch("/api/v1/namespaces/kube-system", {
        metadata: { labels: { [TESTBED_LABEL]: null } },
      });
    }
  });
});
