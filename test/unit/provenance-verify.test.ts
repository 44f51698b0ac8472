import { createHash, generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalize } from "../../core/provenance/canonical-json.ts";
import { createStreamWriter } from "../../core/provenance/chain.ts";
import { makeCheckpoint } from "../../core/provenance/checkpoint.ts";
import { createEs256Signer } from "../../core/provenance/sign.ts";
import { type Finding, type StreamRecord, verifyStreams } from "../../core/provenance/verify.ts";
import {
  KEY,
  KEYS,
  reoffset,
  SIGNER,
  STREAM,
  sampleInput,
  TIME,
  writeStream,
} from "./provenance-fixtures.ts";

const utf8 = new TextDecoder();
const encode = (s: string) => new TextEncoder().encode(s);
const eventOf = (r: StreamRecord) =>
  JSON.parse(typeof r.value === "string" ? r.value : utf8.decode(r.value)) as Record<string, unknown>;
const idOf = (r: StreamRecord) => eventOf(r).id as string;

/** Rewrites one record's event (in canonical form, so only the content change can be detected). */
function tamper(r: StreamRecord, change: (e: Record<string, unknown>) => void): StreamRecord {
  const e = eventOf(r);
  change(e);
  return { ...r, value: encode(canonicalize(e)) };
}

/** kind, seq, id, offset of each finding: what a reader needs to find the event. */
const brief = (findings: readonly Finding[]) =>
  findings.map((f) => ({ kind: f.kind, seq: f.seq, id: f.id, offset: f.offset }));

const verify = (records: readonly StreamRecord[], checkpoints: unknown[] = []) =>
  verifyStreams(records, { keys: KEYS, checkpoints });

const { records: CLEAN, head: HEAD } = writeStream(20);

describe("verifyStreams: an untouched stream", () => {
  it("passes, with its head, event count and no findings", () => {
    const report = verify(CLEAN);
    expect(report.ok).toBe(true);
    expect(report.unattributed).toEqual([]);
    expect(report.streams).toEqual([
      { stream: STREAM, ok: true, events: 20, first: 1, head: HEAD, epoch: 1, findings: [] },
    ]);
  });

  it("passes on a copy (other offsets, values as strings) and with the head's checkpoint", () => {
    const copy = CLEAN.map((r, i) => ({
      partition: 3,
      offset: 1000 + i,
      value: utf8.decode(r.value as Uint8Array),
    }));
    const cp = makeCheckpoint({ stream: STREAM, ...HEAD, epoch: 1, time: TIME, signer: SIGNER });
    expect(verify(copy, [cp]).ok).toBe(true);
  });

  it("accepts keys as JWKs", () => {
    const jwk = KEY.publicKey.export({ format: "jwk" });
    expect(verifyStreams(CLEAN, { keys: new Map([[SIGNER.kid, jwk]]) }).ok).toBe(true);
  });
});

