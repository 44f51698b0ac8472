// The Helm chart against the real kube-apiserver: lint, render with several
// value sets and have the API server accept every object (server-side
// dry-run), refuse bad values with a message naming them, install it, and
// then prove its RBAC and webhook configuration by running the operator
// outside the cluster (the local environment runs no pods) as the chart's
// ServiceAccount, with the environment the chart's Deployment sets: it leads,
// patches the caBundle into the chart's configuration, issues a task, injects
// pods (bare and through a Deployment's controllers), without one RBAC
// refusal. Uninstalling removes every fail-closed registration and keeps the CRD.
//
// Scoped so that it cannot disturb other test files: the chart's webhooks and
// admission-policy bindings select only this file's task namespace (by a
// label only it carries); cluster-scoped objects carry the release's name; the
// CRD, already installed by other files (installCustody), is adopted with
// --take-ownership and kept on uninstall; afterAll removes every release
// object even after a failure.
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadAll } from "js-yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ASSERTION_ALGORITHMS, AssertionIssuerSchema, MAX_ISSUERS } from "../../core/admission/assertion.ts";
import { INJECTED_ENV_NAMES, SVID_VOLUME_NAME } from "../../core/admission/injection.ts";
import { DELEGATOR_KINDS } from "../../core/api/v1alpha1.ts";
import { TTL_PATTERN } from "../../core/duration.ts";
import { ADMISSION_KEY_SECRET, PROVENANCE_KEY_SECRET, PROVENANCE_SALT_SECRET } from "../../core/names.ts";
import { generateCa } from "../../core/x509/ca.ts";
import { serialFromRandom } from "../../core/x509/serial.ts";
import { loadOperatorConfig } from "../../operator/config.ts";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { KubeRest } from "../../shells/kube/rest.ts";
import { loadAssertionIssuers } from "../../webhook/assertions.ts";
import { buildWebhookConfiguration, type MutatingWebhookConfiguration } from "../../webhook/registration.ts";
import { eventually } from "../support/eventually.ts";
import {
  freePort,
  installCustody,
  OPERATOR_NODE_FLAGS,
  type OperatorProcess,
  startOperator,
  waitForAdmission,
} from "../support/operator-process.ts";
import { retryWhileUnavailable } from "../support/unavailable.ts";

const env = inject("localEnv");
const repo = join(import.meta.dirname, "..", "..");
const chart = join(repo, "charts", "custody");
const helm = join(env.binDir, "helm");
const kubectl = join(env.binDir, "kubectl");
const suffix = randomUUID().slice(0, 6);
const work = mkdtempSync(join(tmpdir(), "custody-chart-test-"));
const BROKERS = { kafka: { brokers: "kafka-0.kafka:9092,kafka-1.kafka:9093" } };

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command without blocking the event loop (the operator child's logs must keep flowing). */
function run(cmd: string, args: string[], input?: string): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(cmd, args, {
      env: { ...process.env, KUBECONFIG: env.kubeconfig },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr?.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr, ms: Date.now() - started }));
    child.stdin?.end(input ?? "");
  });
}

