// The requester record's memoizing verifier: a memo hit must never make a
// record verify for an object it would not verify for afresh.
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  createRecordVerifier,
  isSameRequester,
  type RequesterRecord,
  signRequesterRecord,
} from "../../core/admission/record.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { createEs256Signer, createKeyRing, type KeyRing } from "../../core/provenance/sign.ts";

const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
const spec = { agent: { name: "a" }, scope: ["read:x"], serviceAccountName: "sa", ttl: "1h" };
const created = "2026-11-28T10:00:00Z";
const token = signRequesterRecord(createEs256Signer(key), {
  v: 1,
  namespace: "ns",
  name: "t",
  issuedAt: "2026-11-28T10:00:00.200Z",
  specDigest: identitySpecDigest(spec),
  requester: { username: "alice" },
  delegator: { kind: "User", name: "alice" },
  proof: { method: "requester" },
} satisfies RequesterRecord);
const subject = { namespace: "ns", name: "t", uid: "uid-1", spec, creationTimestamp: created };

/** A key ring that counts lookups: each lookup is one signature verification. */
function countingRing(): { ring: KeyRing; lookups: () => number } {
  const inner = createKeyRing([key]);
  let n = 0;
  const ring = {
    get: (kid: string) => {
      n++;
      return inner.get(kid);
    },
  } as unknown as KeyRing;
  return { ring, lookups: () => n };
}

describe("createRecordVerifier", () => {
  it("verifies once per object and token", () => {
    const { ring, lookups } = countingRing();
    const verify = createRecordVerifier(ring);
    expect(verify(token, subject).requester.username).toBe("alice");
    expect(verify(token, subject).requester.username).toBe("alice");
    expect(lookups()).toBe(1);
  });

  it("re-checks for another object: a re-created task (new uid, later creation) does not verify", () => {
    const { ring, lookups } = countingRing();
    const verify = createRecordVerifier(ring);
    verify(token, subject);
    expect(() =>
      verify(token, { ...subject, uid: "uid-2", creationTimestamp: "2026-11-28T10:05:00Z" }),
    ).toThrow(/rule issued-at/);
    expect(() => verify(token, { ...subject, uid: "uid-3", name: "other" })).toThrow(/rule subject/);
    expect(lookups()).toBe(3);
  });

  it("never caches a failure, and keeps at most `capacity` entries", () => {
    const { ring, lookups } = countingRing();
    const verify = createRecordVerifier(ring, 5000, 2);
    expect(() => verify("x.y.z", subject)).toThrow();
    expect(() => verify("x.y.z", subject)).toThrow();
    for (const uid of ["a", "b", "c"]) verify(token, { ...subject, uid });
    verify(token, { ...subject, uid: "a" }); // evicted: verified again
    expect(lookups()).toBe(4);
  });
});

describe("isSameRequester", () => {
  const pod = (uid: string) => ({ "authentication.kubernetes.io/pod-uid": [uid] });
  it("a user is the same user (and not after being re-created with a new uid)", () => {
    expect(isSameRequester({ username: "alice", uid: "1" }, { username: "alice", uid: "1" })).toBe(true);
    expect(isSameRequester({ username: "alice", uid: "1" }, { username: "alice", uid: "2" })).toBe(false);
    expect(isSameRequester({ username: "alice" }, { username: "bob" })).toBe(false);
  });
  it("a service account is the same requester only from the same pod", () => {
    const sa = "system:serviceaccount:team:agents";
    expect(isSameRequester({ username: sa, extra: pod("p1") }, { username: sa, extra: pod("p1") })).toBe(
      true,
    );
    // Any pod under the service account (anyone who may create pods there) is not "the same".
    expect(isSameRequester({ username: sa, extra: pod("p1") }, { username: sa, extra: pod("p2") })).toBe(
      false,
    );
    expect(isSameRequester({ username: sa, extra: pod("p1") }, { username: sa })).toBe(false);
    // An unbound token recorded no pod: nothing can match it.
    expect(isSameRequester({ username: sa }, { username: sa })).toBe(false);
  });
});