describe("verifyStreams: tampering, each named", () => {
  it("one event altered: `altered` on that event only", () => {
    const records = CLEAN.map((r, i) =>
      i === 4
        ? tamper(r, (e) => Object.assign(e, { subject: "spiffe://custody.local/ns/x/agent/y/task/z" }))
        : r,
    );
    const report = verify(records);
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "altered", seq: 5, id: idOf(CLEAN[4]!), offset: "4" },
    ]);
  });

  it("one event altered and re-hashed: `bad-signature` on that event only (the broken link is explained)", () => {
    const records = CLEAN.map((r, i) =>
      i === 4
        ? tamper(r, (e) => {
            e.time = "2030-01-01T00:00:00Z";
            const { custodyhash: _h, custodysig: _s, ...rest } = e;
            e.custodyhash = createHash("sha256").update(canonicalize(rest)).digest("hex");
          })
        : r,
    );
    expect(brief(verify(records).streams[0]!.findings)).toEqual([
      { kind: "bad-signature", seq: 5, id: idOf(CLEAN[4]!), offset: "4" },
    ]);
  });

  it("a record re-serialized with whitespace: `altered` (not canonical)", () => {
    const records = CLEAN.map((r, i) => (i === 2 ? { ...r, value: JSON.stringify(eventOf(r), null, 1) } : r));
    const [f] = verify(records).streams[0]!.findings;
    expect(f).toMatchObject({ kind: "altered", seq: 3, message: "record is not in canonical form" });
  });

  it("one event removed: `missing` naming its seq", () => {
    const records = reoffset(CLEAN.filter((_, i) => i !== 9));
    const report = verify(records);
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "missing", seq: 10, id: null, offset: null },
    ]);
    expect(report.streams[0]!.findings[0]!.message).toContain(`before seq 11 (id ${idOf(CLEAN[10]!)}`);
  });

  it("two events swapped: `reordered` naming the one stored too late", () => {
    const records = [...CLEAN];
    [records[6], records[7]] = [records[7]!, records[6]!];
    const report = verify(reoffset(records));
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "reordered", seq: 7, id: idOf(CLEAN[6]!), offset: "7" },
    ]);
    expect(report.streams[0]!.findings[0]!.message).toContain("stored after seq 8");
  });

  it("tail removed: invisible without a checkpoint, `truncated` against the anchored one", () => {
    const cut = CLEAN.slice(0, 17);
    expect(verify(cut).ok).toBe(true);
    const cp = makeCheckpoint({ stream: STREAM, ...HEAD, epoch: 1, time: TIME, signer: SIGNER });
    const report = verify(cut, [cp]);
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "truncated", seq: 20, id: null, offset: null },
    ]);
    expect(report.streams[0]!.findings[0]!.message).toContain("ends at seq 17");
  });

  it("a stream that disagrees with a checkpoint's hash: `truncated` at that event", () => {
    const cp = makeCheckpoint({
      stream: STREAM,
      seq: 12,
      hash: "0".repeat(63) + "1",
      epoch: 1,
      time: TIME,
      signer: SIGNER,
    });
    expect(brief(verify(CLEAN, [cp]).streams[0]!.findings)).toEqual([
      { kind: "truncated", seq: 12, id: idOf(CLEAN[11]!), offset: "11" },
    ]);
  });

  it("a forged or unknown-key checkpoint anchors nothing and is reported", () => {
    const cp = makeCheckpoint({
      stream: STREAM,
      seq: 25,
      hash: "1".repeat(64),
      epoch: 1,
      time: TIME,
      signer: SIGNER,
    });
    const other = createEs256Signer(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
    const foreign = makeCheckpoint({
      stream: STREAM,
      seq: 25,
      hash: "1".repeat(64),
      epoch: 1,
      time: TIME,
      signer: other,
    });
    const findings = verify(CLEAN, [{ ...cp, seq: 26 }, foreign]).streams[0]!.findings;
    expect(findings.map((f) => [f.kind, f.seq])).toEqual([
      ["unknown-key", 25],
      ["bad-signature", 26],
    ]);
  });

  it("a fork (two different events with one seq, same epoch): `fork` naming the second", () => {
    // A second writer of the same epoch continuing from seq 5 with other events.
    const writer = createStreamWriter({
      stream: STREAM,
      epoch: 1,
      signer: SIGNER,
      head: { seq: 5, hash: eventOf(CLEAN[4]!).custodyhash as string },
    });
    const forked = [100, 101].map((n, i) => ({
      partition: 0,
      offset: String(20 + i),
      value: writer.append(sampleInput(n)).sealed(),
    }));
    const report = verify([...CLEAN, ...forked]);
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "fork", seq: 6, id: idOf(forked[0]!), offset: "20" },
      { kind: "fork", seq: 7, id: idOf(forked[1]!), offset: "21" },
    ]);
  });

  it("a re-sent duplicate is benign: `duplicate` (info), counted once", () => {
    const report = verify([...CLEAN, { ...CLEAN[2]!, offset: "20" }, { ...CLEAN[19]!, offset: "21" }]);
    expect(report.ok).toBe(true);
    expect(report.streams[0]!.events).toBe(20);
    expect(report.streams[0]!.findings.map((f) => [f.kind, f.severity, f.seq, f.offset])).toEqual([
      ["duplicate", "info", 3, "20"],
      ["duplicate", "info", 20, "21"],
    ]);
  });

  it("a deposed writer's events: `stale-epoch` (warning), excluded from the chain", () => {
    const a = writeStream(10, { epoch: 1 });
    const b = writeStream(5, { epoch: 2, head: a.head, firstOffset: 10 });
    // The old leader, still believing it holds seq 10, appends twice after the new one took over...
    const late = writeStream(2, { epoch: 1, head: a.head, firstOffset: 15 });
    // ...and once more past the new head.
    const past = writeStream(1, { epoch: 1, head: b.head, firstOffset: 17 });
    const report = verify([...a.records, ...b.records, ...late.records, ...past.records]);
    const s = report.streams[0]!;
    expect(s.ok).toBe(true);
    expect(s.head).toEqual(b.head);
    expect(s.epoch).toBe(2);
    expect(brief(s.findings)).toEqual([
      { kind: "stale-epoch", seq: 11, id: idOf(late.records[0]!), offset: "15" },
      { kind: "stale-epoch", seq: 12, id: idOf(late.records[1]!), offset: "16" },
      { kind: "stale-epoch", seq: 16, id: idOf(past.records[0]!), offset: "17" },
    ]);
    expect(s.findings.every((f) => f.severity === "warning")).toBe(true);
  });

  it("an unknown signing key: `unknown-key` on every event", () => {
    const other = writeStream(3, {
      signer: createEs256Signer(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
    });
    const report = verify(other.records);
    expect(report.streams[0]!.findings.map((f) => [f.kind, f.seq])).toEqual([
      ["unknown-key", 1],
      ["unknown-key", 2],
      ["unknown-key", 3],
    ]);
  });

  it("records that are not events: `malformed`, unattributed when they name no stream", () => {
    const junk: StreamRecord[] = [
      { partition: 0, offset: 20, value: new Uint8Array([0xff, 0xfe]) },
      { partition: 0, offset: 21, value: "{}" },
      { partition: 0, offset: 22, value: canonicalize({ ...eventOf(CLEAN[0]!), custodyseq: "1" }) },
    ];
    const report = verify([...CLEAN, ...junk]);
    expect(report.ok).toBe(false);
    expect(report.unattributed.map((f) => [f.kind, f.offset])).toEqual([
      ["malformed", "20"],
      ["malformed", "21"],
    ]);
    expect(report.streams[0]!.findings.map((f) => [f.kind, f.offset])).toEqual([["malformed", "22"]]);
  });

  it("a stream whose start was deleted: `missing` unless retention is allowed for", () => {
    const tail = CLEAN.slice(5);
    expect(brief(verify(tail).streams[0]!.findings)).toEqual([
      { kind: "missing", seq: 1, id: null, offset: null },
    ]);
    expect(verifyStreams(tail, { keys: KEYS, allowRetentionGap: true }).ok).toBe(true);
  });
});

