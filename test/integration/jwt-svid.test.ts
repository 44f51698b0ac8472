// JWT-SVIDs, on-behalf-of token exchange and OIDC discovery against the real
// apiserver, Kafka and the operator's HTTPS identity endpoint. No kubelet
// mounts files here: tokens are read from the task's credential Secret.
// The operator rotates its JWT keys every 20 s (published 4 s ahead) so that
// rotation happens while the file runs.
import "reflect-metadata";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { request } from "node:https";
import { join } from "node:path";
import type { CoreV1Api } from "@kubernetes/client-node";
import { createRemoteJWKSet, customFetch, decodeProtectedHeader, jwtVerify, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { chainDigest } from "../../core/delegation.ts";
import { audienceFileName, TOKEN_EXCHANGE_FILE } from "../../core/jwt/audience-files.ts";
import { parseRing, signingKey } from "../../core/jwt/keys.ts";
import { selfSignedSpiffeCert } from "../support/certs.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { GROUP, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;
let core: CoreV1Api;
let ns: string;
let issuer: string;
let caPem: string;

const API = "https://api.example";
const OTHER = "https://other.example";
const EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt";

interface Task {
  metadata: { name: string; uid: string };
  status?: {
    phase?: string;
    spiffeID?: string;
    delegationChain?: Array<{ kind: string; name: string; uid: string; scope: string[] }>;
    certificate?: { secretName: string; serial: string; notAfter: string };
  };
}

const body = (name: string, spec: Record<string, unknown>) => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: "AgentTask",
  metadata: { name, namespace: ns },
  spec: { agent: { name: "planner" }, serviceAccountName: "agents", ttl: "1h", ...spec },
});

interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

function https(
  url: string,
  opts: { method?: string; body?: string; cert?: string; key?: string; ca?: string } = {},
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: opts.method ?? "GET",
        ca: opts.ca ?? caPem,
        ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
        headers: opts.body ? { "content-type": "application/x-www-form-urlencoded" } : {},
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** fetch for jose over node:https, trusting only the Custody CA from the trust bundle. */
const fetchWithCa = async (url: string): Promise<Response> => {
  const r = await https(url);
  return new Response(r.text, {
    status: r.status,
    headers: { "content-type": String(r.headers["content-type"]) },
  });
};

async function discoveredJwks() {
  const doc = JSON.parse((await https(`${issuer}/.well-known/openid-configuration`)).text) as {
    issuer: string;
    jwks_uri: string;
    token_endpoint: string;
  };
  return {
    doc,
    jwks: createRemoteJWKSet(new URL(doc.jwks_uri), { [customFetch]: fetchWithCa, cooldownDuration: 0 }),
  };
}

async function credential(task: string) {
  const s = await core.readNamespacedSecret({ name: `custody-svid-${task}`, namespace: ns });
  const d = (k: string) => Buffer.from(s.data?.[k] ?? "", "base64").toString("utf8");
  return { cert: d("tls.crt"), key: d("tls.key"), data: d, annotations: s.metadata?.annotations ?? {} };
}

function exchange(
  creds: { cert?: string; key?: string } | undefined,
  params: Record<string, string>,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const form = new URLSearchParams({ grant_type: EXCHANGE_GRANT, subject_token_type: JWT_TYPE, ...params });
  return https(`${issuer}/token`, { method: "POST", body: form.toString(), ...(creds ?? {}) }).then((r) => ({
    status: r.status,
    json: JSON.parse(r.text) as Record<string, unknown>,
  }));
}

/** The operator's current JWT signing key, read as the cluster admin can (to forge otherwise-valid tokens). */
async function operatorKey() {
  const s = await core.readNamespacedSecret({ name: "custody-jwt-signing-keys", namespace: bed.opNs });
  const ring = parseRing(Buffer.from(s.data?.["keys.json"] ?? "", "base64").toString("utf8"));
  return signingKey(ring, Date.now())!;
}

function revoke(name: string): void {
  const r = spawnSync(
    join(env.binDir, "kubectl"),
    ["patch", "at", name, "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}'],
    { env: { ...process.env, KUBECONFIG: env.kubeconfig } },
  );
  expect(r.status, String(r.stderr)).toBe(0);
}

beforeAll(async () => {
  bed = await startTestbed(env, "jwt", [
    {
      CUSTODY_JWT_KEY_ROTATION_SECONDS: "20",
      CUSTODY_JWT_KEY_PUBLISH_AHEAD_SECONDS: "4",
      CUSTODY_JWT_SVID_TTL_SECONDS: "60",
    },
  ]);
  ({ core, ns } = bed);
  issuer = `https://127.0.0.1:${bed.operators[0]!.oidcPort}`;
  await bed.createTask(
    body("root", {
      delegator: { kind: "User", name: "alice" },
      scope: ["read:repos/acme/*", "comment:repos/acme/*"],
      audiences: [API, OTHER],
    }),
  );
  await bed.waitPhase("root", "Issued");
  await bed.createTask(
    body("child", {
      parentRef: { name: "root" },
      scope: ["read:repos/acme/api"],
      ttl: "30m",
      audiences: [API],
    }),
  );
  await bed.waitPhase("child", "Issued");
  const bundle = await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns });
  caPem = bundle.data?.["ca.crt"] ?? "";
}, 120_000);

