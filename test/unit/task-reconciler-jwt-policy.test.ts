// The reconciler's JWT-SVIDs (issued with the certificate, refreshed at
// half-life by a serial-guarded JSON patch) and its policy handling (deny,
// narrow, and re-judge on a policy change), with fakes for the I/O shells, a
// real PolicyStore and a real JWT-SVID minter.
import { generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { decodeProtectedHeader, jwtVerify } from "jose";
import { describe, expect, it } from "vitest";
import {
  REQUESTER_RECORD_ANNOTATION,
  type RequesterRecord,
  signRequesterRecord,
} from "../../core/admission/record.ts";
import type { AgentPolicy, PolicyRule } from "../../core/api/policy.ts";
import type { AgentTask, AgentTaskSpec, AgentTaskStatus } from "../../core/api/v1alpha1.ts";
import { chainDigest, identitySpecDigest } from "../../core/delegation.ts";
import { audienceFileName, TOKEN_EXCHANGE_FILE } from "../../core/jwt/audience-files.ts";
import { policyVersion } from "../../core/policy/compile.ts";
import { combinedVersion } from "../../core/policy/decide.ts";
import { createEs256Signer, createKeyRing } from "../../core/provenance/sign.ts";
import {
  DELEGATION_EXTENSION_OID,
  decodeDelegationExtension,
  generateCa,
  serialFromRandom,
} from "../../core/x509/index.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";
import { createJwtSvidMinter, JWT_KID_ANNOTATION, JWT_REFRESH_ANNOTATION } from "../../operator/jwt-svids.ts";
import type { TaskEventRecorder } from "../../operator/kube-events.ts";
import { PolicyStore } from "../../operator/policies.ts";
import type { ProvenanceRecorder } from "../../operator/provenance.ts";
import { CredentialIndex, createTaskReconciler } from "../../operator/task-reconciler.ts";
import type { TrustBundlePublisher } from "../../operator/trust-bundle.ts";
import { KubeApiError, type KubeRest, type PatchType } from "../../shells/kube/rest.ts";
import { silentLogger } from "../../shells/log.ts";

const { ca } = generateCa({
  trustDomain: "custody.local",
  now: new Date(),
  validityMs: 86_400_000,
  serial: serialFromRandom(randomBytes(16)),
});

const webhookKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
const signer = createEs256Signer(webhookKey);
const created = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString();

const KEY = "ns/t1";
const SPIFFE_ID = "spiffe://custody.local/ns/ns/agent/agent/task/t1";
const ISSUER = "https://custody.example";
const jwtKey = generateJwtKey("ES256", Date.now() - 60_000, Date.now() - 60_000);

const SECRETS = "/api/v1/namespaces/ns/secrets";
const SECRET_POST = `POST ${SECRETS}`;
const SECRET_PUT = `PUT ${SECRETS}/custody-svid-t1`;
const SECRET_PATCH = `PATCH ${SECRETS}/custody-svid-t1`;
const SECRET_DELETE = `DELETE ${SECRETS}/custody-svid-t1`;
const STATUS = "PUT /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1/status";
/** Recorded (not awaited on their own) before the first `issued`. */
const FIRST = ["record dev.custody.task.requested", "record dev.custody.task.delegation.verified"];

/** The record the admission webhook would sign for the task. */
function signedRecord(t: AgentTask): string {
  const record: RequesterRecord = {
    v: 1,
    namespace: "ns",
    name: "t1",
    issuedAt: created,
    specDigest: identitySpecDigest(t.spec as unknown as Record<string, unknown>),
    requester: { username: "bob", groups: ["agent-builders"] },
    delegator: { kind: "User", name: "alice" },
    proof: { method: "impersonate" },
  };
  return signRequesterRecord(signer, record);
}

function task(spec: Partial<AgentTaskSpec> = {}): AgentTask {
  const t: AgentTask = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: {
      name: "t1",
      namespace: "ns",
      uid: "uid-1",
      generation: 1,
      resourceVersion: "10",
      finalizers: ["custody.dev/revoke-credential"],
      creationTimestamp: created,
    } as AgentTask["metadata"],
    spec: {
      agent: { name: "agent" },
      delegator: { kind: "User", name: "alice" },
      scope: ["read:x/*"],
      serviceAccountName: "sa",
      ttl: "1h",
      ...spec,
    },
  };
  t.metadata.annotations = { [REQUESTER_RECORD_ANNOTATION]: signedRecord(t) };
  return t;
}

