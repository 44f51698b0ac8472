import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { AuditIndex, IndexMismatchError, normalizeSerial } from "../../cli/index.ts";
import { canonicalize } from "../../core/provenance/canonical-json.ts";
import { createStreamWriter } from "../../core/provenance/chain.ts";
import {
  CHILD,
  lifecycle,
  MemoryTopic,
  NS,
  newWriter,
  ROOT,
  spiffe,
  writeLifecycle,
} from "./audit-fixtures.ts";
import { SIGNER, STREAM } from "./provenance-fixtures.ts";

const open: AuditIndex[] = [];
const dir = mkdtempSync(join(tmpdir(), "custody-index-"));
let n = 0;
function newIndex(topic = "custody.test", file = join(dir, `index-${n++}.sqlite`)) {
  const index = AuditIndex.open(file, { topic });
  open.push(index);
  return index;
}
afterEach(() => {
  for (const i of open.splice(0)) i.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const statuses = (index: AuditIndex, uid: string) => index.eventsOfTask(uid).map((e) => [e.id, e.status]);
const decode = (b: Uint8Array) => JSON.parse(new TextDecoder().decode(b)) as Record<string, unknown>;

describe("the audit index", () => {
  it("indexes a stream spread over partitions and links every event, whatever order the partitions come in", async () => {
    const topic = new MemoryTopic();
    writeLifecycle(topic);
    const index = newIndex();
    const report = await index.update(topic);
    expect(report.read).toBe(10);
    expect(report.byStatus).toEqual({ linked: 10 });
    // Partition 1 (the child) is read first: its events waited for their predecessors, then linked.
    const all = [...index.eventsOfTask(ROOT.uid), ...index.eventsOfTask(CHILD.uid)];
    expect(all.map((e) => e.status)).toEqual(Array(10).fill("linked"));
    expect(index.eventsOfTask(CHILD.uid).map((e) => e.type)).toEqual([
      "dev.custody.task.requested",
      "dev.custody.task.delegation.verified",
      "dev.custody.task.policy.decided",
      "dev.custody.task.issued",
      "dev.custody.task.injected",
      "dev.custody.task.revoked",
    ]);
    const issued = index.eventsOfTask(CHILD.uid)[3]!;
    expect(issued).toMatchObject({
      stream: STREAM,
      seq: 7,
      partition: 1,
      serial: "0b02",
      spiffeId: spiffe("child"),
    });
    expect(issued.chainUids).toEqual([ROOT.uid, CHILD.uid]);
    // The raw record is kept byte for byte.
    expect(decode(issued.record).id).toBe("evt-7");
  });

  it("finds tasks by name, serial (as openssl prints it), SPIFFE ID and pod", async () => {
    const topic = new MemoryTopic();
    writeLifecycle(topic);
    const index = newIndex();
    await index.update(topic);
    expect(index.taskUidsByName("child", NS)).toEqual([CHILD.uid]);
    expect(index.taskUidsByName("child", "other")).toEqual([]);
    expect(index.taskUidsByName("child", null)).toEqual([CHILD.uid]);
    expect(index.taskUidsBySerial(normalizeSerial("00:0B:02"))).toEqual([CHILD.uid]);
    // A revoked event names the root's serial too, under the root.
    expect(index.taskUidsBySerial("0a01")).toEqual([ROOT.uid]);
    expect(index.taskUidsBySpiffeId(spiffe("root"))).toEqual([ROOT.uid]);
    expect(index.taskUidsByPod("planner-7d9f", NS)).toEqual([CHILD.uid]);
    expect(index.taskUidsByPod("pod-uid-1", null)).toEqual([CHILD.uid]);
    expect(index.taskUidsByPod("planner-7d9f", "other")).toEqual([]);
  });

  it("reads only what is new: a second run reads the new records (and re-reads one per partition to check it)", async () => {
    const topic = new MemoryTopic();
    const writer = newWriter();
    const inputs = lifecycle();
    for (const input of inputs.slice(0, 6)) topic.append(0, writer.append(input).sealed());
    const index = newIndex();
    expect((await index.update(topic)).read).toBe(6);
    for (const input of inputs.slice(6)) topic.append(0, writer.append(input).sealed());
    const second = await index.update(topic);
    expect(second.read).toBe(4);
    // Offset 5 is the last one indexed: read again to compare bytes, not indexed twice.
    expect(topic.reads[1]).toEqual([{ partition: 0, from: 5n, to: 10n }]);
    expect(index.stats().events).toBe(10);
    expect(
      [...statuses(index, ROOT.uid), ...statuses(index, CHILD.uid)].every(([, s]) => s === "linked"),
    ).toBe(true);
    // Caught up: no read at all.
    const third = await index.update(topic);
    expect(third.read).toBe(0);
    expect(topic.reads).toHaveLength(2);
  });

  it("persists: a new process reopening the file continues from its offsets", async () => {
    const file = join(dir, "persist.sqlite");
    const topic = new MemoryTopic();
    const writer = newWriter();
    const inputs = lifecycle();
    for (const input of inputs.slice(0, 4)) topic.append(0, writer.append(input).sealed());
    const first = newIndex("custody.test", file);
    await first.update(topic);
    first.close();
    open.splice(open.indexOf(first), 1);
    for (const input of inputs.slice(4)) topic.append(0, writer.append(input).sealed());
    const second = newIndex("custody.test", file);
    expect((await second.update(topic)).read).toBe(6);
    expect(second.stats().events).toBe(10);
  });

  it("refuses to mix histories when an indexed offset now holds other bytes, and rebuilds on request, keeping the old file", async () => {
    const file = join(dir, "rewritten.sqlite");
    const topic = new MemoryTopic("custody.test", 1);
    const writer = newWriter();
    const inputs = lifecycle();
    for (const input of inputs.slice(0, 5)) topic.append(0, writer.append(input).sealed());
    let index = newIndex("custody.test", file);
    await index.update(topic);
    // Someone rewrites offset 4 (the last one indexed) with other content, then the topic grows.
    const altered = decode(topic.partitions[0]!.values[4]!);
    (altered.data as { scope: string[] }).scope = ["write:repos/acme/*"];
    topic.rewrite(0, 4, new TextEncoder().encode(canonicalize(altered)));
    for (const input of inputs.slice(5)) topic.append(0, writer.append(input).sealed());
    const err = await index.update(topic).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IndexMismatchError);
    expect((err as Error).message).toMatch(/partition 0 offset 4 now holds other bytes/);
    expect((err as Error).message).toMatch(/custody verify.*--rebuild-index/);
    // Nothing of that run was kept.
    expect(index.stats().events).toBe(5);
    index.close();
    open.splice(open.indexOf(index), 1);

    index = AuditIndex.open(file, { topic: "custody.test", rebuild: true });
    open.push(index);
    expect(index.superseded).toMatch(/rewritten\.sqlite\.superseded-/);
    expect(existsSync(index.superseded!)).toBe(true);
    await index.update(topic);
    expect(index.stats().events).toBe(10);
    const child = index.eventsOfTask(CHILD.uid);
    expect(child.find((e) => e.id === "evt-5")).toMatchObject({
      status: "altered",
      note: "content does not match custodyhash",
    });
    // Its successor cannot link to an event whose hash cannot be trusted.
    expect(child.find((e) => e.id === "evt-6")).toMatchObject({
      status: "unlinked",
      note: "seq 5 is altered: its hash cannot be trusted",
    });
    expect(readdirSync(dir).filter((f) => f.startsWith("rewritten.sqlite.superseded-"))).toHaveLength(1);
  });

  it("notices a partition that now ends before what it indexed, another cluster, and another topic", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    writeLifecycle(topic, newWriter());
    const index = newIndex("custody.test", join(dir, "shrunk.sqlite"));
    await index.update(topic);
    const shorter = new MemoryTopic("custody.test", 2);
    shorter.append(0, new TextEncoder().encode("{}"));
    await expect(index.update(shorter)).rejects.toThrow(
      /partition 0 now ends below offset 1, but the index read it up to offset 9/,
    );
    const other = new MemoryTopic("custody.test", 2);
    other.cluster = "cluster-b";
    await expect(index.update(other)).rejects.toThrow(/built from Kafka cluster cluster-a.*cluster-b/);
    await expect(index.update(new MemoryTopic("custody.other", 2))).rejects.toThrow(
      /indexes topic custody.test, not custody.other/,
    );
    expect(() => AuditIndex.open(join(dir, "shrunk.sqlite"), { topic: "custody.other" })).toThrow(
      /it indexes topic custody.test, not custody.other: give another --index/,
    );
  });

  it("records what retention deleted before it was read, and keeps what it had read", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    const writer = newWriter();
    const inputs = lifecycle();
    for (const input of inputs.slice(0, 3)) topic.append(0, writer.append(input).sealed());
    const index = newIndex();
    await index.update(topic);
    for (const input of inputs.slice(3)) topic.append(0, writer.append(input).sealed());
    topic.deleteBefore(0, 6);
    const warnings: string[] = [];
    const report = await index.update(topic, { onWarning: (w) => warnings.push(w) });
    expect(report.gaps).toEqual([{ partition: 0, from: 3, to: 6 }]);
    expect(warnings).toContain(
      "partition 0: offsets 3..5 were deleted by retention before this index read them",
    );
    expect(index.stats().gaps).toEqual([{ partition: 0, from: 3, to: 6 }]);
    expect(index.stats().events).toBe(7);
    // The first event after the gap cannot link; the ones after it do.
    const child = index.eventsOfTask(CHILD.uid);
    expect(child.map((e) => [e.id, e.status])).toEqual([
      ["evt-7", "unlinked"],
      ["evt-8", "linked"],
      ["evt-10", "linked"],
    ]);
  });

  it("files a sealed and an unsealed copy of one event as a duplicate, not a fork", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    const writer = newWriter();
    const appended = lifecycle().map((i) => writer.append(i));
    for (const a of appended.slice(0, 3)) topic.append(0, a.sealed());
    topic.append(0, appended[1]!.unsealed());
    const index = newIndex();
    const report = await index.update(topic);
    expect(report.byStatus).toEqual({ linked: 3, duplicate: 1 });
  });

  it("flags re-sends, forks and broken links per event", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    const writer = newWriter();
    const inputs = lifecycle();
    const bytes = inputs.map((i) => writer.append(i).sealed());
    for (const b of bytes.slice(0, 4)) topic.append(0, b);
    topic.append(0, bytes[3]!); // a retry re-sent seq 4
    // A second writer with the same stream and head writes another seq 4: a fork.
    const other = createStreamWriter({
      stream: STREAM,
      epoch: 1,
      signer: SIGNER,
      head: headAfter(bytes[2]!),
    });
    topic.append(0, other.append({ ...inputs[3]!, id: "evt-4-forked" }).sealed());
    // seq 6 chained to something else than seq 5.
    const rogue = createStreamWriter({
      stream: STREAM,
      epoch: 1,
      signer: SIGNER,
      head: { seq: 5, hash: "f".repeat(64) },
    });
    topic.append(0, bytes[4]!);
    topic.append(0, rogue.append(inputs[5]!).sealed());
    const index = newIndex();
    const report = await index.update(topic);
    expect(report.byStatus).toEqual({ linked: 5, duplicate: 1, fork: 1, broken: 1 });
    expect(index.stats().events).toBe(7);
    const child = index.eventsOfTask(CHILD.uid);
    expect(child.map((e) => [e.id, e.status])).toEqual([
      ["evt-4", "linked"],
      ["evt-4-forked", "fork"],
      ["evt-5", "linked"],
      ["evt-6", "broken"],
    ]);
    expect(child[1]!.note).toBe("another event holds seq 4: partition 0 offset 3");
    expect(child[3]!.note).toBe("custodyprev is not the hash of seq 5");
  });

  it("keeps what a failed read committed, and the next run continues where that ended", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    writeLifecycle(topic, newWriter());
    topic.batchSize = 4;
    topic.failAfterBatches = 1;
    const index = newIndex();
    // Committing every 4 records: the first batch is kept, the second never arrived.
    await expect(index.update(topic, { commitEvery: 4 })).rejects.toThrow(/broker went away/);
    expect(index.stats().events).toBe(4);
    topic.failAfterBatches = null;
    expect((await index.update(topic)).read).toBe(6);
    expect(index.stats().events).toBe(10);
  });

  it("files a record that is no event as malformed", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    topic.append(0, new TextEncoder().encode("not json"));
    topic.append(0, new Uint8Array([0xff, 0xfe]));
    topic.append(0, null);
    topic.append(
      0,
      new TextEncoder().encode(JSON.stringify({ id: "x", data: { context: { taskUid: "t-1" } } })),
    );
    const index = newIndex();
    expect((await index.update(topic)).byStatus).toEqual({ malformed: 4 });
    expect(index.eventsOfTask("t-1")).toMatchObject([
      { id: "x", status: "malformed", note: expect.stringMatching(/specversion/) },
    ]);
  });
});

function headAfter(bytes: Uint8Array) {
  const e = decode(bytes) as { custodyseq: number; custodyhash: string };
  return { seq: e.custodyseq, hash: e.custodyhash };
}
