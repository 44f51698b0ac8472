/**
 * Admission latency against the local environment (`make up`): what the
 * webhook adds to a pod creation at a steady rate (default 200 pods/s).
 *
 * Three runs of N pods each, same rate, same API server:
 *   baseline  pods without the opt-in label (the webhook is never called)
 *   direct    opted-in pods created by the task's own requester
 *             (the webhook: task lookup, record check, patch)
 *   delegated opted-in pods created by a user whose right to use the task is
 *             a SubjectAccessReview (one more API call per pod)
 * Every run's pods come from an ordinary user (bob, or alice), never from a
 * member of system:masters: the API server's priority and fairness exempts
 * those from its queues, which changes how an overloaded server behaves.
 * Prints p50/p99 of create latency per run and the difference to baseline.
 * Usage: node bench/admission.ts [--rate 200] [--pods 1000]
 */
import { randomUUID } from "node:crypto";
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { KubeRest } from "../shells/kube/rest.ts";
import {
  installCustody,
  OPERATOR_NODE_FLAGS,
  removeInstallation,
  startOperator,
  waitForAdmission,
} from "../test/support/operator-process.ts";
import { retryWhileUnavailable } from "../test/support/unavailable.ts";
import { benchFlags, cpuMeter, localEnv } from "./local.ts";

const flag = benchFlags();
const RATE = flag("rate", 200);
const PODS = flag("pods", 1000);

const env = localEnv();
const admin = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
const alice = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "alice" }));
const bob = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "bob" }));
const run = randomUUID().slice(0, 6);
const ns = `bench-adm-${run}`;
const opNs = `custody-bench-adm-${run}`;
const TASK = "bench-task";
let operatorPid: number | undefined;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function pod(name: string, optIn: boolean) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, ...(optIn ? { labels: { "custody.dev/agent-task": TASK } } : {}) },
    spec: {
      serviceAccountName: "bench",
      containers: [{ name: "agent", image: "example.invalid/agent:1" }],
    },
  };
}

/** The API server's own histogram of its calls to our pods webhook (round trip, as it measured). */
async function webhookBuckets(): Promise<Map<number, number>> {
  const text = await admin.get<string>("/metrics");
  const buckets = new Map<number, number>();
  const re =
    /^apiserver_admission_webhook_admission_duration_seconds_bucket\{name="pods\.custody\.dev",operation="CREATE",rejected="false",type="admit",le="([^"]+)"\} (\d+)/;
  for (const line of String(text).split("\n")) {
    const m = re.exec(line);
    if (m) buckets.set(m[1] === "+Inf" ? Number.POSITIVE_INFINITY : Number(m[1]), Number(m[2]));
  }
  return buckets;
}

/** The smallest bucket bound holding p of the calls between two snapshots. */
function bucketPercentile(before: Map<number, number>, after: Map<number, number>, p: number): string {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const total = (after.get(Number.POSITIVE_INFINITY) ?? 0) - (before.get(Number.POSITIVE_INFINITY) ?? 0);
  for (const le of bounds) {
    if ((after.get(le) ?? 0) - (before.get(le) ?? 0) >= (p / 100) * total) return `≤ ${le * 1000} ms`;
  }
  return "n/a";
}