afterAll(() => bed?.teardown());

describe("JWT-SVIDs", () => {
  it("validate with jose against the JWKS from the discovery document and carry the chain root first", async () => {
    const { doc, jwks } = await discoveredJwks();
    expect(doc.issuer).toBe(issuer);
    expect(doc.token_endpoint).toBe(`${issuer}/token`);
    const child = await bed.getTask<Task>("child");
    const root = await bed.getTask<Task>("root");
    const cred = await credential("child");
    const token = cred.data(audienceFileName(API));
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer, audience: API });
    expect(protectedHeader).toMatchObject({ alg: "ES256", typ: "JWT" });
    expect(typeof protectedHeader.kid).toBe("string");
    expect(payload.sub).toBe(child.status?.spiffeID);
    expect(payload.aud).toBe(API);
    expect(typeof payload.jti).toBe("string");
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(60);
    expect(payload.exp! * 1000).toBeLessThanOrEqual(Date.parse(child.status!.certificate!.notAfter));
    const custody = payload.custody as {
      taskUid: string;
      chainDigest: string;
      policyVersion: string;
      chain: unknown[];
    };
    expect(custody.taskUid).toBe(child.metadata.uid);
    expect(custody.chain).toEqual([
      { kind: "user", name: "alice" },
      { kind: "agent", name: "root", spiffeId: root.status?.spiffeID },
      { kind: "agent", name: "child", spiffeId: child.status?.spiffeID },
    ]);
    expect(custody.chainDigest).toBe(chainDigest(child.status!.delegationChain as never).toString("hex"));
    // The child names only one audience: no token for the other.
    expect(cred.data(audienceFileName(OTHER))).toBe("");
    // The token for the token endpoint is addressed to the issuer.
    const forExchange = await jwtVerify(cred.data(TOKEN_EXCHANGE_FILE), jwks, { issuer, audience: issuer });
    expect(forExchange.payload.sub).toBe(child.status?.spiffeID);
  });

  it("denies a sub-agent that names an audience its parent does not", async () => {
    await bed.createTask(
      body("wider", {
        parentRef: { name: "child" },
        scope: ["read:repos/acme/api"],
        ttl: "30m",
        audiences: [OTHER],
      }),
    );
    const t = await bed.waitPhase<
      Task & { status: { conditions?: Array<{ reason: string; message: string }> } }
    >("wider", "Denied");
    const reasons = (t.status.conditions ?? []).map((c) => `${c.reason}: ${c.message}`).join("\n");
    expect(reasons).toMatch(/AudienceEscalation: spec\.audiences\[0\]/);
    const secret = await core.readNamespacedSecret({ name: "custody-svid-wider", namespace: ns }).then(
      () => "present",
      (e: { code?: number }) => (e.code === 404 ? "absent" : String(e)),
    );
    expect(secret).toBe("absent");
  });

  it("publishes the JWT authorities in the SPIFFE bundle and the JWKS with cache headers", async () => {
    const jwksRes = await https(`${issuer}/keys`);
    expect(jwksRes.status).toBe(200);
    expect(String(jwksRes.headers["cache-control"])).toMatch(/max-age=\d+/);
    const jwks = JSON.parse(jwksRes.text) as { keys: Array<{ kid: string; use: string; alg: string }> };
    expect(jwks.keys.every((k) => k.use === "sig" && k.alg === "ES256")).toBe(true);
    const kid = decodeProtectedHeader((await credential("child")).data(audienceFileName(API))).kid;
    expect(jwks.keys.map((k) => k.kid)).toContain(kid);
    await eventually(async () => {
      const cm = await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns });
      const bundle = JSON.parse(cm.data?.["bundle.spiffe"] ?? "{}") as {
        keys: Array<{ use: string; kid?: string }>;
      };
      expect(bundle.keys.some((k) => k.use === "x509-svid")).toBe(true);
      expect(bundle.keys.filter((k) => k.use === "jwt-svid").map((k) => k.kid)).toContain(kid);
    });
  });
});

