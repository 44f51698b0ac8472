import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { generateCa } from "../../core/x509/ca.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { KubeApiError, type KubeRest } from "../../shells/kube/rest.ts";
import {
  AGENTTASKS_PATH,
  applyRegistration,
  buildWebhookConfiguration,
  PODS_PATH,
  POLICIES_PATH,
  RegistrationError,
  removeRegistration,
  WORKLOADS_PATH,
} from "../../webhook/registration.ts";

const caPem = generateCa({
  trustDomain: "custody.local",
  now: new Date(),
  validityMs: 3_600_000,
  serial: serialFromRandom(randomBytes(16)),
}).certPem;

const byName = (c: ReturnType<typeof buildWebhookConfiguration>) =>
  Object.fromEntries(c.webhooks.map((w) => [w.name, w]));

describe("buildWebhookConfiguration", () => {
  it("builds the four webhooks as specified, on a URL", () => {
    const c = buildWebhookConfiguration({
      clientConfig: { url: "https://127.0.0.1:8443/" },
      caBundlePem: caPem,
    });
    expect(c.metadata.name).toBe("custody");
    const caBundle = Buffer.from(caPem).toString("base64");
    const w = byName(c);
    expect(Object.keys(w)).toEqual([
      "agenttasks.custody.dev",
      "pods.custody.dev",
      "workloads.custody.dev",
      "agentpolicies.custody.dev",
    ]);
    // Policies: both kinds, cluster-scoped ones too, fail closed.
    expect(w["agentpolicies.custody.dev"]).toEqual({
      name: "agentpolicies.custody.dev",
      clientConfig: { url: `https://127.0.0.1:8443${POLICIES_PATH}`, caBundle },
      rules: [
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["custody.dev"],
          apiVersions: ["v1alpha1"],
          resources: ["agentpolicies", "clusteragentpolicies"],
          scope: "*",
        },
      ],
      failurePolicy: "Fail",
      matchPolicy: "Equivalent",
      admissionReviewVersions: ["v1"],
      sideEffects: "None",
      timeoutSeconds: 5,
      reinvocationPolicy: "Never",
    });
    expect(w["agenttasks.custody.dev"]).toEqual({
      name: "agenttasks.custody.dev",
      clientConfig: { url: `https://127.0.0.1:8443${AGENTTASKS_PATH}`, caBundle },
      rules: [
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["custody.dev"],
          apiVersions: ["v1alpha1"],
          resources: ["agenttasks"],
          scope: "Namespaced",
        },
      ],
      failurePolicy: "Fail",
      matchPolicy: "Equivalent",
      admissionReviewVersions: ["v1"],
      sideEffects: "NoneOnDryRun",
      timeoutSeconds: 10,
      reinvocationPolicy: "Never",
    });
    const optIn = { matchExpressions: [{ key: "custody.dev/agent-task", operator: "Exists" }] };
    const notKubeSystem = {
      matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["kube-system"] }],
    };
    expect(w["pods.custody.dev"]).toEqual({
      name: "pods.custody.dev",
      clientConfig: { url: `https://127.0.0.1:8443${PODS_PATH}`, caBundle },
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
      admissionReviewVersions: ["v1"],
      namespaceSelector: notKubeSystem,
      objectSelector: optIn,
      sideEffects: "None",
      timeoutSeconds: 5,
      reinvocationPolicy: "IfNeeded",
    });
    expect(w["workloads.custody.dev"]).toMatchObject({
      clientConfig: { url: `https://127.0.0.1:8443${WORKLOADS_PATH}`, caBundle },
      rules: [
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["apps"],
          apiVersions: ["v1"],
          resources: ["deployments", "statefulsets", "daemonsets", "replicasets"],
        },
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["batch"],
          apiVersions: ["v1"],
          resources: ["jobs", "cronjobs"],
        },
      ],
      failurePolicy: "Fail",
      namespaceSelector: notKubeSystem,
      objectSelector: optIn,
      sideEffects: "None",
      timeoutSeconds: 5,
      reinvocationPolicy: "Never",
    });
  });

  it("targets a Service with a path per webhook", () => {
    const c = buildWebhookConfiguration({
      name: "custody-prod",
      clientConfig: { service: { namespace: "custody-system", name: "custody-webhook", port: 443 } },
      caBundlePem: caPem,
    });
    expect(c.metadata.name).toBe("custody-prod");
    expect(c.webhooks.map((w) => w.clientConfig.service)).toEqual([
      { namespace: "custody-system", name: "custody-webhook", port: 443, path: AGENTTASKS_PATH },
      { namespace: "custody-system", name: "custody-webhook", port: 443, path: PODS_PATH },
      { namespace: "custody-system", name: "custody-webhook", port: 443, path: WORKLOADS_PATH },
      { namespace: "custody-system", name: "custody-webhook", port: 443, path: POLICIES_PATH },
    ]);
    expect(c.webhooks.every((w) => w.clientConfig.url === undefined)).toBe(true);
  });

  it("merges a namespaceSelector into every webhook; exclusions apply to pods and workloads only", () => {
    const c = buildWebhookConfiguration({
      clientConfig: { url: "https://127.0.0.1:8443" },
      caBundlePem: caPem,
      namespaceSelector: {
        matchLabels: { "custody-test": "t1" },
        matchExpressions: [{ key: "tier", operator: "In", values: ["a"] }],
      },
      excludedNamespaces: ["kube-system", "custody-system"],
    });
    const w = byName(c);
    expect(w["agenttasks.custody.dev"]!.namespaceSelector).toEqual({
      matchLabels: { "custody-test": "t1" },
      matchExpressions: [{ key: "tier", operator: "In", values: ["a"] }],
    });
    const scoped = {
      matchLabels: { "custody-test": "t1" },
      matchExpressions: [
        { key: "tier", operator: "In", values: ["a"] },
        { key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["kube-system", "custody-system"] },
      ],
    };
    expect(w["pods.custody.dev"]!.namespaceSelector).toEqual(scoped);
    expect(w["workloads.custody.dev"]!.namespaceSelector).toEqual(scoped);
  });

  it("writes no NotIn with an empty value list when nothing is excluded", () => {
    const w = byName(
      buildWebhookConfiguration({
        clientConfig: { url: "https://h:1" },
        caBundlePem: caPem,
        excludedNamespaces: [],
      }),
    );
    expect(w["pods.custody.dev"]!.namespaceSelector).toEqual({});
  });

  it.each([
    [{ url: "http://127.0.0.1:8443" }, caPem, "clientConfig.url", /https/],
    [{ url: "https://127.0.0.1:8443/?x=1" }, caPem, "clientConfig.url", /query/],
    [{ url: "not a url" }, caPem, "clientConfig.url", /not a URL/],
    [{ service: { namespace: "n", name: "s", port: 0 } }, caPem, "clientConfig.service.port", /1\.\.65535/],
    [{ url: "https://h:1" }, "", "caBundlePem", /at least one PEM CERTIFICATE/],
    [
      { url: "https://h:1" },
      `${caPem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n`,
      "caBundlePem",
      /no keys/,
    ],
  ] as const)("refuses %j / bundle, naming the field", (clientConfig, bundle, field, rule) => {
    let err: unknown;
    try {
      buildWebhookConfiguration({ clientConfig, caBundlePem: bundle });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RegistrationError);
    expect((err as RegistrationError).field).toBe(field);
    expect((err as RegistrationError).message).toMatch(rule);
  });
});