function policy(
  name: string,
  rules: PolicyRule[],
  selector: AgentPolicy["spec"]["selector"] = {},
): AgentPolicy {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentPolicy",
    metadata: { name, namespace: "ns" },
    spec: { selector, rules },
  };
}

/** The combined version a decision over exactly these policies carries. */
function versionOf(...policies: AgentPolicy[]): string {
  return combinedVersion(
    policies.map((p) => ({
      kind: p.kind,
      namespace: p.metadata.namespace!,
      name: p.metadata.name,
      version: policyVersion(p),
    })),
  );
}

interface Recorded {
  type: string;
  data: Record<string, unknown>;
}

interface Patch {
  path: string;
  body: unknown;
  type: PatchType | undefined;
}

/**
 * A reconciler over a fake API server that keeps the one task (status writes
 * land on it and bump its resourceVersion, as the real one does), records
 * every call in order and the bodies written, and a recorder that keeps
 * every event with its data.
 */
function harness(opts: {
  task: AgentTask;
  record?: (type: string) => Promise<void>;
  credentials?: CredentialIndex;
  policies?: PolicyStore;
  jwt?: { ttlMs: number };
  secretPatch?: (ops: unknown) => Promise<unknown>;
}) {
  // A fixed clock: lifetimes and wake-ups are then exact.
  const T = Date.now();
  let current = opts.task;
  let rv = Number(current.metadata.resourceVersion ?? "10");
  const calls: string[] = [];
  const bodies: Record<string, unknown> = {};
  const patches: Patch[] = [];
  const events: Recorded[] = [];
  const credentials = opts.credentials ?? new CredentialIndex();
  const rest = {
    post: async (path: string, body: unknown) => {
      calls.push(`POST ${path}`);
      bodies[`POST ${path}`] = body;
      return body;
    },
    put: async (path: string, body: unknown) => {
      calls.push(`PUT ${path}`);
      bodies[`PUT ${path}`] = body;
      if (path.endsWith("/status")) {
        current = {
          ...current,
          metadata: { ...current.metadata, resourceVersion: String(++rv) },
          status: (body as AgentTask).status,
        };
        return current;
      }
      return body;
    },
    patch: async (path: string, body: unknown, type?: PatchType) => {
      calls.push(`PATCH ${path}`);
      patches.push({ path, body, type });
      if (path.includes("/secrets/")) return (opts.secretPatch ?? (async () => ({})))(body);
      return current;
    },
    delete: async (path: string) => {
      calls.push(`DELETE ${path}`);
      return {};
    },
    get: async () => ({}),
  } as unknown as KubeRest;
  const recorder: ProvenanceRecorder = {
    record: (type, _subject, data) => {
      calls.push(`record ${type}`);
      events.push({ type, data: data as unknown as Record<string, unknown> });
      return (opts.record ?? (async () => {}))(type);
    },
    healthy: true,
    backlog: 0,
    close: async () => {},
  };
  const getTask = (key: string) => (key === KEY ? current : undefined);
  const jwt = opts.jwt
    ? createJwtSvidMinter({
        settings: { issuer: ISSUER, ttlMs: opts.jwt.ttlMs, signing: () => jwtKey },
        trustDomain: "custody.local",
        getTask,
      })
    : undefined;
  const reconciler = createTaskReconciler({
    rest,
    getTask,
    credentials,
    ca: () => ca,
    recorder,
    events: { emit: () => {} } as unknown as TaskEventRecorder,
    bundles: { ensure: async () => {} } as unknown as TrustBundlePublisher,
    trustDomain: "custody.local",
    recordKeys: createKeyRing([webhookKey]),
    renewJitter: 0.05,
    log: silentLogger,
    now: () => T,
    ...(jwt ? { jwt } : {}),
    ...(opts.policies ? { policies: opts.policies } : {}),
  });
  return {
    calls,
    bodies,
    patches,
    events,
    credentials,
    reconciler,
    T,
    current: () => current,
    /** Forget what was seen so far (after a first pass that set the scene). */
    reset() {
      calls.length = 0;
      patches.length = 0;
      events.length = 0;
      for (const k of Object.keys(bodies)) delete bodies[k];
    },
  };
}