async function ok(cmd: string, args: string[], input?: string): Promise<Run> {
  const r = await run(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r;
}

let valuesFiles = 0;
/** A values file (JSON is YAML) for helm's -f. */
function valuesFile(values: object): string {
  const path = join(work, `values-${++valuesFiles}.json`);
  writeFileSync(path, JSON.stringify(values));
  return path;
}

function parseManifest(text: string): K8sObject[] {
  return (loadAll(text) as Array<K8sObject | null>).filter((o): o is K8sObject => o !== null);
}

async function template(release: string, namespace: string, values: object): Promise<K8sObject[]> {
  const r = await ok(helm, ["template", release, chart, "-n", namespace, "-f", valuesFile(values)]);
  return parseManifest(r.stdout);
}

function byKind(objects: K8sObject[], kind: string): K8sObject[] {
  return objects.filter((o) => o.kind === kind);
}

function one(objects: K8sObject[], kind: string): K8sObject {
  const found = byKind(objects, kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, found ${found.length}`);
  return found[0]!;
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: unknown;
}

function containerOf(objects: K8sObject[]) {
  const d = one(objects, "Deployment") as unknown as {
    spec: {
      replicas: number;
      template: {
        spec: {
          serviceAccountName: string;
          securityContext: Record<string, unknown>;
          containers: Array<{
            env: EnvVar[];
            securityContext: Record<string, unknown>;
            livenessProbe: { httpGet: { path: string; port: string } };
            readinessProbe: { httpGet: { path: string; port: string } };
            resources?: unknown;
            ports: Array<{ name: string; containerPort: number }>;
          }>;
        };
      };
    };
  };
  return { deployment: d, container: d.spec.template.spec.containers[0]! };
}

function envOf(objects: K8sObject[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of containerOf(objects).container.env) if (e.value !== undefined) out[e.name] = e.value;
  return out;
}

/** A request the API server's authorizer refused (not e.g. a namespace being deleted). */
const rbacRefusal = (line: string) => /is forbidden: User .* cannot /.test(line);

/** A PEM certificate for buildWebhookConfiguration (its caBundle is not compared). */
const anyCaPem = generateCa({
  trustDomain: "chart.test",
  now: new Date(),
  validityMs: 3_600_000,
  serial: serialFromRandom(Buffer.alloc(16, 7)),
}).certPem;

function withoutCaBundle(webhooks: MutatingWebhookConfiguration["webhooks"]) {
  return webhooks.map((w) => {
    const { caBundle: _ignored, ...clientConfig } = w.clientConfig;
    return { ...w, clientConfig };
  });
}

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------- lint and render

describe("chart: lint, render, server-side dry-run", () => {
  const dryNs = `chart-dry-${suffix}`;

  beforeAll(async () => {
    await ok(kubectl, ["create", "namespace", dryNs]);
  });
  afterAll(async () => {
    await run(kubectl, ["delete", "namespace", dryNs, "--wait=false", "--ignore-not-found"]);
  });

  it("helm lint --strict is clean; without kafka.brokers, template and install refuse, naming it", async () => {
    const clean = await run(helm, ["lint", "--strict", chart, "-f", valuesFile(BROKERS)]);
    expect(clean.stdout + clean.stderr).toContain("0 chart(s) failed");
    expect(clean.code).toBe(0);
    expect(clean.stdout + clean.stderr).not.toMatch(/\[(WARNING|ERROR)\]|level=WARN/);
    // helm 4 lints a missing required value as a warning only...
    const lenient = await run(helm, ["lint", "--strict", chart]);
    expect(lenient.stdout + lenient.stderr).toContain("kafka.brokers is required");
    // ...rendering refuses it.
    const missing = await run(helm, ["template", "x", chart]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("kafka.brokers is required");
  });

  // Every value set's objects go to the API server as a server-side dry run:
  // schemas, defaulting, validation (CEL compiles, selectors, probes) and
  // admission run; nothing is stored.
  const valueSets: Array<{ name: string; values: object; expect: (objects: K8sObject[]) => void }> = [
    {
      name: "defaults",
      values: BROKERS,
      expect: (objects) => {
        expect(one(objects, "Deployment").spec).toMatchObject({ replicas: 2 });
        expect(one(objects, "PodDisruptionBudget").spec).toMatchObject({ minAvailable: 1 });
        // The Lease renewals of the chart's ServiceAccount, and nothing else, in leader-election.
        expect(one(objects, "FlowSchema").spec).toMatchObject({
          priorityLevelConfiguration: { name: "leader-election" },
          rules: [
            {
              subjects: [
                {
                  kind: "ServiceAccount",
                  serviceAccount: { name: one(objects, "ServiceAccount").metadata.name },
                },
              ],
              resourceRules: [
                { apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get", "update"] },
              ],
            },
          ],
        });
        // AgentTask, AgentPolicy, ClusterAgentPolicy: all kept on uninstall.
        const crds = byKind(objects, "CustomResourceDefinition");
        expect(crds.map((c) => c.metadata.name).sort()).toEqual([
          "agentpolicies.custody.dev",
          "agenttasks.custody.dev",
          "clusteragentpolicies.custody.dev",
        ]);
        for (const crd of crds) expect(crd.metadata.annotations?.["helm.sh/resource-policy"]).toBe("keep");
        expect(byKind(objects, "ValidatingAdmissionPolicy")).toHaveLength(3);
        expect(byKind(objects, "ValidatingAdmissionPolicyBinding")).toHaveLength(3);
        expect(byKind(objects, "MutatingAdmissionPolicy")).toHaveLength(1);
        expect(byKind(objects, "NetworkPolicy")).toHaveLength(0);
        expect(byKind(objects, "ServiceMonitor")).toHaveLength(0);
      },
    },
    {
      name: "operator outside the cluster, scoped, nothing cluster-wide but RBAC and the webhooks",
      values: {
        ...BROKERS,
        replicas: 0,
        podDisruptionBudget: { enabled: false },
        excludedNamespaces: [],
        webhook: {
          url: "https://127.0.0.1:9443/base/",
          namespaceSelector: {
            matchLabels: { team: "a" },
            matchExpressions: [{ key: "tier", operator: "In", values: ["x"] }],
          },
          timeoutSeconds: { agenttasks: 15, pods: 3, workloads: 4 },
        },
        crds: { install: false },
        admissionPolicies: { install: false },
        leaderElection: { priorityLevel: "" },
        topologySpreadConstraints: [],
      },
      expect: (objects) => {
        expect(byKind(objects, "PodDisruptionBudget")).toHaveLength(0);
        expect(byKind(objects, "CustomResourceDefinition")).toHaveLength(0);
        expect(byKind(objects, "FlowSchema")).toHaveLength(0);
        expect(objects.filter((o) => o.kind.endsWith("AdmissionPolicy"))).toHaveLength(0);
        expect(envOf(objects).CUSTODY_WEBHOOK_URL).toBe("https://127.0.0.1:9443/base");
      },
    },
    {
      name: "hardened: own CA, Kafka TLS and SASL, issuers, NetworkPolicy, 3 replicas",
      values: {
        trustDomain: "prod.example.com",
        defaultTtl: "15m",
        replicas: 3,
        image: { digest: `sha256:${"a".repeat(64)}` },
        serviceAccount: { create: false, name: "custody-operator" },
        ca: { source: "existingSecret", existingSecret: "my-ca" },
        kafka: {
          brokers: "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096",
          topic: "prod.custody",
          partitions: 12,
          replication: 3,
          tls: { enabled: true, caSecret: "kafka-ca" },
          sasl: { mechanism: "scram-sha-512", secretName: "kafka-user" },
        },
        assertionIssuers: [
          {
            issuer: "https://workflows.example.com",
            jwksUri: "https://workflows.example.com/.well-known/jwks.json",
            kinds: ["Workflow"],
          },
        ],
        crds: { keep: false },
        networkPolicy: {
          enabled: true,
          webhookFrom: [{ ipBlock: { cidr: "10.0.0.0/8" } }],
          metricsFrom: [
            { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } },
          ],
          apiServer: { cidrs: ["10.96.0.1/32"], ports: [443] },
          kafkaTo: [{ ipBlock: { cidr: "10.20.0.0/16" } }],
          extraEgress: [{ to: [{ ipBlock: { cidr: "203.0.113.0/24" } }], ports: [{ port: 443 }] }],
        },
        podAnnotations: { "example.com/team": "security" },
        nodeSelector: { "kubernetes.io/os": "linux" },
        tolerations: [{ key: "dedicated", operator: "Equal", value: "security", effect: "NoSchedule" }],
      },
      expect: (objects) => {
        expect(byKind(objects, "ServiceAccount")).toHaveLength(0);
        for (const crd of byKind(objects, "CustomResourceDefinition"))
          expect(crd.metadata.annotations?.["helm.sh/resource-policy"]).toBeUndefined();
        const e = containerOf(objects).container.env;
        expect(e.find((v) => v.name === "CUSTODY_CA_SECRET")?.value).toBe("my-ca");
        expect(e.find((v) => v.name === "CUSTODY_KAFKA_TLS")?.value).toBe("true");
        expect(e.find((v) => v.name === "CUSTODY_KAFKA_SASL_PASSWORD")?.valueFrom).toEqual({
          secretKeyRef: { name: "kafka-user", key: "password" },
        });
        const np = one(objects, "NetworkPolicy").spec as {
          egress: Array<{ ports: Array<{ port: number }> }>;
        };
        // The Kafka rule's port comes from kafka.brokers.
        expect(np.egress.some((r) => r.ports?.some((p) => p.port === 9096))).toBe(true);
        const role = one(objects, "Role") as unknown as { rules: Array<{ resourceNames?: string[] }> };
        expect(role.rules[0]!.resourceNames).toContain("my-ca");
      },
    },
  ];

  for (const set of valueSets) {
    it(`${set.name}: rendered, and the API server accepts every object`, async () => {
      const release = `dry-${suffix}`;
      const objects = await template(release, dryNs, set.values);
      set.expect(objects);
      const manifest = objects.map((o) => JSON.stringify(o)).join("\n---\n");
      // --force-conflicts: a CRD kept by an earlier release carries that release's labels (a dry run changes nothing).
      const applied = await ok(
        kubectl,
        [
          "apply",
          "--server-side",
          "--force-conflicts",
          "--dry-run=server",
          "--field-manager=custody-chart-test",
          "-f",
          "-",
        ],
        manifest,
      );
      const lines = applied.stdout.trim().split("\n");
      expect(lines).toHaveLength(objects.length);
      for (const line of lines) expect(line).toMatch(/serverside-applied \(server dry run\)$/);
    });
  }

  it("renders a ServiceMonitor (monitoring.coreos.com/v1) only when enabled", async () => {
    const objects = await template("sm", dryNs, {
      ...BROKERS,
      serviceMonitor: { enabled: true, interval: "15s", labels: { release: "prometheus" } },
    });
    const sm = one(objects, "ServiceMonitor") as unknown as {
      apiVersion: string;
      metadata: { labels: Record<string, string> };
      spec: { selector: { matchLabels: Record<string, string> }; endpoints: Array<Record<string, unknown>> };
    };
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.metadata.labels.release).toBe("prometheus");
    expect(sm.spec.endpoints).toEqual([
      { port: "metrics", path: "/metrics", scheme: "http", interval: "15s" },
    ]);
    // It selects the metrics Service, whose port is named metrics.
    const metrics = byKind(objects, "Service").find(
      (s) => s.metadata.labels?.["app.kubernetes.io/component"] === "metrics",
    ) as unknown as {
      metadata: { labels: Record<string, string> };
      spec: { ports: Array<{ name: string }> };
    };
    for (const [k, v] of Object.entries(sm.spec.selector.matchLabels))
      expect(metrics.metadata.labels[k]).toBe(v);
    expect(metrics.spec.ports[0]!.name).toBe("metrics");
  });

  it("renders the webhooks exactly as buildWebhookConfiguration (caBundle aside)", async () => {
    const cases: Array<{ values: object; options: Parameters<typeof buildWebhookConfiguration>[0] }> = [
      {
        values: BROKERS,
        options: {
          name: "wh-custody",
          clientConfig: { service: { namespace: dryNs, name: "wh-custody-webhook", port: 443 } },
          caBundlePem: anyCaPem,
          excludedNamespaces: ["kube-system"],
        },
      },
      {
        values: {
          ...BROKERS,
          excludedNamespaces: ["kube-system", "kube-public"],
          webhook: {
            url: "https://127.0.0.1:9443",
            namespaceSelector: {
              matchLabels: { "custody.dev/chart-test": "x" },
              matchExpressions: [{ key: "env", operator: "NotIn", values: ["prod"] }],
            },
          },
        },
        options: {
          name: "wh-custody",
          clientConfig: { url: "https://127.0.0.1:9443" },
          caBundlePem: anyCaPem,
          namespaceSelector: {
            matchLabels: { "custody.dev/chart-test": "x" },
            matchExpressions: [{ key: "env", operator: "NotIn", values: ["prod"] }],
          },
          excludedNamespaces: ["kube-system", "kube-public"],
        },
      },
      {
        values: {
          ...BROKERS,
          excludedNamespaces: [],
          webhook: { url: "https://custody.example.com/hooks/" },
        },
        options: {
          name: "wh-custody",
          clientConfig: { url: "https://custody.example.com/hooks/" },
          caBundlePem: anyCaPem,
          excludedNamespaces: [],
        },
      },
    ];
    for (const c of cases) {
      const rendered = one(
        await template("wh", dryNs, c.values),
        "MutatingWebhookConfiguration",
      ) as unknown as MutatingWebhookConfiguration;
      const built = buildWebhookConfiguration(c.options);
      expect(rendered.metadata.name).toBe(built.metadata.name);
      // The chart never sets caBundle: the operator patches it in, and an upgrade cannot reset it.
      for (const w of rendered.webhooks) expect(w.clientConfig.caBundle).toBeUndefined();
      expect(withoutCaBundle(rendered.webhooks)).toEqual(withoutCaBundle(built.webhooks));
    }
  });

  it("renders webhook/manifests' admission policies, named after the release, bindings scoped by webhook.namespaceSelector", async () => {
    const stripLabels = (o: K8sObject) => {
      const { labels: _labels, ...metadata } = o.metadata;
      return { ...o, metadata };
    };
    const fromManifests: K8sObject[] = [];
    for (const f of [
      "agenttask-admission-record.yaml",
      "agenttask-finalizer-policy.yaml",
      "pod-credential-references.yaml",
      "workload-opt-in-label.yaml",
    ])
      fromManifests.push(...parseManifest(readFileSync(join(repo, "webhook", "manifests", f), "utf8")));
    const policies = (objects: K8sObject[]) =>
      objects
        .filter((o) => o.kind.endsWith("AdmissionPolicy") || o.kind.endsWith("AdmissionPolicyBinding"))
        .sort((a, b) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`));

    // A release named custody renders the manifests' very objects and names.
    const asCustody = policies(await template("custody", dryNs, BROKERS)).map(stripLabels);
    expect(asCustody).toEqual(policies(fromManifests).map(stripLabels));

    // Another release: its own names; a selector scopes every binding.
    const selector = { matchLabels: { "custody.dev/chart-test": "y" } };
    const scoped = policies(
      await template("other", dryNs, { ...BROKERS, webhook: { namespaceSelector: selector } }),
    );
    expect(scoped).toHaveLength(fromManifests.length);
    for (const o of scoped) {
      expect(o.metadata.name).toMatch(/^other-custody-/);
      if (o.kind.endsWith("Binding")) {
        const spec = o.spec as { policyName: string; matchResources: unknown };
        expect(spec.policyName).toMatch(/^other-custody-/);
        expect(spec.matchResources).toEqual({ namespaceSelector: selector });
      }
    }
  });

  it("sets an environment the operator accepts, and names what its RBAC grants", async () => {
    const values = {
      ...BROKERS,
      trustDomain: "chart.test",
      defaultTtl: "30m",
      excludedNamespaces: ["kube-system", "platform"],
      webhook: { namespaceSelector: { matchLabels: { a: "b" } } },
      assertionIssuers: [
        {
          issuer: "https://ci.example.com",
          publicKeyPem: readFileSync(join(env.pki, "sa.pub"), "utf8"),
          algorithms: ["ES256"],
          kinds: ["Workflow"],
        },
      ],
    };
    const objects = await template("envcheck", dryNs, values);
    const vars = envOf(objects);
    const config = loadOperatorConfig(vars);
    expect(config).toMatchObject({
      trustDomain: "chart.test",
      namespace: dryNs,
      defaultTtl: "30m",
      leaderElection: true,
      kafka: { brokers: ["kafka-0.kafka:9092", "kafka-1.kafka:9093"], topic: "custody.provenance" },
      healthAddr: { host: "0.0.0.0", port: 8081 },
      webhook: {
        addr: { host: "0.0.0.0", port: 8443 },
        url: undefined,
        registration: "ca-bundle",
        removeOnExit: false,
        namespaceSelector: { matchLabels: { a: "b" } },
        excludedNamespaces: ["kube-system", "platform"],
      },
    });
    expect(loadAssertionIssuers(vars)).toMatchObject([
      { issuer: "https://ci.example.com", kinds: ["Workflow"] },
    ]);
    expect(vars.NODE_OPTIONS).toContain(OPERATOR_NODE_FLAGS);

    // The names the operator uses are the objects the chart creates and its RBAC names.
    const mwc = one(objects, "MutatingWebhookConfiguration");
    expect(config.webhook.configName).toBe(mwc.metadata.name);
    const webhookService = byKind(objects, "Service").find(
      (s) => s.metadata.name === config.webhook.service.name,
    );
    expect(webhookService?.spec).toMatchObject({
      ports: [{ port: config.webhook.service.port, targetPort: "webhook" }],
    });
    const clusterRole = one(objects, "ClusterRole") as unknown as {
      rules: Array<{ apiGroups: string[]; resources: string[]; resourceNames?: string[] }>;
    };
    expect(
      clusterRole.rules.find((r) => r.resources.includes("mutatingwebhookconfigurations"))?.resourceNames,
    ).toEqual([mwc.metadata.name]);
    const role = one(objects, "Role") as unknown as {
      rules: Array<{ resources: string[]; resourceNames?: string[]; verbs: string[] }>;
    };
    const secretNames = role.rules.find((r) => r.resources.includes("secrets"))?.resourceNames;
    expect(secretNames).toEqual([
      config.caSecretName,
      PROVENANCE_KEY_SECRET,
      ADMISSION_KEY_SECRET,
      PROVENANCE_SALT_SECRET,
    ]);
    const leaseRule = role.rules.find((r) => r.resources.includes("leases") && r.resourceNames);
    expect(leaseRule?.resourceNames).toEqual([config.leaseName]);

    // The pod's security context.
    const { deployment, container } = containerOf(objects);
    expect(deployment.spec.template.spec.securityContext).toMatchObject({
      runAsNonRoot: true,
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container.securityContext).toMatchObject({
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container.livenessProbe.httpGet).toEqual({ path: "/livez", port: "health" });
    expect(container.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "health" });
    expect(container.ports.find((p) => p.name === "health")?.containerPort).toBe(config.healthAddr.port);
    expect(container.ports.find((p) => p.name === "webhook")?.containerPort).toBe(config.webhook.addr.port);
  });

  it("values.schema.json follows the operator's own rules (ttl, issuers, delegator kinds)", () => {
    const schema = JSON.parse(readFileSync(join(chart, "values.schema.json"), "utf8")) as {
      properties: { defaultTtl: { pattern: string }; assertionIssuers: { maxItems: number } };
      definitions: {
        assertionIssuer: {
          properties: Record<string, { items?: { enum?: string[] } }>;
        };
      };
    };
    expect(schema.properties.defaultTtl.pattern).toBe(TTL_PATTERN);
    expect(schema.properties.assertionIssuers.maxItems).toBe(MAX_ISSUERS);
    const issuer = schema.definitions.assertionIssuer.properties;
    expect(Object.keys(issuer).sort()).toEqual(Object.keys(AssertionIssuerSchema.shape).sort());
    expect(issuer.algorithms?.items?.enum).toEqual([...ASSERTION_ALGORITHMS]);
    expect(issuer.kinds?.items?.enum).toEqual([...DELEGATOR_KINDS]);
  });

  const bad: Array<{ why: string; set: string[]; says: string[] }> = [
    { why: "a ttl in words", set: ["defaultTtl=5 minutes"], says: ["/defaultTtl", "5 minutes"] },
    { why: "a ttl under 5m", set: ["defaultTtl=3m"], says: ["defaultTtl", "3m", "between 5m and 24h"] },
    {
      why: "a bad trust domain",
      set: ["trustDomain=Not_A_Domain!"],
      says: ["/trustDomain", "Not_A_Domain!"],
    },
    { why: "replicas 0 with a PDB", set: ["replicas=0"], says: ["/replicas", "minimum"] },
    {
      why: "replicas 0 without an operator elsewhere",
      set: ["replicas=0", "podDisruptionBudget.enabled=false"],
      says: ["/webhook/url"],
    },
    {
      why: "a plain-http webhook.url",
      set: ["webhook.url=http://127.0.0.1:8443"],
      says: ["/webhook/url", "http://127.0.0.1:8443"],
    },
    { why: "a misspelt value", set: ["trustdomain=x"], says: ["trustdomain", "not allowed"] },
    { why: "brokers without ports", set: ["kafka.brokers=kafka"], says: ["/kafka/brokers", "'kafka'"] },
    {
      why: "an existing CA without its name",
      set: ["ca.source=existingSecret"],
      says: ["/ca/existingSecret"],
    },
    {
      why: "an unknown SASL mechanism",
      set: ["kafka.sasl.mechanism=gssapi"],
      says: ["/kafka/sasl/mechanism"],
    },
    {
      why: "SASL without credentials",
      set: ["kafka.sasl.mechanism=plain"],
      says: ["/kafka/sasl/secretName"],
    },
    {
      why: "two replicas without leader election",
      set: ["leaderElection.enabled=false"],
      says: ["/leaderElection/enabled"],
    },
    {
      why: "an issuer fetching keys over http",
      set: ["assertionIssuers[0].issuer=x", "assertionIssuers[0].jwksUri=http://keys.example.com"],
      says: ["/assertionIssuers/0/jwksUri", "http://keys.example.com"],
    },
    {
      why: "an issuer without keys",
      set: ["assertionIssuers[0].issuer=x"],
      says: ["/assertionIssuers/0", "jwksUri"],
    },
    {
      why: "a selector with a typo",
      set: ["webhook.namespaceSelector.matchLabel.a=b"],
      says: ["/webhook/namespaceSelector", "matchLabel"],
    },
    {
      why: "a webhook timeout over 30 s",
      set: ["webhook.timeoutSeconds.pods=31"],
      says: ["/webhook/timeoutSeconds/pods"],
    },
    { why: "an unknown log level", set: ["logLevel=verbose"], says: ["/logLevel"] },
  ];
  for (const b of bad) {
    it(`refuses ${b.why}, naming the value`, async () => {
      const args = ["template", "bad", chart, "-f", valuesFile(BROKERS)];
      for (const s of b.set) args.push("--set", s);
      const r = await run(helm, args);
      expect(r.code).not.toBe(0);
      for (const s of b.says) expect(r.stderr).toContain(s);
    });
  }

  it("refuses bad values at helm install too, before creating anything", async () => {
    const r = await run(helm, [
      "install",
      `bad-${suffix}`,
      chart,
      "-n",
      dryNs,
      "-f",
      valuesFile(BROKERS),
      "--set",
      "defaultTtl=5 minutes",
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("/defaultTtl");
    const releases = await ok(helm, ["list", "-n", dryNs, "-q"]);
    expect(releases.stdout.trim()).toBe("");
  });
});

// ---------------------------------------------------------------- installed, and proven by an operator as its ServiceAccount

describe("chart: installed, with the operator running outside the cluster as the chart's ServiceAccount", () => {
  const release = `chart-${suffix}`;
  const fullname = `${release}-custody`;
  const ns = `chart-${suffix}`;
  const taskNs = `chart-tasks-${suffix}`;
  const SCOPE_LABEL = "custody.dev/chart-test";
  const topic = `custody.chart.${suffix}`;
  const trustDomain = "chart.test";
  let webhookPort = 0;
  let installed: K8sObject[] = [];
  let operator: OperatorProcess | undefined;
  let admin: KubeRest;
  let alice: KubeRest;
  const timings: Record<string, number> = {};

  beforeAll(async () => {
    admin = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
    alice = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "alice" }));
    // What every other test file installs; the chart adopts this CRD.
    installCustody(env);
    await admin.post("/api/v1/namespaces", { metadata: { name: ns } });
    await admin.post("/api/v1/namespaces", { metadata: { name: taskNs, labels: { [SCOPE_LABEL]: suffix } } });
    webhookPort = await freePort();
  });

  afterAll(async () => {
    await operator?.stop("SIGKILL").catch(() => undefined);
    // Whatever happened: no fail-closed registration, policy or cluster-wide grant of this release survives.
    await run(helm, ["uninstall", release, "-n", ns, "--wait", "--timeout", "60s"]);
    await run(kubectl, [
      "delete",
      "--ignore-not-found",
      `mutatingwebhookconfiguration/${fullname}`,
      `mutatingadmissionpolicybinding/${fullname}-agenttask-finalizer`,
      `mutatingadmissionpolicy/${fullname}-agenttask-finalizer`,
      ...["agenttask-admission-record", "pod-credential-references", "workload-opt-in-label"].flatMap((p) => [
        `validatingadmissionpolicybinding/${fullname}-${p}`,
        `validatingadmissionpolicy/${fullname}-${p}`,
      ]),
      `clusterrolebinding/${fullname}-operator`,
      `clusterrole/${fullname}-operator`,
      `flowschema/${fullname}-leader-election`,
    ]);
    // Tasks left with Custody's finalizer would hold their namespace in Terminating.
    const left = await admin
      .get<{ items: K8sObject[] }>(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks`)
      .catch(() => ({ items: [] }));
    for (const t of left.items)
      await admin
        .patch(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks/${t.metadata.name}`, {
          metadata: { finalizers: null },
        })
        .catch(() => undefined);
    for (const n of [taskNs, ns]) await admin.delete(`/api/v1/namespaces/${n}`).catch(() => undefined);
    admin?.close();
    alice?.close();
    console.log(`[chart.test] timings (ms): ${JSON.stringify(timings)}`);
  });

  it("helm install creates every object of the release's manifest", async () => {
    const values = {
      trustDomain,
      kafka: { brokers: env.kafkaBrokers, topic, partitions: 1 },
      webhook: {
        url: `https://127.0.0.1:${webhookPort}`,
        namespaceSelector: { matchLabels: { [SCOPE_LABEL]: suffix } },
      },
    };
    // --take-ownership: the CRD exists already (other test files apply crds/ with kubectl).
    const r = await ok(helm, [
      "install",
      release,
      chart,
      "-n",
      ns,
      "--take-ownership",
      "--timeout",
      "60s",
      "-f",
      valuesFile(values),
    ]);
    timings.helmInstall = r.ms;
    installed = parseManifest((await ok(helm, ["get", "manifest", release, "-n", ns])).stdout);
    const kinds = installed.map((o) => o.kind).sort();
    expect(kinds).toEqual(
      [
        "ClusterRole",
        "ClusterRoleBinding",
        // AgentTask, AgentPolicy, ClusterAgentPolicy
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "FlowSchema",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        // webhook, identity endpoint, metrics
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
      ].sort(),
    );
    // Every object exists in the API server, owned by this release.
    const manifestPath = join(work, "installed.yaml");
    writeFileSync(manifestPath, installed.map((o) => JSON.stringify(o)).join("\n---\n"));
    const live = JSON.parse((await ok(kubectl, ["get", "-f", manifestPath, "-o", "json"])).stdout) as {
      items: K8sObject[];
    };
    const key = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`;
    expect(live.items.map(key).sort()).toEqual(installed.map(key).sort());
    for (const o of live.items) {
      expect(o.metadata.annotations?.["meta.helm.sh/release-name"], key(o)).toBe(release);
      expect(o.metadata.labels?.["app.kubernetes.io/managed-by"], key(o)).toBe("Helm");
    }
    // The chart's webhooks point at the operator outside, with no caBundle yet.
    const mwc = live.items.find(
      (o) => o.kind === "MutatingWebhookConfiguration",
    ) as unknown as MutatingWebhookConfiguration;
    expect(mwc.webhooks.map((w) => w.clientConfig.url)).toEqual([
      `https://127.0.0.1:${webhookPort}/admit/agenttasks`,
      `https://127.0.0.1:${webhookPort}/admit/pods`,
      `https://127.0.0.1:${webhookPort}/admit/workloads`,
      `https://127.0.0.1:${webhookPort}/admit/agentpolicies`,
    ]);
    for (const w of mwc.webhooks) expect(w.clientConfig.caBundle ?? "").toBe("");
  });

  it("the operator, with only the chart's RBAC and the Deployment's environment, leads, patches the caBundle, issues and injects", {
    timeout: 180_000,
  }, async () => {
    expect(installed.length).toBeGreaterThan(0);
    const sa = one(installed, "ServiceAccount").metadata.name;
    // A TokenRequest for the chart's ServiceAccount, in a kubeconfig of its own.
    const token = (await ok(kubectl, ["create", "token", sa, "-n", ns, "--duration", "1h"])).stdout.trim();
    const kubeconfig = join(work, "operator.kubeconfig");
    writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        clusters: [
          {
            name: "local",
            cluster: {
              server: env.apiServer,
              "certificate-authority-data": readFileSync(join(env.pki, "ca.crt")).toString("base64"),
            },
          },
        ],
        users: [{ name: sa, user: { token } }],
        contexts: [{ name: sa, context: { cluster: "local", user: sa, namespace: ns } }],
        "current-context": sa,
      }),
    );
    const whoami = await ok(kubectl, [
      "--kubeconfig",
      kubeconfig,
      "auth",
      "whoami",
      "-o",
      "jsonpath={.status.userInfo.username}",
    ]);
    expect(whoami.stdout).toBe(`system:serviceaccount:${ns}:${sa}`);

    // The Deployment's environment, as the pod would get it; only the listen
    // addresses change (127.0.0.1, the port the chart's webhook.url names).
    const { container } = containerOf(installed);
    expect(container.env.filter((e) => e.valueFrom !== undefined)).toEqual([]);
    const deploymentEnv = envOf(installed);
    expect(deploymentEnv.CUSTODY_WEBHOOK_REGISTRATION).toBe("ca-bundle");
    expect(deploymentEnv.CUSTODY_WEBHOOK_CONFIG_NAME).toBe(fullname);
    expect(deploymentEnv.CUSTODY_WEBHOOK_URL).toBe(`https://127.0.0.1:${webhookPort}`);
    const { CUSTODY_HEALTH_ADDR: _health, CUSTODY_OIDC_ADDR: _identity, ...extraEnv } = deploymentEnv;
    const started = Date.now();
    operator = await startOperator(env, {
      namespace: ns,
      topic,
      extraEnv: { ...extraEnv, CUSTODY_WEBHOOK_ADDR: `127.0.0.1:${webhookPort}`, KUBECONFIG: kubeconfig },
    });
    timings.operatorReady = Date.now() - started;
    const op = operator;
    expect(op.namespace).toBe(ns);

    // Leader: the chart's Lease names this process.
    const lease = await eventually(
      async () => {
        const l = await admin.get<{ spec?: { holderIdentity?: string } }>(
          `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/${fullname}-operator`,
        );
        if (!l.spec?.holderIdentity) throw new Error("no holder yet");
        if (!op.logs.some((line) => line.includes("leading: reconciling")))
          throw new Error("not leading yet");
        return l;
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    timings.leading = Date.now() - started;
    expect(lease.spec?.holderIdentity).toBeTruthy();

    // Its Lease requests run in the API server's leader-election priority
    // level (the chart's FlowSchema), as the API server itself reports; its
    // other requests do not.
    const uidOf = async (path: string) => (await admin.get<K8sObject>(path)).metadata.uid;
    const leaderElectionLevel = await uidOf(
      "/apis/flowcontrol.apiserver.k8s.io/v1/prioritylevelconfigurations/leader-election",
    );
    const flowSchema = await uidOf(
      `/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/${fullname}-leader-election`,
    );
    const classifiedAs = (path: string, method = "GET", body?: unknown) =>
      new Promise<{ flowSchema: unknown; priorityLevel: unknown }>((resolve, reject) => {
        const req = httpsRequest(
          `${env.apiServer}${path}`,
          {
            method,
            ca: readFileSync(join(env.pki, "ca.crt")),
            headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          },
          (res) => {
            res.resume();
            resolve({
              flowSchema: res.headers["x-kubernetes-pf-flowschema-uid"],
              priorityLevel: res.headers["x-kubernetes-pf-prioritylevel-uid"],
            });
          },
        );
        req.on("error", reject);
        req.end(body === undefined ? undefined : JSON.stringify(body));
      });
    const leasePath = `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`;
    expect(await classifiedAs(`${leasePath}/${fullname}-operator`)).toEqual({
      flowSchema,
      priorityLevel: leaderElectionLevel,
    });
    // Creates stay out of it: the webhook creates a Lease per assertion jti.
    const create = await classifiedAs(`${leasePath}?dryRun=All`, "POST", {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "jti-probe" },
    });
    expect(create.priorityLevel).toBeTruthy();
    expect(create.priorityLevel).not.toBe(leaderElectionLevel);
    const other = await classifiedAs(`/api/v1/namespaces/${ns}/configmaps`);
    expect(other.priorityLevel).toBeTruthy();
    expect(other.priorityLevel).not.toBe(leaderElectionLevel);

    // caBundle: the generated CA, in each of the chart's four webhooks.
    const caSecret = await admin.get<{
      data: Record<string, string>;
      metadata: { annotations?: Record<string, string> };
    }>(`/api/v1/namespaces/${ns}/secrets/${fullname}-ca`);
    expect(caSecret.metadata.annotations?.["custody.dev/ca-source"]).toBe("generated");
    const caPem = Buffer.from(caSecret.data["tls.crt"]!, "base64").toString("utf8");
    await eventually(
      async () => {
        const mwc = await admin.get<MutatingWebhookConfiguration>(
          `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${fullname}`,
        );
        expect(mwc.webhooks).toHaveLength(4);
        for (const w of mwc.webhooks)
          expect(Buffer.from(w.clientConfig.caBundle ?? "", "base64").toString("utf8")).toContain(
            caPem.trim(),
          );
      },
      { timeoutMs: 20_000, intervalMs: 100 },
    );
    timings.caBundlePatched = Date.now() - started;
    for (const s of [PROVENANCE_KEY_SECRET, ADMISSION_KEY_SECRET])
      await admin.get(`/api/v1/namespaces/${ns}/secrets/${s}`);

    // An AgentTask created by admin: the chart's webhook (through webhook.url) records the requester.
    await waitForAdmission(admin, taskNs);
    await admin.post(`/api/v1/namespaces/${taskNs}/serviceaccounts`, { metadata: { name: "agent" } });
    const taskStarted = Date.now();
    await retryWhileUnavailable(() =>
      admin.post(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks`, {
        apiVersion: "custody.dev/v1alpha1",
        kind: "AgentTask",
        metadata: { name: "review" },
        spec: {
          agent: { name: "coder" },
          scope: ["read:repo/*"],
          serviceAccountName: "agent",
          ttl: "1h",
          audiences: ["https://api.example"],
        },
      }),
    );
    const task = await eventually(
      async () => {
        const t = await admin.get<{
          metadata: { annotations?: Record<string, string> };
          status?: { phase?: string; spiffeID?: string; conditions?: unknown };
        }>(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks/review`);
        if (t.status?.phase !== "Issued")
          throw new Error(`phase ${t.status?.phase ?? "(none)"}: ${JSON.stringify(t.status?.conditions)}`);
        return t;
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    timings.taskIssued = Date.now() - taskStarted;
    expect(task.metadata.annotations?.["custody.dev/requester-record"]).toBeTruthy();
    expect(task.status?.spiffeID).toBe(`spiffe://${trustDomain}/ns/${taskNs}/agent/coder/task/review`);
    const credential = await admin.get<{ data: Record<string, string> }>(
      `/api/v1/namespaces/${taskNs}/secrets/custody-svid-review`,
    );
    expect(Object.keys(credential.data).sort()).toEqual([
      "ca.crt",
      "jwt-svid.https___api.example",
      "jwt-svid.token-exchange",
      "spiffe-id",
      "tls.crt",
      "tls.key",
    ]);
    // Its JWT-SVID names the chart's issuer (the identity Service) and the task's SPIFFE ID.
    const jwtClaims = JSON.parse(
      Buffer.from(
        Buffer.from(credential.data["jwt-svid.https___api.example"]!, "base64")
          .toString("utf8")
          .split(".")[1]!,
        "base64url",
      ).toString("utf8"),
    ) as { iss: string; sub: string; aud: string };
    expect(jwtClaims).toMatchObject({
      iss: `https://${fullname}-identity.${ns}.svc`,
      sub: task.status?.spiffeID,
      aud: "https://api.example",
    });
    const bundle = await eventually(() =>
      admin.get<{ data: Record<string, string> }>(
        `/api/v1/namespaces/${taskNs}/configmaps/custody-trust-bundle`,
      ),
    );
    expect(bundle.data["ca.crt"]).toContain(caPem.trim());

    // Pods: alice may use the task (SubjectAccessReview), a bare pod and a
    // Deployment's pods (the workloads webhook looks up owners) get the identity.
    await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${taskNs}/roles`, {
      metadata: { name: "agent-runner" },
      rules: [
        { apiGroups: [""], resources: ["pods"], verbs: ["create", "get", "list"] },
        { apiGroups: ["apps"], resources: ["deployments"], verbs: ["create", "get"] },
        { apiGroups: ["custody.dev"], resources: ["agenttasks"], verbs: ["get", "use"] },
      ],
    });
    await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${taskNs}/rolebindings`, {
      metadata: { name: "agent-runner-alice" },
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "agent-runner" },
      subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "alice" }],
    });
    type Pod = {
      metadata: { name: string; ownerReferences?: Array<{ kind: string }> };
      spec: {
        volumes?: Array<{ name: string }>;
        containers: Array<{ env?: Array<{ name: string }> }>;
      };
    };
    const expectInjected = (pod: Pod) => {
      expect(pod.spec.volumes?.map((v) => v.name)).toContain(SVID_VOLUME_NAME);
      expect(pod.spec.containers[0]!.env?.map((e) => e.name)).toEqual(
        expect.arrayContaining([...INJECTED_ENV_NAMES]),
      );
    };
    const podSpec = {
      serviceAccountName: "agent",
      containers: [{ name: "agent", image: "example.invalid/agent:1" }],
    };
    const pod = await eventually(
      () =>
        alice.post<Pod>(`/api/v1/namespaces/${taskNs}/pods`, {
          metadata: { name: "agent-bare", labels: { "custody.dev/agent-task": "review" } },
          spec: podSpec,
        }),
      { timeoutMs: 10_000, intervalMs: 200 },
    );
    expectInjected(pod);
    await alice.post(`/apis/apps/v1/namespaces/${taskNs}/deployments`, {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "agent-web", labels: { "custody.dev/agent-task": "review" } },
      spec: {
        replicas: 1,
        selector: { matchLabels: { app: "agent-web" } },
        template: {
          metadata: { labels: { app: "agent-web", "custody.dev/agent-task": "review" } },
          spec: podSpec,
        },
      },
    });
    const controllerPods = await eventually(
      async () => {
        const list = await admin.get<{ items: Pod[] }>(
          `/api/v1/namespaces/${taskNs}/pods?labelSelector=app%3Dagent-web`,
        );
        if (list.items.length < 1) throw new Error("no pod yet");
        return list.items;
      },
      { timeoutMs: 45_000, intervalMs: 250 },
    );
    expect(controllerPods[0]!.metadata.ownerReferences?.[0]?.kind).toBe("ReplicaSet");
    expectInjected(controllerPods[0]!);

    // Deleting the task: the finalizer revokes and deletes the credential.
    await admin.delete(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks/review`);
    await eventually(
      async () => {
        const gone = await admin
          .get(`/apis/custody.dev/v1alpha1/namespaces/${taskNs}/agenttasks/review`)
          .then(
            () => false,
            (e: { code?: number }) => e.code === 404,
          );
        if (!gone) throw new Error("the task is still there");
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    await expect(admin.get(`/api/v1/namespaces/${taskNs}/secrets/custody-svid-review`)).rejects.toMatchObject(
      {
        code: 404,
      },
    );

    // Not one request the chart's RBAC refused.
    expect(op.logs.filter(rbacRefusal)).toEqual([]);
    expect(op.logs.some((l) => l.includes("trust bundle published"))).toBe(true);
  });

  it("helm uninstall removes every fail-closed registration and keeps the CRD", async () => {
    expect(installed.length).toBeGreaterThan(0);
    // A graceful stop first (lease released, checkpoint written), still with the chart's RBAC.
    expect(await operator?.stop("SIGTERM")).toBe(0);
    expect(operator?.logs.filter(rbacRefusal)).toEqual([]);
    const r = await ok(helm, ["uninstall", release, "-n", ns, "--wait", "--timeout", "60s"]);
    timings.helmUninstall = r.ms;
    expect(r.stdout + r.stderr).toMatch(
      /kept due to the resource policy[\s\S]*agenttasks\.custody\.dev|agenttasks\.custody\.dev[\s\S]*kept/i,
    );
    const gone = async (path: string) =>
      admin.get(path).then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
    const adm = "/apis/admissionregistration.k8s.io/v1";
    expect(await gone(`${adm}/mutatingwebhookconfigurations/${fullname}`)).toBe(true);
    for (const p of ["agenttask-admission-record", "pod-credential-references", "workload-opt-in-label"]) {
      expect(await gone(`${adm}/validatingadmissionpolicybindings/${fullname}-${p}`)).toBe(true);
      expect(await gone(`${adm}/validatingadmissionpolicies/${fullname}-${p}`)).toBe(true);
    }
    expect(await gone(`${adm}/mutatingadmissionpolicybindings/${fullname}-agenttask-finalizer`)).toBe(true);
    expect(await gone(`/apis/rbac.authorization.k8s.io/v1/clusterroles/${fullname}-operator`)).toBe(true);
    const crd = await admin.get<K8sObject>(
      "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/agenttasks.custody.dev",
    );
    expect(crd.metadata.annotations?.["helm.sh/resource-policy"]).toBe("keep");
  });
});
