// `custody verify` and `custody audit` against a real operator's stream in the
// real broker: a delegation chain (alice → root → child) is issued and the
// root revoked; verify passes on the topic and on a byte-identical copy, and
// fails, naming the event, on copies with one event altered, one removed, two
// swapped, the tail removed (given a checkpoint that covers it) and a forked
// event; audit answers for the sub-agent, in text and JSON, from its index.
import { spawnSync } from "node:child_process";
import { createPrivateKey, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { KafkaTopicSource, type SourceRecord } from "../../cli/kafka-source.ts";
import { canonicalize } from "../../core/provenance/canonical-json.ts";
import { createStreamWriter } from "../../core/provenance/chain.ts";
import type { EventInput } from "../../core/provenance/events.ts";
import { createEs256Signer } from "../../core/provenance/sign.ts";
import { eventually } from "../support/eventually.ts";
import { GROUP, PLURAL, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
const bin = join(import.meta.dirname, "..", "..", "bin", "custody");
let bed: Testbed;
let ns: string;
let work: string;
const copies: string[] = [];

interface Task {
  metadata: { name: string; uid: string };
  status?: { phase?: string; certificate?: { serial: string }; spiffeID?: string };
}

interface Event {
  id: string;
  type: string;
  custodystream: string;
  custodyseq: number;
  custodyepoch: number;
  custodyprev: string;
  custodyhash: string;
  data: Record<string, unknown> & { context: { taskUid: string } };
}

/** The operator's topic as read once the lifecycle is complete: raw records and their events. */
let records: SourceRecord[];
let partitions: number;
let root: Task;
let child: Task;
let checkpointFile: string;
let jwksFile: string;

const eventOf = (r: SourceRecord) => JSON.parse(r.value!.toString("utf8")) as Event;

function custody(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(bin, args, {
    env: {
      ...process.env,
      KUBECONFIG: env.kubeconfig,
      CUSTODY_KAFKA_BROKERS: env.kafkaBrokers,
      // The index and the compile cache in this run's directory, not the user's.
      XDG_CACHE_HOME: work,
    },
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const kafka = () =>
  new Kafka({ clientId: "custody-audit-test", brokers: [env.kafkaBrokers], logLevel: logLevel.NOTHING });

async function readAll(topic: string): Promise<SourceRecord[]> {
  const source = new KafkaTopicSource({ brokers: [env.kafkaBrokers], topic });
  const out: SourceRecord[] = [];
  try {
    const offsets = await source.offsets();
    await source.read(
      offsets.map((o) => ({ partition: o.partition, from: o.low, to: o.high })),
      (batch) => out.push(...batch),
    );
  } finally {
    await source.close();
  }
  return out.sort((a, b) => a.partition - b.partition || Number(a.offset - b.offset));
}

/** Writes records to a new topic with the same partitions: same partition, key and bytes, in this order. */
async function copyTo(name: string, list: readonly SourceRecord[]): Promise<string> {
  const topic = `${bed.topic}.${name}`;
  const admin = kafka().admin();
  await admin.connect();
  try {
    await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: partitions }] });
  } finally {
    await admin.disconnect();
  }
  copies.push(topic);
  const producer = kafka().producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    for (let p = 0; p < partitions; p++) {
      const messages = list
        .filter((r) => r.partition === p)
        .map((r) => ({ partition: p, key: r.key, value: r.value, headers: r.headers }));
      if (messages.length > 0) await producer.send({ topic, acks: -1, messages });
    }
  } finally {
    await producer.disconnect();
  }
  return topic;
}

const verify = (topic: string, extra: string[] = []) =>
  custody(["verify", "--topic", topic, "--operator-namespace", bed.opNs, ...extra]);

interface JsonFinding {
  kind: string;
  severity: string;
  stream: string | null;
  seq: number | null;
  id: string | null;
  partition: number | null;
  offset: string | null;
}
const errorsOf = (r: { stdout: string }) =>
  (JSON.parse(r.stdout) as { findings: JsonFinding[] }).findings.filter((f) => f.severity === "error");