type SecretBody = {
  metadata: { annotations: Record<string, string> };
  data: Record<string, string>;
};

const decoded = (b64: string) => Buffer.from(b64, "base64").toString("utf8");

/** The leaf of the Secret's tls.crt (the chain PEM, leaf first). */
function leafOf(secret: SecretBody): X509Certificate {
  return new X509Certificate(decoded(secret.data["tls.crt"]!));
}

function delegationOf(leaf: X509Certificate) {
  const ext = new x509.X509Certificate(new Uint8Array(leaf.raw)).getExtension(DELEGATION_EXTENSION_OID);
  expect(ext).toBeTruthy();
  return decodeDelegationExtension(new Uint8Array(ext!.value));
}

const statusOf = (body: unknown): AgentTaskStatus => (body as AgentTask).status!;
const ready = (s: AgentTaskStatus) => s.conditions?.find((c) => c.type === "Ready");

// ---------------------------------------------------------------- JWT-SVIDs

describe("JWT-SVIDs at issuance", () => {
  const audiences = ["https://api.example.com", "billing"];

  it("writes one token per audience and one for token exchange, each bound to the task and within the certificate", async () => {
    // Tokens asked to live longer than the 1h certificate: exp must stop at its notAfter.
    const h = harness({ task: task({ audiences }), jwt: { ttlMs: 2 * 3_600_000 } });
    await h.reconciler.reconcile(KEY);

    const secret = h.bodies[SECRET_POST] as SecretBody;
    expect(secret).toBeDefined();
    const fileOf: Record<string, string> = {
      [TOKEN_EXCHANGE_FILE]: ISSUER,
      [audienceFileName(audiences[0]!)]: audiences[0]!,
      [audienceFileName(audiences[1]!)]: audiences[1]!,
    };
    expect(Object.keys(secret.data).sort()).toEqual(
      ["ca.crt", "spiffe-id", "tls.crt", "tls.key", ...Object.keys(fileOf)].sort(),
    );
    expect(Object.keys(fileOf)).toContain("jwt-svid.https___api.example.com");

    const leaf = leafOf(secret);
    const notAfter = Date.parse(leaf.validTo);
    const status = statusOf(h.bodies[STATUS]);
    expect(status.spiffeID).toBe(SPIFFE_ID);

    for (const [file, audience] of Object.entries(fileOf)) {
      const token = decoded(secret.data[file]!);
      expect(decodeProtectedHeader(token).kid).toBe(jwtKey.kid);
      const { payload } = await jwtVerify(token, jwtKey.publicKey, { audience, issuer: ISSUER });
      expect(payload.sub).toBe(SPIFFE_ID);
      expect(payload.aud).toBe(audience);
      expect(payload.exp! * 1000).toBeLessThanOrEqual(notAfter);
      expect(payload.exp! * 1000).toBeGreaterThan(h.T + 59 * 60_000);
      expect(payload.iat! * 1000).toBe(Math.floor(h.T / 1000) * 1000);
      expect(payload.custody).toEqual({
        taskUid: "uid-1",
        policyVersion: "none",
        chainDigest: chainDigest(status.delegationChain!).toString("hex"),
        chain: [
          { kind: "user", name: "alice" },
          { kind: "agent", name: "t1", spiffeId: SPIFFE_ID },
        ],
      });
    }
    // The refresh time and the signing key are on the Secret, and in the index.
    expect(secret.metadata.annotations[JWT_KID_ANNOTATION]).toBe(jwtKey.kid);
    const refreshAt = Number(secret.metadata.annotations[JWT_REFRESH_ANNOTATION]);
    expect(refreshAt).toBeGreaterThan(h.T);
    expect(refreshAt).toBeLessThan(notAfter);
    expect(h.credentials.tokensRefreshAt(KEY)).toBe(refreshAt);
  });

  it("records jwtsvid.issued, naming every token but never one, before the Secret is written", async () => {
    const h = harness({ task: task({ audiences }), jwt: { ttlMs: 5 * 60_000 } });
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual([
      ...FIRST,
      "record dev.custody.task.issued",
      "record dev.custody.task.jwtsvid.issued",
      SECRET_POST,
      STATUS,
    ]);
    const event = h.events.find((e) => e.type === "dev.custody.task.jwtsvid.issued")!;
    expect(event.data.spiffeId).toBe(SPIFFE_ID);
    expect(event.data.kid).toBe(jwtKey.kid);
    const tokens = event.data.tokens as Array<{ audience: string; jti: string }>;
    expect(tokens.map((t) => t.audience)).toEqual([ISSUER, ...audiences]);
    // The jtis are those of the tokens written.
    const secret = h.bodies[SECRET_POST] as SecretBody;
    const { payload } = await jwtVerify(decoded(secret.data[TOKEN_EXCHANGE_FILE]!), jwtKey.publicKey);
    expect(tokens[0]!.jti).toBe(payload.jti);
    expect(JSON.stringify(event.data)).not.toContain(decoded(secret.data[TOKEN_EXCHANGE_FILE]!));
  });

  it("writes no Secret and attempts issuance.abandoned when the jwtsvid record is refused", async () => {
    const h = harness({
      task: task({ audiences }),
      jwt: { ttlMs: 5 * 60_000 },
      record: async (type) => {
        if (type === "dev.custody.task.jwtsvid.issued") throw new Error("broker unreachable");
      },
    });
    await expect(h.reconciler.reconcile(KEY)).rejects.toThrow("broker unreachable");
    expect(h.calls).toEqual([
      ...FIRST,
      "record dev.custody.task.issued",
      "record dev.custody.task.jwtsvid.issued",
      "record dev.custody.task.issuance.abandoned",
    ]);
    expect(h.calls.some((c) => c.includes("/secrets"))).toBe(false);
    const abandoned = h.events.find((e) => e.type === "dev.custody.task.issuance.abandoned")!;
    const issued = h.events.find((e) => e.type === "dev.custody.task.issued")!;
    expect(abandoned.data.serial).toBe((issued.data.certificate as { serial: string }).serial);
    expect(h.credentials.get(KEY)).toBeUndefined();
  });

  it("gives a task without audiences no token and no jwtsvid event", async () => {
    const h = harness({ task: task(), jwt: { ttlMs: 5 * 60_000 } });
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual([...FIRST, "record dev.custody.task.issued", SECRET_POST, STATUS]);
    const secret = h.bodies[SECRET_POST] as SecretBody;
    expect(Object.keys(secret.data).sort()).toEqual(["ca.crt", "spiffe-id", "tls.crt", "tls.key"]);
    expect(Object.keys(secret.metadata.annotations)).not.toContain(JWT_REFRESH_ANNOTATION);
    expect(h.credentials.tokensRefreshAt(KEY)).toBeUndefined();
  });
});

