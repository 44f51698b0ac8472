// The decision endpoint (OpenID AuthZEN Access Evaluation) against the real
// apiserver (TokenReview), Kafka and the operator's HTTPS listener: a
// resource server passing the agent's real SVID and the agent asking for
// itself over mutual TLS are allowed within scope and denied outside it,
// denied for a revoked task and by an action-stage policy, refused without
// authentication or with a forged or expired credential; every decision is
// in Kafka with its policy version and in `custody audit`.
import "reflect-metadata";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CoreV1Api } from "@kubernetes/client-node";
import * as x509 from "@peculiar/x509";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { audienceFileName } from "../../core/jwt/audience-files.ts";
import { parseRing, signingKey } from "../../core/jwt/keys.ts";
import { selfSignedSpiffeCert } from "../support/certs.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { GROUP, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
const repo = join(import.meta.dirname, "..", "..");
let bed: Testbed;
let core: CoreV1Api;
let ns: string;
let issuer: string;
let caPem: string;
let gatewayToken: string;
let work: string;

const API = "https://api.example";

interface Task {
  metadata: { name: string; uid: string };
  status?: { phase?: string; spiffeID?: string; policyVersion?: string };
}
interface Answer {
  status: number;
  json: Record<string, unknown>;
}

const kubectl = (args: string[], input?: string) =>
  spawnSync(join(env.binDir, "kubectl"), args, {
    env: { ...process.env, KUBECONFIG: env.kubeconfig },
    ...(input !== undefined ? { input } : {}),
    encoding: "utf8",
  });

function post(
  path: string,
  body: unknown,
  auth: { cert?: string; key?: string; bearer?: string; credential?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${issuer}${path}`,
      {
        method: "POST",
        ca: caPem,
        ...(auth.cert ? { cert: auth.cert, key: auth.key } : {}),
        headers: {
          "content-type": "application/json",
          ...(auth.bearer ? { authorization: `Bearer ${auth.bearer}` } : {}),
          ...(auth.credential ? { "custody-agent-credential": auth.credential } : {}),
        },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: res.statusCode ?? 0,
            json: text ? (JSON.parse(text) as Record<string, unknown>) : {},
          });
        });
      },
    );
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

async function credential(task: string) {
  const s = await core.readNamespacedSecret({ name: `custody-svid-${task}`, namespace: ns });
  const d = (k: string) => Buffer.from(s.data?.[k] ?? "", "base64").toString("utf8");
  const cert = d("tls.crt");
  const leafDer = Buffer.from(
    new x509.X509Certificate(cert.split("-----END CERTIFICATE-----")[0]! + "-----END CERTIFICATE-----")
      .rawData,
  );
  return { cert, key: d("tls.key"), der: leafDer.toString("base64"), data: d };
}

const ask = (spiffe: string, action: string, resource: string, extra: Record<string, unknown> = {}) => ({
  subject: { type: "agent", id: spiffe },
  action: { name: action },
  resource: { type: "repo", id: resource },
  ...extra,
});

const task = (name: string, spec: Record<string, unknown> = {}) => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: "AgentTask",
  metadata: { name, namespace: ns },
  spec: {
    agent: { name: "reader" },
    delegator: { kind: "User", name: "alice" },
    scope: ["read:repos/acme/*"],
    audiences: [API],
    serviceAccountName: "agents",
    ttl: "1h",
    ...spec,
  },
});

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "custody-authzen-"));
  bed = await startTestbed(env, "authzen");
  ({ core, ns } = bed);
  // The gateway's service account, and the operator told that it may ask.
  await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: "gateway" } } });
  await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: "stranger" } } });
  const op = await bed.restartOperator(0, {
    CUSTODY_AUTHZEN_CALLERS: `system:serviceaccount:${ns}:gateway`,
    CUSTODY_REPORTS_PER_SECOND: "1",
  });
  issuer = `https://127.0.0.1:${op.oidcPort}`;
  const token = kubectl(["create", "token", "gateway", "-n", ns, "--audience", issuer, "--duration", "1h"]);
  expect(token.status, token.stderr).toBe(0);
  gatewayToken = token.stdout.trim();
  await bed.createTask(task("reader"));
  await bed.waitPhase("reader", "Issued");
  const bundle = await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns });
  caPem = bundle.data?.["ca.crt"] ?? "";
}, 180_000);

afterAll(() => bed?.teardown());

