import { generateKeyPairSync } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { jwksRing, readCheckpointFlag } from "../../cli/anchors.ts";
import { AUDIT_FLAGS, parseQuery, signatureInput } from "../../cli/audit.ts";
import { buildAudit, renderAudit, type SignatureVerifier } from "../../cli/audit-answer.ts";
import { parseArgs, UsageError } from "../../cli/flags.ts";
import { AuditIndex } from "../../cli/index.ts";
import { findingLine, renderVerify } from "../../cli/verify.ts";
import { canonicalForms, createStreamWriter } from "../../core/provenance/chain.ts";
import { createEs256Signer, decodeBase64url, verifyEs256 } from "../../core/provenance/sign.ts";
import { verifyStreams } from "../../core/provenance/verify.ts";
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
import { KEY, KEYS, SIGNER, STREAM, writeStream } from "./provenance-fixtures.ts";

const open: AuditIndex[] = [];
afterEach(() => {
  for (const i of open.splice(0)) i.close();
});

async function indexOf(topic: MemoryTopic): Promise<AuditIndex> {
  const index = AuditIndex.open(":memory:", { topic: topic.topic });
  open.push(index);
  await index.update(topic);
  return index;
}

// The same check audit.ts builds, over the fixtures' key ring.
const verifier =
  (keys: ReadonlyMap<string, import("node:crypto").KeyObject>): SignatureVerifier =>
  (record, kid) => {
    const key = kid === null ? undefined : keys.get(kid);
    if (key === undefined) return "unknown-key";
    const value = JSON.parse(new TextDecoder().decode(record)) as Record<string, unknown>;
    const sig = decodeBase64url(String(value.custodysig));
    return sig && verifyEs256(key, new TextEncoder().encode(canonicalForms(value).signatureInput), sig)
      ? "verified"
      : "bad-signature";
  };

