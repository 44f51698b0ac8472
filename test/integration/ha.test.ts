// Two operator processes: one Lease, one leader. Killing the leader with
// SIGKILL hands over to the standby within seconds, and no task is issued
// twice across the two (one `issued` event per task in the stream).
import { CoordinationV1Api, type CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import type { OperatorProcess } from "../support/operator-process.ts";
import { GROUP, PLURAL, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;
let kc: KubeConfig;
let custom: CustomObjectsApi;
let ns: string;
let opNs: string;
let topic: string;
let operators: OperatorProcess[];
const group = GROUP;
const version = VERSION;
const plural = PLURAL;

const createTask = (name: string) =>
  bed.createTask({
    apiVersion: `${group}/${version}`,
    kind: "AgentTask",
    metadata: { name, namespace: ns },
    spec: { agent: { name: "a" }, scope: ["read:x/*"], serviceAccountName: "sa" },
  });

const allIssued = async (names: string[]) => {
  for (const name of names) await bed.waitPhase(name, "Issued", 30_000);
};

const holder = async () =>
  (
    await kc
      .makeApiClient(CoordinationV1Api)
      .readNamespacedLease({ name: "custody-operator", namespace: opNs })
  ).spec?.holderIdentity ?? "";

beforeAll(async () => {
  bed = await startTestbed(env, "ha", [{ CUSTODY_IDENTITY: "replica-a" }, { CUSTODY_IDENTITY: "replica-b" }]);
  ({ kc, custom, ns, opNs, topic, operators } = bed);
}, 120_000);

afterAll(() => bed?.teardown());

describe("high availability", () => {
  it("elects one leader; SIGKILL hands over to the standby; no task is issued twice", async () => {
    const first = await eventually(async () => {
      const h = await holder();
      expect(["replica-a", "replica-b"]).toContain(h);
      return h;
    });
    const leader = operators.find((o) => o.logs.some((l) => l.includes('"leading: reconciling"')))!;
    expect(leader).toBeDefined();
    const standby = operators.find((o) => o !== leader)!;
    expect(standby.logs.some((l) => l.includes('"leading: reconciling"'))).toBe(false);

    const before = ["t1", "t2", "t3", "t4", "t5"];
    for (const n of before) await createTask(n);
    await allIssued(before);

    const killedAt = Date.now();
    await leader.stop("SIGKILL");
    const takeover = await eventually(
      () => {
        expect(standby.logs.some((l) => l.includes('"leading: reconciling"'))).toBe(true);
        return Date.now() - killedAt;
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    expect(await holder()).not.toBe(first);
    // Lease 8 s + retry 1 s: well under the 15 s floor.
    expect(takeover).toBeLessThan(15_000);

    const after = ["t6", "t7", "t8"];
    for (const n of after) await createTask(n);
    await allIssued([...before, ...after]);

    const tasks = [...before, ...after];
    const uids = new Map<string, string>();
    for (const name of tasks) {
      const t = (await custom.getNamespacedCustomObject({ group, version, namespace: ns, plural, name })) as {
        metadata: { uid: string };
      };
      uids.set(t.metadata.uid, name);
    }
    const records = await readTopic(env.kafkaBrokers, topic, (rs) => {
      const issuedFor = new Set(
        rs
          .map((r) => JSON.parse(r.value) as { type: string; data: { context: { taskUid: string } } })
          .filter((e) => e.type === "dev.custody.task.issued")
          .map((e) => e.data.context.taskUid),
      );
      return [...uids.keys()].every((u) => issuedFor.has(u));
    });
    const issued = records
      .map(
        (r) =>
          JSON.parse(r.value) as {
            type: string;
            custodyepoch: number;
            data: { context: { taskUid: string } };
          },
      )
      .filter((e) => e.type === "dev.custody.task.issued" && uids.has(e.data.context.taskUid));
    const perTask = new Map<string, number>();
    for (const e of issued)
      perTask.set(e.data.context.taskUid, (perTask.get(e.data.context.taskUid) ?? 0) + 1);
    expect([...perTask.values()]).toEqual(tasks.map(() => 1));
    // The new leader writes under a higher epoch.
    const epochs = new Set(issued.map((e) => e.custodyepoch));
    expect(epochs.size).toBe(2);
  });
});
