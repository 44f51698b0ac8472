// The workload stamp (core/admission/stamp.ts): verifies only for the object
// and task it was issued for, with Custody's key, as a stamp.
import { describe, expect, it } from "vitest";
import { signRequesterRecord } from "../../core/admission/record.ts";
import { STAMP_FIELD, signStamp, verifyStamp, type WorkloadStamp } from "../../core/admission/stamp.ts";
import { ValidationError } from "../../core/errors.ts";
import { encodeBase64url } from "../../core/provenance/sign.ts";
import { foreignSigner, keys, signer } from "./identity-admission-fixtures.ts";

const stamp: WorkloadStamp = {
  v: 1,
  kind: "Deployment",
  namespace: "team",
  name: "web",
  task: "t1",
  taskUid: "uid-1",
  requester: "alice",
  issuedAt: "2030-01-01T00:00:00.000Z",
};
const subject = { kind: "Deployment", namespace: "team", name: "web", task: "t1", taskUid: "uid-1" };

function ruleOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) {
      expect(e.field).toBe(STAMP_FIELD);
      expect(e.message).toContain(STAMP_FIELD);
      return e.rule;
    }
    throw e;
  }
  throw new Error("expected a ValidationError");
}

describe("workload stamp", () => {
  it("verifies for the object and task it was issued for, returning the payload", () => {
    expect(verifyStamp(signStamp(signer, stamp), keys, subject)).toEqual(stamp);
    // Without a uid to compare (the stored stamp of an unchanged object), the names suffice.
    const { taskUid: _, ...names } = subject;
    expect(verifyStamp(signStamp(signer, stamp), keys, names).requester).toBe("alice");
  });

  it.each([
    ["another kind", { kind: "StatefulSet" }, "subject"],
    ["another name", { name: "web2" }, "subject"],
    ["another namespace", { namespace: "other" }, "subject"],
    ["another task", { task: "t2" }, "task"],
    ["a re-created task of the same name", { taskUid: "uid-2" }, "task-uid"],
  ])("does not verify for %s", (_w, change, rule) => {
    expect(ruleOf(() => verifyStamp(signStamp(signer, stamp), keys, { ...subject, ...change }))).toBe(rule);
  });

  it("does not verify when signed by a key Custody does not know", () => {
    expect(ruleOf(() => verifyStamp(signStamp(foreignSigner, stamp), keys, subject))).toBe("kid");
  });

  it("does not verify when its payload was changed after signing", () => {
    const [h, , s] = signStamp(signer, stamp).split(".");
    const body = encodeBase64url(Buffer.from(JSON.stringify({ ...stamp, name: "other" })));
    expect(ruleOf(() => verifyStamp(`${h}.${body}.${s}`, keys, { ...subject, name: "other" }))).toBe(
      "signature",
    );
  });

  it("does not accept a requester record (same key, other typ) as a stamp", () => {
    const record = signRequesterRecord(signer, {
      v: 1,
      namespace: "team",
      name: "web",
      issuedAt: stamp.issuedAt,
      specDigest: "0".repeat(64),
      requester: { username: "alice" },
      delegator: { kind: "User", name: "alice" },
      proof: { method: "requester" },
    });
    expect(ruleOf(() => verifyStamp(record, keys, subject))).toBe("typ");
  });

  it("refuses a missing or malformed stamp, or one with a bad payload", () => {
    expect(ruleOf(() => verifyStamp(undefined, keys, subject))).toBe("present");
    expect(ruleOf(() => verifyStamp("a.b", keys, subject))).toBe("compact-jws");
    const bad = signStamp(signer, { ...stamp, kind: "Pod" } as unknown as WorkloadStamp);
    expect(ruleOf(() => verifyStamp(bad, keys, subject))).toBe("shape");
  });
});
