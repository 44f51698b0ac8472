// The AgentTask admission handler with fake lookups: what it proves, what it
// signs, and every refusal, without a cluster (the integration tests drive it
// through the real API server).
import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  DELEGATION_ASSERTION_ANNOTATION,
  REQUESTER_RECORD_ANNOTATION,
  type RequesterRecord,
  signRequesterRecord,
  verifyRequesterRecord,
} from "../../core/admission/record.ts";
import type { AgentTask } from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { ValidationError } from "../../core/errors.ts";
import { createEs256Signer, createKeyRing } from "../../core/provenance/sign.ts";
import type { AdmissionRequest, JsonPatchOperation, UserInfo } from "../../webhook/admission.ts";
import {
  type AgentTaskAdmissionDeps,
  createAgentTaskAdmission,
  type PodView,
} from "../../webhook/agenttask.ts";

const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
const signer = createEs256Signer(key);
const keys = createKeyRing([key]);
const NOW = Date.parse("2026-11-28T10:00:00.000Z");

const alice: UserInfo = {
  username: "alice",
  uid: "u-alice",
  groups: ["agent-builders", "system:authenticated"],
};
const mallory: UserInfo = { username: "mallory", groups: ["system:authenticated"] };

const baseSpec = {
  agent: { name: "reviewer" },
  scope: ["read:repos/acme/*"],
  serviceAccountName: "agents",
  ttl: "1h",
};

function request(over: Partial<AdmissionRequest> & { spec?: unknown; annotations?: Record<string, string> }) {
  const { spec, annotations, ...rest } = over;
  return {
    uid: "r1",
    kind: { group: "custody.dev", version: "v1alpha1", kind: "AgentTask" },
    resource: { group: "custody.dev", version: "v1alpha1", resource: "agenttasks" },
    namespace: "team",
    name: "t1",
    operation: "CREATE",
    userInfo: alice,
    object: {
      apiVersion: "custody.dev/v1alpha1",
      kind: "AgentTask",
      metadata: { name: "t1", namespace: "team", ...(annotations ? { annotations } : {}) },
      spec: spec ?? baseSpec,
    },
    ...rest,
  } as AdmissionRequest;
}

interface Fakes {
  impersonable?: string[];
  pods?: Record<string, PodView>;
  tasks?: Record<string, AgentTask>;
  claimed?: string[];
  dryRunClaims?: number;
}

function handler(f: Fakes = {}, extra: Partial<AgentTaskAdmissionDeps> = {}) {
  f.claimed ??= [];
  const claimed = f.claimed;
  return createAgentTaskAdmission({
    signer,
    keys,
    now: () => NOW,
    canImpersonate: async (_user, d) => (f.impersonable ?? []).includes(`${d.kind}/${d.name}`),
    getPod: async (_ns, name) => f.pods?.[name],
    getTask: async (_ns, name) => f.tasks?.[name],
    assertions: {
      verify: async (token, ctx) => {
        if (token !== "good-token")
          throw new ValidationError("assertion", "signature", "assertion: bad (rule signature)");
        expect(ctx.requester).toBe("alice");
        return {
          issuer: "https://idp",
          subject: "carol",
          jti: "j-1",
          digest: "ab".repeat(32),
          acceptedUntil: new Date(NOW + 120_000),
        };
      },
    },
    claimJti: async (issuer, jti) => {
      const id = `${issuer}|${jti}`;
      if (claimed.includes(id))
        throw new ValidationError("assertion.jti", "replay", "jti: already used (rule replay)");
      claimed.push(id);
    },
    ...extra,
  });
}

/** The record the patch writes, verified as the operator would. */
function recordOf(patch: JsonPatchOperation[] | undefined, spec: object = baseSpec): RequesterRecord {
  const op = patch?.find((p) => p.path.includes("requester-record") || p.path === "/metadata/annotations");
  const token =
    typeof op?.value === "string"
      ? op.value
      : (op?.value as Record<string, string> | undefined)?.[REQUESTER_RECORD_ANNOTATION];
  return verifyRequesterRecord(token, keys, {
    namespace: "team",
    name: "t1",
    spec: spec as Record<string, unknown>,
    creationTimestamp: new Date(NOW).toISOString(),
  });
}