describe("JWT-SVID refresh", () => {
  /** An Issued task with audiences, its Secret written by a first pass. */
  async function issued(secretPatch?: (ops: unknown) => Promise<unknown>) {
    const h = harness({
      task: task({ audiences: ["https://api.example.com"] }),
      jwt: { ttlMs: 5 * 60_000 },
      ...(secretPatch ? { secretPatch } : {}),
    });
    await h.reconciler.reconcile(KEY);
    const status = h.current().status!;
    expect(status.phase).toBe("Issued");
    expect(h.credentials.get(KEY)).toBe(status.certificate!.serial);
    h.reset();
    return { h, serial: status.certificate!.serial };
  }

  it("records jwtsvid.issued, then patches the Secret with a serial test followed by the new tokens", async () => {
    const { h, serial } = await issued();
    h.credentials.setTokensRefreshAt(KEY, h.T - 1000);
    const result = await h.reconciler.reconcile(KEY);

    expect(h.calls).toEqual(["record dev.custody.task.jwtsvid.issued", SECRET_PATCH]);
    expect(h.patches).toHaveLength(1);
    const { body, type } = h.patches[0]!;
    expect(type).toBe("json");
    const ops = body as Array<{ op: string; path: string; value: string }>;
    expect(ops[0]).toEqual({ op: "test", path: "/metadata/annotations/custody.dev~1serial", value: serial });
    const rest = ops.slice(1);
    expect(rest.every((o) => o.op === "add")).toBe(true);
    expect(rest.map((o) => o.path).sort()).toEqual(
      [
        "/metadata/annotations/custody.dev~1jwt-svid-kid",
        "/metadata/annotations/custody.dev~1jwt-svid-refresh-at",
        `/data/${TOKEN_EXCHANGE_FILE}`,
        `/data/${audienceFileName("https://api.example.com")}`,
      ].sort(),
    );
    // The patched token is a fresh JWT-SVID for the task.
    const file = rest.find((o) => o.path === `/data/${audienceFileName("https://api.example.com")}`)!;
    const { payload } = await jwtVerify(decoded(file.value), jwtKey.publicKey, {
      audience: "https://api.example.com",
    });
    expect(payload.sub).toBe(SPIFFE_ID);
    const event = h.events[0]!;
    expect((event.data.tokens as Array<{ jti: string }>).map((t) => t.jti)).toContain(payload.jti);
    // The index now says when the new tokens are due, and the reconciler wakes then at the latest.
    const refreshAt = Number(rest.find((o) => o.path.endsWith("jwt-svid-refresh-at"))!.value);
    expect(h.credentials.tokensRefreshAt(KEY)).toBe(refreshAt);
    expect(refreshAt).toBeGreaterThan(h.T);
    expect(result).toEqual({ requeueAfterMs: refreshAt - h.T });
  });

  it("writes nothing while the tokens are not due", async () => {
    const { h } = await issued();
    h.credentials.setTokensRefreshAt(KEY, h.T + 60_000);
    const result = await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual([]);
    expect(result).toEqual({ requeueAfterMs: 60_000 });
    expect(h.credentials.tokensRefreshAt(KEY)).toBe(h.T + 60_000);
  });

  it("survives a failed serial test (422) and asks to look again soon", async () => {
    const { h } = await issued(async () => {
      throw new KubeApiError(422, "Invalid", "the test operation failed", {});
    });
    h.credentials.setTokensRefreshAt(KEY, h.T - 1000);
    const result = await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual(["record dev.custody.task.jwtsvid.issued", SECRET_PATCH]);
    expect(result).toEqual({ requeueAfterMs: 5000 });
    // The next pass re-reads the Secret's state rather than trusting the old due time.
    expect(h.credentials.tokensRefreshAt(KEY)).toBeUndefined();
  });

  it("rethrows a patch error other than 422 or 404", async () => {
    const { h } = await issued(async () => {
      throw new KubeApiError(500, "InternalError", "boom", {});
    });
    h.credentials.setTokensRefreshAt(KEY, h.T - 1000);
    await expect(h.reconciler.reconcile(KEY)).rejects.toThrow("boom");
  });
});