describe("the audit answer", () => {
  it("answers the three questions for a sub-agent from its events and its chain's", async () => {
    const topic = new MemoryTopic();
    writeLifecycle(topic);
    const index = await indexOf(topic);
    const a = buildAudit(index, CHILD.uid, verifier(KEYS));
    expect(a.task).toEqual({
      uid: CHILD.uid,
      namespace: NS,
      name: "child",
      agent: "planner",
      spiffeId: spiffe("child"),
      state: "revoked",
    });
    // Under whose authority: alice, then the root, then the child.
    expect(a.authority.principal).toEqual({ kind: "user", name: "alice" });
    expect(a.authority.requester).toBe("admin");
    expect(a.authority.chain).toEqual([
      {
        uid: ROOT.uid,
        namespace: NS,
        name: "root",
        known: true,
        scope: ["read:repos/acme/*", "comment:repos/acme/*"],
        requester: "admin",
        state: "revoked",
      },
      {
        uid: CHILD.uid,
        namespace: NS,
        name: "child",
        known: true,
        scope: ["read:repos/acme/api"],
        requester: "admin",
        state: "revoked",
      },
    ]);
    // What it was allowed to do.
    expect(a.allowed).toMatchObject({
      scope: ["read:repos/acme/api"],
      ttl: "30m",
      policy: { version: "policy-7", decision: "allow", reasons: [] },
      contextDigest: "2".repeat(64),
    });
    expect(a.allowed.certificates).toEqual([
      expect.objectContaining({
        serial: "0b02",
        issuedBy: "issued",
        fate: [`injected into pod ${NS}/planner-7d9f`, "revoked 2026-03-01T12:00:10.000Z"],
      }),
    ]);
    // What it did, in order, every event linked and signed.
    expect(a.events.map((e) => [e.type?.replace("dev.custody.task.", ""), e.chain, e.signature])).toEqual(
      ["requested", "delegation.verified", "policy.decided", "issued", "injected", "revoked"].map((t) => [
        t,
        "linked",
        "verified",
      ]),
    );
    expect(a.events[5]!.summary).toBe(`serials 0b02: parent revoked (cascade from ${NS}/root)`);
    expect(a.integrity).toEqual({
      ok: true,
      chain: { linked: 6 },
      signatures: { verified: 6 },
      problems: [],
    });
  });

  it("renders a tree from the principal down to the task, the allowance, the events and the integrity", async () => {
    const topic = new MemoryTopic();
    writeLifecycle(topic);
    const text = renderAudit(buildAudit(await indexOf(topic), CHILD.uid, verifier(KEYS)));
    expect(text).toContain(`AgentTask ${NS}/child  uid ${CHILD.uid}\n  identity   ${spiffe("child")}\n`);
    expect(text).toContain(
      [
        "under whose authority",
        "  user alice   (the delegator, as delegation.verified records it)",
        `  └─ AgentTask ${NS}/root  uid ${ROOT.uid}`,
        "     scope read:repos/acme/*, comment:repos/acme/*; requested by admin; revoked",
        `     └─ AgentTask ${NS}/child  uid ${CHILD.uid}   ← this task`,
        "        scope read:repos/acme/api; requested by admin",
      ].join("\n"),
    );
    expect(text).toContain("  policy         allow by policy-7\n");
    expect(text).toMatch(
      /2026-03-01T12:00:08.000Z {2}injected {13}into pod team-a\/planner-7d9f \(uid pod-uid-1\), containers agent, serial 0b02\n/,
    );
    expect(text).toContain(`  6 events in ${STREAM}; 6 hash-linked; every signature verified\n`);
  });

  it("checks an unsealed event by the seal that covers it, and flags one no seal covers", async () => {
    // Sealed at seqs 4 and 8 only: 9 and 10 are an unsealed tail. The child's events are 4..8 and 10.
    const topic = new MemoryTopic();
    writeLifecycle(topic, newWriter(), (i) => (i + 1) % 4 === 0);
    const index = await indexOf(topic);
    const a = buildAudit(index, CHILD.uid, verifier(KEYS));
    expect(a.events.map((e) => [e.seq, e.signature, e.sealedBy])).toEqual([
      [4, "verified", null],
      [5, "verified", 8],
      [6, "verified", 8],
      [7, "verified", 8],
      [8, "verified", null],
      [10, "unsealed", null],
    ]);
    expect(a.integrity.ok).toBe(false);
    expect(a.integrity.problems).toEqual([
      `${STREAM} seq 10 (partition 1 offset 5): unsealed: no sealed event follows it in its stream (yet)`,
    ]);
    expect(renderAudit(a)).toContain("[UNSEALED]");
    // A seal's bad signature is reported on every event it covers, naming the seal.
    const forged = buildAudit(index, CHILD.uid, () => "bad-signature");
    expect(forged.integrity.problems).toContainEqual(
      expect.stringMatching(/^operator\/custody-0 seq 6 \(.*\): bad-signature \(of its seal, seq 8\)$/),
    );
  });

  it("does not let a seal cover an unsealed record it does not chain to (a forged fork, another epoch)", async () => {
    // The lifecycle sealed at seqs 4, 8 and 10; someone writes a record for
    // the child at seq 9, chained to seq 8, beside the genuine seq 9.
    const topic = new MemoryTopic();
    const writer = newWriter();
    const inputs = lifecycle();
    for (const [i, input] of inputs.entries()) {
      const appended = writer.append(input);
      const partition = input.data.context?.taskUid === ROOT.uid ? 0 : topic.partitions.length - 1;
      topic.append(partition, [3, 7, 9].includes(i) ? appended.sealed() : appended.unsealed());
      if (i === 7) {
        const forger = createStreamWriter({ stream: STREAM, epoch: 1, signer: SIGNER, head: writer.head });
        const forged = forger.append({ ...inputs[6]!, id: "forged-issued" });
        topic.append(topic.partitions.length - 1, forged.unsealed());
      }
    }
    const index = await indexOf(topic);
    const a = buildAudit(index, CHILD.uid, verifier(KEYS));
    const forged = a.events.find((e) => e.id === "forged-issued")!;
    expect(forged.signature).toBe("unsealed");
    expect(a.integrity.ok).toBe(false);
    expect(a.integrity.problems).toContainEqual(
      expect.stringMatching(/seq 9 .*unsealed: seq 10 does not chain to seq 9$/),
    );
    // Under another epoch, a seal does not cover a predecessor's unsealed events.
    const epochs = new MemoryTopic();
    const first = newWriter(STREAM, 1);
    const bytes: Uint8Array[] = inputs.slice(0, 5).map((input) => first.append(input).unsealed());
    const second = createStreamWriter({ stream: STREAM, epoch: 2, signer: SIGNER, head: first.head });
    for (const input of inputs.slice(5)) bytes.push(second.append(input).sealed());
    for (const b of bytes) epochs.append(0, b);
    const b = buildAudit(await indexOf(epochs), CHILD.uid, verifier(KEYS));
    expect(b.events.filter((e) => e.seq! <= 5).map((e) => [e.seq, e.signature])).toEqual([
      [4, "unsealed"],
      [5, "unsealed"],
    ]);
    expect(b.integrity.problems).toContainEqual(
      expect.stringMatching(
        /seq 4 .*unsealed: seq 6 is of epoch 2, not 1: a seal covers only its own epoch$/,
      ),
    );
  });

  it("flags events signed by a key it does not know, and says when signatures were not checked", async () => {
    const stranger = createEs256Signer(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey);
    const topic = new MemoryTopic();
    writeLifecycle(topic, newWriter(STREAM, 1, stranger));
    const index = await indexOf(topic);
    const flagged = buildAudit(index, CHILD.uid, verifier(KEYS));
    expect(flagged.integrity.ok).toBe(false);
    expect(flagged.integrity.signatures).toEqual({ "unknown-key": 6 });
    expect(flagged.integrity.problems[0]).toMatch(
      /^operator\/custody-0 seq 4 \(partition 1 offset 0\): unknown-key$/,
    );
    expect(renderAudit(flagged)).toMatch(/requested .*\[UNKNOWN KEY\]/);
    const unchecked = buildAudit(index, CHILD.uid);
    expect(unchecked.integrity.signatures).toEqual({ unchecked: 6 });
    expect(unchecked.integrity.problems).toEqual([
      "signatures not checked: no public keys (pass --keys FILE)",
    ]);
  });

  it("shows an event recorded twice (a repeat after a restart, same id) once, saying so", async () => {
    const topic = new MemoryTopic("custody.test", 1);
    const inputs = lifecycle();
    const first = newWriter("operator/a");
    for (const input of inputs.slice(0, 5)) topic.append(0, first.append(input).sealed());
    // A successor re-records the child's delegation.verified under its own stream.
    const second = newWriter("operator/b", 2);
    topic.append(0, second.append(inputs[4]!).sealed());
    const a = buildAudit(await indexOf(topic), CHILD.uid, verifier(KEYS));
    const verified = a.events.filter((e) => e.type === "dev.custody.task.delegation.verified");
    expect(verified).toHaveLength(1);
    expect(verified[0]!.repeats).toEqual([{ stream: "operator/b", seq: 1 }]);
  });
});