/** Waits for Issued; a Denied task fails at once with its reason. */
const issued = (name: string) =>
  eventually(
    async () => {
      const t = await bed.getTask<
        Task & { status?: { conditions?: Array<{ type: string; message: string }> } }
      >(name);
      const ready = t.status?.conditions?.find((c) => c.type === "Ready");
      if (t.status?.phase === "Denied") return Promise.reject(new Error(`${name} denied: ${ready?.message}`));
      if (t.status?.phase !== "Issued") throw new Error(`${name}: phase ${t.status?.phase ?? "(none)"}`);
      return t;
    },
    { timeoutMs: 20_000 },
  );

const kubectl = (args: string[]) =>
  spawnSync(join(env.binDir, "kubectl"), args, { env: { ...process.env, KUBECONFIG: env.kubeconfig } });

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "custody-audit-"));
  bed = await startTestbed(env, "audit");
  ns = bed.ns;
  const body = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: `${GROUP}/${VERSION}`,
    kind: "AgentTask",
    metadata: { name, namespace: ns },
    spec: { agent: { name: "planner" }, serviceAccountName: "agents", ttl: "1h", ...spec },
  });
  // As admin, on behalf of alice (the admin may impersonate her); then a narrower sub-agent.
  await bed.createTask(
    body("root", {
      delegator: { kind: "User", name: "alice" },
      scope: ["read:repos/acme/*", "comment:repos/acme/*"],
    }),
  );
  root = await issued("root");
  await bed.createTask(
    body("child", { parentRef: { name: "root" }, scope: ["read:repos/acme/api"], ttl: "30m" }),
  );
  child = await issued("child");
  const patched = kubectl([
    "patch",
    "at",
    "root",
    "-n",
    ns,
    "--type=merge",
    "-p",
    '{"spec":{"revoked":true,"revocationReason":"credential leak"}}',
  ]);
  expect(patched.status, String(patched.stderr)).toBe(0);
  await bed.waitPhase("root", "Revoked");
  await bed.waitPhase("child", "Revoked");

  // The stream holds the child's cascaded revocation, and the anchored checkpoint has caught up with the head.
  const cm = await eventually(
    async () => {
      records = await readAll(bed.topic);
      const events = records.map(eventOf);
      if (
        !events.some(
          (e) => e.type === "dev.custody.task.revoked" && e.data.context.taskUid === child.metadata.uid,
        )
      )
        throw new Error("the child's revocation is not in the topic yet");
      const head = Math.max(...events.map((e) => e.custodyseq));
      const c = await bed.core.readNamespacedConfigMap({ name: "custody-provenance", namespace: bed.opNs });
      const checkpoint = Object.entries(c.data ?? {}).find(([k]) => k.startsWith("checkpoint."));
      if (!checkpoint || (JSON.parse(checkpoint[1]) as { seq: number }).seq !== head)
        throw new Error(`checkpoint ${checkpoint?.[1] ?? "(none)"} has not reached seq ${head}`);
      return c;
    },
    { timeoutMs: 40_000, intervalMs: 500 },
  );
  partitions = (await new KafkaTopicSource({ brokers: [env.kafkaBrokers], topic: bed.topic }).offsets())
    .length;
  checkpointFile = join(work, "checkpoint.json");
  writeFileSync(checkpointFile, Object.entries(cm.data!).find(([k]) => k.startsWith("checkpoint."))![1]);
  jwksFile = join(work, "jwks.json");
  writeFileSync(jwksFile, cm.data!["jwks.json"]!);
}, 180_000);

