// The issuance seam, with fakes for the I/O shells: no credential reaches a
// Secret (or the status) before its provenance record is acknowledged, and a
// record that fails leaves nothing behind.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { AgentTask } from "../../core/api/v1alpha1.ts";
import { generateCa, serialFromRandom } from "../../core/x509/index.ts";
import type { TaskEventRecorder } from "../../operator/kube-events.ts";
import type { ProvenanceRecorder } from "../../operator/provenance.ts";
import { CredentialIndex, createTaskReconciler } from "../../operator/task-reconciler.ts";
import type { TrustBundlePublisher } from "../../operator/trust-bundle.ts";
import type { KubeRest } from "../../shells/kube/rest.ts";
import { silentLogger } from "../../shells/log.ts";

const { ca } = generateCa({
  trustDomain: "custody.local",
  now: new Date(),
  validityMs: 86_400_000,
  serial: serialFromRandom(randomBytes(16)),
});

function task(): AgentTask {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: {
      name: "t1",
      namespace: "ns",
      uid: "uid-1",
      generation: 1,
      resourceVersion: "10",
      finalizers: ["custody.dev/revoke-credential"],
      creationTimestamp: new Date().toISOString(),
    } as AgentTask["metadata"],
    spec: {
      agent: { name: "agent" },
      delegator: { kind: "User", name: "alice" },
      scope: ["read:x/*"],
      serviceAccountName: "sa",
      ttl: "1h",
    },
  };
}

function harness(record: (type: string) => Promise<void>) {
  const calls: string[] = [];
  const bodies: Record<string, unknown> = {};
  const rest = {
    post: async (path: string, body: unknown) => {
      calls.push(`POST ${path}`);
      bodies[`POST ${path}`] = body;
      return body;
    },
    put: async (path: string, body: unknown) => {
      calls.push(`PUT ${path}`);
      bodies[`PUT ${path}`] = body;
      return { ...(body as object), metadata: { ...(body as AgentTask).metadata, resourceVersion: "11" } };
    },
    patch: async (path: string) => {
      calls.push(`PATCH ${path}`);
      return task();
    },
    delete: async (path: string) => {
      calls.push(`DELETE ${path}`);
      return {};
    },
    get: async () => ({}),
  } as unknown as KubeRest;
  const recorder: ProvenanceRecorder = {
    record: (type) => {
      calls.push(`record ${type}`);
      return record(type);
    },
    healthy: true,
    backlog: 0,
    close: async () => {},
  };
  const reconciler = createTaskReconciler({
    rest,
    getTask: (key) => (key === "ns/t1" ? task() : undefined),
    credentials: new CredentialIndex(),
    ca: () => ca,
    recorder,
    events: { emit: () => {} } as unknown as TaskEventRecorder,
    bundles: { ensure: async () => {} } as unknown as TrustBundlePublisher,
    trustDomain: "custody.local",
    renewJitter: 0.05,
    log: silentLogger,
  });
  return { calls, bodies, reconciler };
}

const SECRET = "POST /api/v1/namespaces/ns/secrets";
const STATUS = "PUT /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1/status";

describe("the issuance seam", () => {
  it("records `issued`, then writes the Secret, then the status", async () => {
    const { calls, bodies, reconciler } = harness(async () => {});
    const result = await reconciler.reconcile("ns/t1");
    expect(calls).toEqual(["record dev.custody.task.issued", SECRET, STATUS]);
    const secret = bodies[SECRET] as { data: Record<string, string>; metadata: { name: string } };
    expect(secret.metadata.name).toBe("custody-svid-t1");
    expect(Object.keys(secret.data).sort()).toEqual(["ca.crt", "spiffe-id", "tls.crt", "tls.key"]);
    const status = (bodies[STATUS] as AgentTask).status!;
    expect(status.phase).toBe("Issued");
    // A delegator nobody proved is marked as a claim, never stated as a fact.
    expect(status.delegator?.name).toBe("unproven:alice");
    expect(result).toMatchObject({ requeueAfterMs: expect.any(Number) });
  });

  it("writes nothing while the record is not yet acknowledged", async () => {
    let ack!: () => void;
    const acked = new Promise<void>((r) => {
      ack = r;
    });
    const { calls, reconciler } = harness(() => acked);
    const running = reconciler.reconcile("ns/t1");
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toEqual(["record dev.custody.task.issued"]);
    ack();
    await running;
    expect(calls).toEqual(["record dev.custody.task.issued", SECRET, STATUS]);
  });

  it("leaves no Secret and no status when the record fails", async () => {
    const { calls, reconciler } = harness(async () => {
      throw new Error("broker unreachable");
    });
    await expect(reconciler.reconcile("ns/t1")).rejects.toThrow("broker unreachable");
    expect(calls).toEqual(["record dev.custody.task.issued"]);
  });
});
