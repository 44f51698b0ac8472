// Smoke tests proving the local environment's parts are real: the API server
// serves CRDs and watches, the controller manager garbage-collects owned
// objects, service-account tokens are bound to pods, and Kafka acknowledges
// with acks=all through an idempotent producer.
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import {
  ApiextensionsV1Api,
  AuthenticationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  Watch,
} from "@kubernetes/client-node";
import { Kafka, logLevel } from "kafkajs";
import "../../shells/kafka/codecs.ts";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { kubeConfigFor } from "../env/local-env.ts";
import { eventually } from "../support/eventually.ts";

const env = inject("localEnv");
let kc: KubeConfig;
let core: CoreV1Api;
const ns = `smoke-${randomUUID().slice(0, 8)}`;

beforeAll(async () => {
  kc = kubeConfigFor(env);
  core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  await core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe("kube-apiserver", () => {
  it("reports ready and the pinned version", async () => {
    const res = await fetchAsAdmin("/readyz");
    expect(res).toBe("ok");
    const version = JSON.parse(await fetchAsAdmin("/version")) as { gitVersion: string };
    const pinned = /^K8S_VERSION=(\S+)$/m.exec(
      (await import("node:fs")).readFileSync(join(import.meta.dirname, "..", "env", "versions.env"), "utf8"),
    )?.[1];
    expect(version.gitVersion).toBe(pinned);
  });

  it("serves a CRD whose custom objects arrive through a client-node watch", async () => {
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    const group = "smoke.custody.dev";
    const crdName = `widgets.${group}`;
    await ext
      .createCustomResourceDefinition({
        body: {
          metadata: { name: crdName },
          spec: {
            group,
            scope: "Namespaced",
            names: { plural: "widgets", singular: "widget", kind: "Widget" },
            versions: [
              {
                name: "v1",
                served: true,
                storage: true,
                schema: {
                  openAPIV3Schema: {
                    type: "object",
                    properties: { spec: { type: "object", properties: { size: { type: "integer" } } } },
                  },
                },
              },
            ],
          },
        },
      })
      .catch((e: unknown) => {
        if ((e as { code?: number }).code !== 409) throw e;
      });
    await eventually(async () => {
      const crd = await ext.readCustomResourceDefinition({ name: crdName });
      const established = crd.status?.conditions?.find((c) => c.type === "Established");
      expect(established?.status).toBe("True");
    });

    // Established can precede the resource being served for a moment.
    const custom = kc.makeApiClient(CustomObjectsApi);
    await eventually(() =>
      custom.listNamespacedCustomObject({ group, version: "v1", namespace: ns, plural: "widgets" }),
    );

    const seen: Array<{ type: string; name: string; size: number }> = [];
    const watch = new Watch(kc);
    const abort = await watch.watch(
      `/apis/${group}/v1/namespaces/${ns}/widgets`,
      {},
      (type, obj: { metadata: { name: string }; spec: { size: number } }) => {
        seen.push({ type, name: obj.metadata.name, size: obj.spec.size });
      },
      () => undefined,
    );
    try {
      await custom.createNamespacedCustomObject({
        group,
        version: "v1",
        namespace: ns,
        plural: "widgets",
        body: { apiVersion: `${group}/v1`, kind: "Widget", metadata: { name: "w1" }, spec: { size: 3 } },
      });
      await eventually(() => expect(seen).toContainEqual({ type: "ADDED", name: "w1", size: 3 }));
    } finally {
      abort.abort();
    }
  });
});

describe("kube-controller-manager", () => {
  it("garbage-collects an object when its owner is deleted", async () => {
    const owner = await core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name: "owner" }, data: { a: "b" } },
    });
    await core.createNamespacedSecret({
      namespace: ns,
      body: {
        metadata: {
          name: "owned",
          ownerReferences: [
            {
              apiVersion: "v1",
              kind: "ConfigMap",
              name: "owner",
              uid: owner.metadata!.uid!,
              controller: true,
            },
          ],
        },
        stringData: { x: "y" },
      },
    });
    await core.deleteNamespacedConfigMap({ name: "owner", namespace: ns, propagationPolicy: "Background" });
    await eventually(
      async () => {
        const gone = await core.readNamespacedSecret({ name: "owned", namespace: ns }).then(
          () => false,
          (e: { code?: number }) => e.code === 404,
        );
        expect(gone).toBe(true);
      },
      { timeoutMs: 30_000 },
    );
  });
});