describe("custody verify output", () => {
  it("names each finding's event on one line and sums up per stream", () => {
    const { records } = writeStream(5);
    const altered = records.map((r, i) =>
      i === 2
        ? {
            ...r,
            value: new TextEncoder().encode(
              new TextDecoder().decode(r.value as Uint8Array).replace("review-42", "review-43"),
            ),
          }
        : r,
    );
    const report = verifyStreams(altered.slice(0, 4), { keys: KEYS });
    const text = renderVerify({
      topic: "custody.provenance",
      partitions: [{ partition: 0, low: 0n, high: 4n }],
      keys: { source: "keys.json", kids: [SIGNER.kid] },
      checkpoints: { anchored: 0, given: 0 },
      warnings: [],
      report,
    });
    expect(text).toContain(
      `ERROR altered       ${STREAM}  seq 3  id ${STREAM}#2  partition 0 offset 2: content does not match custodyhash\n`,
    );
    expect(text).toContain(`stream ${STREAM}: 4 events, seq 1..4, epoch 1, head `);
    expect(text).toMatch(
      /: FAILED \(1 error\)\n\nverify: FAILED: 1 error in 1 of 1 streams, 0 warnings, 0 notes\n$/,
    );
    const missing = verifyStreams([records[0]!, records[2]!], { keys: KEYS });
    expect(missing.streams[0]!.findings.map(findingLine)).toEqual([
      `ERROR missing       ${STREAM}  seq 2: seq 2 is missing before seq 3 (id ${STREAM}#2, partition 0 offset 2)`,
    ]);
  });
});