describe("token exchange", () => {
  it("gives the sub-agent an on-behalf-of token: the human at sub, the agents in nested act", async () => {
    const { jwks } = await discoveredJwks();
    const child = await bed.getTask<Task>("child");
    const root = await bed.getTask<Task>("root");
    const cred = await credential("child");
    const res = await exchange(cred, {
      subject_token: cred.data(TOKEN_EXCHANGE_FILE),
      audience: API,
      scope: "read:repos/acme/api",
    });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json).toMatchObject({
      issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
      token_type: "Bearer",
      scope: "read:repos/acme/api",
    });
    expect(res.json.expires_in).toBeLessThanOrEqual(300);
    const { payload, protectedHeader } = await jwtVerify(String(res.json.access_token), jwks, {
      issuer,
      audience: API,
      typ: "at+jwt",
    });
    expect(protectedHeader.typ).toBe("at+jwt");
    expect(payload.sub).toBe("user:alice");
    expect(payload.act).toEqual({ sub: child.status?.spiffeID, act: { sub: root.status?.spiffeID } });
    expect(payload.scope).toBe("read:repos/acme/api");
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(300);

    // The exchange is in the provenance stream, with the token's jti.
    await readTopic(env.kafkaBrokers, bed.topic, (records) =>
      records.some(
        (r) =>
          r.value.includes('"dev.custody.task.token.exchanged"') && r.value.includes(String(payload.jti)),
      ),
    ).then((records) => {
      const event = records.map((r) => JSON.parse(r.value)).find((e) => e.data?.jti === payload.jti);
      expect(event.data.actors).toEqual([child.status?.spiffeID, root.status?.spiffeID]);
      expect(event.data.subject).toBe("user:alice");
      // Never a token in the stream.
      expect(JSON.stringify(event)).not.toContain(String(res.json.access_token).split(".")[2]);
    });
  });

  it("grants a root task a narrower token than its scope", async () => {
    const cred = await credential("root");
    const res = await exchange(cred, {
      subject_token: cred.data(TOKEN_EXCHANGE_FILE),
      audience: OTHER,
      scope: "comment:repos/acme/api",
    });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.json.scope).toBe("comment:repos/acme/api");
  });

  it("refuses every bad input with its error code, and records each refusal", async () => {
    const child = await bed.getTask<Task>("child");
    const cred = await credential("child");
    const subjectToken = cred.data(TOKEN_EXCHANGE_FILE);
    const key = await operatorKey();
    const claims = decodeClaims(subjectToken);
    const forge = (over: Record<string, unknown>, header: Record<string, unknown> = {}) =>
      new SignJWT({ ...claims, ...over })
        .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT", ...header })
        .sign(key.privateKey);
    const now = Math.floor(Date.now() / 1000);
    const publicPem = key.publicKey.export({ format: "pem", type: "spki" }).toString();

    const cases: Array<[string, Promise<{ status: number; json: Record<string, unknown> }>, string, RegExp]> =
      [
        [
          "expired",
          forge({ iat: now - 600, exp: now - 300 }).then((t) =>
            exchange(cred, { subject_token: t, audience: API }),
          ),
          "invalid_request",
          /expired/,
        ],
        [
          "wrong audience",
          Promise.resolve(exchange(cred, { subject_token: cred.data(audienceFileName(API)), audience: API })),
          "invalid_request",
          /aud/,
        ],
        [
          "wrong issuer",
          forge({ iss: "https://evil.example" }).then((t) =>
            exchange(cred, { subject_token: t, audience: API }),
          ),
          "invalid_request",
          /iss/,
        ],
        [
          "alg none",
          Promise.resolve(exchange(cred, { subject_token: unsigned(claims), audience: API })),
          "invalid_request",
          /alg|well-formed|not allowed/,
        ],
        [
          "HS256 with the public key",
          hs256(claims, key.kid, publicPem).then((t) => exchange(cred, { subject_token: t, audience: API })),
          "invalid_request",
          /alg/,
        ],
        [
          "scope escalation",
          Promise.resolve(
            exchange(cred, { subject_token: subjectToken, audience: API, scope: "write:repos/acme/api" }),
          ),
          "invalid_scope",
          /scope/,
        ],
        [
          "audience not listed",
          Promise.resolve(exchange(cred, { subject_token: subjectToken, audience: OTHER })),
          "invalid_target",
          /audience/,
        ],
        [
          "no client certificate",
          Promise.resolve(exchange(undefined, { subject_token: subjectToken, audience: API })),
          "invalid_client",
          /certificate/,
        ],
        [
          "foreign client certificate",
          selfSignedSpiffeCert(child.status!.spiffeID!).then((c) =>
            exchange(c, { subject_token: subjectToken, audience: API }),
          ),
          "invalid_client",
          /certificate/,
        ],
        [
          "another agent's certificate",
          credential("root").then((c) => exchange(c, { subject_token: subjectToken, audience: API })),
          "invalid_client",
          /SPIFFE ID/,
        ],
      ];
    for (const [name, pending, error, description] of cases) {
      const res = await pending;
      expect(res.json.error, `${name}: ${JSON.stringify(res.json)}`).toBe(error);
      expect(String(res.json.error_description), name).toMatch(description);
      expect(res.status, name).toBe(error === "invalid_client" ? 401 : 400);
    }

    // Each refusal is an event with its error code.
    const wanted = ["invalid_request", "invalid_scope", "invalid_target", "invalid_client"];
    const records = await readTopic(env.kafkaBrokers, bed.topic, (rs) => {
      const errors = rs
        .filter((r) => r.value.includes('"dev.custody.task.token.refused"'))
        .map((r) => JSON.parse(r.value).data.error);
      return wanted.every((w) => errors.includes(w)) && errors.length >= cases.length;
    });
    const refused = records
      .map((r) => JSON.parse(r.value))
      .filter((e) => e.type === "dev.custody.task.token.refused");
    expect(refused.length).toBeGreaterThanOrEqual(cases.length);
    const scoped = refused.find((e) => e.data.error === "invalid_scope");
    expect(scoped.data.context.taskUid).toBe(child.metadata.uid);
    // A digest of the presented token, never the token.
    expect(JSON.stringify(refused)).not.toContain(subjectToken);
    expect(scoped.data.subjectTokenSha256).toBe(createHash("sha256").update(subjectToken).digest("hex"));
  });

  it("gives a revoked task no new token and refuses its old one", async () => {
    await bed.createTask(
      body("doomed", {
        delegator: { kind: "User", name: "alice" },
        scope: ["read:repos/acme/*"],
        audiences: [API],
      }),
    );
    await bed.waitPhase("doomed", "Issued");
    const cred = await credential("doomed");
    const subjectToken = cred.data(TOKEN_EXCHANGE_FILE);
    expect((await exchange(cred, { subject_token: subjectToken, audience: API })).status).toBe(200);
    revoke("doomed");
    await bed.waitPhase("doomed", "Revoked");
    await eventually(async () => {
      const gone = await core.readNamespacedSecret({ name: "custody-svid-doomed", namespace: ns }).then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      expect(gone).toBe(true);
    });
    const res = await exchange(cred, { subject_token: subjectToken, audience: API });
    expect(res.json.error).toBe("invalid_request");
    expect(String(res.json.error_description)).toMatch(/revoked/);
  });
});