/** Creates `count` pods at RATE per second as `client`; returns sorted latencies (ms). */
async function paced(client: KubeRest, prefix: string, optIn: boolean): Promise<number[]> {
  const cpuSpent = cpuMeter({ operator: operatorPid });
  const latencies: number[] = [];
  const inflight: Promise<void>[] = [];
  const start = performance.now();
  let failures = 0;
  for (let i = 0; i < PODS; i++) {
    const due = start + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const t0 = performance.now();
    inflight.push(
      client.post(`/api/v1/namespaces/${ns}/pods`, pod(`${prefix}-${i}`, optIn)).then(
        () => {
          latencies.push(performance.now() - t0);
        },
        (err: unknown) => {
          failures++;
          if (failures === 1) console.error(`  first failure: ${(err as Error).message.slice(0, 300)}`);
        },
      ),
    );
  }
  await Promise.all(inflight);
  const seconds = (performance.now() - start) / 1000;
  if (failures > 0) throw new Error(`${failures} of ${PODS} pod creations failed`);
  console.log(
    `  ${prefix}: ${PODS} pods in ${seconds.toFixed(1)} s (${(PODS / seconds).toFixed(0)}/s achieved); ` +
      `cores busy: ${cpuSpent(seconds)}`,
  );
  return latencies.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  installCustody(env);
  await admin.post("/api/v1/namespaces", { metadata: { name: ns, labels: { "custody.dev/testbed": run } } });
  await admin.post("/api/v1/namespaces", { metadata: { name: opNs } });
  await admin.post(`/api/v1/namespaces/${ns}/serviceaccounts`, { metadata: { name: "bench" } });
  // bob asks for the task and creates pods; alice may create pods and use
  // the task (checked per pod by a SubjectAccessReview).
  await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
    metadata: { name: "agent-owner" },
    rules: [
      { apiGroups: [""], resources: ["pods"], verbs: ["create"] },
      { apiGroups: ["custody.dev"], resources: ["agenttasks"], verbs: ["create", "get"] },
    ],
  });
  await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    metadata: { name: "bob-agent-owner" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "agent-owner" },
    subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "bob" }],
  });
  await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, {
    metadata: { name: "agent-runner" },
    rules: [
      { apiGroups: [""], resources: ["pods"], verbs: ["create"] },
      { apiGroups: ["custody.dev"], resources: ["agenttasks"], verbs: ["use"], resourceNames: [TASK] },
    ],
  });
  await admin.post(`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    metadata: { name: "alice-agent-runner" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "agent-runner" },
    subjects: [{ apiGroup: "rbac.authorization.k8s.io", kind: "User", name: "alice" }],
  });
  const admission = {
    configName: `custody-${run}`,
    namespaceSelector: { matchLabels: { "custody.dev/testbed": run } },
  };
  const operator = await startOperator(env, {
    namespace: opNs,
    admission,
    topic: `custody.bench.adm.${run}`,
    compiled: true,
    nodeArgs: (process.env.CUSTODY_BENCH_NODE_ARGS ?? OPERATOR_NODE_FLAGS).split(" ").filter(Boolean),
    extraEnv: { CUSTODY_LOG_LEVEL: "warn" },
  });
  operatorPid = operator.child.pid;
  try {
    await waitForAdmission(admin, ns);
    await retryWhileUnavailable(() =>
      bob.post(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`, {
        apiVersion: "custody.dev/v1alpha1",
        kind: "AgentTask",
        metadata: { name: TASK },
        spec: { agent: { name: "bench" }, scope: ["read:repos/*"], serviceAccountName: "bench" },
      }),
    );
    for (let i = 0; ; i++) {
      const t = await admin.get<{ status?: { phase?: string } }>(
        `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/${TASK}`,
      );
      if (t.status?.phase === "Issued") break;
      if (i > 300) throw new Error(`task not Issued: ${t.status?.phase}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // Warm both paths (connections, JIT) before measuring.
    for (let i = 0; i < 20; i++) {
      await bob.post(`/api/v1/namespaces/${ns}/pods`, pod(`warm-${i}`, i % 2 === 0));
      await alice.post(`/api/v1/namespaces/${ns}/pods`, pod(`warm-alice-${i}`, true));
    }
    console.log(`admission: ${PODS} pod creations per run at ${RATE}/s`);
    const base = await paced(bob, "baseline", false);
    const b0 = await webhookBuckets();
    const direct = await paced(bob, "direct", true);
    const b1 = await webhookBuckets();
    const delegated = await paced(alice, "delegated", true);
    const b2 = await webhookBuckets();
    const row = (name: string, l: number[]) =>
      `  ${name.padEnd(10)} p50 ${percentile(l, 50).toFixed(1)} ms  p99 ${percentile(l, 99).toFixed(1)} ms` +
      (l === base
        ? ""
        : `  (webhook adds p50 ${(percentile(l, 50) - percentile(base, 50)).toFixed(1)} ms, ` +
          `p99 ${(percentile(l, 99) - percentile(base, 99)).toFixed(1)} ms; floor: ≤ 10 ms at p99)`);
    console.log(row("baseline", base));
    console.log(row("direct", direct));
    console.log(row("delegated", delegated));
    // Coarse (the API server's buckets are 5, 25, 100 ms, ...) but measured where the call is made.
    console.log(
      `  API server's call to the webhook: direct p50 ${bucketPercentile(b0, b1, 50)}, p99 ${bucketPercentile(b0, b1, 99)}; ` +
        `delegated p50 ${bucketPercentile(b1, b2, 50)}, p99 ${bucketPercentile(b1, b2, 99)}`,
    );
    // The webhook's own view: time from the request's arrival to its response.
    const metrics = await (await fetch(`http://127.0.0.1:${operator.healthPort}/metrics`)).text();
    for (const line of metrics.split("\n"))
      if (
        line.startsWith("custody_admission_duration_seconds_sum") ||
        line.startsWith("custody_admission_duration_seconds_count")
      )
        console.log(`  ${line}`);
    const stored = await admin.get<{ spec: { volumes?: Array<{ name: string }> } }>(
      `/api/v1/namespaces/${ns}/pods/direct-0`,
    );
    if (!stored.spec.volumes?.some((v) => v.name === "custody-svid"))
      throw new Error("an opted-in pod was not injected: the measurement is not of the webhook");
  } finally {
    await operator.stop();
    await removeInstallation(admin, {
      configName: admission.configName,
      namespaces: [ns, opNs],
      waitGoneMs: 300_000,
    });
    admin.close();
    alice.close();
    bob.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
