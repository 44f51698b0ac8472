// Provenance guarantees across a crash: an operator that dies after Kafka
// acknowledged `issued` but before the credential was written leaves a
// serial nobody holds; its successor records it as abandoned before it issues
// anew, and the whole topic still verifies against the published keys and
// the anchored checkpoints.
import { Kafka, logLevel } from "kafkajs";
import "../../shells/kafka/codecs.ts";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { verifyStreams } from "../../core/provenance/verify.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { startTestbed, type Testbed } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;

interface Event {
  id: string;
  type: string;
  custodystream: string;
  data: { context: { taskUid: string }; certificate?: { serial: string }; serial?: string };
}

beforeAll(async () => {
  bed = await startTestbed(env, "prov", [{ CUSTODY_FAILPOINT: "after-issued-ack" }]);
}, 120_000);
afterAll(() => bed?.teardown());

describe("a crash between the acknowledged `issued` and the Secret", () => {
  it("is recorded as an abandoned issuance by the next leader, before it issues anew; the topic verifies", async () => {
    await bed.createTask({
      apiVersion: "custody.dev/v1alpha1",
      kind: "AgentTask",
      metadata: { name: "crashy" },
      spec: {
        agent: { name: "reviewer" },
        scope: ["read:repos/acme/*"],
        serviceAccountName: "agents",
        ttl: "1h",
      },
    });
    const [first] = bed.operators;
    await eventually(
      async () => {
        if (first!.child.exitCode !== 86)
          throw new Error(`operator still running (exit ${first!.child.exitCode})`);
      },
      { timeoutMs: 30_000 },
    );
    const secrets = await bed.core.listNamespacedSecret({
      namespace: bed.ns,
      labelSelector: "custody.dev/agent-task",
    });
    expect(secrets.items).toEqual([]); // nothing delivered

    // The crashed process has exited; its successor starts without the failpoint.
    await bed.restartOperator(0);
    const task = await bed.waitPhase<{
      metadata: { uid: string };
      status: { phase?: string; certificate: { serial: string } };
    }>("crashy", "Issued", 40_000);
    const uid = task.metadata.uid;
    const records = await readTopic(
      env.kafkaBrokers,
      bed.topic,
      (rs) =>
        rs.filter((r) => r.value.includes(uid) && r.value.includes("dev.custody.task.issued")).length >= 2,
    );
    const events = records
      .map((r) => JSON.parse(r.value) as Event)
      .filter((e) => e.data.context.taskUid === uid);
    const types = events.map((e) => e.type);
    const issued = events
      .filter((e) => e.type === "dev.custody.task.issued")
      .map((e) => e.data.certificate!.serial);
    expect(issued).toHaveLength(2);
    const [lost, delivered] = issued as [string, string];
    expect(delivered).toBe(task.status.certificate.serial);
    expect(lost).not.toBe(delivered);
    const abandonedAt = events.findIndex((e) => e.type === "dev.custody.task.issuance.abandoned");
    expect(abandonedAt).toBeGreaterThan(types.indexOf("dev.custody.task.issued"));
    expect(events[abandonedAt]!.data.serial).toBe(lost);
    expect(abandonedAt).toBeLessThan(types.lastIndexOf("dev.custody.task.issued"));
    // Two writers, two streams; the repeated `requested` is a recognisable duplicate (same id).
    expect(new Set(events.map((e) => e.custodystream)).size).toBe(2);
    const requested = events.filter((e) => e.type === "dev.custody.task.requested");
    expect(requested.length).toBe(2);
    expect(requested[0]!.id).toBe(requested[1]!.id);

    // The whole topic verifies with the published keys and anchored checkpoints.
    const cm = await eventually(
      async () => {
        const c = await bed.core.readNamespacedConfigMap({ name: "custody-provenance", namespace: bed.opNs });
        if (!Object.keys(c.data ?? {}).some((k) => k.startsWith("checkpoint.")))
          throw new Error("no checkpoint yet");
        return c;
      },
      { timeoutMs: 30_000 },
    );
    const keys = new Map(
      (
        JSON.parse(cm.data!["jwks.json"]!) as { keys: Array<{ kid: string } & Record<string, string>> }
      ).keys.map((k) => [k.kid, k] as const),
    );
    const checkpoints = Object.entries(cm.data!)
      .filter(([k]) => k.startsWith("checkpoint."))
      .map(([, v]) => JSON.parse(v) as unknown);
    // Everything the topic holds now (the sum of the partitions' high watermarks).
    const kafka = new Kafka({ brokers: env.kafkaBrokers.split(","), logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    const total = (await admin.fetchTopicOffsets(bed.topic)).reduce((n, p) => n + Number(p.high), 0);
    await admin.disconnect();
    const all = await readTopic(env.kafkaBrokers, bed.topic, (rs) => rs.length >= total);
    expect(all.length).toBe(total);
    const report = verifyStreams(
      all.map((r) => ({ partition: r.partition, offset: r.offset, value: r.value })),
      { keys, checkpoints },
    );
    expect(report.streams.flatMap((s) => s.findings)).toEqual([]);
    expect(report.ok).toBe(true);
  }, 120_000);
});