describe("key rotation", () => {
  it("publishes the next key before it signs; old tokens validate until expiry, new ones carry the new kid", async () => {
    const cred = await credential("child");
    const first = await exchange(cred, { subject_token: cred.data(TOKEN_EXCHANGE_FILE), audience: API });
    expect(first.status, JSON.stringify(first.json)).toBe(200);
    const oldToken = String(first.json.access_token);
    const oldKid = decodeProtectedHeader(oldToken).kid!;
    const firstSeenInJwks = new Map<string, number>();
    let round = 0;
    const newToken = await eventually(
      async () => {
        round++;
        const keys = JSON.parse((await https(`${issuer}/keys`)).text) as { keys: Array<{ kid: string }> };
        for (const k of keys.keys) if (!firstSeenInJwks.has(k.kid)) firstSeenInJwks.set(k.kid, round);
        const c = await credential("child");
        const r = await exchange(c, { subject_token: c.data(TOKEN_EXCHANGE_FILE), audience: API });
        const token = String(r.json.access_token);
        expect(decodeProtectedHeader(token).kid).not.toBe(oldKid);
        return { token, round };
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    const newKid = decodeProtectedHeader(newToken.token).kid!;
    // Seen in the JWKS in an earlier round than the one it first signed in.
    expect(firstSeenInJwks.get(newKid)).toBeLessThan(newToken.round);

    const { jwks } = await discoveredJwks();
    await expect(jwtVerify(oldToken, jwks, { issuer, audience: API })).resolves.toBeDefined();
    await expect(jwtVerify(newToken.token, jwks, { issuer, audience: API })).resolves.toBeDefined();

    // The JWT-SVIDs in the Secret move to the new key at their next refresh (half of 60 s).
    await eventually(
      async () => {
        const kid = decodeProtectedHeader((await credential("child")).data(audienceFileName(API))).kid;
        expect(kid).not.toBe(oldKid);
      },
      { timeoutMs: 60_000, intervalMs: 1000 },
    );
  }, 150_000);
});

function decodeClaims(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString("utf8")) as Record<
    string,
    unknown
  >;
}

function unsigned(claims: Record<string, unknown>): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${enc({ alg: "none", typ: "JWT" })}.${enc(claims)}.`;
}

/** The classic confusion: HS256 "signed" with the issuer's public key as the HMAC secret. */
async function hs256(claims: Record<string, unknown>, kid: string, publicPem: string): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", kid, typ: "JWT" })
    .sign(new TextEncoder().encode(publicPem));
}
