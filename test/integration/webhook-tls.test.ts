// The real kube-apiserver calling Custody's admission server over TLS: the
// serving certificate comes from a Custody CA, the API server trusts it only
// through the caBundle, and rotation (same CA, then a new CA) keeps admission
// working. A ConfigMap webhook of the test's own stands in for Custody's
// handlers (so the test needs no CRD); it is scoped by namespaceSelector to a
// fresh namespace and by objectSelector to the test's ConfigMaps, and every
// configuration registered here is removed in afterAll, even after a failure,
// so no fail-closed webhook outlives the test.
import { randomBytes, randomUUID } from "node:crypto";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type CertificateAuthority, generateCa } from "../../core/x509/ca.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { type AdmissionServer, startAdmissionServer } from "../../shells/https/admission-server.ts";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { KubeApiError, KubeRest } from "../../shells/kube/rest.ts";
import { createLogger } from "../../shells/log.ts";
import {
  type AdmissionHandler,
  type AdmissionRequest,
  allow,
  deny,
  pointerSegment,
} from "../../webhook/admission.ts";
import {
  AGENTTASKS_PATH,
  applyRegistration,
  applyWebhookConfiguration,
  getRegistration,
  type MutatingWebhookConfiguration,
  PODS_PATH,
  patchCaBundle,
  removeRegistration,
  WORKLOADS_PATH,
} from "../../webhook/registration.ts";
import { WebhookServingCert } from "../../webhook/serving-cert.ts";
import { eventually } from "../support/eventually.ts";

const env = inject("localEnv");
const suffix = randomUUID().slice(0, 8);
const ns = `webhook-tls-${suffix}`;
const NS_LABEL = "custody-test/webhook-tls";
const OBJECT_LABEL = "custody-test/webhook-tls-object";
const ADMITTED_LABEL = "custody-test/admitted";
const TEST_CONFIG = `custody-test-webhook-tls-${suffix}`;
const ROGUE_CONFIG = `custody-test-webhook-tls-rogue-${suffix}`;
const REAL_CONFIG = `custody-test-registration-${suffix}`;
const log = createLogger({ name: "webhook-tls-test", level: "error" });

let rest: KubeRest;
let ca1: CertificateAuthority;
let currentCa: CertificateAuthority;
let servingCert: WebhookServingCert;
let server: AdmissionServer | undefined;
let rogue: AdmissionServer | undefined;
const seen: AdmissionRequest[] = [];
let rogueCalls = 0;
let counter = 0;

function newCa(): CertificateAuthority {
  return generateCa({
    trustDomain: "custody.local",
    now: new Date(Date.now() - 60_000),
    validityMs: 24 * 3_600_000,
    serial: serialFromRandom(randomBytes(16)),
  }).ca;
}

/** Labels the ConfigMap (adding /metadata/labels when it has none); refuses one whose data sets `deny`. */
function labeller(generation: string): AdmissionHandler {
  return async (req) => {
    seen.push(req);
    const obj = req.object as {
      metadata?: { labels?: Record<string, string> };
      data?: Record<string, string>;
    };
    if (obj.data?.deny) return deny(403, `custody test: data.deny is set on ConfigMap ${req.name}`);
    return allow(
      obj.metadata?.labels
        ? [{ op: "add", path: `/metadata/labels/${pointerSegment(ADMITTED_LABEL)}`, value: generation }]
        : [{ op: "add", path: "/metadata/labels", value: { [ADMITTED_LABEL]: generation } }],
    );
  };
}

/** One ConfigMap webhook, fail-closed, reaching only the test's labelled ConfigMaps in the test namespace. */
function testConfig(
  name: string,
  url: string,
  caBundlePem: string,
  objectLabel: string,
): MutatingWebhookConfiguration {
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name },
    webhooks: [
      {
        name: "configmaps.test.custody.dev",
        clientConfig: { url, caBundle: Buffer.from(caBundlePem).toString("base64") },
        rules: [
          {
            operations: ["CREATE"],
            apiGroups: [""],
            apiVersions: ["v1"],
            resources: ["configmaps"],
            scope: "Namespaced",
          },
        ],
        failurePolicy: "Fail",
        matchPolicy: "Equivalent",
        namespaceSelector: { matchLabels: { [NS_LABEL]: suffix } },
        objectSelector: { matchLabels: { [OBJECT_LABEL]: objectLabel } },
        sideEffects: "None",
        timeoutSeconds: 5,
        admissionReviewVersions: ["v1"],
        reinvocationPolicy: "Never",
      },
    ],
  };
}