// ---------------------------------------------------------------- policy

describe("policy at issuance", () => {
  it("denies a task whose model a policy forbids: Denied, PolicyDenied, a deny decision, no Secret", async () => {
    const store = new PolicyStore({ defaultDecision: "allow" });
    const noGpt = policy("no-gpt", [
      {
        name: "no-gpt-x",
        deny: 'task.agent.model.name == "gpt-x"',
        message: "gpt-x may not hold credentials",
      },
    ]);
    store.upsert(noGpt);
    const model = { provider: "openai", name: "gpt-x", version: "2025-01" };
    const h = harness({ task: task({ agent: { name: "agent", model } }), policies: store });
    await h.reconciler.reconcile(KEY);

    // The credential goes before anything is recorded.
    expect(h.calls).toEqual([
      SECRET_DELETE,
      "record dev.custody.task.policy.decided",
      "record dev.custody.task.denied",
      STATUS,
    ]);
    const decided = h.events[0]!;
    expect(decided.data).toMatchObject({
      decision: "deny",
      stage: "issuance",
      policyVersion: versionOf(noGpt),
      reasons: ["ns/no-gpt: rule no-gpt-x: gpt-x may not hold credentials"],
    });
    const status = statusOf(h.bodies[STATUS]);
    expect(status.phase).toBe("Denied");
    expect(status.certificate).toBeUndefined();
    expect(ready(status)).toMatchObject({ status: "False", reason: "PolicyDenied" });
    expect(ready(status)?.message).toContain("gpt-x may not hold credentials");
    expect(h.events.find((e) => e.type === "dev.custody.task.denied")?.data).toMatchObject({
      stage: "policy",
      reason: "PolicyDenied",
    });
  });

  it("lets another model through the same policy (the deny is about the model)", async () => {
    const store = new PolicyStore({ defaultDecision: "allow" });
    store.upsert(policy("no-gpt", [{ name: "no-gpt-x", deny: 'task.agent.model.name == "gpt-x"' }]));
    const model = { provider: "anthropic", name: "claude", version: "4" };
    const h = harness({ task: task({ agent: { name: "agent", model } }), policies: store });
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toContain(SECRET_POST);
    expect(statusOf(h.bodies[STATUS]).phase).toBe("Issued");
    expect(h.events.find((e) => e.type === "dev.custody.task.policy.decided")?.data).toMatchObject({
      decision: "allow",
    });
  });

  it("narrows: lifetime at most maxTtl, the scope the ceiling leaves, the version in status and certificate", async () => {
    const store = new PolicyStore({ defaultDecision: "allow" });
    const narrow = policy("narrow", [
      { name: "short", maxTtl: "10m" },
      { name: "read-only", scopeCeiling: ["read:x/*"] },
    ]);
    store.upsert(narrow);
    const h = harness({ task: task({ scope: ["read:x/*", "write:x/docs"], ttl: "1h" }), policies: store });
    await h.reconciler.reconcile(KEY);

    const version = versionOf(narrow);
    expect(version).toMatch(/^sha256:[0-9a-f]{64}$/);

    const leaf = leafOf(h.bodies[SECRET_POST] as SecretBody);
    const notAfter = Date.parse(leaf.validTo);
    // From issuance at most maxTtl (notBefore is backdated for clock skew, see BACKDATE_MS).
    expect(notAfter - h.T).toBeLessThanOrEqual(10 * 60_000);
    expect(notAfter - h.T).toBeGreaterThan(10 * 60_000 - 1000);
    const ext = delegationOf(leaf);
    expect(ext.policyVersion).toBe(version);
    expect(ext.scope).toEqual(["read:x/*"]);

    const status = statusOf(h.bodies[STATUS]);
    expect(status.phase).toBe("Issued");
    expect(status.policyVersion).toBe(version);
    expect(status.grantedScope).toEqual(["read:x/*"]);
    expect(status.grantedTtl).toBe("10m");
    expect(status.policies).toEqual([
      { kind: "AgentPolicy", namespace: "ns", name: "narrow", version: policyVersion(narrow) },
    ]);

    // The decision is recorded before `issued`, with what it narrowed.
    const types = h.events.map((e) => e.type);
    expect(types.indexOf("dev.custody.task.policy.decided")).toBeLessThan(
      types.indexOf("dev.custody.task.issued"),
    );
    expect(h.events.find((e) => e.type === "dev.custody.task.policy.decided")!.data).toMatchObject({
      decision: "allow",
      stage: "issuance",
      policyVersion: version,
      maxTtl: "10m",
      dropped: ["write:x/docs"],
    });
  });

  it("binds the policy version into the JWT-SVIDs' custody claim too", async () => {
    const store = new PolicyStore({ defaultDecision: "allow" });
    const narrow = policy("narrow", [{ name: "short", maxTtl: "10m" }]);
    store.upsert(narrow);
    const h = harness({
      task: task({ audiences: ["billing"] }),
      policies: store,
      jwt: { ttlMs: 60 * 60_000 },
    });
    await h.reconciler.reconcile(KEY);
    const secret = h.bodies[SECRET_POST] as SecretBody;
    const { payload } = await jwtVerify(decoded(secret.data[audienceFileName("billing")]!), jwtKey.publicKey);
    expect((payload.custody as { policyVersion: string }).policyVersion).toBe(versionOf(narrow));
    // Never past the narrowed certificate.
    expect(payload.exp! * 1000).toBeLessThanOrEqual(Date.parse(leafOf(secret).validTo));
  });
});

