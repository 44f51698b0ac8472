/**
 * Revocation cascade and leader failover on the local environment (`make up`):
 *   1. a root with N (default 1,000) issued descendants (two levels: 20 children
 *      of the root, the rest grandchildren) is revoked; time until every
 *      descendant is Revoked and its credential Secret deleted;
 *   2. two operator processes; the leader is killed with SIGKILL; time until
 *      the standby leads and issues a new task.
 * Usage: node bench/cascade.ts [--descendants 1000]
 */

import { randomUUID } from "node:crypto";
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
import { benchFlags, cpuMeter, localEnv } from "./local.ts";

const N = benchFlags()("descendants", 1000);
const env = localEnv();
const rest = new KubeRest(loadClusterCredentials({ kubeconfig: env.kubeconfig }));
const run = randomUUID().slice(0, 6);
const ns = `cascade-${run}`;
const opNs = `custody-cascade-${run}`;
const phases = new Map<string, string>();

type Obj = { metadata?: { name?: string }; status?: { phase?: string } };

async function create(name: string, parent?: string, scope = ["read:repos/acme/*"]) {
  const body = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name, namespace: ns },
    spec: {
      agent: { name: "bench" },
      ...(parent ? { parentRef: { name: parent } } : { delegator: { kind: "User", name: "alice" } }),
      scope,
      serviceAccountName: "bench",
    },
  };
  await retryWhileUnavailable(() =>
    rest.post(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`, body),
  );
}

async function until(pred: () => boolean, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function pool<T>(items: T[], n: number, fn: (t: T) => Promise<void>) {
  let i = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (i < items.length) await fn(items[i++]!);
    }),
  );
}

async function main() {
  await installCustody(env);
  // The bench's own webhook registration, scoped to its namespace by a label.
  await rest.post("/api/v1/namespaces", { metadata: { name: ns, labels: { "custody.dev/testbed": run } } });
  await rest.post("/api/v1/namespaces", { metadata: { name: opNs } });
  const admission = {
    configName: `custody-${run}`,
    namespaceSelector: { matchLabels: { "custody.dev/testbed": run } },
  };
  const informer = new Informer<Obj>({
    name: "bench",
    listWatch: restListWatch(rest, `/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks`),
  });
  const seen = (o: Obj) => phases.set(o.metadata?.name ?? "", o.status?.phase ?? "");
  informer.onAdd(seen);
  informer.onUpdate((_o, n) => seen(n));
  informer.start();
  await informer.waitForSync();
  const nodeArgs = OPERATOR_NODE_FLAGS.split(" ");
  const a = await startOperator(env, {
    namespace: opNs,
    admission,
    topic: `custody.cascade.${run}`,
    compiled: true,
    nodeArgs,
    extraEnv: { CUSTODY_IDENTITY: "a", CUSTODY_LOG_LEVEL: "warn" },
  });
  await waitForAdmission(rest, ns);

  // 1. cascade
  const children = Array.from({ length: 20 }, (_, i) => `c${i}`);
  const grandchildren = Array.from({ length: N - children.length }, (_, i) => `g${i}`);
  await create("root");
  await until(() => phases.get("root") === "Issued", 30_000, "root issued");
  await pool(children, 20, (c) => create(c, "root", ["read:repos/acme/*"]));
  await pool(grandchildren, 32, (g) =>
    create(g, children[Number(g.slice(1)) % children.length], ["read:repos/acme/api"]),
  );
  const all = [...children, ...grandchildren];
  await until(() => all.every((n) => phases.get(n) === "Issued"), 300_000, "descendants issued");
  const cpuSpent = cpuMeter({ operator: a.child.pid });
  const t0 = performance.now();
  await rest.patch(`/apis/custody.dev/v1alpha1/namespaces/${ns}/agenttasks/root`, {
    spec: { revoked: true, revocationReason: "bench" },
  });
  const quartiles: number[] = [];
  await until(
    () => {
      const revoked = all.filter((n) => phases.get(n) === "Revoked").length;
      while (quartiles.length < 4 && revoked >= ((quartiles.length + 1) * all.length) / 4)
        quartiles.push((performance.now() - t0) / 1000);
      return revoked === all.length;
    },
    120_000,
    "descendants revoked",
  );
  const cascadeS = (performance.now() - t0) / 1000;
  const cpu = cpuSpent();
  const secretsLeft = (
    await rest.get<{ items: unknown[] }>(
      `/api/v1/namespaces/${ns}/secrets?labelSelector=custody.dev/agent-task`,
    )
  ).items.length;

  // 2. failover
  const b = await startOperator(env, {
    namespace: opNs,
    admission,
    topic: `custody.cascade.${run}`,
    compiled: true,
    nodeArgs,
    extraEnv: { CUSTODY_IDENTITY: "b", CUSTODY_LOG_LEVEL: "warn" },
  });
  await new Promise((r) => setTimeout(r, 2000));
  const killedAt = performance.now();
  await a.stop("SIGKILL");
  await create("after-failover");
  await until(() => phases.get("after-failover") === "Issued", 60_000, "issued after failover");
  const failoverS = (performance.now() - killedAt) / 1000;

  console.log("\n== revocation cascade and failover (local kube-apiserver + Kafka) ==");
  console.log(
    `revoke a root with ${all.length} issued descendants (2 levels): all Revoked in ${cascadeS.toFixed(2)} s (${all.length >= 1000 ? `floor 5 s ${cascadeS <= 5 ? "ok" : "NOT MET"}` : "the 5 s floor is for 1,000"}); credential Secrets left: ${secretsLeft}`,
  );
  console.log(
    `  25/50/75/100 % Revoked after ${quartiles.map((q) => q.toFixed(2)).join(" / ")} s; CPU during the cascade: ${cpu}`,
  );
  console.log(
    `leader SIGKILL → standby leads and issues a new task in ${failoverS.toFixed(2)} s (lease 8 s, retry 1 s)`,
  );
  await b.stop();
  await informer.stop();
  await removeInstallation(rest, {
    configName: admission.configName,
    namespaces: [ns, opNs],
    waitGoneMs: 300_000,
  });
  rest.close();
  process.exit(0);
}

main().catch(async (err: unknown) => {
  console.error(err);
  // Leave the shared environment as it was: registration, finalizers, namespaces.
  await removeInstallation(rest, { configName: `custody-${run}`, namespaces: [ns, opNs] }).catch(
    () => undefined,
  );
  process.exit(1);
});
