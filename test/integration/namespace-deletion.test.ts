// A deleted task keeps its finalizer until the namespace's trust bundle lists
// its certificates. Deleting a whole namespace must not deadlock on that: the
// namespace controller deletes the bundle too, and a create in a terminating
// namespace is refused, so there is nothing left to write. Every task is
// finalized and the namespace goes.
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { startTestbed, type Testbed } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;

beforeAll(async () => {
  bed = await startTestbed(env, "nsdel");
}, 120_000);
afterAll(async () => {
  await bed?.teardown();
});

it("deleting a namespace of issued tasks finalizes each of them, and the namespace goes", async () => {
  const names = ["a", "b", "c"];
  for (const name of names) {
    await bed.createTask({
      apiVersion: "custody.dev/v1alpha1",
      kind: "AgentTask",
      metadata: { name },
      spec: { agent: { name: "reviewer" }, scope: ["read:repos/acme/*"], serviceAccountName: "agents" },
    });
  }
  for (const name of names) await bed.waitPhase(name, "Issued", 60_000);
  await bed.core.deleteNamespace({ name: bed.ns });
  await eventually(
    async () => {
      const gone = await bed.core.readNamespace({ name: bed.ns }).then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      if (!gone) throw new Error(`namespace ${bed.ns} still there`);
    },
    { timeoutMs: 90_000, intervalMs: 500 },
  );
  const finalized = bed.operators[0]!.logs.filter((l) => l.includes('"task finalized"'));
  for (const name of names) expect(finalized.some((l) => l.includes(`${bed.ns}/${name}`))).toBe(true);
}, 180_000);
