// Kafka unavailable, with a broker of this test's own (the shared one serves
// other test files meanwhile): a leader that takes over while Kafka is down
// keeps leading and admitting, issues nothing, and says so on the task;
// revocation still deletes a credential at once; once the broker is back
// every task is issued and the stream holds every event, once, in order.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { Kafka, logLevel } from "kafkajs";
import "../../shells/kafka/codecs.ts";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { verifyStreams } from "../../core/provenance/verify.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { createPrivateKafka, type PrivateKafka } from "../support/private-kafka.ts";
import { startTestbed, type Testbed } from "../support/testbed.ts";

const env = inject("localEnv");
let kafka: PrivateKafka;
let bed: Testbed;

interface Task {
  metadata: { uid: string };
  status?: {
    phase?: string;
    certificate?: { serial: string };
    conditions?: Array<{ type: string; status: string; reason: string; message: string }>;
  };
}

interface Event {
  id: string;
  type: string;
  custodystream: string;
  custodyseq: number;
  data: { context: { taskUid: string }; certificate?: { serial: string }; serial?: string };
}

const task = (name: string) => ({
  apiVersion: "custody.dev/v1alpha1",
  kind: "AgentTask",
  metadata: { name },
  spec: {
    agent: { name: "reviewer" },
    scope: ["read:repos/acme/*"],
    serviceAccountName: "agents",
    ttl: "1h",
  },
});

beforeAll(async () => {
  // Formatted, not started: the operator comes up while Kafka is down.
  kafka = await createPrivateKafka(env);
  bed = await startTestbed(env, "outage", [{ CUSTODY_KAFKA_BROKERS: kafka.brokers }]);
}, 180_000);
afterAll(async () => {
  await bed?.teardown();
  await kafka?.remove();
});

async function secretExists(name: string): Promise<boolean> {
  return bed.core.readNamespacedSecret({ name: `custody-svid-${name}`, namespace: bed.ns }).then(
    () => true,
    () => false,
  );
}

async function waitingForKafka(name: string): Promise<void> {
  await eventually(
    async () => {
      const t = await bed.getTask<Task>(name);
      const ready = t.status?.conditions?.find((c) => c.type === "Ready");
      if (ready?.reason !== "ProvenanceUnavailable")
        throw new Error(`${name}: Ready ${JSON.stringify(ready)}`);
      expect(t.status?.phase).toBe("Pending");
      expect(t.status?.certificate).toBeUndefined();
    },
    { timeoutMs: 30_000 },
  );
  expect(await secretExists(name)).toBe(false);
}

describe("with the broker down", () => {
  it("a leader that took over keeps admitting, issues nothing until Kafka is back, then everything; the stream verifies", async () => {
    // 1. Kafka down since the start: the operator leads (the webhook stamped
    //    the task, or createTask would time out) and does not exit.
    await bed.createTask(task("early"));
    await waitingForKafka("early");
    expect(bed.operators[0]!.child.exitCode).toBeNull();

    // 2. The broker comes up: the waiting task is issued.
    await kafka.start();
    const early = await bed.waitPhase<Task>("early", "Issued", 60_000);
    expect(await secretExists("early")).toBe(true);

    // 3. The broker goes away mid-run: a new task waits; revoking the issued
    //    one deletes its credential at once, before its event can be written.
    await kafka.stop();
    await bed.createTask(task("late"));
    // As a platform team revokes: kubectl, a merge patch.
    execFileSync(
      join(env.binDir, "kubectl"),
      [
        "patch",
        "at",
        "early",
        "-n",
        bed.ns,
        "--type=merge",
        "-p",
        '{"spec":{"revoked":true,"revocationReason":"key suspected copied"}}',
      ],
      { env: { ...process.env, KUBECONFIG: env.kubeconfig }, stdio: "pipe" },
    );
    await eventually(
      async () => {
        if (await secretExists("early")) throw new Error("the revoked task's Secret is still there");
      },
      { timeoutMs: 20_000 },
    );
    // Copies of its certificate are refused from now on, not once Kafka is
    // back: the trust bundle lists the serial while the event still waits.
    await eventually(
      async () => {
        const cm = await bed.core.readNamespacedConfigMap({
          name: "custody-trust-bundle",
          namespace: bed.ns,
        });
        expect(cm.data?.["revoked.txt"] ?? "").toContain(`${early.status!.certificate!.serial} spiffe://`);
      },
      { timeoutMs: 20_000 },
    );
    expect((await bed.getTask<Task>("early")).status?.phase).toBe("Issued");
    await waitingForKafka("late");
    expect(bed.operators[0]!.child.exitCode).toBeNull();

    // 4. Back again: the revocation is recorded, the waiting task issued.
    await kafka.start();
    const late = await bed.waitPhase<Task>("late", "Issued", 60_000);
    await bed.waitPhase<Task>("early", "Revoked", 60_000);

    // Nothing lost, nothing twice, in order; the whole topic verifies.
    const client = new Kafka({ brokers: [kafka.brokers], logLevel: logLevel.NOTHING });
    const admin = client.admin();
    await admin.connect();
    const total = (await admin.fetchTopicOffsets(bed.topic)).reduce((n, p) => n + Number(p.high), 0);
    await admin.disconnect();
    const records = await readTopic(kafka.brokers, bed.topic, (rs) => rs.length >= total, 30_000);
    expect(records.length).toBe(total);
    // Per task, in stream order, each event once (a repeat keeps its id: dedupe by id).
    const events = records
      .map((r) => JSON.parse(r.value) as Event)
      .sort((a, b) => a.custodyseq - b.custodyseq);
    const lifecycle = (uid: string) => {
      const seen = new Set<string>();
      return events.filter((e) => e.data.context?.taskUid === uid && !seen.has(e.id) && seen.add(e.id));
    };
    expect(lifecycle(early.metadata.uid).map((e) => e.type)).toEqual([
      "dev.custody.task.requested",
      "dev.custody.task.delegation.verified",
      "dev.custody.task.issued",
      "dev.custody.task.revoked",
    ]);
    // The late task's first attempt may have appended `issued` just before the
    // outage showed: then that certificate is recorded abandoned, never delivered.
    const lateEvents = lifecycle(late.metadata.uid);
    expect(lateEvents.slice(0, 2).map((e) => e.type)).toEqual([
      "dev.custody.task.requested",
      "dev.custody.task.delegation.verified",
    ]);
    const issuedSerials = lateEvents
      .filter((e) => e.type === "dev.custody.task.issued")
      .map((e) => e.data.certificate!.serial);
    const abandoned = lateEvents
      .filter((e) => e.type === "dev.custody.task.issuance.abandoned")
      .map((e) => e.data.serial!);
    expect(issuedSerials.at(-1)).toBe(late.status?.certificate?.serial);
    expect(abandoned).toEqual(issuedSerials.slice(0, -1));
    expect(lateEvents.at(-1)!.type).toBe("dev.custody.task.issued");
    const cm = await bed.core.readNamespacedConfigMap({ name: "custody-provenance", namespace: bed.opNs });
    const keys = new Map(
      (
        JSON.parse(cm.data!["jwks.json"]!) as { keys: Array<{ kid: string } & Record<string, string>> }
      ).keys.map((k) => [k.kid, k] as const),
    );
    const report = verifyStreams(
      records.map((r) => ({ partition: r.partition, offset: r.offset, value: r.value })),
      { keys },
    );
    expect(report.streams.flatMap((s) => s.findings)).toEqual([]);
    expect(report.ok).toBe(true);
  }, 300_000);
});