describe("verifyStreams: many streams and partitions", () => {
  // Two writers' streams interleaved over two partitions, each stream in order within each partition.
  const s1 = writeStream(8, { stream: "operator/a" });
  const s2 = writeStream(8, { stream: "operator/b" });
  const mixed: StreamRecord[] = [];
  for (let i = 0; i < 8; i++) {
    mixed.push({ ...s1.records[i]!, partition: i % 2, offset: String(i) });
    mixed.push({ ...s2.records[i]!, partition: (i + 1) % 2, offset: String(100 + i) });
  }

  it("verifies each stream independently", () => {
    const report = verify(mixed);
    expect(report.ok).toBe(true);
    expect(report.streams.map((s) => [s.stream, s.events])).toEqual([
      ["operator/a", 8],
      ["operator/b", 8],
    ]);
  });

  it("reports the same thing whatever order the records arrive in", () => {
    const broken = mixed
      .filter((_, i) => i !== 5)
      .map((r, i) => (i === 3 ? tamper(r, (e) => Object.assign(e, { time: TIME.replace("12", "13") })) : r));
    const expected = verify(broken);
    expect(expected.ok).toBe(false);
    fc.assert(
      fc.property(fc.shuffledSubarray(broken, { minLength: broken.length }), (shuffled) => {
        expect(verify(shuffled)).toEqual(expected);
      }),
      { numRuns: 25 },
    );
  });
});