interface ConfigMap {
  metadata: { name: string; labels?: Record<string, string> };
}

function createConfigMap(objectLabel: string, data: Record<string, string> = {}): Promise<ConfigMap> {
  return rest.post<ConfigMap>(`/api/v1/namespaces/${ns}/configmaps`, {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: `cm-${++counter}`, labels: { [OBJECT_LABEL]: objectLabel } },
    data,
  });
}

/**
 * A new configuration reaches the API server's admission chain a moment
 * after it is written; until then creations succeed untouched. Retries until
 * a creation carries the label `generation`, deleting the strays.
 */
async function createAdmitted(generation: string): Promise<ConfigMap> {
  return eventually(
    async () => {
      const cm = await createConfigMap("main");
      const got = cm.metadata.labels?.[ADMITTED_LABEL];
      if (got !== generation) {
        await rest.delete(`/api/v1/namespaces/${ns}/configmaps/${cm.metadata.name}`);
        throw new Error(`ConfigMap admitted with label ${String(got)}, waiting for ${generation}`);
      }
      return cm;
    },
    { timeoutMs: 20_000, intervalMs: 200 },
  );
}

/** Serial and issuer of the certificate a fresh TLS connection to `port` is shown. */
function peerCertificate(port: number, trust: CertificateAuthority): Promise<{ serial: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, ca: trust.certPem, ALPNProtocols: ["h2"] });
    s.on("secureConnect", () => {
      resolve({ serial: s.getPeerCertificate().serialNumber.toLowerCase() });
      s.destroy();
    });
    s.on("error", reject);
  });
}

beforeAll(async () => {
  rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "admin" }));
  await rest.post("/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name: ns, labels: { [NS_LABEL]: suffix } },
  });
  ca1 = newCa();
  currentCa = ca1;
  servingCert = new WebhookServingCert({
    ca: () => currentCa,
    service: { name: "custody-webhook", namespace: "custody-system" },
    ipAddresses: ["127.0.0.1"],
    onRotate: (c) => server?.setCertificate(c.certPem, c.keyPem),
    log,
  });
  server = await startAdmissionServer({
    host: "127.0.0.1",
    port: 0,
    routes: { "/test/configmaps": labeller("1"), "/test/configmaps-v2": labeller("2") },
    tls: servingCert.current,
    log,
  });
});

afterAll(async () => {
  // Registrations first: a fail-closed webhook must never outlive its server.
  for (const name of [TEST_CONFIG, ROGUE_CONFIG, REAL_CONFIG]) {
    await removeRegistration(rest, name).catch(() => undefined);
  }
  servingCert?.stop();
  await server?.close();
  await rogue?.close();
  await rest?.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  rest?.close();
});