describe("decisions", () => {
  it("the agent, asking for itself over mutual TLS, is allowed within its scope and denied outside it", async () => {
    const t = await bed.getTask<Task>("reader");
    const c = await credential("reader");
    const allowed = await post(
      "/access/v1/evaluation",
      ask(t.status!.spiffeID!, "read", "repos/acme/api"),
      c,
    );
    expect(allowed.status, JSON.stringify(allowed.json)).toBe(200);
    expect(allowed.json.decision).toBe(true);
    const denied = await post(
      "/access/v1/evaluation",
      ask(t.status!.spiffeID!, "write", "repos/acme/api"),
      c,
    );
    expect(denied.json.decision).toBe(false);
    expect(JSON.stringify(denied.json.context)).toContain("outside the task's scope");
  });

  it("a resource server passing the agent's X.509-SVID or JWT-SVID gets the same answers", async () => {
    const t = await bed.getTask<Task>("reader");
    const c = await credential("reader");
    for (const presented of [c.der, c.data(audienceFileName(API))]) {
      const auth = { bearer: gatewayToken, credential: presented };
      const ok = await post(
        "/access/v1/evaluation",
        ask(t.status!.spiffeID!, "read", "repos/acme/web"),
        auth,
      );
      expect(ok.status, JSON.stringify(ok.json)).toBe(200);
      expect(ok.json.decision).toBe(true);
      const no = await post(
        "/access/v1/evaluation",
        ask(t.status!.spiffeID!, "read", "repos/other/web"),
        auth,
      );
      expect(no.json.decision).toBe(false);
    }
  });

  it("answers a batch (Access Evaluations), each item with its own decision", async () => {
    const t = await bed.getTask<Task>("reader");
    const c = await credential("reader");
    const res = await post(
      "/access/v1/evaluations",
      {
        subject: { type: "agent", id: t.status!.spiffeID },
        action: { name: "read" },
        evaluations: [
          { resource: { type: "repo", id: "repos/acme/a" } },
          { resource: { type: "repo", id: "repos/elsewhere/b" } },
          { action: { name: "delete" }, resource: { type: "repo", id: "repos/acme/a" } },
        ],
      },
      c,
    );
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect((res.json.evaluations as Array<{ decision: boolean }>).map((e) => e.decision)).toEqual([
      true,
      false,
      false,
    ]);
  });

  it("denies within scope when an action-stage policy says so, naming the rule", async () => {
    const applied = kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "AgentPolicy",
        metadata: { name: "no-secrets", namespace: ns },
        spec: {
          rules: [
            {
              name: "no-secret-repos",
              stages: ["action"],
              deny: "resource.id.startsWith('repos/acme/secret')",
              message: "secret repositories are off limits to agents",
            },
          ],
        },
      }),
    );
    expect(applied.status, applied.stderr).toBe(0);
    const t = await bed.getTask<Task>("reader");
    const c = await credential("reader");
    const res = await eventually(async () => {
      const r = await post(
        "/access/v1/evaluation",
        ask(t.status!.spiffeID!, "read", "repos/acme/secret-plans"),
        c,
      );
      expect(r.json.decision).toBe(false);
      return r;
    });
    expect(JSON.stringify(res.json.context)).toContain("no-secret-repos: secret repositories are off limits");
    const ctx = res.json.context as { policy_version: string };
    expect(ctx.policy_version).toMatch(/^sha256:/);
    // Other repositories stay allowed under the same policy.
    const fine = await post("/access/v1/evaluation", ask(t.status!.spiffeID!, "read", "repos/acme/api"), c);
    expect(fine.json.decision).toBe(true);
  });

  it("denies a revoked task", async () => {
    await bed.createTask(task("doomed"));
    await bed.waitPhase("doomed", "Issued");
    const t = await bed.getTask<Task>("doomed");
    const c = await credential("doomed");
    expect(
      (await post("/access/v1/evaluation", ask(t.status!.spiffeID!, "read", "repos/acme/api"), c)).json
        .decision,
    ).toBe(true);
    const r = kubectl(["patch", "at", "doomed", "-n", ns, "--type=merge", "-p", '{"spec":{"revoked":true}}']);
    expect(r.status, r.stderr).toBe(0);
    await bed.waitPhase("doomed", "Revoked");
    // The resource server still holds the agent's certificate: still a deny.
    const res = await post("/access/v1/evaluation", ask(t.status!.spiffeID!, "read", "repos/acme/api"), {
      bearer: gatewayToken,
      credential: c.der,
    });
    expect(res.json.decision).toBe(false);
    expect(JSON.stringify(res.json.context)).toMatch(/revoked|not the task's current certificate/);
  });
});