describe("applying and removing", () => {
  function fakeRest(deleteError?: unknown) {
    const calls: Array<{ method: string; path: string; body?: unknown; type?: string }> = [];
    const rest = {
      patch: async (path: string, body: unknown, type: string) => {
        calls.push({ method: "PATCH", path, body, type });
        return body;
      },
      delete: async (path: string) => {
        calls.push({ method: "DELETE", path });
        if (deleteError) throw deleteError;
        return {};
      },
    } as unknown as KubeRest;
    return { rest, calls };
  }

  it("server-side applies as custody-operator, forced", async () => {
    const { rest, calls } = fakeRest();
    await applyRegistration(rest, { clientConfig: { url: "https://127.0.0.1:8443" }, caBundlePem: caPem });
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({
      method: "PATCH",
      path: "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/custody?fieldManager=custody-operator&force=true",
      type: "apply",
      body: { apiVersion: "admissionregistration.k8s.io/v1", kind: "MutatingWebhookConfiguration" },
    });
  });

  it("removes, treating 404 as already gone and rethrowing other errors", async () => {
    expect(await removeRegistration(fakeRest().rest, "custody")).toBe(true);
    const gone = new KubeApiError(404, "NotFound", "not found", {});
    expect(await removeRegistration(fakeRest(gone).rest, "custody")).toBe(false);
    const forbidden = new KubeApiError(403, "Forbidden", "forbidden", {});
    await expect(removeRegistration(fakeRest(forbidden).rest, "custody")).rejects.toBe(forbidden);
  });
});
