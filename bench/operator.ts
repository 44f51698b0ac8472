/**
 * Operator benchmarks against the local environment (`make up`; reads
 * .local/env/env.json or CUSTODY_ENV_DIR). Starts a fresh operator process and
 * measures, from each task's create request to the watch event that shows it
 * Issued:
 *   1. a burst of N (default 1,000) AgentTasks: tasks/s and p50/p99;
 *   2. a steady rate (default 50/s for 60 s): p50/p99;
 *   3. the operator's RSS once 10,000 tasks are issued.
 * Usage: node bench/operator.ts [--burst 1000] [--rate 50] [--seconds 60] [--total 10000]
 */

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { loadClusterCredentials } from "../shells/kube/credentials.ts";
import { Informer } from "../shells/kube/informer.ts";
import { KubeRest, restListWatch } from "../shells/kube/rest.ts";
import {
  installCustody,
  OPERATOR_NODE_FLAGS,
  removeInstallation,
  startOperator,
  waitForAdmission,
} from "../test/support/operator-process.ts";
import { retryWhileUnavailable } from "../test/support/unavailable.ts";
import { apiWrites, benchFlags, cpuMeter, localEnv, writesPer } from "./local.ts";

const flag = benchFlags();
const BURST = flag("burst", 1000);
const RATE = flag("rate", 50);
const SECONDS = flag("seconds", 60);
const TOTAL = flag("total", 10_000);

const env = localEnv();
const rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
const run = randomUUID().slice(0, 6);
const ns = `bench-${run}`;
const opNs = `custody-bench-${run}`;

const created = new Map<string, number>();
const issued = new Map<string, number>();
let watchEvents = 0;
const waiters: Array<{ names: Set<string>; resolve: () => void }> = [];

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function latencies(names: string[]): number[] {
  return names.map((n) => issued.get(n)! - created.get(n)!).sort((a, b) => a - b);
}

function taskBody(name: string) {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name, namespace: ns },
    spec: {
      agent: { name: "bench-agent", model: { provider: "anthropic", name: "claude", version: "1" } },
      delegator: { kind: "User", name: "alice" },
      scope: ["read:repos/acme/*"],
      serviceAccountName: "bench",
      ttl: "1h",
    },
  };
}