describe("the CLI's flags and sources", () => {
  it("takes one thing to audit, and refuses anything else naming the flag", () => {
    const q = (argv: string[]) => parseQuery(parseArgs(argv, AUDIT_FLAGS));
    expect(q(["child", "-n", "team-a"])).toEqual({ kind: "task", name: "child" });
    expect(q(["--serial", "00:0B:02"])).toEqual({ kind: "serial", serial: "0b02" });
    expect(q(["--pod=planner-7d9f"])).toEqual({ kind: "pod", name: "planner-7d9f" });
    expect(q(["--spiffe-id", spiffe("child")])).toEqual({ kind: "spiffe-id", spiffeId: spiffe("child") });
    expect(() => q([])).toThrow(UsageError);
    expect(() => q(["a", "b"])).toThrow(/one task at a time/);
    expect(() => q(["a", "--pod", "p"])).toThrow(/only one of/);
    expect(() => q(["--spiffe-id", "custody.local/x"])).toThrow(/must start with spiffe:\/\//);
    expect(() => parseArgs(["-o", "yaml"], AUDIT_FLAGS)).toThrow('-o: must be text or json, got "yaml"');
    expect(() => parseArgs(["--index"], AUDIT_FLAGS)).toThrow("--index: needs a value");
    expect(() => parseArgs(["--no-cluster=yes"], AUDIT_FLAGS)).toThrow("--no-cluster: takes no value");
    expect(() => parseArgs(["--nope"], AUDIT_FLAGS)).toThrow("unknown flag --nope");
  });

  it("checks signatures over the same input as the core's canonicalForms", () => {
    const { records } = writeStream(12);
    for (const r of records) {
      const value = JSON.parse(new TextDecoder().decode(r.value as Uint8Array)) as Record<string, unknown>;
      expect(signatureInput(value)).toBe(canonicalForms(value).signatureInput);
    }
  });

  it("accepts a JWK Set whose kids are the keys' thumbprints, and no other", () => {
    const jwk = { ...SIGNER_JWK, kid: SIGNER.kid };
    expect([...jwksRing({ keys: [jwk] }, "x").keys()]).toEqual([SIGNER.kid]);
    expect(() => jwksRing({ keys: [{ ...jwk, kid: "A".repeat(43) }] }, "--keys f")).toThrow(
      /^--keys f: keys\[A+\]: kid must be the RFC 7638 thumbprint/,
    );
    expect(() => jwksRing({ keys: [] }, "--keys f")).toThrow("--keys f: no keys");
    expect(readCheckpointFlag('{"stream":"s"}')).toEqual([{ stream: "s" }]);
    expect(() => readCheckpointFlag("/nonexistent/cp.json")).toThrow(
      /--checkpoint \/nonexistent\/cp.json: ENOENT/,
    );
  });
});

const SIGNER_JWK = KEY.publicKey.export({ format: "jwk" });
