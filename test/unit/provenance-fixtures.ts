// Shared fixtures for the provenance tests: one signing key, a sample `data`
// for every event type, and a helper that writes a whole stream.
import { generateKeyPairSync } from "node:crypto";
import { createStreamWriter, type StreamHead } from "../../core/provenance/chain.ts";
import type { EventData, EventInput, EventType } from "../../core/provenance/events.ts";
import { createEs256Signer, type Signer } from "../../core/provenance/sign.ts";
import type { StreamRecord } from "../../core/provenance/verify.ts";

export const KEY = generateKeyPairSync("ec", { namedCurve: "P-256" });
export const SIGNER = createEs256Signer(KEY.privateKey);
export const KEYS = new Map([[SIGNER.kid, KEY.publicKey]]);
export const STREAM = "operator/custody-0";
export const SOURCE = "custody.dev/operator/custody-0";
export const TIME = "2026-03-01T12:00:00.000Z";
export const SPIFFE_ID = "spiffe://custody.local/ns/team-a/agent/reviewer/task/review-42";
const D = (c: string) => c.repeat(64);

const context = {
  taskUid: "uid-task",
  namespace: "team-a",
  name: "review-42",
  chainUids: ["uid-root", "uid-mid", "uid-task"],
  rootUid: "uid-root",
  contextDigest: D("a"),
};
const certificate = {
  serial: "0a1b2c3d4e5f",
  spiffeId: SPIFFE_ID,
  notBefore: "2026-03-01T12:00:00Z",
  notAfter: "2026-03-01T13:00:00Z",
  publicKeySha256: D("b"),
};

export const SAMPLE_DATA: { readonly [T in EventType]: EventData<T> } = {
  "dev.custody.task.requested": {
    context,
    requester: { username: "alice@example.com", uid: "u-1", groups: ["dev"] },
    admission: { uid: "adm-1", recordDigest: D("c") },
    agent: "reviewer",
    scope: ["read:repos/acme/*"],
    ttl: "1h",
    labels: { team: "a" },
    sensitive: { saltId: "salt-2026-03", digests: { "spec.context": D("d") } },
  },
  "dev.custody.task.delegation.verified": {
    context,
    delegator: { kind: "user", name: "alice@example.com" },
    depth: 2,
    scope: ["read:repos/acme/*"],
  },
  "dev.custody.task.delegation.refused": {
    context,
    reason: "scope-escalation",
    message: "write:x not in parent",
  },
  "dev.custody.task.policy.decided": { context, policyVersion: "policy-7", decision: "allow", reasons: [] },
  "dev.custody.task.policy.revoked": {
    context,
    policyVersion: "policy-8",
    serials: ["0a1b"],
    reasons: ["team/p: rule no-old-models: model too old"],
  },
  "dev.custody.task.action.decided": {
    context,
    policyVersion: "policy-7",
    decision: "allow",
    reasons: [],
    action: "read",
    resource: { type: "repo", id: "repos/acme/api" },
    caller: { kind: "agent", name: SPIFFE_ID },
    credential: "x509-svid",
  },
  "dev.custody.task.action.performed": {
    context,
    action: "read",
    resource: { type: "repo", id: "repos/acme/api" },
    reporter: { kind: "agent", name: SPIFFE_ID },
    selfReported: true,
  },
  "dev.custody.task.issued": { context, certificate },
  "dev.custody.task.renewed": { context, certificate, previousSerial: "0a1b" },
  "dev.custody.task.issuance.abandoned": {
    context,
    serial: "0a1b",
    reason: "operator restarted before the Secret write",
  },
  "dev.custody.task.injected": {
    context,
    pod: { namespace: "team-a", name: "reviewer-abc", uid: "pod-uid" },
    containers: ["agent"],
    serial: "0a1b2c3d4e5f",
  },
  "dev.custody.task.denied": { context, stage: "policy", reason: "denied-by-policy", message: "no" },
  "dev.custody.task.expired": { context, serial: "0a1b", notAfter: "2026-03-01T13:00:00Z" },
  "dev.custody.task.revoked": {
    context,
    serials: ["0a1b"],
    reason: "parent revoked",
    cascadeFromUid: "uid-mid",
  },
  "dev.custody.task.deleted": { context },
  "dev.custody.task.jwtsvid.issued": {
    context,
    spiffeId: SPIFFE_ID,
    kid: "x".repeat(43),
    issuedAt: "2026-03-01T12:00:00Z",
    expiresAt: "2026-03-01T12:05:00Z",
    tokens: [{ audience: "https://api.example", jti: "jti-1" }],
  },
  "dev.custody.task.token.exchanged": {
    context,
    audience: "https://api.example",
    scope: ["read:repos/acme/api"],
    jti: "jti-2",
    kid: "x".repeat(43),
    expiresAt: "2026-03-01T12:05:00Z",
    subject: "alice@example.com",
    actors: [SPIFFE_ID],
    client: { spiffeId: SPIFFE_ID, serial: "0a1b2c3d4e5f" },
    subjectTokenJti: "jti-1",
  },
  "dev.custody.task.token.refused": {
    context,
    error: "invalid_scope",
    description: "scope is not within the task's scope",
    audience: "https://api.example",
  },
};

export const TYPES = Object.keys(SAMPLE_DATA) as EventType[];

/** The i-th input of a stream: cycles through every event type. */
export function sampleInput(i: number, stream = STREAM): EventInput {
  const type = TYPES[i % TYPES.length]!;
  return {
    id: `${stream}#${i}`,
    source: SOURCE,
    type,
    subject: SPIFFE_ID,
    time: TIME,
    data: SAMPLE_DATA[type],
  } as EventInput;
}

export interface WrittenStream {
  readonly records: StreamRecord[];
  readonly head: StreamHead;
}

/** Writes `count` events to one partition, offsets from `firstOffset`. */
export function writeStream(
  count: number,
  options: {
    stream?: string;
    epoch?: number;
    head?: StreamHead;
    partition?: number;
    firstOffset?: number;
    signer?: Signer;
    /** Seal every n-th event and the last (as a writer sealing batches of n); every event when absent. */
    sealEvery?: number;
  } = {},
): WrittenStream {
  const stream = options.stream ?? STREAM;
  const writer = createStreamWriter({
    stream,
    epoch: options.epoch ?? 1,
    signer: options.signer ?? SIGNER,
    ...(options.head ? { head: options.head } : {}),
  });
  const start = options.head?.seq ?? 0;
  const records: StreamRecord[] = [];
  for (let i = 0; i < count; i++) {
    const appended = writer.append(sampleInput(start + i, stream));
    const seal = (i + 1) % (options.sealEvery ?? 1) === 0 || i === count - 1;
    const bytes = seal ? appended.sealed() : appended.unsealed();
    records.push({
      partition: options.partition ?? 0,
      offset: String((options.firstOffset ?? 0) + i),
      value: bytes,
    });
  }
  return { records, head: writer.head };
}

/** Renumbers offsets 0.. in array order (as a copy to another topic would). */
export function reoffset(records: readonly StreamRecord[]): StreamRecord[] {
  return records.map((r, i) => ({ ...r, offset: String(i) }));
}