describe("verifyStreams: any single-byte change is detected", () => {
  const { records } = writeStream(6);
  const cp = makeCheckpoint({
    stream: STREAM,
    seq: 6,
    hash: eventOf(records[5]!).custodyhash as string,
    epoch: 1,
    time: TIME,
    signer: SIGNER,
  });

  it("fails verification for a change of any byte of any record to any other value", () => {
    expect(verify(records, [cp]).ok).toBe(true);
    const lengths = records.map((r) => (r.value as Uint8Array).length);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: records.length - 1 }).chain((index) =>
          fc.record({
            index: fc.constant(index),
            position: fc.integer({ min: 0, max: lengths[index]! - 1 }),
            delta: fc.integer({ min: 1, max: 255 }),
          }),
        ),
        ({ index, position, delta }) => {
          const bytes = new Uint8Array(records[index]!.value as Uint8Array);
          bytes[position] = (bytes[position]! + delta) % 256;
          const changed = records.map((r, i) => (i === index ? { ...r, value: bytes } : r));
          expect(verify(changed, [cp]).ok).toBe(false);
        },
      ),
      { numRuns: 600 },
    );
  });

  it("notices a flipped unused bit of the signature's last base64url character", () => {
    // 64 bytes take 86 characters: the last one carries 4 bits no decoder reads.
    const e = eventOf(records[2]!);
    const sig = e.custodysig as string;
    const last = sig.at(-1)!;
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const twin = alphabet[alphabet.indexOf(last) ^ 1]!;
    expect(Buffer.from(sig.slice(0, -1) + twin, "base64url")).toEqual(Buffer.from(sig, "base64url"));
    const changed = records.map((r, i) =>
      i === 2 ? tamper(r, (ev) => Object.assign(ev, { custodysig: sig.slice(0, -1) + twin })) : r,
    );
    expect(brief(verify(changed).streams[0]!.findings)).toEqual([
      { kind: "bad-signature", seq: 3, id: e.id, offset: "2" },
    ]);
  });
});

