// Fixtures for the audit index and audit answer tests: a delegation chain's
// lifecycle written by the real stream writer, and an in-memory "topic" that
// serves records the way cli/kafka-source.ts does.
import type { ReadRange, RecordSource, SourceRecord } from "../../cli/kafka-source.ts";
import { createStreamWriter, type StreamWriter } from "../../core/provenance/chain.ts";
import type { EventInput } from "../../core/provenance/events.ts";
import type { Signer } from "../../core/provenance/sign.ts";
import { SIGNER, SOURCE, STREAM } from "./provenance-fixtures.ts";

const D = (c: string) => c.repeat(64);
export const NS = "team-a";
export const TD = "spiffe://custody.local";
export const spiffe = (name: string, agent = "planner") => `${TD}/ns/${NS}/agent/${agent}/task/${name}`;

export interface TaskRef {
  readonly uid: string;
  readonly name: string;
  readonly chainUids: readonly string[];
}
export const ROOT: TaskRef = { uid: "uid-root", name: "root", chainUids: ["uid-root"] };
export const CHILD: TaskRef = { uid: "uid-child", name: "child", chainUids: ["uid-root", "uid-child"] };

const context = (t: TaskRef) => ({
  taskUid: t.uid,
  namespace: NS,
  name: t.name,
  chainUids: [...t.chainUids],
  rootUid: t.chainUids[0]!,
  contextDigest: D(t.uid === ROOT.uid ? "1" : "2"),
});

const certificate = (t: TaskRef, serial: string) => ({
  serial,
  spiffeId: spiffe(t.name),
  notBefore: "2026-03-01T12:00:00Z",
  notAfter: "2026-03-01T13:00:00Z",
  publicKeySha256: D("b"),
});

/** requested → delegation verified → issued for the root (by alice) and its child, then the child's pod and a revocation cascade. */
export function lifecycle(): EventInput[] {
  const start = Date.parse("2026-03-01T12:00:00.000Z");
  const e = (
    n: number,
    t: TaskRef,
    type: EventInput["type"],
    data: Record<string, unknown>,
    subject?: string,
  ) =>
    ({
      id: `evt-${n}`,
      source: SOURCE,
      type,
      subject: subject ?? spiffe(t.name),
      time: new Date(start + n * 1000).toISOString(),
      data: { context: context(t), ...data },
    }) as EventInput;
  return [
    e(
      1,
      ROOT,
      "dev.custody.task.requested",
      {
        requester: { username: "admin" },
        agent: "planner",
        scope: ["read:repos/acme/*", "comment:repos/acme/*"],
        ttl: "1h",
      },
      `${NS}/root`,
    ),
    e(
      2,
      ROOT,
      "dev.custody.task.delegation.verified",
      {
        delegator: { kind: "user", name: "alice" },
        depth: 0,
        scope: ["read:repos/acme/*", "comment:repos/acme/*"],
      },
      `${NS}/root`,
    ),
    e(3, ROOT, "dev.custody.task.issued", { certificate: certificate(ROOT, "0a01") }),
    e(
      4,
      CHILD,
      "dev.custody.task.requested",
      { requester: { username: "admin" }, agent: "planner", scope: ["read:repos/acme/api"], ttl: "30m" },
      `${NS}/child`,
    ),
    e(
      5,
      CHILD,
      "dev.custody.task.delegation.verified",
      // As the operator writes it: the chain's principal, and the depth below the root.
      { delegator: { kind: "user", name: "alice" }, depth: 1, scope: ["read:repos/acme/api"] },
      `${NS}/child`,
    ),
    e(6, CHILD, "dev.custody.task.policy.decided", {
      policyVersion: "policy-7",
      decision: "allow",
      reasons: [],
    }),
    e(7, CHILD, "dev.custody.task.issued", { certificate: certificate(CHILD, "0b02") }),
    e(8, CHILD, "dev.custody.task.injected", {
      pod: { namespace: NS, name: "planner-7d9f", uid: "pod-uid-1" },
      containers: ["agent"],
      serial: "0b02",
    }),
    e(9, ROOT, "dev.custody.task.revoked", { serials: ["0a01"], reason: "credential leak" }),
    e(10, CHILD, "dev.custody.task.revoked", {
      serials: ["0b02"],
      reason: "parent revoked",
      cascadeFromUid: ROOT.uid,
    }),
  ];
}

