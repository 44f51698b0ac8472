/**
 * Provenance throughput on one core: `node bench/provenance.ts [events]`.
 * Prints events/s for append (validate + canonicalize + SHA-256), with every
 * event sealed (ES256-signed) and with one seal per batch as the operator
 * writes them, and for verifyStreams (parse + canonical check + SHA-256 +
 * ES256 verify of each seal + chain rules), beside the raw node:crypto ES256
 * sign/verify rates.
 */
import { createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { createStreamWriter } from "../core/provenance/chain.ts";
import type { EventInput } from "../core/provenance/events.ts";
import { createEs256Signer } from "../core/provenance/sign.ts";
import { type StreamRecord, verifyStreams } from "../core/provenance/verify.ts";

const count = Number(process.argv[2] ?? 50_000);
/** Events per seal in the batched runs (the operator seals each Kafka send: up to 1,000 events). */
const BATCH = 100;
const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
const publicKey = createPublicKey(privateKey);
const signer = createEs256Signer(privateKey);
const D = (c: string) => c.repeat(64);

// A typical `issued` event: about 900 bytes as a record.
const input = (i: number): EventInput => ({
  id: `0195f3a2-7c1e-7b40-8000-${i.toString(16).padStart(12, "0")}`,
  source: "custody.dev/operator/custody-0",
  type: "dev.custody.task.issued",
  subject: "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42",
  time: "2026-03-01T12:00:00.000Z",
  data: {
    context: {
      taskUid: "5f0c7a52-3d4e-4b8e-9a51-0c1f9a3e7d21",
      namespace: "team-a",
      name: "review-42",
      chainUids: ["1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed", "5f0c7a52-3d4e-4b8e-9a51-0c1f9a3e7d21"],
      rootUid: "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed",
      contextDigest: D("a"),
    },
    certificate: {
      serial: "4f1a0c2b9e8d7c6b5a4f3e2d1c0b0a09",
      spiffeId: "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42",
      notBefore: "2026-03-01T12:00:00Z",
      notAfter: "2026-03-01T13:00:00Z",
      publicKeySha256: D("b"),
    },
  },
});

function time<T>(op: () => T): { result: T; seconds: number } {
  const start = process.hrtime.bigint();
  const result = op();
  return { result, seconds: Number(process.hrtime.bigint() - start) / 1e9 };
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");

// Raw crypto bounds on a record-sized message (bare KeyObject, DER: the fast path sign.ts uses).
const message = new Uint8Array(900).fill(7);
const rawSign = time(() => {
  let sig: Buffer = Buffer.alloc(0);
  for (let i = 0; i < 20_000; i++) sig = sign("sha256", message, privateKey);
  return sig;
});
const rawVerify = time(() => {
  for (let i = 0; i < 20_000; i++) verify("sha256", message, publicKey, rawSign.result);
});

// Warm up, then append.
createStreamWriter({ stream: "warm", epoch: 1, signer }).append(input(0));
/** Appends `count` events, sealing every `sealEvery`-th (and the last). */
const appendAll = (sealEvery: number) => {
  const writer = createStreamWriter({ stream: "operator/custody-0", epoch: 1, signer });
  return time(() => {
    const records: StreamRecord[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const appended = writer.append(input(i));
      const seal = (i + 1) % sealEvery === 0 || i === count - 1;
      records[i] = { partition: 0, offset: String(i), value: seal ? appended.sealed() : appended.unsealed() };
    }
    return records;
  });
};
const keys = new Map([[signer.kid, publicKey]]);
const everyEvent = appendAll(1);
const perBatch = appendAll(BATCH);
const bytes = everyEvent.result.reduce((n, r) => n + (r.value as Uint8Array).length, 0);
const verifiedEach = time(() => verifyStreams(everyEvent.result, { keys }));
const verifiedBatched = time(() => verifyStreams(perBatch.result, { keys }));
if (!verifiedEach.result.ok || !verifiedBatched.result.ok) throw new Error("bench stream did not verify");

console.log(`provenance, one core, ${fmt(count)} events of ~${Math.round(bytes / count)} bytes`);
console.log(`  node:crypto ES256 sign                ${fmt(20_000 / rawSign.seconds)} /s`);
console.log(`  node:crypto ES256 verify              ${fmt(20_000 / rawVerify.seconds)} /s`);
console.log(`  append, every event sealed            ${fmt(count / everyEvent.seconds)} events/s`);
console.log(`  append, one seal per ${BATCH} events      ${fmt(count / perBatch.seconds)} events/s`);
console.log(`  verifyStreams, every event sealed     ${fmt(count / verifiedEach.seconds)} events/s`);
console.log(`  verifyStreams, one seal per ${BATCH}      ${fmt(count / verifiedBatched.seconds)} events/s`);
