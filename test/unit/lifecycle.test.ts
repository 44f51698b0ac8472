import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { AgentTask } from "../../core/api/v1alpha1.ts";
import { decide, sameStatus, setCondition, validityWindow } from "../../core/lifecycle.ts";

const NOW = Date.parse("2026-11-28T12:00:00Z");

function task(
  over: Partial<AgentTask["spec"]> = {},
  status?: AgentTask["status"],
  generation = 1,
): AgentTask {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name: "t", namespace: "ns", uid: "u1", generation },
    spec: { agent: { name: "a" }, scope: ["read:x/*"], serviceAccountName: "sa", ttl: "1h", ...over },
    ...(status ? { status } : {}),
  };
}

const issued = (serial: string, renewalTime: string, generation = 1): AgentTask["status"] => ({
  phase: "Issued",
  observedGeneration: generation,
  certificate: {
    serial,
    notBefore: "2026-11-28T11:00:00Z",
    notAfter: "2026-11-28T13:00:00Z",
    renewalTime,
    publicKeySHA256: "0".repeat(64),
    secretName: "custody-svid-t",
  },
});

describe("decide", () => {
  it("issues a new task", () => {
    expect(decide(task(), { serial: undefined }, NOW)).toMatchObject({
      kind: "issue",
      why: "NoCertificate",
      ttlMs: 3_600_000,
    });
  });

  it("waits for the renewal time while the credential matches", () => {
    const d = decide(task({}, issued("ab", "2026-11-28T12:30:00Z")), { serial: "ab" }, NOW);
    expect(d).toEqual({ kind: "wait", wakeAt: Date.parse("2026-11-28T12:30:00Z") });
  });

  it("wakes at the deadline when it comes before the renewal", () => {
    const d = decide(
      task({ deadline: "2026-11-28T12:10:00Z" }, issued("ab", "2026-11-28T12:30:00Z")),
      { serial: "ab" },
      NOW,
    );
    expect(d).toEqual({ kind: "wait", wakeAt: Date.parse("2026-11-28T12:10:00Z") });
  });

  it("renews once the renewal time has come", () => {
    expect(decide(task({}, issued("ab", "2026-11-28T12:00:00Z")), { serial: "ab" }, NOW)).toMatchObject({
      why: "RenewalDue",
    });
  });

  it("re-issues when the Secret is gone or holds another serial", () => {
    const t = task({}, issued("ab", "2026-11-28T12:30:00Z"));
    expect(decide(t, { serial: undefined }, NOW)).toMatchObject({ why: "CredentialMissing" });
    expect(decide(t, { serial: "cd" }, NOW)).toMatchObject({ why: "CredentialMissing" });
  });

  it("re-issues after a spec change", () => {
    expect(decide(task({}, issued("ab", "2026-11-28T12:30:00Z"), 2), { serial: "ab" }, NOW)).toMatchObject({
      why: "SpecChanged",
    });
  });

  it("denies an invalid spec naming the field and the rule", () => {
    const d = decide(task({ scope: ["read:a/*/b"] }), { serial: undefined }, NOW);
    expect(d.kind).toBe("deny");
    if (d.kind === "deny") {
      expect(d.field).toBe("spec.scope[0]");
      expect(d.message).toMatch(/spec\.scope\[0\]/);
    }
  });

  it("denies a first request whose deadline is past, but expires an issued task", () => {
    expect(decide(task({ deadline: "2026-11-28T11:00:00Z" }), { serial: undefined }, NOW)).toMatchObject({
      kind: "deny",
      field: "spec.deadline",
    });
    expect(
      decide(
        task({ deadline: "2026-11-28T11:59:00Z" }, issued("ab", "2026-11-28T12:30:00Z")),
        { serial: "ab" },
        NOW,
      ),
    ).toMatchObject({ kind: "expire" });
  });

  it("revokes on spec.revoked and stops at terminal phases", () => {
    expect(decide(task({ revoked: true, revocationReason: "leak" }), { serial: "ab" }, NOW)).toMatchObject({
      kind: "revoke",
      message: expect.stringContaining("leak"),
    });
    expect(decide(task({}, { phase: "Revoked" }), { serial: undefined }, NOW)).toEqual({ kind: "done" });
    expect(decide(task({}, { phase: "Expired" }), { serial: undefined }, NOW)).toEqual({ kind: "done" });
  });

  it("keeps a denial for the same generation and looks again after a spec change", () => {
    const denied = { phase: "Denied" as const, observedGeneration: 1 };
    expect(decide(task({}, denied, 1), { serial: undefined }, NOW)).toEqual({ kind: "done" });
    expect(decide(task({}, denied, 2), { serial: undefined }, NOW)).toMatchObject({ kind: "issue" });
  });
});

describe("validityWindow", () => {
  it("never exceeds the ttl, the deadline or the CA, and renews strictly inside the lifetime", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 5 * 60_000, max: 24 * 3_600_000 }),
        fc.option(fc.integer({ min: 60_000, max: 48 * 3_600_000 })),
        fc.integer({ min: 60_000, max: 48 * 3_600_000 }),
        fc.double({ min: 0, max: 0.999, noNaN: true }),
        (ttlMs, deadlineIn, caIn, unit) => {
          const deadline = deadlineIn === null ? undefined : new Date(NOW + deadlineIn).toISOString();
          const v = validityWindow({
            now: NOW,
            ttlMs,
            deadline,
            caNotAfter: NOW + caIn,
            jitter: 0.05,
            jitterUnit: unit,
          });
          expect(v.notAfter).toBeLessThanOrEqual(NOW + ttlMs);
          if (deadlineIn !== null) expect(v.notAfter).toBeLessThanOrEqual(NOW + deadlineIn);
          expect(v.notAfter).toBeLessThanOrEqual(NOW + caIn);
          expect(v.notBefore).toBeLessThan(NOW);
          expect(v.renewalTime).toBeGreaterThan(NOW);
          expect(v.renewalTime).toBeLessThan(v.notAfter);
        },
      ),
    );
  });

  it("renews a 5-minute certificate at about half its lifetime", () => {
    const v = validityWindow({
      now: NOW,
      ttlMs: 300_000,
      caNotAfter: NOW + 1e9,
      jitter: 0.05,
      jitterUnit: 0.5,
    });
    expect(v.renewalTime - NOW).toBe(150_000);
  });
});

describe("conditions", () => {
  it("keeps lastTransitionTime when the status does not change", () => {
    const first = setCondition(
      undefined,
      { type: "Ready", status: "True", reason: "Issued", message: "m" },
      "t1",
    );
    const second = setCondition(
      first,
      { type: "Ready", status: "True", reason: "Renewed", message: "n" },
      "t2",
    );
    expect(second[0]?.lastTransitionTime).toBe("t1");
    const third = setCondition(
      second,
      { type: "Ready", status: "False", reason: "Revoked", message: "r" },
      "t3",
    );
    expect(third[0]?.lastTransitionTime).toBe("t3");
  });

  it("compares statuses structurally, ignoring key order", () => {
    expect(sameStatus({ phase: "Issued", spiffeID: "x" }, { spiffeID: "x", phase: "Issued" })).toBe(true);
    expect(sameStatus({ phase: "Issued" }, { phase: "Denied" })).toBe(false);
  });
});