export function newWriter(stream = STREAM, epoch = 1, signer: Signer = SIGNER): StreamWriter {
  return createStreamWriter({ stream, epoch, signer });
}

/** An in-memory topic: per partition an array of record values, offsets from `low`. */
export class MemoryTopic implements RecordSource {
  readonly topic: string;
  cluster = "cluster-a";
  readonly partitions: Array<{ low: number; values: Array<Uint8Array | null> }>;
  /** Records per onBatch call. */
  batchSize = 3;
  /** Partitions are served in this order (default: highest first, so successors can come before predecessors). */
  order: "asc" | "desc" = "desc";
  reads: ReadRange[][] = [];
  /** Throw after delivering this many batches (a broker dying mid-read). */
  failAfterBatches: number | null = null;

  constructor(topic = "custody.test", partitions = 2) {
    this.topic = topic;
    this.partitions = Array.from({ length: partitions }, () => ({ low: 0, values: [] }));
  }

  /** Appends and returns the record's offset. */
  append(partition: number, value: Uint8Array | null): number {
    const p = this.partitions[partition]!;
    p.values.push(value);
    return p.low + p.values.length - 1;
  }

  /** Replaces the bytes at an offset (what a rewrite of the topic would do). */
  rewrite(partition: number, offset: number, value: Uint8Array): void {
    const p = this.partitions[partition]!;
    p.values[offset - p.low] = value;
  }

  /** Retention: drops records before `offset`. */
  deleteBefore(partition: number, offset: number): void {
    const p = this.partitions[partition]!;
    p.values = p.values.slice(offset - p.low);
    p.low = offset;
  }

  async clusterId(): Promise<string> {
    return this.cluster;
  }

  async offsets() {
    return this.partitions.map((p, partition) => ({
      partition,
      low: BigInt(p.low),
      high: BigInt(p.low + p.values.length),
    }));
  }

  async read(ranges: readonly ReadRange[], onBatch: (records: SourceRecord[]) => void): Promise<void> {
    this.reads.push([...ranges]);
    const sorted = [...ranges].sort((a, b) =>
      this.order === "asc" ? a.partition - b.partition : b.partition - a.partition,
    );
    let batches = 0;
    for (const r of sorted) {
      const p = this.partitions[r.partition]!;
      let batch: SourceRecord[] = [];
      for (let o = Number(r.from); o < Number(r.to); o++) {
        const value = p.values[o - p.low];
        if (value === undefined) continue;
        batch.push({
          partition: r.partition,
          offset: BigInt(o),
          key: null,
          value: value === null ? null : Buffer.from(value),
          headers: {},
        });
        if (batch.length === this.batchSize) {
          if (this.failAfterBatches !== null && batches >= this.failAfterBatches)
            throw new Error("broker went away");
          onBatch(batch);
          batches++;
          batch = [];
        }
      }
      if (batch.length > 0) {
        if (this.failAfterBatches !== null && batches >= this.failAfterBatches)
          throw new Error("broker went away");
        onBatch(batch);
        batches++;
      }
    }
  }

  async close(): Promise<void> {}
}

/** Writes the lifecycle to the topic: the root's events on the first partition, the child's on the last. */
export function writeLifecycle(
  topic: MemoryTopic,
  writer = newWriter(),
  /** Which events (0-based) are sealed: all by default; a batching writer seals each batch's last. */
  sealed: (i: number, count: number) => boolean = () => true,
): { offsets: Map<string, [number, number]> } {
  const offsets = new Map<string, [number, number]>();
  const inputs = lifecycle();
  for (const [i, input] of inputs.entries()) {
    const appended = writer.append(input);
    const bytes = sealed(i, inputs.length) ? appended.sealed() : appended.unsealed();
    const partition = input.data.context?.taskUid === ROOT.uid ? 0 : topic.partitions.length - 1;
    offsets.set(input.id, [partition, topic.append(partition, bytes)]);
  }
  return { offsets };
}