describe("AgentTask CREATE", () => {
  it("records the authenticated requester as the delegator by default", async () => {
    const res = await handler()(request({}));
    expect(res.allowed).toBe(true);
    const record = recordOf(res.patch);
    expect(record.requester).toEqual(alice);
    expect(record.delegator).toEqual({ kind: "User", name: "alice", uid: "u-alice", groups: alice.groups });
    expect(record.proof.method).toBe("requester");
    expect(record.specDigest).toBe(identitySpecDigest(baseSpec));
  });

  it("replaces a record the client sent: only the webhook's own survives", async () => {
    const forged = signRequesterRecord(
      createEs256Signer(generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey),
      {
        v: 1,
        namespace: "team",
        name: "t1",
        issuedAt: new Date(NOW).toISOString(),
        specDigest: identitySpecDigest(baseSpec),
        requester: { username: "root" },
        delegator: { kind: "User", name: "root" },
        proof: { method: "requester" },
      },
    );
    const res = await handler()(
      request({ userInfo: mallory, annotations: { [REQUESTER_RECORD_ANNOTATION]: forged } }),
    );
    expect(res.patch?.[0]?.path).toBe("/metadata/annotations/custody.dev~1requester-record");
    expect(recordOf(res.patch).requester.username).toBe("mallory");
  });

  it("refuses generateName, and signs nothing for a malformed spec", async () => {
    const gen = request({});
    (gen.object as { metadata: Record<string, unknown> }).metadata = {
      generateName: "t-",
      namespace: "team",
    };
    gen.name = "";
    expect(await handler()(gen)).toMatchObject({
      allowed: false,
      code: 422,
      message: expect.stringContaining("rule no-generate-name"),
    });
    // A malformed spec gets no record: the API server's schema refuses it next, naming every field.
    const bad = await handler()(request({ spec: { ...baseSpec, scope: ["READ:x"] } }));
    expect(bad).toEqual({ allowed: true });
  });

  it("accepts a declared delegator only with impersonate rights, a group membership or an assertion", async () => {
    const spec = { ...baseSpec, delegator: { kind: "User", name: "carol" } };
    const refused = await handler()(request({ spec }));
    expect(refused).toMatchObject({ allowed: false, code: 403 });
    expect(refused.message).toContain("spec.delegator: alice may not act for User carol");
    expect(refused.message).toContain("rule delegator-proof");

    const byImpersonation = await handler({ impersonable: ["User/carol"] })(request({ spec }));
    expect(recordOf(byImpersonation.patch, spec)).toMatchObject({
      delegator: { kind: "User", name: "carol" },
      proof: { method: "impersonate" },
    });

    // Membership is not proof (everyone is in system:authenticated): a group needs impersonate rights.
    const group = { ...baseSpec, delegator: { kind: "Group", name: "agent-builders" } };
    expect(await handler()(request({ spec: group }))).toMatchObject({
      allowed: false,
      message: expect.stringContaining("rule delegator-proof"),
    });
    const byGroupImpersonation = await handler({ impersonable: ["Group/agent-builders"] })(
      request({ spec: group }),
    );
    expect(recordOf(byGroupImpersonation.patch, group).proof.method).toBe("impersonate");
  });

  it("accepts a Workflow delegator only by a signed assertion, strips it, and claims its jti once", async () => {
    const spec = { ...baseSpec, delegator: { kind: "Workflow", name: "nightly" } };
    const fakes: Fakes = { impersonable: ["Workflow/nightly"] };
    const noProof = await handler(fakes)(request({ spec }));
    expect(noProof.message).toContain("a Workflow delegator needs a signed assertion");

    const annotations = { [DELEGATION_ASSERTION_ANNOTATION]: "good-token", other: "kept" };
    const dry = await handler(fakes)(request({ spec, annotations, dryRun: true }));
    expect(dry.allowed).toBe(true);
    expect(fakes.claimed).toEqual([]);

    const res = await handler(fakes)(request({ spec, annotations }));
    expect(res.patch).toContainEqual({
      op: "remove",
      path: "/metadata/annotations/custody.dev~1delegation-assertion",
    });
    const record = recordOf(res.patch, spec);
    expect(record.proof).toEqual({
      method: "assertion",
      assertion: { issuer: "https://idp", subject: "carol", jti: "j-1", digest: "ab".repeat(32) },
    });
    expect(JSON.stringify(record)).not.toContain("good-token");

    const replay = await handler(fakes)(request({ spec, annotations }));
    expect(replay).toMatchObject({
      allowed: false,
      code: 403,
      message: expect.stringContaining("rule replay"),
    });
    const forged = await handler(fakes)(
      request({ spec, annotations: { [DELEGATION_ASSERTION_ANNOTATION]: "forged" } }),
    );
    expect(forged).toMatchObject({ allowed: false, message: expect.stringContaining("rule signature") });
    const unconfigured = await handler(fakes, { assertions: undefined })(request({ spec, annotations }));
    expect(unconfigured.message).toContain("rule assertion-issuer");
  });
});