async function create(name: string): Promise<void> {
  created.set(name, performance.now());
  await retryWhileUnavailable(
    () => rest.post(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`, taskBody(name)),
    { onRetry: () => created.set(name, performance.now()) },
  );
}

function waitIssued(names: string[], timeoutMs: number): Promise<void> {
  const pending = new Set(names.filter((n) => !issued.has(n)));
  if (pending.size === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `${pending.size} of ${names.length} tasks not Issued after ${timeoutMs} ms (${watchEvents} watch events)`,
          ),
        ),
      timeoutMs,
    );
    waiters.push({
      names: pending,
      resolve: () => {
        clearTimeout(timer);
        resolve();
      },
    });
  });
}

async function createAll(names: string[], concurrency: number): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (i < names.length) await create(names[i++]!);
    }),
  );
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

/** Where the RSS is: anonymous memory (heaps, malloc) versus mapped files (code), in MB. */
function rssParts(pid: number): string {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const mb = (field: string) =>
    (Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) / 1024).toFixed(0);
  return `anonymous ${mb("RssAnon")} MB, mapped files ${mb("RssFile")} MB (mostly the node binary), threads ${/Threads:\s+(\d+)/.exec(status)?.[1]}`;
}

async function main(): Promise<void> {
  await installCustody(env);
  // The bench's own webhook registration, scoped to its namespace by a label.
  await rest.post("/api/v1/namespaces", { metadata: { name: ns, labels: { "custody.dev/testbed": run } } });
  await rest.post("/api/v1/namespaces", { metadata: { name: opNs } });
  const admission = {
    configName: `custody-${run}`,
    namespaceSelector: { matchLabels: { "custody.dev/testbed": run } },
  };
  cleanup = () =>
    removeInstallation(rest, {
      configName: admission.configName,
      namespaces: [ns, opNs],
      waitGoneMs: 300_000,
    });

  // Observed through the project's own resilient informer (list + watch,
  // re-list on 410, watchdog), not a bare watch that may stop silently.
  const seen = (obj: { metadata?: { name?: string }; status?: { phase?: string } }) => {
    watchEvents++;
    const name = obj.metadata?.name ?? "";
    if (obj.status?.phase !== "Issued" || issued.has(name)) return;
    issued.set(name, performance.now());
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i]!;
      w.names.delete(name);
      if (w.names.size === 0) {
        waiters.splice(i, 1);
        w.resolve();
      }
    }
  };
  const informer = new Informer<{ metadata?: { name?: string }; status?: { phase?: string } }>({
    name: "bench-tasks",
    listWatch: restListWatch(rest, `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`),
    transform: (t) => ({
      metadata: { name: t.metadata?.name ?? "" },
      ...(t.status ? { status: { phase: t.status.phase ?? "" } } : {}),
    }),
  });
  informer.onAdd(seen);
  informer.onUpdate((_o, n) => seen(n));
  informer.start();
  await informer.waitForSync();

  const operator = await startOperator(env, {
    namespace: opNs,
    admission,
    topic: `custody.bench.${run}`,
    extraEnv: { CUSTODY_LOG_LEVEL: "warn", CUSTODY_WORKERS: process.env.CUSTODY_WORKERS ?? "64" },
    compiled: true,
    // The production runtime flags (docs/operations.md), unless overridden.
    nodeArgs: (process.env.CUSTODY_BENCH_NODE_ARGS ?? OPERATOR_NODE_FLAGS).split(" ").filter(Boolean),
  });
  operatorLogs = operator.logs;
  await waitForAdmission(rest, ns);
  const pid = operator.child.pid!;
  console.log(`operator pid ${pid}, RSS at start ${rssMb(pid).toFixed(0)} MB`);

  // 1. Burst
  const burst = Array.from({ length: BURST }, (_, i) => `burst-${i}`);
  const writes0 = await apiWrites((p) => rest.get(p));
  const cpuSpent = cpuMeter({ operator: pid });
  const t0 = performance.now();
  await createAll(burst, 64);
  const createdAt = performance.now();
  await waitIssued(burst, 120_000);
  const t1 = performance.now();
  // What the burst cost each process, against the 2 × its seconds a 2-core machine has.
  const burstCpu = cpuSpent();
  // Kubernetes Events are paced (50/s) apart from issuance: counted once written (or 30 s on).
  let writes1 = await apiWrites((p) => rest.get(p));
  const eventsWritten = () => (writes1.get("POST events") ?? 0) - (writes0.get("POST events") ?? 0);
  for (let i = 0; i < 60 && eventsWritten() < BURST; i++) {
    await new Promise((r) => setTimeout(r, 500));
    writes1 = await apiWrites((p) => rest.get(p));
  }
  const burstWrites = writesPer(writes0, writes1, BURST);
  const lb = latencies(burst);
  const burstResult = {
    tasks: BURST,
    createSeconds: (createdAt - t0) / 1000,
    allIssuedSeconds: (t1 - t0) / 1000,
    tasksPerSecond: BURST / ((t1 - t0) / 1000),
    p50ms: percentile(lb, 50),
    p99ms: percentile(lb, 99),
  };

  // 2. Steady rate
  const steady: string[] = [];
  const start = performance.now();
  const total = RATE * SECONDS;
  const inflight: Promise<unknown>[] = [];
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const name = `steady-${i}`;
    steady.push(name);
    // Settled at once, so a failure mid-loop is reported below, not as an unhandled rejection.
    inflight.push(
      create(name).then(
        () => undefined,
        (err: unknown) => err,
      ),
    );
  }
  const failed = (await Promise.all(inflight)).find((e) => e !== undefined);
  if (failed) throw failed;
  await waitIssued(steady, 60_000);
  const ls = latencies(steady);
  const steadyResult = {
    rate: RATE,
    seconds: SECONDS,
    achievedRate: total / ((performance.now() - start) / 1000),
    p50ms: percentile(ls, 50),
    p99ms: percentile(ls, 99),
  };

  // 3. RSS with TOTAL tasks issued
  const already = BURST + total;
  const rest10k = Array.from({ length: Math.max(0, TOTAL - already) }, (_, i) => `fill-${i}`);
  const f0 = performance.now();
  await createAll(rest10k, 64);
  await waitIssued(rest10k, 300_000);
  const fillSeconds = (performance.now() - f0) / 1000;
  await new Promise((r) => setTimeout(r, 5000));
  const rss = rssMb(pid);
  const parts = rssParts(pid);
  const metricsText = await (await fetch(`http://127.0.0.1:${operator.healthPort}/metrics`)).text();
  const metric = (name: string) =>
    Number(new RegExp(`^${name} (\\S+)$`, "m").exec(metricsText)?.[1] ?? Number.NaN) / 1e6;

  console.log("\n== operator benchmark (local kube-apiserver + Kafka, one operator process) ==");
  console.log(
    `burst ${burstResult.tasks} tasks: all Issued in ${burstResult.allIssuedSeconds.toFixed(2)} s ` +
      `(${burstResult.tasksPerSecond.toFixed(0)} tasks/s; creates took ${burstResult.createSeconds.toFixed(2)} s), ` +
      `create→Issued p50 ${burstResult.p50ms.toFixed(0)} ms, p99 ${burstResult.p99ms.toFixed(0)} ms`,
  );
  console.log(`API server writes per task in the burst (the create included): ${burstWrites}`);
  console.log(`CPU during the burst: ${burstCpu}`);
  console.log(
    `steady ${steadyResult.rate}/s for ${steadyResult.seconds} s (achieved ${steadyResult.achievedRate.toFixed(1)}/s): ` +
      `create→Issued p50 ${steadyResult.p50ms.toFixed(1)} ms, p99 ${steadyResult.p99ms.toFixed(1)} ms`,
  );
  console.log(
    `fill to ${TOTAL} tasks: ${rest10k.length} more in ${fillSeconds.toFixed(1)} s ` +
      `(${(rest10k.length / fillSeconds).toFixed(0)} tasks/s sustained)`,
  );
  console.log(
    `operator RSS with ${issued.size} tasks issued: ${rss.toFixed(0)} MB (${parts}) ` +
      `(V8 heap used ${metric("nodejs_heap_size_used_bytes").toFixed(0)} MB of ${metric("nodejs_heap_size_total_bytes").toFixed(0)} MB, ` +
      `external ${metric("nodejs_external_memory_bytes").toFixed(0)} MB; node flags: ${process.env.CUSTODY_BENCH_NODE_ARGS ?? OPERATOR_NODE_FLAGS})`,
  );

  await operator.stop();
  await informer.stop();
  await cleanup();
  rest.close();
  process.exit(0);
}

/** Set once the installation exists: leaves the shared environment as it was, also after a failure. */
let cleanup: () => Promise<void> = async () => {};

let operatorLogs: string[] = [];
process.on("exit", (code) => {
  if (code !== 0 && operatorLogs.length > 0)
    console.error(`operator's last log lines:\n${operatorLogs.slice(-15).join("\n")}`);
});
main().catch(async (err: unknown) => {
  console.error(err);
  await cleanup().catch(() => undefined);
  if (operatorLogs.length > 0)
    console.error(`operator's last log lines:\n${operatorLogs.slice(-15).join("\n")}`);
  process.exit(1);
});