afterAll(async () => {
  await bed?.teardown();
  if (copies.length > 0) {
    const admin = kafka().admin();
    await admin.connect();
    await admin.deleteTopics({ topics: copies }).catch(() => undefined);
    await admin.disconnect();
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

/** The record of the child's event of this type. */
function childEvent(type: string): { record: SourceRecord; event: Event } {
  const record = records.find((r) => {
    const e = eventOf(r);
    return e.type === `dev.custody.task.${type}` && e.data.context.taskUid === child.metadata.uid;
  });
  if (!record) throw new Error(`no ${type} event of the child`);
  return { record, event: eventOf(record) };
}

describe("custody verify", () => {
  it("passes on the operator's topic: every event hash-linked and signed, reaching the anchored checkpoint", () => {
    const text = verify(bed.topic);
    expect(text.code, text.stdout + text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^verify: OK: 1 stream/m);
    expect(text.stdout).toMatch(/keys from ConfigMap .*\/custody-provenance jwks\.json/);
    const json = JSON.parse(verify(bed.topic, ["-o", "json"]).stdout) as {
      ok: boolean;
      records: number;
      checkpoints: { anchored: number };
      streams: Array<{ stream: string; events: number; head: { seq: number } }>;
    };
    expect(json.ok).toBe(true);
    expect(json.records).toBe(records.length);
    expect(json.checkpoints.anchored).toBe(1);
    expect(json.streams).toHaveLength(1);
    expect(json.streams[0]!.events).toBe(records.length);
    // The lifecycle is there, in stream order: requested and delegation verified before issued, the cascade last.
    const types = records
      .map(eventOf)
      .filter((e) => e.data.context.taskUid === child.metadata.uid)
      .sort((a, b) => a.custodyseq - b.custodyseq)
      .map((e) => e.type.replace("dev.custody.task.", ""));
    expect(types).toEqual(["requested", "delegation.verified", "issued", "revoked"]);
  });

  it("passes on a byte-identical copy in another topic", async () => {
    const topic = await copyTo("copy", records);
    const r = verify(topic);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^verify: OK/m);
  });

  it("fails on a copy with one event altered, naming it", async () => {
    const { record, event } = childEvent("issued");
    const altered = JSON.parse(record.value!.toString("utf8")) as Event & {
      data: { certificate: { notAfter: string } };
    };
    altered.data.certificate.notAfter = "2099-01-01T00:00:00.000Z";
    const topic = await copyTo(
      "altered",
      records.map((r) => (r === record ? { ...r, value: Buffer.from(canonicalize(altered)) } : r)),
    );
    const r = verify(topic);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(
      `ERROR altered       ${event.custodystream}  seq ${event.custodyseq}  id ${event.id}  partition ${record.partition} offset ${record.offset}: content does not match custodyhash`,
    );
    expect(r.stdout).toMatch(/^verify: FAILED: 1 error in 1 of 1 streams/m);
    expect(errorsOf(verify(topic, ["-o", "json"]))).toEqual([
      expect.objectContaining({
        kind: "altered",
        seq: event.custodyseq,
        id: event.id,
        partition: record.partition,
      }),
    ]);
  });

  it("fails on a copy with one event removed, naming the missing seq", async () => {
    const { record, event } = childEvent("delegation.verified");
    const topic = await copyTo(
      "removed",
      records.filter((r) => r !== record),
    );
    const r = verify(topic);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      new RegExp(
        `ERROR missing .*${escapeRegExp(event.custodystream)}  seq ${event.custodyseq}: seq ${event.custodyseq} is missing before seq ${event.custodyseq + 1}`,
      ),
    );
    expect(errorsOf(verify(topic, ["-o", "json"]))).toEqual([
      expect.objectContaining({ kind: "missing", stream: event.custodystream, seq: event.custodyseq }),
    ]);
  });

  it("fails on a copy with two events swapped, naming the one stored out of order", async () => {
    // Two consecutive events of the chain: one key, so one partition.
    const { record: first } = childEvent("requested");
    const { record: second, event } = childEvent("delegation.verified");
    expect(second.partition).toBe(first.partition);
    const swapped = records.map((r) => (r === first ? second : r === second ? first : r));
    const topic = await copyTo("swapped", swapped);
    const r = verify(topic);
    expect(r.code).toBe(1);
    const json = verify(topic, ["-o", "json"]);
    const errors = errorsOf(json);
    // The event written first in the copy is the later one: the earlier one, stored after it, is named.
    const requested = eventOf(first);
    expect(errors).toEqual([
      expect.objectContaining({
        kind: "reordered",
        seq: requested.custodyseq,
        id: requested.id,
        partition: first.partition,
      }),
    ]);
    expect(r.stdout).toContain(
      `ERROR reordered     ${requested.custodystream}  seq ${requested.custodyseq}  id ${requested.id}`,
    );
    expect(event.custodyseq).toBe(requested.custodyseq + 1);
  });

  it("fails on a copy with the tail removed, given a checkpoint that covers it (and cannot tell without one)", async () => {
    const bySeq = [...records].sort((a, b) => eventOf(b).custodyseq - eventOf(a).custodyseq);
    const tail = new Set(bySeq.slice(0, 2));
    const head = eventOf(bySeq[0]!).custodyseq;
    const topic = await copyTo(
      "truncated",
      records.filter((r) => !tail.has(r)),
    );
    const noCluster = ["--no-cluster", "--keys", jwksFile];
    // Without the anchored checkpoint a shortened stream is still a valid stream.
    expect(verify(topic, noCluster).code).toBe(0);
    const r = verify(topic, [...noCluster, "--checkpoint", checkpointFile]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      new RegExp(
        `ERROR truncated .* seq ${head}: stream ends at seq ${head - 2} before seq ${head} of the checkpoint anchored at `,
      ),
    );
    // The checkpoints anchored in the cluster are read by default.
    expect(verify(topic).code).toBe(1);
  });

  it("fails on a copy with a forked event: another event signed at the same stream and seq", async () => {
    const { record, event } = childEvent("issued");
    // Whoever holds the signing key (here: the test, as admin) can sign a second seq n.
    const secret = await bed.core.readNamespacedSecret({
      name: "custody-provenance-signing-key",
      namespace: bed.opNs,
    });
    const signer = createEs256Signer(
      createPrivateKey(Buffer.from(secret.data!["key.pem"]!, "base64").toString("utf8")),
    );
    const writer = createStreamWriter({
      stream: event.custodystream,
      epoch: event.custodyepoch,
      signer,
      head: { seq: event.custodyseq - 1, hash: event.custodyprev },
    });
    const original = JSON.parse(record.value!.toString("utf8")) as EventInput & Record<string, unknown>;
    const bytes = writer
      .append({
        id: randomUUID(),
        source: original.source,
        type: original.type,
        subject: original.subject,
        time: new Date().toISOString(),
        data: original.data,
      } as EventInput)
      .sealed();
    const forked = records.flatMap((r) => (r === record ? [r, { ...r, value: Buffer.from(bytes) }] : [r]));
    const topic = await copyTo("forked", forked);
    const r = verify(topic);
    expect(r.code).toBe(1);
    const fork = JSON.parse(Buffer.from(bytes).toString("utf8")) as Event;
    expect(r.stdout, r.stdout).toContain(
      `ERROR forked        ${event.custodystream}  seq ${event.custodyseq}  id ${fork.id}  partition ${record.partition} offset ${Number(record.offset) + 1}: differs from seq ${event.custodyseq} (id ${event.id}`,
    );
    expect(errorsOf(verify(topic, ["-o", "json"]))).toEqual([
      expect.objectContaining({ kind: "fork", seq: event.custodyseq, id: fork.id }),
    ]);
  });

  it("leaves no consumer group behind", async () => {
    const admin = kafka().admin();
    await admin.connect();
    try {
      // Each CLI read joins a group of its own (kafkajs cannot assign partitions) and deletes it.
      await eventually(async () => {
        const left = (await admin.listGroups()).groups.filter((g) => g.groupId.startsWith("custody-cli-"));
        expect(left).toEqual([]);
      });
    } finally {
      await admin.disconnect();
    }
  });

  it("refuses bad flags with exit code 2, naming the flag", () => {
    const r = custody(["verify", "-o", "yaml"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('-o: must be text or json, got "yaml"');
    const unknown = custody(["verify", "--kyes", "x"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown flag --kyes");
    expect(custody(["verify", "--help"]).stdout).toMatch(/^usage: custody verify/);
  });
});

describe("custody tree", () => {
  it("shows alice's root with its sub-agent nested, both Revoked with their reason, and one task's path up to alice", () => {
    const json = custody(["tree", "-n", ns, "-o", "json"]);
    expect(json.code, json.stderr).toBe(0);
    const tree = JSON.parse(json.stdout) as {
      namespace: string;
      roots: Array<{
        name: string;
        phase: string;
        delegator?: { kind: string; name: string };
        reason?: string;
        children: Array<{ name: string; phase: string; reason?: string; children: unknown[] }>;
      }>;
    };
    expect(tree.namespace).toBe(ns);
    expect(tree.roots).toHaveLength(1);
    const [r] = tree.roots;
    expect(r).toMatchObject({ name: "root", phase: "Revoked", delegator: { kind: "User", name: "alice" } });
    expect(r!.reason).toBeTruthy();
    expect(r!.children).toMatchObject([{ name: "child", phase: "Revoked", children: [] }]);
    expect(r!.children[0]!.reason).toBeTruthy();
    const text = custody(["tree", "-n", ns]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(
      /^root {2}Revoked {2}delegated by User\/alice {2}scope: read:repos\/acme\/\*, comment:repos\/acme\/\* {2}reason: \S+\n└── child {2}Revoked {2}scope: read:repos\/acme\/api {2}reason: \S+\n$/,
    );
    const one = custody(["tree", "child", "-n", ns]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout.split("\n")[0]).toBe("User/alice");
    expect(one.stdout).toContain("child  Revoked");
    expect(custody(["tree", "-n", ns, "-o", "yaml"]).code).toBe(2);
  });
});

describe("custody audit", () => {
  interface Audit {
    index: { read: number | null; events: number };
    tasks: Array<{
      task: { uid: string; name: string; namespace: string; spiffeId: string; state: string };
      allowed: { scope: string[]; ttl: string; certificates: Array<{ serial: string; fate: string[] }> };
      authority: {
        principal: { kind: string; name: string };
        requester: string;
        chain: Array<{ uid: string; name: string; scope: string[] }>;
      };
      events: Array<{ type: string; signature: string; chain: string; summary: string }>;
      integrity: { ok: boolean; problems: string[] };
    }>;
  }

  it("answers for the sub-agent: its chain up to alice, its scope and its events, in text and JSON", () => {
    const text = custody([
      "audit",
      "child",
      "-n",
      ns,
      "--topic",
      bed.topic,
      "--operator-namespace",
      bed.opNs,
    ]);
    expect(text.code, text.stderr).toBe(0);
    const out = text.stdout;
    expect(out).toContain(`AgentTask ${ns}/child  uid ${child.metadata.uid}`);
    expect(out).toMatch(/under whose authority\n {2}user alice .*\n {2}└─ AgentTask .*\/root {2}uid /);
    expect(out).toMatch(/└─ AgentTask .*\/child {2}uid .* ← this task/);
    expect(out).toMatch(/scope {10}read:repos\/acme\/api\n/);
    // The requester is whoever created the task: the test's admin user.
    expect(out).toMatch(/requested +by \S*admin: agent planner, scope read:repos\/acme\/api, ttl 30m/);
    expect(out).toMatch(/delegation\.verified +on behalf of user alice \(depth 1\)/);
    expect(out).toContain(`serial ${child.status!.certificate!.serial}`);
    expect(out).toMatch(
      new RegExp(`revoked +serials ${child.status!.certificate!.serial}: .*\\(cascade from ${ns}/root\\)`),
    );
    expect(out).toMatch(/4 events in operator\/.*; 4 hash-linked; every signature verified/);

    const json = JSON.parse(
      custody([
        "audit",
        "child",
        "-n",
        ns,
        "--topic",
        bed.topic,
        "--operator-namespace",
        bed.opNs,
        "-o",
        "json",
      ]).stdout,
    ) as Audit;
    // The index was built by the first run: the second read nothing new.
    expect(json.index.read).toBe(0);
    expect(json.index.events).toBe(records.length);
    expect(json.tasks).toHaveLength(1);
    const a = json.tasks[0]!;
    expect(a.task).toMatchObject({ uid: child.metadata.uid, name: "child", namespace: ns, state: "revoked" });
    expect(a.authority.principal).toEqual({ kind: "user", name: "alice" });
    expect(a.authority.requester).toMatch(/admin/);
    expect(a.authority.chain.map((h) => [h.uid, h.name, h.scope])).toEqual([
      [root.metadata.uid, "root", ["read:repos/acme/*", "comment:repos/acme/*"]],
      [child.metadata.uid, "child", ["read:repos/acme/api"]],
    ]);
    expect(a.allowed).toMatchObject({ scope: ["read:repos/acme/api"], ttl: "30m" });
    expect(a.allowed.certificates).toEqual([
      expect.objectContaining({
        serial: child.status!.certificate!.serial,
        fate: [expect.stringMatching(/^revoked /)],
      }),
    ]);
    expect(a.events.map((e) => [e.type, e.chain, e.signature])).toEqual(
      ["requested", "delegation.verified", "issued", "revoked"].map((t) => [
        `dev.custody.task.${t}`,
        "linked",
        "verified",
      ]),
    );
    expect(a.integrity).toEqual({
      ok: true,
      chain: { linked: 4 },
      signatures: { verified: 4 },
      problems: [],
    });
  });

  it("finds the same task by certificate serial and by SPIFFE ID, and the root by name once it is gone from the cluster", async () => {
    const base = ["--topic", bed.topic, "--operator-namespace", bed.opNs, "-o", "json"];
    const uidOf = (args: string[]) => {
      const r = custody(["audit", ...args, ...base]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as Audit).tasks.map((t) => t.task.uid);
    };
    const serial = child.status!.certificate!.serial;
    const colons = serial.toUpperCase().match(/../g)!.join(":");
    expect(uidOf(["--serial", colons])).toEqual([child.metadata.uid]);
    expect(uidOf(["--spiffe-id", child.status!.spiffeID!])).toEqual([child.metadata.uid]);
    await bed.custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: PLURAL,
      name: "root",
    });
    await eventually(async () => {
      const gone = await bed.getTask("root").then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      if (!gone) throw new Error("root not gone yet");
    });
    const r = custody(["audit", "root", "-n", ns, ...base]);
    expect(r.code, r.stderr).toBe(0);
    const a = (JSON.parse(r.stdout) as Audit).tasks[0]!;
    expect(a.task.uid).toBe(root.metadata.uid);
    // Its deletion was recorded after the revocation, and indexed by this run.
    expect(a.events.map((e) => e.type.replace("dev.custody.task.", ""))).toEqual([
      "requested",
      "delegation.verified",
      "issued",
      "revoked",
      "deleted",
    ]);
  });

  it("names what it cannot find, and refuses bad flags with exit code 2", () => {
    const missing = custody([
      "audit",
      "nobody",
      "-n",
      ns,
      "--topic",
      bed.topic,
      "--operator-namespace",
      bed.opNs,
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`custody: no events in topic ${bed.topic} name AgentTask ${ns}/nobody`);
    const none = custody(["audit", "--topic", bed.topic]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(
      "what to audit: give a TASK name, --pod NAME, --serial HEX or --spiffe-id ID",
    );
    const two = custody(["audit", "child", "--serial", "0a"]);
    expect(two.code).toBe(2);
    expect(two.stderr).toContain("give only one of TASK, --pod, --serial and --spiffe-id");
    const badSerial = custody(["audit", "--serial", "xyz"]);
    expect(badSerial.code).toBe(2);
    expect(badSerial.stderr).toContain("--serial: must be a hex serial");
    expect(custody(["audit", "-h"]).stdout).toMatch(/^usage: custody audit/);
  });
});

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