describe("the API server calls the admission server over TLS", () => {
  it("(a) trusts the Custody-CA serving certificate through the caBundle and applies the JSONPatch", async () => {
    await applyWebhookConfiguration(
      rest,
      testConfig(TEST_CONFIG, `https://127.0.0.1:${server!.port}/test/configmaps`, ca1.certPem, "main"),
    );
    const cm = await createAdmitted("1");
    expect(cm.metadata.labels).toEqual({ [OBJECT_LABEL]: "main", [ADMITTED_LABEL]: "1" });
    const req = seen.find((r) => r.name === cm.metadata.name);
    expect(req).toMatchObject({
      operation: "CREATE",
      namespace: ns,
      kind: { group: "", version: "v1", kind: "ConfigMap" },
      resource: { group: "", version: "v1", resource: "configmaps" },
    });
    expect(req?.userInfo.username).toBeTruthy();
  });

  it("(d) returns a handler's refusal message and code to the client", async () => {
    const err = await createConfigMap("main", { deny: "yes" }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KubeApiError);
    expect((err as KubeApiError).code).toBe(403);
    expect((err as KubeApiError).message).toMatch(
      /admission webhook "configmaps\.test\.custody\.dev" denied the request: custody test: data\.deny is set on ConfigMap cm-\d+/,
    );
  });

  it("(b) keeps admitting after the serving certificate is re-minted, and after the CA itself rotates", async () => {
    const before = servingCert.current.serialHex;
    const renewed = servingCert.rotateNow();
    expect(renewed.serialHex).not.toBe(before);
    expect((await peerCertificate(server!.port, ca1)).serial).toBe(renewed.serialHex);
    await createAdmitted("1");

    // A new CA: the server swaps to a leaf from it, and the configuration
    // trusts only the new CA. The path moves to the "-v2" route in the same
    // apply, so a ConfigMap labelled "2" proves the API server used the new
    // configuration, hence a new connection verified against the new CA only,
    // hence the hot-swapped certificate.
    const ca2 = newCa();
    currentCa = ca2;
    const swapped = servingCert.rotateNow();
    expect((await peerCertificate(server!.port, ca2)).serial).toBe(swapped.serialHex);
    await applyWebhookConfiguration(
      rest,
      testConfig(TEST_CONFIG, `https://127.0.0.1:${server!.port}/test/configmaps-v2`, ca2.certPem, "main"),
    );
    await createAdmitted("2");
    for (let i = 0; i < 3; i++) {
      expect((await createConfigMap("main")).metadata.labels?.[ADMITTED_LABEL]).toBe("2");
    }
  });

  it("(c) refuses the creation when the server's certificate is not from the caBundle's CA", async () => {
    const other = newCa();
    const rogueCert = new WebhookServingCert({
      ca: () => other,
      service: { name: "custody-webhook", namespace: "custody-system" },
      ipAddresses: ["127.0.0.1"],
      onRotate: () => undefined,
      log,
    });
    rogue = await startAdmissionServer({
      host: "127.0.0.1",
      port: 0,
      routes: {
        "/test/configmaps": async () => {
          rogueCalls++;
          return allow();
        },
      },
      tls: rogueCert.current,
      log,
    });
    // Same names and IP, right shape, wrong issuer: the caBundle names the real Custody CA.
    await applyWebhookConfiguration(
      rest,
      testConfig(ROGUE_CONFIG, `https://127.0.0.1:${rogue.port}/test/configmaps`, currentCa.certPem, "rogue"),
    );
    const err = await eventually(
      async () => {
        const outcome = await createConfigMap("rogue").then(
          (cm) => cm,
          (e: unknown) => e,
        );
        if (!(outcome instanceof KubeApiError)) {
          await rest.delete(`/api/v1/namespaces/${ns}/configmaps/${(outcome as ConfigMap).metadata.name}`);
          throw new Error("created before the rogue webhook took effect");
        }
        return outcome;
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    expect(err.message).toMatch(/failed calling webhook "configmaps\.test\.custody\.dev"/);
    expect(err.message).toMatch(/x509: certificate signed by unknown authority/);
    expect(rogueCalls).toBe(0);
  });
});

describe("Custody's webhook registration", () => {
  it("applies the four webhooks as specified, updates the caBundle in place, and is removed", async () => {
    const url = `https://127.0.0.1:${server!.port}`;
    const namespaceSelector = { matchLabels: { [NS_LABEL]: suffix } };
    const applied = await applyRegistration(rest, {
      name: REAL_CONFIG,
      clientConfig: { url },
      caBundlePem: ca1.certPem,
      namespaceSelector,
    });
    const got = (await getRegistration(rest, REAL_CONFIG))!;
    expect(got.metadata.resourceVersion).toBe(applied.metadata.resourceVersion);
    expect(got.metadata.managedFields).toEqual([
      expect.objectContaining({ manager: "custody-operator", operation: "Apply" }),
    ]);
    const ca = Buffer.from(ca1.certPem).toString("base64");
    const optIn = { matchExpressions: [{ key: "custody.dev/agent-task", operator: "Exists" }] };
    const scoped = {
      matchLabels: { [NS_LABEL]: suffix },
      matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["kube-system"] }],
    };
    expect(got.webhooks.map((w) => w.name)).toEqual([
      "agenttasks.custody.dev",
      "pods.custody.dev",
      "workloads.custody.dev",
      "agentpolicies.custody.dev",
    ]);
    const [agenttasks, pods, workloads] = got.webhooks;
    expect(agenttasks).toMatchObject({
      clientConfig: { url: `${url}${AGENTTASKS_PATH}`, caBundle: ca },
      rules: [
        {
          operations: ["CREATE", "UPDATE"],
          apiGroups: ["custody.dev"],
          apiVersions: ["v1alpha1"],
          resources: ["agenttasks"],
        },
      ],
      failurePolicy: "Fail",
      matchPolicy: "Equivalent",
      namespaceSelector,
      sideEffects: "NoneOnDryRun",
      timeoutSeconds: 10,
      admissionReviewVersions: ["v1"],
      reinvocationPolicy: "Never",
    });
    // No objectSelector: every AgentTask goes through the webhook.
    expect(agenttasks!.objectSelector ?? {}).toEqual({});
    expect(pods).toMatchObject({
      clientConfig: { url: `${url}${PODS_PATH}`, caBundle: ca },
      rules: [{ operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"] }],
      failurePolicy: "Fail",
      matchPolicy: "Equivalent",
      namespaceSelector: scoped,
      objectSelector: optIn,
      sideEffects: "None",
      timeoutSeconds: 5,
      reinvocationPolicy: "IfNeeded",
    });
    expect(workloads).toMatchObject({
      clientConfig: { url: `${url}${WORKLOADS_PATH}`, caBundle: ca },
      rules: [
        { apiGroups: ["apps"], resources: ["deployments", "statefulsets", "daemonsets", "replicasets"] },
        { apiGroups: ["batch"], resources: ["jobs", "cronjobs"] },
      ],
      failurePolicy: "Fail",
      namespaceSelector: scoped,
      objectSelector: optIn,
      sideEffects: "None",
      timeoutSeconds: 5,
      reinvocationPolicy: "Never",
    });

    // Re-applying unchanged writes nothing; a new caBundle (CA rotation) updates every webhook.
    const again = await applyRegistration(rest, {
      name: REAL_CONFIG,
      clientConfig: { url },
      caBundlePem: ca1.certPem,
      namespaceSelector,
    });
    expect(again.metadata.resourceVersion).toBe(got.metadata.resourceVersion);
    const ca2 = newCa();
    const bundle = ca1.certPem + ca2.certPem;
    await applyRegistration(rest, {
      name: REAL_CONFIG,
      clientConfig: { url },
      caBundlePem: bundle,
      namespaceSelector,
    });
    const rotated = (await getRegistration(rest, REAL_CONFIG))!;
    expect(rotated.metadata.resourceVersion).not.toBe(got.metadata.resourceVersion);
    expect(rotated.webhooks.map((w) => Buffer.from(w.clientConfig.caBundle!, "base64").toString())).toEqual([
      bundle,
      bundle,
      bundle,
      bundle,
    ]);

    // ca-bundle mode (a chart owns the object): only the caBundle changes.
    const ca3 = newCa();
    expect(await patchCaBundle(rest, REAL_CONFIG, ca3.certPem)).toBe(true);
    const patched = (await getRegistration(rest, REAL_CONFIG))!;
    expect(patched.webhooks.map((w) => Buffer.from(w.clientConfig.caBundle!, "base64").toString())).toEqual([
      ca3.certPem,
      ca3.certPem,
      ca3.certPem,
      ca3.certPem,
    ]);
    expect(patched.webhooks.map((w) => w.clientConfig.url)).toEqual(
      rotated.webhooks.map((w) => w.clientConfig.url),
    );

    expect(await removeRegistration(rest, REAL_CONFIG)).toBe(true);
    expect(await getRegistration(rest, REAL_CONFIG)).toBeUndefined();
    expect(await removeRegistration(rest, REAL_CONFIG)).toBe(false);
    // ...and never brings a removed registration back.
    expect(await patchCaBundle(rest, REAL_CONFIG, ca3.certPem)).toBe(false);
    expect(await getRegistration(rest, REAL_CONFIG)).toBeUndefined();
  });
});
