// The decision endpoint (operator/authzen.ts): AuthZEN Access Evaluation(s)
// and reports, driven with fakes. Real X.509-SVIDs (test/unit/x509/fixtures.ts)
// and real JWT-SVIDs (core/jwt/svid.ts); a fake TokenReview, a fake recorder
// whose acknowledgements the test controls, and a fake clock.
import { createHash, createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { AgentPolicy, PolicyRule } from "../../core/api/policy.ts";
import { type AgentTask, API_VERSION } from "../../core/api/v1alpha1.ts";
import type { JwtKey } from "../../core/jwt/keys.ts";
import { signJwtSvid } from "../../core/jwt/svid.ts";
import { combinedVersion } from "../../core/policy/decide.ts";
import { provenanceSalt } from "../../core/provenance/events.ts";
import { loadCa } from "../../core/x509/ca.ts";
import type { MintedSvid } from "../../core/x509/mint.ts";
import { type AuthzenDeps, createAuthzenHandler } from "../../operator/authzen.ts";
import { generateJwtKey } from "../../operator/jwt-keys.ts";
import { PolicyStore } from "../../operator/policies.ts";
import type { IdentityRequest } from "../../shells/https/identity-server.ts";
import type { AuthenticatedUser } from "../../shells/kube/authentication.ts";
import { createLogger } from "../../shells/log.ts";
import {
  AUDIENCE,
  CHAIN,
  ca,
  custody,
  deferred,
  fakeRecorder,
  foreign,
  HOUR,
  ISSUER,
  key,
  minted,
  NOW,
  PARENT,
  peerOf,
  SUB,
  T,
  task,
} from "./endpoint-fixtures.ts";
import { mintSample, opensslChain } from "./x509/fixtures.ts";

const EVALUATION = "/access/v1/evaluation";
const EVALUATIONS = "/access/v1/evaluations";
const REPORTS = "/custody/v1/reports";
const HEADER = "custody-agent-credential";

const GATEWAY = "system:serviceaccount:gw:gateway";
const STRANGER = "system:serviceaccount:gw:stranger";
const GATEWAY_TOKEN = "k8s-token-of-the-gateway-0123456789";
const STRANGER_TOKEN = "k8s-token-of-a-stranger-9876543210";
const USERS: Record<string, AuthenticatedUser> = {
  [GATEWAY_TOKEN]: { username: GATEWAY, groups: ["system:serviceaccounts"] },
  [STRANGER_TOKEN]: { username: STRANGER, groups: ["system:serviceaccounts"] },
};

const unpublishedKey = generateJwtKey("ES256", NOW - HOUR, NOW - HOUR);

type SetupOptions = Partial<AuthzenDeps> & { task?: AgentTask | undefined; rootTask?: AgentTask };

function setup(over: SetupOptions = {}) {
  // The agent above review-42 in its chain: Issued, so its delegation holds.
  const {
    task: given,
    rootTask = task({ metadata: { name: "plan-1", uid: "uid-plan" } }),
    ...depsOver
  } = over;
  const current = "task" in over ? given : task();
  const rec = fakeRecorder();
  const logLines: string[] = [];
  const reviewed: string[] = [];
  const clock = { t: T };
  const deps: AuthzenDeps = {
    issuer: ISSUER,
    trustDomain: "custody.local",
    keys: { published: () => [key] },
    trustAnchorsDer: () => ca.bundleDer,
    getTask: (k) => {
      if (k === "team-a/review-42") return current;
      if (k === "team-a/plan-1") return rootTask;
      return undefined;
    },
    recordOf: () => undefined,
    policies: new PolicyStore({ defaultDecision: "allow" }),
    reviewToken: (token) => {
      reviewed.push(token);
      return Promise.resolve(USERS[token]);
    },
    callers: new Set([GATEWAY]),
    recorder: rec.open,
    salt: SALT,
    reportsPerSecond: 5,
    log: createLogger({ name: "test", level: "debug", write: (l) => void logLines.push(l) }),
    now: () => clock.t,
    ...depsOver,
  };
  const handler = createAuthzenHandler(deps);
  return { handler, calls: rec.calls, logLines, reviewed, clock };
}

function post(path: string, body: unknown, over: Partial<IdentityRequest> = {}): IdentityRequest {
  return {
    method: "POST",
    path,
    peer: peerOf(minted),
    peerRejected: false,
    contentType: "application/json",
    body: Buffer.from(typeof body === "string" ? body : JSON.stringify(body)),
    headers: {},
    ...over,
  };
}

/** A resource server's request: its bearer token and the agent's credential, no client certificate. */
const asServer = (credential: string | undefined, token = GATEWAY_TOKEN): Partial<IdentityRequest> => ({
  peer: undefined,
  headers: {
    authorization: `Bearer ${token}`,
    ...(credential !== undefined ? { [HEADER]: credential } : {}),
  },
});

const ask = (action: string, resource: string, extra: Record<string, unknown> = {}) => ({
  subject: { type: "agent", id: SUB },
  action: { name: action },
  resource: { type: "repo", id: resource },
  ...extra,
});

interface Answer {
  status: number;
  headers: Record<string, string>;
  json: Record<string, unknown>;
}

async function send(handler: ReturnType<typeof createAuthzenHandler>, req: IdentityRequest): Promise<Answer> {
  const r = await handler(req);
  if (!r) throw new Error(`no answer for ${req.method} ${req.path}`);
  return { status: r.status, headers: r.headers, json: JSON.parse(r.body) as Record<string, unknown> };
}

interface Decision {
  decision: boolean;
  context: { id: string; policy_version: string; reason_admin?: { en: string } };
}
const decisionOf = (a: Answer) => a.json as unknown as Decision;
const reasonOf = (a: Answer) => decisionOf(a).context.reason_admin?.en ?? "";

const jwtSvid = (over: Partial<Parameters<typeof signJwtSvid>[1]> = {}, k: JwtKey = key) =>
  signJwtSvid(k, {
    issuer: ISSUER,
    spiffeId: SUB,
    audience: AUDIENCE,
    issuedAt: NOW,
    expiresAt: NOW + 300_000,
    jti: "svid-jti-1",
    custody,
    ...over,
  });

const base64Der = (m: MintedSvid) => Buffer.from(m.der).toString("base64");
const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex");
const SALT = provenanceSalt(Buffer.alloc(32, 7));
/** What a recorded request context is: its canonical JSON as an HMAC under the installation's salt. */
const salted = (canonical: string) => ({
  saltId: SALT.id,
  digests: { context: createHmac("sha256", SALT.key).update(canonical, "utf8").digest("hex") },
});
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function agentPolicy(name: string, rules: PolicyRule[], extra: Partial<AgentPolicy["spec"]> = {}) {
  return {
    apiVersion: API_VERSION,
    kind: "AgentPolicy",
    metadata: { name, namespace: "team-a" },
    spec: { rules, ...extra },
  } as AgentPolicy;
}

/** Waits (up to 5 s) until `done` holds. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!done()) throw new Error("condition not reached");
}

// ---------------------------------------------------------------- the agent itself

describe("the agent asking for itself over mutual TLS", () => {
  it("is allowed within its scope", async () => {
    const { handler, calls } = setup();
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(a.headers["content-type"]).toBe("application/json");
    expect(a.headers["cache-control"]).toBe("no-store");
    const d = decisionOf(a);
    expect(d.decision).toBe(true);
    expect(d.context.id).toMatch(UUID);
    expect(d.context.policy_version).toBe("none");
    expect(d.context).not.toHaveProperty("reason_admin");
    expect(calls).toHaveLength(1);
    expect(calls[0]!.data).toMatchObject({ decision: "allow", caller: { kind: "agent", name: SUB } });
  });

  it("is denied outside its scope, with the reason", async () => {
    const { handler } = setup();
    const write = await send(handler, post(EVALUATION, ask("write", "repos/acme/api")));
    expect(write.status).toBe(200);
    expect(decisionOf(write).decision).toBe(false);
    expect(reasonOf(write)).toContain("write:repos/acme/api is outside the task's scope");

    const elsewhere = await send(handler, post(EVALUATION, ask("read", "repos/other/api")));
    expect(decisionOf(elsewhere).decision).toBe(false);
    expect(reasonOf(elsewhere)).toContain("read:repos/other/api is outside the task's scope");

    // The scope's exact grant still allows.
    const docs = await send(handler, post(EVALUATION, ask("write", "repos/acme/docs")));
    expect(decisionOf(docs).decision).toBe(true);
  });

  it("refuses a path that escapes its grant with a dot segment", async () => {
    const { handler } = setup();
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/../other")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
  });

  it("answers 403 subject_mismatch when subject.id is not the certificate's SPIFFE ID", async () => {
    const { handler, calls } = setup();
    const body = { ...ask("read", "repos/acme/api"), subject: { type: "agent", id: PARENT } };
    const a = await send(handler, post(EVALUATION, body));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("subject_mismatch");
    expect(String(a.json.error_description)).toContain(SUB);
    expect(a.json).not.toHaveProperty("decision");
    expect(calls).toHaveLength(0);
  });

  it("answers 401 without a client certificate or a bearer token", async () => {
    const { handler, calls } = setup();
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), { peer: undefined }));
    expect(a.status).toBe(401);
    expect(a.json.error).toBe("unauthenticated");
    expect(a.json).not.toHaveProperty("decision");
    expect(calls).toHaveLength(0);
  });

  it("answers 401 when the TLS layer rejected the certificate, naming why", async () => {
    const { handler } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), {
        peer: undefined,
        peerRejected: true,
        peerError: "CERT_HAS_EXPIRED",
      }),
    );
    expect(a.status).toBe(401);
    expect(a.json.error).toBe("unauthenticated");
    expect(String(a.json.error_description)).toContain("CERT_HAS_EXPIRED");
  });

  it("answers 401 for a certificate of another CA, even if the TLS layer passed it", async () => {
    const { handler } = setup();
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), { peer: peerOf(foreign) }));
    expect(a.status).toBe(401);
    expect(a.json.error).toBe("unauthenticated");
    expect(String(a.json.error_description)).toContain("X.509-SVID is not valid");
  });

  it("answers 401 for a certificate of another trust domain", async () => {
    const { handler } = setup({ trustDomain: "other.local" });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(401);
    expect(String(a.json.error_description)).toContain("another trust domain");
  });

  it("answers 401 for an expired certificate", async () => {
    const { handler, clock } = setup();
    clock.t = NOW + HOUR + 1000;
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(401);
  });
});

// ---------------------------------------------------------------- resource servers

describe("a resource server passing the agent's credential", () => {
  it("answers 401 for a bearer token TokenReview does not know, and one whose review fails", async () => {
    const { handler, reviewed } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(minted), "nope")),
    );
    expect(a.status).toBe(401);
    expect(a.json.error).toBe("unauthenticated");
    expect(reviewed).toEqual(["nope"]);

    const failing = setup({ reviewToken: () => Promise.reject(new Error("apiserver down")) });
    const b = await send(
      failing.handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(minted))),
    );
    expect(b.status).toBe(401);
  });

  it("answers 403 for an authenticated caller not listed in callers", async () => {
    const { handler, calls } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(minted), STRANGER_TOKEN)),
    );
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("forbidden");
    expect(String(a.json.error_description)).toContain(STRANGER);
    expect(calls).toHaveLength(0);
  });

  it("answers 400 without the Custody-Agent-Credential header (or with an empty one)", async () => {
    const { handler } = setup();
    for (const credential of [undefined, ""]) {
      const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(credential)));
      expect(a.status).toBe(400);
      expect(a.json.error).toBe("invalid_request");
      expect(String(a.json.error_description)).toContain(HEADER);
    }
  });

  it("decides for an X.509-SVID passed as base64 DER", async () => {
    const { handler, calls } = setup();
    const ok = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(minted))),
    );
    expect(ok.status).toBe(200);
    expect(decisionOf(ok).decision).toBe(true);
    const no = await send(
      handler,
      post(EVALUATION, ask("read", "repos/other/api"), asServer(base64Der(minted))),
    );
    expect(decisionOf(no).decision).toBe(false);
    expect(calls.map((c) => c.data.caller)).toEqual([
      { kind: "resource-server", name: GATEWAY },
      { kind: "resource-server", name: GATEWAY },
    ]);
    expect(calls.map((c) => c.data.credential)).toEqual(["x509-svid", "x509-svid"]);
  });

  it("decides for an X.509-SVID passed as URL-encoded PEM", async () => {
    const { handler } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(encodeURIComponent(minted.pem))),
    );
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(true);
  });

  it("decides for a JWT-SVID issued for one of the task's audiences", async () => {
    const { handler, calls } = setup();
    const token = await jwtSvid();
    const ok = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(token)));
    expect(ok.status).toBe(200);
    expect(decisionOf(ok).decision).toBe(true);
    const no = await send(handler, post(EVALUATION, ask("delete", "repos/acme/api"), asServer(token)));
    expect(decisionOf(no).decision).toBe(false);
    expect(calls.map((c) => c.data.credential)).toEqual(["jwt-svid", "jwt-svid"]);
  });

  it("answers 403 for a JWT-SVID issued for an audience the task does not list", async () => {
    const { handler, calls } = setup();
    const token = await jwtSvid({ audience: "https://evil.example" });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(token)));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
    expect(a.json).not.toHaveProperty("decision");
    expect(calls).toHaveLength(0);
  });

  it("answers 403 for an expired JWT-SVID, saying so", async () => {
    const { handler } = setup();
    const token = await jwtSvid({ expiresAt: NOW + 30_000 });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(token)));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
    expect(String(a.json.error_description)).toMatch(/expired/);
    expect(JSON.stringify(a.json)).not.toContain(token);
  });

  it("answers 403 for a JWT-SVID signed by a key the issuer does not publish", async () => {
    const { handler } = setup();
    const token = await jwtSvid({}, unpublishedKey);
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(token)));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
  });

  it("answers 403 for a JWT-SVID of another issuer", async () => {
    const { handler } = setup();
    const token = await jwtSvid({ issuer: "https://other.example" });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(token)));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
  });

  it("answers 403 for a JWT-SVID whose sub names no task", async () => {
    const { handler } = setup({ task: undefined });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(await jwtSvid())));
    expect(a.status).toBe(403);
    expect(String(a.json.error_description)).toContain("names no task");
  });

  it("denies a JWT-SVID issued to an earlier task of the same name", async () => {
    const { handler } = setup({ task: task({ metadata: { uid: "uid-review-2" } }) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api"), asServer(await jwtSvid())));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("earlier task");
  });

  it("answers 403 for a certificate of another CA", async () => {
    const { handler, calls } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(foreign))),
    );
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
    expect(String(a.json.error_description)).toContain("X.509-SVID is not valid");
    expect(calls).toHaveLength(0);
  });

  it("answers 403 for a value that is no credential at all", async () => {
    const { handler } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer("not a credential")),
    );
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("invalid_credential");
  });

  it("answers 403 subject_mismatch when the body names another agent than the credential", async () => {
    const { handler } = setup();
    const body = { ...ask("read", "repos/acme/api"), subject: { type: "agent", id: PARENT } };
    const a = await send(handler, post(EVALUATION, body, asServer(await jwtSvid())));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("subject_mismatch");
  });
});

// ---------------------------------------------------------------- task state

describe("the task's state", () => {
  it("denies a revoked task, and records the denial", async () => {
    const { handler, calls } = setup({ task: task({ spec: { revoked: true } }) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("revoked");
    expect(calls).toHaveLength(1);
    expect(calls[0]!.data.decision).toBe("deny");
    expect(calls[0]!.data.reasons).toEqual(["the task is revoked"]);
  });

  it("denies a task that is not Issued", async () => {
    const { handler } = setup({ task: task({ status: { phase: "Pending" } }) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("Pending");
  });

  it("denies a certificate whose serial is no longer the task's", async () => {
    const renewed = task({ status: { certificate: { ...task().status!.certificate!, serial: "0abc" } } });
    const { handler } = setup({ task: renewed });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("not the task's current certificate");
    // The same, when a resource server passes it.
    const b = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(base64Der(minted))),
    );
    expect(decisionOf(b).decision).toBe(false);
  });

  it("accepts the previous certificate until its previousNotAfter, and not after", async () => {
    const certificate = {
      ...task().status!.certificate!,
      serial: "0abc",
      previousSerial: minted.serialHex,
      previousNotAfter: new Date(T + 1000).toISOString(),
    };
    const { handler, clock } = setup({ task: task({ status: { certificate } }) });
    expect(decisionOf(await send(handler, post(EVALUATION, ask("read", "repos/acme/api")))).decision).toBe(
      true,
    );
    clock.t = T + 1000;
    expect(decisionOf(await send(handler, post(EVALUATION, ask("read", "repos/acme/api")))).decision).toBe(
      false,
    );
  });

  it("denies, without recording, when no task holds the identity", async () => {
    const { handler, calls } = setup({ task: undefined });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(decisionOf(a).context.policy_version).toBe("none");
    expect(reasonOf(a)).toContain("no task holds this identity");
    expect(calls).toHaveLength(0);
  });

  it("denies when the task of that name belongs to another agent", async () => {
    const { handler } = setup({ task: task({ spec: { agent: { name: "impostor" } } }) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("no task holds this identity");
  });

  it("decides by status.grantedScope when it is narrower than spec.scope", async () => {
    const { handler } = setup({ task: task({ status: { grantedScope: ["read:repos/acme/docs"] } }) });
    expect(decisionOf(await send(handler, post(EVALUATION, ask("read", "repos/acme/docs")))).decision).toBe(
      true,
    );
    expect(decisionOf(await send(handler, post(EVALUATION, ask("read", "repos/acme/api")))).decision).toBe(
      false,
    );
  });
});

// ---------------------------------------------------------------- policies

describe("policies", () => {
  const guard = agentPolicy("guard", [
    {
      name: "no-secrets",
      stages: ["action"],
      deny: 'resource.id.startsWith("repos/acme/secrets")',
      message: "secrets are off limits",
    },
  ]);

  it("denies what an action-stage rule denies, naming the rule, and allows the rest", async () => {
    const policies = new PolicyStore({ defaultDecision: "allow" });
    const { after } = policies.upsert(guard);
    const { handler, calls } = setup({ policies });
    const no = await send(handler, post(EVALUATION, ask("read", "repos/acme/secrets/db")));
    expect(no.status).toBe(200);
    expect(decisionOf(no).decision).toBe(false);
    expect(reasonOf(no)).toContain("team-a/guard: rule no-secrets: secrets are off limits");
    expect(decisionOf(no).context.policy_version).toMatch(/^sha256:[0-9a-f]{64}$/);

    const ok = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(ok).decision).toBe(true);
    expect(decisionOf(ok).context.policy_version).toBe(decisionOf(no).context.policy_version);
    expect(calls.map((c) => c.data.policyVersion)).toEqual([
      decisionOf(no).context.policy_version,
      decisionOf(ok).context.policy_version,
    ]);
    // The combined version over the policies in force, not one policy's own version.
    expect(decisionOf(no).context.policy_version).toBe(combinedVersion([after]));
    expect(decisionOf(no).context.policy_version).not.toBe(after.version);
  });

  it("ignores a rule that runs at issuance only", async () => {
    const policies = new PolicyStore({ defaultDecision: "allow" });
    policies.upsert(agentPolicy("issuance-only", [{ name: "never", stages: ["issuance"], deny: "true" }]));
    const { handler } = setup({ policies });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(true);
  });

  it("lets a rule read the request's context", async () => {
    const policies = new PolicyStore({ defaultDecision: "allow" });
    policies.upsert(
      agentPolicy("freeze", [
        { name: "prod-freeze", stages: ["action"], deny: 'context.env == "prod"', message: "prod is frozen" },
      ]),
    );
    const { handler } = setup({ policies });
    const prod = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api", { context: { env: "prod" } })),
    );
    expect(decisionOf(prod).decision).toBe(false);
    expect(reasonOf(prod)).toContain("prod is frozen");
    const dev = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api", { context: { env: "dev" } })),
    );
    expect(decisionOf(dev).decision).toBe(true);
  });

  it("does not apply an AgentPolicy of another namespace", async () => {
    const policies = new PolicyStore({ defaultDecision: "allow" });
    const elsewhere = agentPolicy("deny-all", [{ name: "all", stages: ["action"], deny: "true" }]);
    elsewhere.metadata.namespace = "team-b";
    policies.upsert(elsewhere);
    const { handler } = setup({ policies });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(true);
    expect(decisionOf(a).context.policy_version).toBe("none");
  });

  it("selects a sub-agent's policies by its root task's delegator groups", async () => {
    const policies = new PolicyStore({ defaultDecision: "allow" });
    policies.upsert(
      agentPolicy("contractors", [{ name: "no-acting", stages: ["action"], deny: "true", message: "no" }], {
        selector: { delegatorGroups: ["contractors"] },
      }),
    );
    const sub = task({ spec: { parentRef: { name: "plan-1" } } });
    const root = (groups: string[]) =>
      task({
        metadata: { name: "plan-1", uid: "uid-plan" },
        status: { delegator: { kind: "User", name: "alice@example.com", groups } },
      });
    const contractor = setup({ policies, task: sub, rootTask: root(["contractors"]) });
    const a = await send(contractor.handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("team-a/contractors: rule no-acting: no");

    const staff = setup({ policies, task: sub, rootTask: root(["staff"]) });
    const b = await send(staff.handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(b).decision).toBe(true);
  });

  it("denies everything with a default-deny store and no policy", async () => {
    const { handler, calls } = setup({ policies: new PolicyStore({ defaultDecision: "deny" }) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("no policy in force: the default denies");
    expect(calls[0]!.data).toMatchObject({ decision: "deny", policyVersion: "none" });
  });
});

// ---------------------------------------------------------------- fail closed

describe("recording every decision before answering", () => {
  it("answers an allowed decision only after the recorder acknowledged it", async () => {
    const ack = deferred();
    const rec = fakeRecorder(() => ack.promise);
    const { handler } = setup({ recorder: rec.open });
    const order: string[] = [];
    const pending = send(handler, post(EVALUATION, ask("read", "repos/acme/api"))).then((a) => {
      order.push("answered");
      return a;
    });
    await until(() => rec.calls.length === 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual([]);

    order.push("acknowledged");
    ack.resolve();
    const a = await pending;
    expect(order).toEqual(["acknowledged", "answered"]);
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(true);
  });

  it("denies with 200 when the recorder rejects, saying it could not be recorded", async () => {
    const rec = fakeRecorder(() => Promise.reject(new Error("kafka down")));
    const { handler, logLines } = setup({ recorder: rec.open });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("could not be recorded");
    expect(rec.calls).toHaveLength(1);
    expect(logLines.join("")).toContain("kafka down");
  });

  it("denies when the recorder cannot be opened", async () => {
    const { handler } = setup({ recorder: () => Promise.reject(new Error("no stream")) });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("could not be recorded");
  });

  it("denies when the acknowledgement does not come within recordTimeoutMs", async () => {
    const rec = fakeRecorder(() => new Promise<void>(() => {}));
    const { handler, logLines } = setup({ recorder: rec.open, recordTimeoutMs: 30 });
    const started = Date.now();
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("could not be recorded");
    expect(logLines.join("")).toContain("not acknowledged within 30 ms");
  });

  it("keeps a denial's own reasons when it cannot be recorded either", async () => {
    const rec = fakeRecorder(() => Promise.reject(new Error("kafka down")));
    const { handler } = setup({ recorder: rec.open });
    const a = await send(handler, post(EVALUATION, ask("write", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(false);
    expect(reasonOf(a)).toContain("outside the task's scope");
    expect(reasonOf(a)).toContain("could not be recorded");
  });

  it("answers 500, allowing nothing, when deciding throws", async () => {
    const { handler, calls, logLines } = setup({
      recordOf: () => {
        throw new Error("record store broken");
      },
    });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(a.status).toBe(500);
    expect(a.json.error).toBe("server_error");
    expect(a.json).not.toHaveProperty("decision");
    expect(calls).toHaveLength(0);
    expect(logLines.join("")).toContain("record store broken");
  });
});

describe("the recorded decision", () => {
  it("carries the policy version, decision, caller, credential and the context's digest, never its values", async () => {
    const { handler, calls } = setup();
    const token = await jwtSvid();
    const context = { ticket: "SECRET-TICKET-4711", amount: 5 };
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api", { context }), asServer(token)),
    );
    expect(decisionOf(a).decision).toBe(true);
    expect(calls).toHaveLength(1);
    const call = calls[0]!;
    expect(call.type).toBe("dev.custody.task.action.decided");
    expect(call.subject).toBe(SUB);
    expect(call.rootUid).toBe("uid-plan");
    expect(call.id).toBe(decisionOf(a).context.id);
    expect(call.data).toEqual({
      context: {
        taskUid: "uid-review",
        namespace: "team-a",
        name: "review-42",
        chainUids: ["uid-plan", "uid-review"],
        rootUid: "uid-plan",
        contextDigest: custody.chainDigest,
      },
      policyVersion: "none",
      decision: "allow",
      reasons: [],
      action: "read",
      resource: { type: "repo", id: "repos/acme/api" },
      caller: { kind: "resource-server", name: GATEWAY },
      credential: "jwt-svid",
      // RFC 8785: keys sorted. Salted: a plain hash of a guessed ticket number would confirm it.
      sensitive: salted('{"amount":5,"ticket":"SECRET-TICKET-4711"}'),
    });
    const recorded = JSON.stringify(calls);
    expect(recorded).not.toContain("SECRET-TICKET-4711");
    expect(recorded).not.toContain(sha256('{"amount":5,"ticket":"SECRET-TICKET-4711"}'));
    expect(recorded).not.toContain(token);
    expect(recorded).not.toContain(token.split(".")[2]!);
    expect(recorded).not.toContain(GATEWAY_TOKEN);
  });

  it("records a denial with its reasons, and no context digest without a context", async () => {
    const { handler, calls } = setup();
    await send(handler, post(EVALUATION, ask("write", "repos/acme/api")));
    expect(calls).toHaveLength(1);
    expect(calls[0]!.data).toMatchObject({
      decision: "deny",
      reasons: ["write:repos/acme/api is outside the task's scope"],
      caller: { kind: "agent", name: SUB },
      credential: "x509-svid",
    });
    expect(calls[0]!.data).not.toHaveProperty("sensitive");
    expect(calls[0]!.data).not.toHaveProperty("contextSha256");
  });

  it("does not record the action's or resource's properties", async () => {
    const { handler, calls } = setup();
    await send(
      handler,
      post(EVALUATION, {
        subject: { type: "agent", id: SUB },
        action: { name: "read", properties: { note: "PROPERTY-VALUE-ACTION" } },
        resource: { type: "repo", id: "repos/acme/api", properties: { owner: "PROPERTY-VALUE-RESOURCE" } },
      }),
    );
    expect(calls).toHaveLength(1);
    expect(JSON.stringify(calls)).not.toContain("PROPERTY-VALUE");
  });
});

// ---------------------------------------------------------------- batch

describe("Access Evaluations (batch)", () => {
  it("merges the top-level defaults into each item and answers in order", async () => {
    const { handler, calls } = setup();
    const a = await send(
      handler,
      post(EVALUATIONS, {
        subject: { type: "agent", id: SUB },
        action: { name: "read" },
        context: { env: "default" },
        evaluations: [
          { resource: { type: "repo", id: "repos/acme/a" } },
          { resource: { type: "repo", id: "repos/elsewhere/b" } },
          { action: { name: "delete" }, resource: { type: "repo", id: "repos/acme/a" } },
          { resource: { type: "repo", id: "repos/acme/c" }, context: { env: "own" } },
        ],
      }),
    );
    expect(a.status).toBe(200);
    const items = (a.json.evaluations as Decision[]) ?? [];
    expect(items.map((d) => d.decision)).toEqual([true, false, false, true]);
    expect(items[1]!.context.reason_admin?.en).toContain("read:repos/elsewhere/b");
    expect(items[2]!.context.reason_admin?.en).toContain("delete:repos/acme/a");
    expect(new Set(items.map((d) => d.context.id)).size).toBe(4);

    expect(calls).toHaveLength(4);
    const byId = new Map(calls.map((c) => [c.id, c.data]));
    const recorded = items.map((d) => byId.get(d.context.id)!);
    expect(recorded.map((r) => `${r.action}:${(r.resource as { id: string }).id}`)).toEqual([
      "read:repos/acme/a",
      "read:repos/elsewhere/b",
      "delete:repos/acme/a",
      "read:repos/acme/c",
    ]);
    const def = salted('{"env":"default"}');
    expect(recorded.map((r) => r.sensitive)).toEqual([def, def, def, salted('{"env":"own"}')]);
  });

  it("answers up to 64 items, and 400 for more", async () => {
    const { handler, calls } = setup();
    const items = (n: number) => ({
      subject: { type: "agent", id: SUB },
      action: { name: "read" },
      evaluations: Array.from({ length: n }, (_, i) => ({
        resource: { type: "repo", id: `repos/acme/r${i}` },
      })),
    });
    const many = await send(handler, post(EVALUATIONS, items(65)));
    expect(many.status).toBe(400);
    expect(many.json.error).toBe("invalid_request");
    expect(String(many.json.error_description)).toMatch(/^evaluations:/);
    expect(calls).toHaveLength(0);

    const max = await send(handler, post(EVALUATIONS, items(64)));
    expect(max.status).toBe(200);
    expect((max.json.evaluations as Decision[]).map((d) => d.decision)).toEqual(Array(64).fill(true));
  });

  it("answers 400 for an empty batch, and for an item left without a resource", async () => {
    const { handler } = setup();
    const empty = await send(
      handler,
      post(EVALUATIONS, { subject: { type: "agent", id: SUB }, action: { name: "read" }, evaluations: [] }),
    );
    expect(empty.status).toBe(400);
    const missing = await send(
      handler,
      post(EVALUATIONS, {
        subject: { type: "agent", id: SUB },
        action: { name: "read" },
        evaluations: [{ resource: { type: "repo", id: "repos/acme/a" } }, {}],
      }),
    );
    expect(missing.status).toBe(400);
    expect(String(missing.json.error_description)).toMatch(/^evaluations\[1\]\.resource:/);
  });

  it("answers 403 subject_mismatch, naming the item, when one item names another agent", async () => {
    const { handler, calls } = setup();
    const a = await send(
      handler,
      post(EVALUATIONS, {
        subject: { type: "agent", id: SUB },
        action: { name: "read" },
        evaluations: [
          { resource: { type: "repo", id: "repos/acme/a" } },
          { subject: { type: "agent", id: PARENT }, resource: { type: "repo", id: "repos/acme/b" } },
        ],
      }),
    );
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("subject_mismatch");
    expect(String(a.json.error_description)).toContain("evaluations[1].");
    expect(a.json).not.toHaveProperty("evaluations");
    expect(calls).toHaveLength(0);
  });

  it("denies each item it cannot record", async () => {
    const rec = fakeRecorder((c) =>
      c.data.resource && (c.data.resource as { id: string }).id === "repos/acme/b"
        ? Promise.reject(new Error("kafka down"))
        : Promise.resolve(),
    );
    const { handler } = setup({ recorder: rec.open });
    const a = await send(
      handler,
      post(EVALUATIONS, {
        subject: { type: "agent", id: SUB },
        action: { name: "read" },
        evaluations: [
          { resource: { type: "repo", id: "repos/acme/a" } },
          { resource: { type: "repo", id: "repos/acme/b" } },
        ],
      }),
    );
    const items = a.json.evaluations as Decision[];
    expect(items.map((d) => d.decision)).toEqual([true, false]);
    expect(items[1]!.context.reason_admin?.en).toContain("could not be recorded");
  });
});

// ---------------------------------------------------------------- reports

describe("reports", () => {
  const done = (extra: Record<string, unknown> = {}) => ({
    subject: { type: "agent", id: SUB },
    action: { name: "write" },
    resource: { type: "repo", id: "repos/acme/docs" },
    outcome: "success",
    ...extra,
  });

  it("accepts the agent's own report as self-reported and records it", async () => {
    const { handler, calls } = setup();
    const a = await send(handler, post(REPORTS, done({ context: { pr: "PR-SECRET-99" } })));
    expect(a.status).toBe(202);
    expect(a.json.selfReported).toBe(true);
    expect(a.json.id).toMatch(UUID);
    expect(calls).toHaveLength(1);
    const call = calls[0]!;
    expect(call.type).toBe("dev.custody.task.action.performed");
    expect(call.subject).toBe(SUB);
    expect(call.rootUid).toBe("uid-plan");
    expect(call.id).toBe(a.json.id);
    expect(call.data).toMatchObject({
      context: { taskUid: "uid-review", rootUid: "uid-plan" },
      action: "write",
      resource: { type: "repo", id: "repos/acme/docs" },
      outcome: "success",
      reporter: { kind: "agent", name: SUB },
      selfReported: true,
      sensitive: salted('{"pr":"PR-SECRET-99"}'),
    });
    expect(JSON.stringify(calls)).not.toContain("PR-SECRET-99");
  });

  it("accepts a resource server's report as not self-reported", async () => {
    const { handler, calls } = setup();
    const token = await jwtSvid();
    const a = await send(handler, post(REPORTS, done(), asServer(token)));
    expect(a.status).toBe(202);
    expect(a.json.selfReported).toBe(false);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.data).toMatchObject({
      reporter: { kind: "resource-server", name: GATEWAY },
      selfReported: false,
    });
    expect(JSON.stringify(calls)).not.toContain(token);
    expect(JSON.stringify(calls)).not.toContain(GATEWAY_TOKEN);
  });

  it("limits each agent to reportsPerSecond, with a burst of ten times that", async () => {
    const { handler, calls, clock } = setup({ reportsPerSecond: 1 });
    for (let i = 0; i < 10; i++) expect((await send(handler, post(REPORTS, done()))).status).toBe(202);
    const limited = await send(handler, post(REPORTS, done()));
    expect(limited.status).toBe(429);
    expect(limited.json.error).toBe("rate_limited");
    expect(calls).toHaveLength(10);

    // Two seconds refill two tokens.
    clock.t += 2_000;
    expect((await send(handler, post(REPORTS, done()))).status).toBe(202);
    expect((await send(handler, post(REPORTS, done()))).status).toBe(202);
    expect((await send(handler, post(REPORTS, done()))).status).toBe(429);
    expect(calls).toHaveLength(12);
  });

  it("keeps one bucket per agent", async () => {
    const otherId = "spiffe://custody.local/ns/team-a/agent/planner/task/plan-1";
    const other = mintSample(ca, { spiffeId: otherId }).minted;
    // plan-1 is a task of its own here (agent planner, its own certificate).
    const planner = task({
      metadata: { name: "plan-1", uid: "uid-plan" },
      spec: { agent: { name: "planner" } },
      status: {
        spiffeID: otherId,
        delegationChain: CHAIN.slice(0, 2),
        certificate: { ...task().status!.certificate!, serial: other.serialHex },
      },
    });
    const { handler } = setup({ reportsPerSecond: 1, rootTask: planner });
    for (let i = 0; i < 10; i++) expect((await send(handler, post(REPORTS, done()))).status).toBe(202);
    expect((await send(handler, post(REPORTS, done()))).status).toBe(429);
    // The other agent still has its whole burst: its reports are accepted.
    const a = await send(
      handler,
      post(REPORTS, done({ subject: { type: "agent", id: otherId } }), { peer: peerOf(other) }),
    );
    expect(a.status, JSON.stringify(a.json)).toBe(202);
  });

  it("answers 503 when the report cannot be recorded", async () => {
    const rec = fakeRecorder(() => Promise.reject(new Error("kafka down")));
    const { handler } = setup({ recorder: rec.open });
    const a = await send(handler, post(REPORTS, done()));
    expect(a.status).toBe(503);
    expect(a.json.error).toBe("temporarily_unavailable");
    expect(a.json).not.toHaveProperty("id");
  });

  it("answers 503 when the acknowledgement does not come in time", async () => {
    const rec = fakeRecorder(() => new Promise<void>(() => {}));
    const { handler } = setup({ recorder: rec.open, recordTimeoutMs: 30 });
    expect((await send(handler, post(REPORTS, done()))).status).toBe(503);
  });

  it("answers 403 for a report about another agent, and 404 when no task holds the identity", async () => {
    const { handler, calls } = setup();
    const a = await send(handler, post(REPORTS, done({ subject: { type: "agent", id: PARENT } })));
    expect(a.status).toBe(403);
    expect(a.json.error).toBe("subject_mismatch");

    const gone = setup({ task: undefined });
    const b = await send(gone.handler, post(REPORTS, done()));
    expect(b.status).toBe(404);
    expect(calls).toHaveLength(0);
    expect(gone.calls).toHaveLength(0);
  });

  // A report is recorded only under the task the credential was issued to: a
  // JWT-SVID of an earlier task of the same name must not be attributed to the new one.
  it("never records a report under another task than the one the credential was issued to", async () => {
    const { handler, calls } = setup({ task: task({ metadata: { uid: "uid-review-2" } }) });
    const r = await send(handler, post(REPORTS, done(), asServer(await jwtSvid())));
    // Refused, and nothing recorded under uid-review-2.
    expect(r.status).toBe(403);
    expect(r.json.error).toBe("invalid_credential");
    expect(calls).toHaveLength(0);
  });

  it("answers 401 to an unauthenticated report", async () => {
    const { handler, calls } = setup();
    expect((await send(handler, post(REPORTS, done(), { peer: undefined }))).status).toBe(401);
    expect(calls).toHaveLength(0);
  });
});

// ---------------------------------------------------------------- body validation

describe("body validation", () => {
  it("answers 400 for a body that is not application/json", async () => {
    const { handler } = setup();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), { contentType: "text/plain" }),
    );
    expect(a.status).toBe(400);
    expect(a.json.error).toBe("invalid_request");
    expect(String(a.json.error_description)).toContain("application/json");
    // With parameters, JSON is JSON.
    const b = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), { contentType: "application/json; charset=utf-8" }),
    );
    expect(b.status).toBe(200);
  });

  it("answers 400 for malformed JSON", async () => {
    const { handler } = setup();
    const a = await send(handler, post(EVALUATION, '{"subject": {'));
    expect(a.status).toBe(400);
    expect(a.json.error).toBe("invalid_request");
    expect(String(a.json.error_description)).toContain("not JSON");
  });

  it('answers 400 naming the field when subject.type is not "agent"', async () => {
    const { handler, calls } = setup();
    const a = await send(
      handler,
      post(EVALUATION, { ...ask("read", "repos/acme/api"), subject: { type: "user", id: SUB } }),
    );
    expect(a.status).toBe(400);
    expect(a.json.error).toBe("invalid_request");
    expect(String(a.json.error_description)).toMatch(/^subject\.type: /);
    expect(String(a.json.error_description)).toContain('"agent"');
    expect(calls).toHaveLength(0);
  });

  it("answers 400 naming a missing field, and the body itself when it is not an object", async () => {
    const { handler } = setup();
    const noAction = await send(
      handler,
      post(EVALUATION, { subject: { type: "agent", id: SUB }, resource: { type: "repo", id: "x" } }),
    );
    expect(noAction.status).toBe(400);
    expect(String(noAction.json.error_description)).toMatch(/^action: /);
    const array = await send(handler, post(EVALUATION, [1, 2]));
    expect(array.status).toBe(400);
    expect(String(array.json.error_description)).toMatch(/^body: /);
  });

  it("answers 405 to another method than POST", async () => {
    const { handler } = setup();
    for (const path of [EVALUATION, EVALUATIONS, REPORTS]) {
      const a = await send(handler, post(path, "", { method: "GET" }));
      expect(a.status).toBe(405);
      expect(a.json.error).toBe("method_not_allowed");
    }
  });
});

// ---------------------------------------------------------------- metadata and routing

describe("metadata and routing", () => {
  it("serves the AuthZEN metadata with the endpoints under the issuer", async () => {
    const { handler } = setup();
    const a = await send(handler, {
      method: "GET",
      path: "/.well-known/authzen-configuration",
      peer: undefined,
      peerRejected: false,
      contentType: "",
      body: Buffer.alloc(0),
      headers: {},
    });
    expect(a.status).toBe(200);
    expect(a.headers["content-type"]).toBe("application/json");
    expect(a.headers["cache-control"]).toMatch(/max-age=\d+/);
    expect(a.json).toEqual({
      policy_decision_point: ISSUER,
      access_evaluation_endpoint: `${ISSUER}/access/v1/evaluation`,
      access_evaluations_endpoint: `${ISSUER}/access/v1/evaluations`,
    });
  });

  it("leaves other paths (and other methods on the metadata) to the identity endpoint", async () => {
    const { handler, calls } = setup();
    for (const [method, path] of [
      ["GET", "/"],
      ["POST", "/token"],
      ["GET", "/keys"],
      ["GET", "/.well-known/openid-configuration"],
      ["POST", "/access/v1/evaluation/"],
      ["POST", "/access/v1"],
      ["POST", "/.well-known/authzen-configuration"],
    ] as const) {
      expect(await handler(post(path, ask("read", "repos/acme/api"), { method }))).toBeUndefined();
    }
    expect(calls).toHaveLength(0);
  });
});

// ---------------------------------------------------------------- an intermediate CA

describe("under an intermediate CA (user-supplied hierarchy)", () => {
  // openssl dates the hierarchy from the real clock, so the handler's clock is real time here.
  const chain = opensslChain("ec");
  const inter = loadCa({
    certPem: chain.intermediatePem,
    keyPem: chain.intermediateKeyPem,
    chainPem: chain.rootPem,
  });
  const at = Date.now();
  const leaf = mintSample(inter, { notBefore: new Date(at), notAfter: new Date(at + HOUR) }).minted;
  const issued = task({
    status: {
      certificate: {
        ...task().status!.certificate!,
        serial: leaf.serialHex,
        notBefore: new Date(at).toISOString(),
        notAfter: new Date(at + HOUR).toISOString(),
      },
    },
  });
  const underInter = () => {
    const s = setup({ task: issued, trustAnchorsDer: () => inter.bundleDer });
    s.clock.t = at + 60_000;
    return s;
  };

  it("the trust anchors are the root only; the SVID's PEM carries the intermediate", () => {
    expect(inter.selfSigned).toBe(false);
    expect(inter.bundleDer).toHaveLength(1);
    expect(leaf.chainPem.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(2);
  });

  it("decides for the agent over mutual TLS, with the intermediate its TLS chain sent", async () => {
    const { handler } = underInter();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), {
        peer: { der: leaf.der, intermediates: [inter.certDer] },
      }),
    );
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(true);
  });

  // Under an intermediate CA the agent's svid.pem (leaf + intermediate) passed as
  // URL-encoded PEM chains through the intermediate it carries.
  it("decides for the agent's X.509-SVID chain passed by a resource server as URL-encoded PEM", async () => {
    const { handler } = underInter();
    const a = await send(
      handler,
      post(EVALUATION, ask("read", "repos/acme/api"), asServer(encodeURIComponent(leaf.chainPem))),
    );
    expect(a.status).toBe(200);
    expect(decisionOf(a).decision).toBe(true);
  });
});

describe("the chain above the agent", () => {
  it("denies as soon as an agent above the task is revoked, before the cascade reaches it", async () => {
    const revokedParent = task({ metadata: { name: "plan-1", uid: "uid-plan" }, spec: { revoked: true } });
    const { handler } = setup({ rootTask: revokedParent });
    const a = await send(handler, post(EVALUATION, ask("read", "repos/acme/api")));
    expect(decisionOf(a).decision).toBe(false);
    expect(JSON.stringify(decisionOf(a).context)).toContain("ancestor plan-1 is revoked");
  });
});

describe("request data bounds", () => {
  it("refuses a context too large or too deep for rules to iterate cheaply", async () => {
    const { handler } = setup();
    const big = await send(
      handler,
      post(EVALUATION, {
        ...ask("read", "repos/acme/api"),
        context: { xs: Array.from({ length: 65 }, () => 1) },
      }),
    );
    expect(big.status).toBe(400);
    expect(String(big.json.error_description)).toContain("more than 64 items");
    const deep = await send(
      handler,
      post(EVALUATION, { ...ask("read", "repos/acme/api"), context: { a: { b: { c: { d: { e: 1 } } } } } }),
    );
    expect(deep.status).toBe(400);
    const heavy = await send(
      handler,
      post(EVALUATION, { ...ask("read", "repos/acme/api"), context: { s: "x".repeat(5000) } }),
    );
    expect(heavy.status).toBe(400);
  });
});