describe("sub-agents", () => {
  const childSpec = { ...baseSpec, scope: ["read:repos/acme/app"], parentRef: { name: "parent" } };
  const parentSpec = { ...baseSpec };
  const parentCreated = new Date(NOW - 60_000).toISOString();
  const parent: AgentTask = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: {
      name: "parent",
      namespace: "team",
      uid: "p-uid",
      creationTimestamp: parentCreated,
      annotations: {
        [REQUESTER_RECORD_ANNOTATION]: signRequesterRecord(signer, {
          v: 1,
          namespace: "team",
          name: "parent",
          issuedAt: parentCreated,
          specDigest: identitySpecDigest(parentSpec),
          requester: { username: "alice" },
          delegator: { kind: "User", name: "carol" },
          proof: { method: "impersonate" },
        }),
      },
    } as AgentTask["metadata"],
    spec: parentSpec as AgentTask["spec"],
  };
  const podToken: UserInfo = {
    username: "system:serviceaccount:team:agents",
    groups: ["system:serviceaccounts"],
    extra: {
      "authentication.kubernetes.io/pod-name": ["agent-0"],
      "authentication.kubernetes.io/pod-uid": ["pod-uid"],
    },
  };
  const pod = (over: Partial<PodView["metadata"]> = {}, volumeSecret = "custody-svid-parent"): PodView => ({
    metadata: { uid: "pod-uid", labels: { "custody.dev/agent-task": "parent" }, ...over },
    spec: {
      serviceAccountName: "agents",
      volumes: [{ projected: { sources: [{ secret: { name: volumeSecret } }] } }],
    },
  });

  it("accepts a sub-agent created by the parent's pod through its bound token", async () => {
    const res = await handler({ tasks: { parent }, pods: { "agent-0": pod() } })(
      request({ spec: childSpec, userInfo: podToken }),
    );
    expect(res.allowed).toBe(true);
    expect(recordOf(res.patch, childSpec)).toMatchObject({
      delegator: { kind: "AgentTask", name: "parent", uid: "p-uid" },
      proof: { method: "parent-pod", pod: { name: "agent-0", uid: "pod-uid" } },
    });
  });

  it.each([
    ["another pod's token (uid differs)", pod({ uid: "other" }), "uid differs"],
    [
      "a pod without the parent's label",
      pod({ labels: { "custody.dev/agent-task": "other" } }),
      "does not carry the label",
    ],
    ["a pod that does not mount the parent's Secret", pod({}, "custody-svid-other"), "does not mount"],
  ])("refuses %s", async (_what, p, why) => {
    const res = await handler({ tasks: { parent }, pods: { "agent-0": p } })(
      request({ spec: childSpec, userInfo: podToken }),
    );
    expect(res).toMatchObject({ allowed: false, code: 403 });
    expect(res.message).toContain(why);
    expect(res.message).toContain("rule parent-pod");
  });

  it("accepts the parent's requester and whoever may impersonate its delegator; refuses others", async () => {
    expect((await handler({ tasks: { parent } })(request({ spec: childSpec }))).allowed).toBe(true);
    const stranger = await handler({ tasks: { parent } })(request({ spec: childSpec, userInfo: mallory }));
    expect(stranger).toMatchObject({
      allowed: false,
      message: expect.stringContaining("rule sub-agent-proof"),
    });
    const deputy = await handler({ tasks: { parent }, impersonable: ["User/carol"] })(
      request({ spec: childSpec, userInfo: mallory }),
    );
    expect(recordOf(deputy.patch, childSpec).proof.method).toBe("parent-delegator");
  });

  it("refuses a missing parent and a delegator declared on a sub-agent", async () => {
    expect((await handler()(request({ spec: childSpec }))).message).toContain("rule parent-exists");
    const withDelegator = { ...childSpec, delegator: { kind: "User", name: "alice" } };
    expect((await handler({ tasks: { parent } })(request({ spec: withDelegator }))).message).toContain(
      "rule sub-agent-delegator",
    );
  });
});

describe("AgentTask UPDATE", () => {
  const update = (
    oldAnn: Record<string, string>,
    newAnn: Record<string, string>,
    newSpec: object = baseSpec,
  ) =>
    request({
      operation: "UPDATE",
      object: { metadata: { name: "t1", annotations: newAnn }, spec: newSpec },
      oldObject: { metadata: { name: "t1", annotations: oldAnn }, spec: baseSpec },
    });
  const rec = { [REQUESTER_RECORD_ANNOTATION]: "record" };

  it("keeps the record and the identity fixed, and strips a re-sent assertion unchecked", async () => {
    expect(await handler()(update(rec, rec))).toEqual({ allowed: true });
    expect(await handler()(update(rec, { [REQUESTER_RECORD_ANNOTATION]: "other" }))).toMatchObject({
      allowed: false,
      message: expect.stringContaining("rule record-immutable"),
    });
    // Removed (a server-side apply of a manifest that never had it): put back, not refused.
    expect(await handler()(update(rec, {}))).toEqual({
      allowed: true,
      patch: [{ op: "add", path: "/metadata/annotations/custody.dev~1requester-record", value: "record" }],
    });
    expect(await handler()(update(rec, rec, { ...baseSpec, scope: ["*:*"] }))).toMatchObject({
      allowed: false,
      message: expect.stringMatching(/^spec\.scope: is immutable.*rule identity-immutable/),
    });
    // revoked is not identity-defining
    expect((await handler()(update(rec, rec, { ...baseSpec, revoked: true }))).allowed).toBe(true);
    const resent = await handler()(update(rec, { ...rec, [DELEGATION_ASSERTION_ANNOTATION]: "anything" }));
    expect(resent).toEqual({
      allowed: true,
      patch: [{ op: "remove", path: "/metadata/annotations/custody.dev~1delegation-assertion" }],
    });
  });
});