describe("verifyStreams: batches sealed by their last event", () => {
  // Events 1..20, sealed at 5, 10, 15 and 20.
  const { records: BATCHED } = writeStream(20, { sealEvery: 5 });
  const sealedAt = (records: readonly StreamRecord[]) =>
    records.flatMap((r) => (eventOf(r).custodysig === undefined ? [] : [eventOf(r).custodyseq]));
  /** The same event without its custodysig (canonical). */
  const unseal = (r: StreamRecord) => tamper(r, (e) => delete e.custodysig);

  it("passes: each seal covers the unsealed events before it", () => {
    expect(sealedAt(BATCHED)).toEqual([5, 10, 15, 20]);
    const report = verify(BATCHED);
    expect(report.ok).toBe(true);
    expect(report.streams[0]).toMatchObject({ events: 20, findings: [] });
  });

  it("an unsealed tail is `unsealed`, naming its first and last seq", () => {
    const records = BATCHED.map((r, i) => (i === 19 ? unseal(r) : r));
    const report = verify(records);
    expect(report.ok).toBe(false);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "unsealed", seq: 16, id: idOf(BATCHED[15]!), offset: "15" },
    ]);
    expect(report.streams[0]!.findings[0]!.message).toMatch(/seqs 16\.\.20 are unsealed/);
  });

  it("a seal removed mid-stream is covered by the next seal (the content is unchanged)", () => {
    // Stripping a signature changes no event: the next seal still covers 6..15.
    const records = BATCHED.map((r, i) => (i === 9 ? unseal(r) : r));
    expect(verify(records).ok).toBe(true);
  });

  it("an unsealed event altered with its hash recomputed breaks the link to the seal", () => {
    const records = BATCHED.map((r, i) =>
      i === 6
        ? tamper(r, (e) => {
            e.subject = "spiffe://custody.local/ns/x/agent/y/task/z";
            const { custodyhash: _, ...rest } = e;
            e.custodyhash = createHash("sha256").update(canonicalize(rest)).digest("hex");
          })
        : r,
    );
    const findings = verify(records).streams[0]!.findings;
    // The altered event is in the run the broken link cuts off from its seal: both are errors.
    expect(findings.map((f) => [f.kind, f.seq, f.severity])).toEqual([
      ["unsealed", 6, "error"],
      ["reordered", 8, "error"],
    ]);
    // Behind a removed event (named missing), the run is only a warning.
    const removed = verify(BATCHED.filter((_, i) => i !== 7)).streams[0]!.findings;
    expect(removed.map((f) => [f.kind, f.seq, f.severity])).toEqual([
      ["unsealed", 6, "warning"],
      ["missing", 8, "error"],
    ]);
  });

  it("a seal of another epoch does not cover a predecessor's unsealed events", () => {
    const a = writeStream(4, { epoch: 2, sealEvery: 10 });
    const tail = unseal(a.records[3]!);
    const b = writeStream(2, { epoch: 3, head: a.head, firstOffset: 4 });
    const report = verify([...a.records.slice(0, 3), tail, ...b.records]);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "unsealed", seq: 1, id: idOf(a.records[0]!), offset: "0" },
    ]);
    expect(report.streams[0]!.findings[0]!.message).toMatch(/seqs 1\.\.4 .*seq 5 after them is of epoch 3/);
  });

  it("a sealed and an unsealed copy of one event are a duplicate, not a fork", () => {
    const { records } = writeStream(3, { sealEvery: 1 });
    const report = verify([...records, { ...unseal(records[1]!), offset: "3" }]);
    expect(report.ok).toBe(true);
    expect(brief(report.streams[0]!.findings)).toEqual([
      { kind: "duplicate", seq: 2, id: idOf(records[1]!), offset: "3" },
    ]);
    // Also the head's seal stripped in a copy, though no later seal reaches that copy.
    const head = verify([...records, { ...unseal(records[2]!), offset: "3" }]);
    expect(head.ok).toBe(true);
    expect(brief(head.streams[0]!.findings)).toEqual([
      { kind: "duplicate", seq: 3, id: idOf(records[2]!), offset: "3" },
    ]);
  });

  it("an unsealed record written by someone else fails, whatever epoch or seq it claims", () => {
    // A genuine epoch-2 stream, sealed at 2 and 4.
    const { records, head } = writeStream(4, { epoch: 2, sealEvery: 2 });
    const forger = createStreamWriter({ stream: STREAM, epoch: 1, signer: SIGNER, head });
    // Past the head, under a lower epoch: not a deposed writer's (that would be signed).
    const past = { partition: 0, offset: "4", value: forger.append(sampleInput(9)).unsealed() };
    const after = verify([...records, past]);
    expect(after.ok).toBe(false);
    expect(brief(after.streams[0]!.findings)).toEqual([
      { kind: "unsealed", seq: 5, id: idOf(past), offset: "4" },
    ]);
    // At an existing seq, chaining like the genuine event: it does not displace it, and is named.
    const twin = createStreamWriter({
      stream: STREAM,
      epoch: 2,
      signer: SIGNER,
      head: { seq: 2, hash: eventOf(records[1]!).custodyhash as string },
    });
    const forged = { partition: 0, offset: "4", value: twin.append(sampleInput(7)).unsealed() };
    const beside = verify([forged, ...records.map((r, i) => ({ ...r, offset: String(5 + i) }))]);
    expect(beside.ok).toBe(false);
    expect(beside.streams[0]!.findings.map((f) => [f.kind, f.seq, f.offset])).toEqual([["unsealed", 3, "4"]]);
    expect(beside.streams[0]!.head).toEqual(head);
  });

  it("lists as authentic only what a verified signature covers", () => {
    const { records } = writeStream(6, { sealEvery: 3 });
    const tail = records.map((r, i) => (i === 5 ? unseal(r) : r));
    const report = verifyStreams(tail, { keys: KEYS, listAuthentic: true });
    expect([...report.streams[0]!.authentic!].sort()).toEqual(["0:0", "0:1", "0:2"]);
    expect(verifyStreams(records, { keys: KEYS }).streams[0]!.authentic).toBeUndefined();
  });

  it("verifies for any batching, and fails once the last seal is removed", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 30 }), fc.integer({ min: 1, max: 12 }), (count, every) => {
        const { records } = writeStream(count, { sealEvery: every });
        if (!verify(records).ok) return false;
        const stripped = records.map((r, i) => (i === count - 1 ? unseal(r) : r));
        const findings = verify(stripped).streams[0]!.findings;
        return findings.length === 1 && findings[0]!.kind === "unsealed";
      }),
      { numRuns: 60 },
    );
  });
});

describe("verifyStreams: chain continuity across writers", () => {
  it("accepts a takeover by a higher epoch from the committed head", () => {
    const a = writeStream(4, { epoch: 7 });
    const writer = createStreamWriter({ stream: STREAM, epoch: 8, signer: SIGNER, head: a.head });
    const next = writer.append(sampleInput(4));
    const report = verify([...a.records, { partition: 0, offset: "4", value: next.sealed() }]);
    expect(report.ok).toBe(true);
    expect(report.streams[0]).toMatchObject({ events: 5, epoch: 8, findings: [] });
  });
});