describe("refusals", () => {
  it("refuses a caller without authentication, with a token for another audience, or not configured", async () => {
    const t = await bed.getTask<Task>("reader");
    const body = ask(t.status!.spiffeID!, "read", "repos/acme/api");
    const none = await post("/access/v1/evaluation", body);
    expect(none.status).toBe(401);
    const apiToken = kubectl(["create", "token", "gateway", "-n", ns, "--duration", "1h"]).stdout.trim();
    const c = await credential("reader");
    const wrongAudience = await post("/access/v1/evaluation", body, { bearer: apiToken, credential: c.der });
    expect(wrongAudience.status).toBe(401);
    const strangerToken = kubectl([
      "create",
      "token",
      "stranger",
      "-n",
      ns,
      "--audience",
      issuer,
    ]).stdout.trim();
    const stranger = await post("/access/v1/evaluation", body, { bearer: strangerToken, credential: c.der });
    expect(stranger.status).toBe(403);
    expect(String(stranger.json.error_description)).toContain("not a configured decision-endpoint caller");
  });

  it("refuses a forged or expired agent credential, and a subject that is not the credential's agent", async () => {
    const t = await bed.getTask<Task>("reader");
    const spiffe = t.status!.spiffeID!;
    const body = ask(spiffe, "read", "repos/acme/api");
    const forged = await selfSignedSpiffeCert(spiffe);
    const r1 = await post("/access/v1/evaluation", body, { bearer: gatewayToken, credential: forged.der });
    expect(r1.status).toBe(403);
    expect(String(r1.json.error_description)).toMatch(/X\.509-SVID is not valid/);
    // Over mutual TLS the TLS layer itself refuses to vouch for it.
    const r2 = await post("/access/v1/evaluation", body, forged);
    expect(r2.status).toBe(401);
    // An expired JWT-SVID, signed with the operator's real key.
    const s = await core.readNamespacedSecret({ name: "custody-jwt-signing-keys", namespace: bed.opNs });
    const key = signingKey(
      parseRing(Buffer.from(s.data?.["keys.json"] ?? "", "base64").toString("utf8")),
      Date.now(),
    )!;
    const now = Math.floor(Date.now() / 1000);
    const expired = await new SignJWT({ custody: { taskUid: t.metadata.uid } })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT" })
      .setIssuer(issuer)
      .setSubject(spiffe)
      .setAudience(API)
      .setIssuedAt(now - 600)
      .setExpirationTime(now - 300)
      .setJti("expired-1")
      .sign(key.privateKey);
    const r3 = await post("/access/v1/evaluation", body, { bearer: gatewayToken, credential: expired });
    expect(r3.status).toBe(403);
    expect(String(r3.json.error_description)).toContain("expired");
    // The body names someone else than the credential.
    const c = await credential("reader");
    const other = spiffe.replace("/task/reader", "/task/someone-else");
    const r4 = await post("/access/v1/evaluation", ask(other, "read", "repos/acme/api"), c);
    expect(r4.status).toBe(403);
    expect(r4.json.error).toBe("subject_mismatch");
    // A body that fails validation.
    const r5 = await post("/access/v1/evaluation", { subject: { type: "user", id: spiffe } }, c);
    expect(r5.status).toBe(400);
    expect(String(r5.json.error_description)).toContain("subject.type");
  });
});

describe("reports and the audit trail", () => {
  it("records reports, marks self-reports, rate-limits them per agent", async () => {
    const t = await bed.getTask<Task>("reader");
    const c = await credential("reader");
    const body = { ...ask(t.status!.spiffeID!, "read", "repos/acme/api"), outcome: "ok" };
    const self = await post("/custody/v1/reports", body, c);
    expect(self.status, JSON.stringify(self.json)).toBe(202);
    expect(self.json.selfReported).toBe(true);
    const byGateway = await post("/custody/v1/reports", body, { bearer: gatewayToken, credential: c.der });
    expect(byGateway.status).toBe(202);
    expect(byGateway.json.selfReported).toBe(false);
    // One per second, a burst of ten: the twelfth in a row is refused.
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await post("/custody/v1/reports", body, c)).status);
    expect(statuses).toContain(429);
  });

  it("puts every decision in Kafka with its policy version, and in custody audit", async () => {
    const t = await bed.getTask<Task>("reader");
    const records = await readTopic(
      env.kafkaBrokers,
      bed.topic,
      (rs) =>
        rs.filter(
          (r) => r.value.includes('"dev.custody.task.action.decided"') && r.value.includes(t.metadata.uid),
        ).length >= 6,
    );
    const decided = records
      .map((r) => JSON.parse(r.value))
      .filter(
        (e) => e.type === "dev.custody.task.action.decided" && e.data.context.taskUid === t.metadata.uid,
      );
    expect(decided.some((e) => e.data.decision === "allow")).toBe(true);
    expect(decided.some((e) => e.data.decision === "deny")).toBe(true);
    for (const e of decided) expect(e.data.policyVersion).toMatch(/^(none|sha256:[0-9a-f]{64})$/);
    expect(decided.some((e) => e.data.caller.kind === "resource-server")).toBe(true);
    expect(decided.some((e) => e.data.caller.kind === "agent")).toBe(true);

    const audit = spawnSync(
      join(repo, "bin", "custody"),
      ["audit", "reader", "-n", ns, "--topic", bed.topic, "--operator-namespace", bed.opNs],
      {
        env: {
          ...process.env,
          KUBECONFIG: env.kubeconfig,
          CUSTODY_KAFKA_BROKERS: env.kafkaBrokers,
          XDG_CACHE_HOME: work,
        },
        encoding: "utf8",
      },
    );
    expect(audit.status, audit.stderr).toBe(0);
    expect(audit.stdout).toMatch(/action\.decided\s+allow read on repo repos\/acme\/api/);
    expect(audit.stdout).toMatch(/action\.decided\s+deny write on repo repos\/acme\/api/);
    expect(audit.stdout).toMatch(
      /action\.performed\s+read on repo repos\/acme\/api: ok, reported by agent .*self-reported/,
    );
  });
});