describe("a policy change while a credential is held", () => {
  /** Issues the task under `first`, then forgets the calls: the scene for a change. */
  async function issuedUnder(first: AgentPolicy, spec: Partial<AgentTaskSpec> = {}) {
    const store = new PolicyStore({ defaultDecision: "allow" });
    store.upsert(first);
    const h = harness({ task: task(spec), policies: store });
    await h.reconciler.reconcile(KEY);
    const status = h.current().status!;
    expect(status.phase).toBe("Issued");
    expect(status.policyVersion).toBe(versionOf(first));
    h.reset();
    return { h, store, before: status };
  }

  it("revokes when the new version denies: policy.revoked, credential deleted, Revoked (PolicyRevoked)", async () => {
    const { h, store, before } = await issuedUnder(policy("p", [{ name: "short", maxTtl: "1h" }]));
    const denying = policy("p", [{ name: "stop", deny: "true", message: "agents are paused" }]);
    store.upsert(denying);
    await h.reconciler.reconcile(KEY);

    expect(h.calls).toEqual([
      SECRET_DELETE,
      "record dev.custody.task.policy.revoked",
      "record dev.custody.task.revoked",
      STATUS,
    ]);
    expect(h.events[0]!.data).toMatchObject({
      policyVersion: versionOf(denying),
      serials: [before.certificate!.serial],
      reasons: ["ns/p: rule stop: agents are paused"],
    });
    expect(h.events[1]!.data).toMatchObject({ serials: [before.certificate!.serial] });
    const status = statusOf(h.bodies[STATUS]);
    expect(status.phase).toBe("Revoked");
    expect(ready(status)).toMatchObject({ status: "False", reason: "PolicyRevoked" });
    expect(ready(status)?.message).toContain("agents are paused");
    expect(h.credentials.get(KEY)).toBeUndefined();
  });

  it("reissues at once when the new maxTtl is shorter than the granted ttl (a renewed certificate)", async () => {
    const { h, store, before } = await issuedUnder(policy("p", [{ name: "short", maxTtl: "1h" }]));
    expect(before.grantedTtl).toBe("1h");
    const tighter = policy("p", [{ name: "short", maxTtl: "10m" }]);
    store.upsert(tighter);
    await h.reconciler.reconcile(KEY);

    expect(h.calls).toEqual([
      "record dev.custody.task.policy.decided",
      "record dev.custody.task.renewed",
      SECRET_PUT,
      STATUS,
    ]);
    const renewed = h.events[1]!.data as { certificate: { serial: string }; previousSerial: string };
    expect(renewed.previousSerial).toBe(before.certificate!.serial);
    expect(renewed.certificate.serial).not.toBe(before.certificate!.serial);

    const leaf = leafOf(h.bodies[SECRET_PUT] as SecretBody);
    expect(leaf.serialNumber.toLowerCase()).toBe(renewed.certificate.serial.toLowerCase());
    expect(Date.parse(leaf.validTo) - h.T).toBeLessThanOrEqual(10 * 60_000);
    expect(Date.parse(leaf.validTo) - h.T).toBeGreaterThan(10 * 60_000 - 1000);
    expect(delegationOf(leaf).policyVersion).toBe(versionOf(tighter));

    const status = statusOf(h.bodies[STATUS]);
    expect(status.phase).toBe("Issued");
    expect(status.certificate!.serial).toBe(renewed.certificate.serial);
    // The broader certificate no longer counts as the task's (token exchange,
    // decisions), yet stays listed so that a revocation names it.
    expect(status.certificate!.previousSerial).toBe(before.certificate!.serial);
    expect(status.certificate!.previousSuperseded).toBe(true);
    expect(status.policyVersion).toBe(versionOf(tighter));
    expect(status.grantedTtl).toBe("10m");
    expect(ready(status)?.reason).toBe("Renewed");
    expect(status.conditions?.find((c) => c.type === "Issuing")?.message).toContain(
      "a policy change narrowed what the task may hold",
    );
    expect(h.credentials.get(KEY)).toBe(renewed.certificate.serial);
  });

  it("reissues with the narrower scope when a new ceiling drops a held grant", async () => {
    const { h, store, before } = await issuedUnder(policy("p", [{ name: "short", maxTtl: "1h" }]), {
      scope: ["read:x/*", "write:x/docs"],
    });
    expect(before.grantedScope).toEqual(["read:x/*", "write:x/docs"]);
    store.upsert(policy("p", [{ name: "ceiling", scopeCeiling: ["read:x/*"] }]));
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toContain("record dev.custody.task.renewed");
    expect(delegationOf(leafOf(h.bodies[SECRET_PUT] as SecretBody)).scope).toEqual(["read:x/*"]);
    expect(statusOf(h.bodies[STATUS]).grantedScope).toEqual(["read:x/*"]);
  });

  it("only records a looser version: policy.decided (policy-change) and the status, no certificate", async () => {
    const { h, store, before } = await issuedUnder(policy("p", [{ name: "short", maxTtl: "30m" }]));
    expect(before.grantedTtl).toBe("30m");
    const looser = policy("p", [{ name: "short", maxTtl: "2h" }]);
    store.upsert(looser);
    await h.reconciler.reconcile(KEY);

    expect(h.calls).toEqual(["record dev.custody.task.policy.decided", STATUS]);
    expect(h.events[0]!.data).toMatchObject({
      decision: "allow",
      stage: "policy-change",
      policyVersion: versionOf(looser),
      maxTtl: "2h",
    });
    const status = statusOf(h.bodies[STATUS]);
    expect(status.policyVersion).toBe(versionOf(looser));
    expect(status.policies).toEqual([
      { kind: "AgentPolicy", namespace: "ns", name: "p", version: policyVersion(looser) },
    ]);
    // What the credential holds is unchanged: same certificate, same grants.
    expect(status.certificate).toEqual(before.certificate);
    expect(status.grantedTtl).toBe("30m");
    expect(status.grantedScope).toEqual(before.grantedScope);

    // Recorded once: the next pass sees its own version and waits.
    h.reset();
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual([]);
  });

  // A status merged over an older one must drop a removed policy's entry.
  it("drops status.policies when the last policy is removed (version none)", async () => {
    const first = policy("p", [{ name: "short", maxTtl: "1h" }]);
    const { h, store } = await issuedUnder(first);
    store.remove(first);
    await h.reconciler.reconcile(KEY);
    expect(h.calls).toEqual(["record dev.custody.task.policy.decided", STATUS]);
    const status = statusOf(h.bodies[STATUS]);
    expect(status.policyVersion).toBe("none");
    expect(status.policies).toBeUndefined();
  });
});