describe("service-account tokens", () => {
  it("mints a TokenRequest bound to a pod and TokenReview returns the pod's name and uid", async () => {
    await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: "agent" } } });
    const pod = await core.createNamespacedPod({
      namespace: ns,
      body: {
        metadata: { name: "agent-pod" },
        spec: {
          serviceAccountName: "agent",
          automountServiceAccountToken: false,
          containers: [{ name: "main", image: "example.invalid/agent:1" }],
        },
      },
    });
    const tr = await core.createNamespacedServiceAccountToken({
      name: "agent",
      namespace: ns,
      body: {
        spec: {
          audiences: ["https://kubernetes.default.svc"],
          expirationSeconds: 600,
          boundObjectRef: { apiVersion: "v1", kind: "Pod", name: "agent-pod", uid: pod.metadata!.uid! },
        },
      },
    });
    const token = tr.status?.token ?? "";
    expect(token.split(".")).toHaveLength(3);

    const review = await kc
      .makeApiClient(AuthenticationV1Api)
      .createTokenReview({ body: { spec: { token } } });
    expect(review.status?.authenticated).toBe(true);
    expect(review.status?.user?.username).toBe(`system:serviceaccount:${ns}:agent`);
    expect(review.status?.user?.extra?.["authentication.kubernetes.io/pod-name"]).toEqual(["agent-pod"]);
    expect(review.status?.user?.extra?.["authentication.kubernetes.io/pod-uid"]).toEqual([
      pod.metadata!.uid!,
    ]);

    const forged = await kc
      .makeApiClient(AuthenticationV1Api)
      .createTokenReview({ body: { spec: { token: `${token.slice(0, -4)}AAAA` } } });
    expect(forged.status?.authenticated).not.toBe(true);
  });
});

describe("Kafka", () => {
  it("acknowledges with acks=all through an idempotent producer and the record reads back", async () => {
    const kafka = new Kafka({
      clientId: "custody-smoke",
      brokers: env.kafkaBrokers.split(","),
      logLevel: logLevel.NOTHING,
    });
    const topic = `smoke-${randomUUID()}`;
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({
      topics: [{ topic, numPartitions: 1, replicationFactor: 1 }],
      waitForLeaders: true,
    });
    await admin.disconnect();

    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const value = `hello-${randomUUID()}`;
    const [meta] = await producer.send({ topic, acks: -1, messages: [{ key: "k", value }] });
    await producer.disconnect();
    expect(meta?.errorCode).toBe(0);

    const consumer = kafka.consumer({ groupId: `smoke-${randomUUID()}` });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const received: string[] = [];
    await consumer.run({
      eachMessage: async ({ message }) => {
        received.push(message.value?.toString() ?? "");
      },
    });
    try {
      await eventually(() => expect(received).toEqual([value]), { timeoutMs: 30_000 });
    } finally {
      await consumer.disconnect();
    }
  });
});

describe("helm", () => {
  it("lints the chart, and its values schema refuses a bad trust domain", async () => {
    const { execFileSync } = await import("node:child_process");
    const chart = join(import.meta.dirname, "..", "..", "charts", "custody");
    const helm = join(env.binDir, "helm");
    expect(execFileSync(helm, ["lint", chart]).toString()).toContain("0 chart(s) failed");
    let failed = "";
    try {
      execFileSync(helm, ["lint", chart, "--set", "trustDomain=Not_A_Domain!"], { stdio: "pipe" });
    } catch (e) {
      failed = String((e as { stdout: Buffer }).stdout) + String((e as { stderr: Buffer }).stderr);
    }
    expect(failed).toContain("trustDomain");
  });
});

async function fetchAsAdmin(path: string): Promise<string> {
  const { request } = await import("node:https");
  const { readFileSync } = await import("node:fs");
  const { join } = await import("node:path");
  return new Promise((resolvePromise, reject) => {
    const req = request(
      `${env.apiServer}${path}`,
      {
        ca: readFileSync(join(env.pki, "ca.crt")),
        cert: readFileSync(join(env.pki, "admin.crt")),
        key: readFileSync(join(env.pki, "admin.key")),
      },
      (res) => {
        let body = "";
        res.on("data", (c: Buffer) => {
          body += c.toString();
        });
        res.on("end", () => resolvePromise(body));
      },
    );
    req.on("error", reject);
    req.end();
  });
}
