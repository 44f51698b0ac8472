// Runtime policy against the real apiserver and Kafka: AgentPolicy rules in
// CEL decide issuance (deny with the rule's reason, narrow ttl and scope),
// are refused at apply time when they do not compile, re-evaluate the tasks
// they select when they change (reissue narrower, revoke), and select by
// facts fixed at creation (relabelling does not escape a policy).
import { spawnSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import type { CoreV1Api } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { GROUP, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;
let core: CoreV1Api;
let ns: string;

interface Task {
  metadata: { name: string; uid: string };
  status?: {
    phase?: string;
    policyVersion?: string;
    policies?: Array<{ kind: string; name: string; version: string }>;
    grantedScope?: string[];
    grantedTtl?: string;
    certificate?: { serial: string; notBefore: string; notAfter: string };
    conditions?: Array<{ type: string; reason: string; message: string }>;
  };
}

const kubectl = (args: string[], input?: string) =>
  spawnSync(join(env.binDir, "kubectl"), args, {
    env: { ...process.env, KUBECONFIG: env.kubeconfig },
    ...(input !== undefined ? { input } : {}),
    encoding: "utf8",
  });

const apply = (manifest: unknown) => kubectl(["apply", "-f", "-"], JSON.stringify(manifest));

const policy = (name: string, spec: Record<string, unknown>) => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: "AgentPolicy",
  metadata: { name, namespace: ns },
  spec,
});

const task = (name: string, spec: Record<string, unknown>, labels?: Record<string, string>) => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: "AgentTask",
  metadata: { name, namespace: ns, ...(labels ? { labels } : {}) },
  spec: {
    agent: { name: "coder", model: { provider: "acme", name: "m", version: "2026-01-01" } },
    delegator: { kind: "User", name: "alice" },
    scope: ["read:repos/acme/*"],
    serviceAccountName: "agents",
    ttl: "1h",
    ...spec,
  },
});

const reasonsOf = (t: Task) =>
  (t.status?.conditions ?? []).map((c) => `${c.reason}: ${c.message}`).join("\n");
const lifetimeMs = (t: Task) =>
  Date.parse(t.status!.certificate!.notAfter) - Date.parse(t.status!.certificate!.notBefore);
const secretGone = (name: string) =>
  core.readNamespacedSecret({ name: `custody-svid-${name}`, namespace: ns }).then(
    () => false,
    (e: { code?: number }) => e.code === 404,
  );

beforeAll(async () => {
  bed = await startTestbed(env, "policy");
  ({ core, ns } = bed);
}, 120_000);

afterAll(() => bed?.teardown());

describe("policies at issuance", () => {
  it("denies a task whose model version a policy forbids, with the rule's reason, and records the version", async () => {
    const applied = apply(
      policy("retired-models", {
        selector: { agents: ["coder"] },
        rules: [
          {
            name: "no-2025-models",
            deny: "task.agent.model.version.startsWith('2025')",
            message: "models from 2025 are retired",
          },
        ],
      }),
    );
    expect(applied.status, applied.stderr).toBe(0);
    await bed.createTask(
      task("old-model", {
        agent: { name: "coder", model: { provider: "acme", name: "m", version: "2025-06-01" } },
      }),
    );
    const denied = await bed.waitPhase<Task>("old-model", "Denied");
    expect(reasonsOf(denied)).toMatch(
      /PolicyDenied: .*retired-models: rule no-2025-models: models from 2025 are retired/,
    );
    expect(await secretGone("old-model")).toBe(true);

    // The same policy lets a current model through, and the status names it.
    await bed.createTask(task("new-model", {}));
    const issued = await bed.waitPhase<Task>("new-model", "Issued");
    expect(issued.status?.policyVersion).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(issued.status?.policies?.map((p) => p.name)).toEqual(["retired-models"]);

    // Both decisions are in Kafka with the policy version.
    const records = await readTopic(
      env.kafkaBrokers,
      bed.topic,
      (rs) => rs.filter((r) => r.value.includes('"dev.custody.task.policy.decided"')).length >= 2,
    );
    const decided = records
      .map((r) => JSON.parse(r.value))
      .filter((e) => e.type === "dev.custody.task.policy.decided");
    const deny = decided.find((e) => e.data.context.name === "old-model");
    expect(deny.data).toMatchObject({ decision: "deny", policyVersion: issued.status?.policyVersion });
    expect(deny.data.reasons.join(" ")).toContain("no-2025-models");
    const allow = decided.find((e) => e.data.context.name === "new-model");
    expect(allow.data).toMatchObject({ decision: "allow", policyVersion: issued.status?.policyVersion });
  });

  it("refuses a policy with a syntax or type error at apply time, naming the field and position", async () => {
    const typeError = apply(
      policy("bad-type", { rules: [{ name: "r", deny: "task.agent.model.version == 3" }] }),
    );
    expect(typeError.status).not.toBe(0);
    expect(typeError.stderr).toMatch(/spec\.rules\[0\]\.deny: type error at 1:\d+: no such overload/);
    const syntaxError = apply(policy("bad-syntax", { rules: [{ name: "r", allow: "task.agent.name ==" }] }));
    expect(syntaxError.status).not.toBe(0);
    expect(syntaxError.stderr).toMatch(/spec\.rules\[0\]\.allow: syntax error at 1:\d+/);
    const unknownField = apply(policy("bad-field", { rules: [{ name: "r", deny: "task.nope == 'x'" }] }));
    expect(unknownField.stderr).toMatch(/spec\.rules\[0\]\.deny: type error at 1:\d+: No such key: nope/);
    // Nothing was stored.
    const listed = kubectl(["get", "agentpolicies", "-n", ns, "-o", "name"]);
    expect(listed.stdout).not.toMatch(/bad-/);
  });

  it("narrows: a scopeCeiling drops grants and maxTtl shortens the certificate", async () => {
    apply(
      policy("contractors", {
        selector: { agents: ["narrow"] },
        rules: [{ name: "read-only-short", maxTtl: "30m", scopeCeiling: ["read:*"] }],
      }),
    );
    await bed.createTask(
      task("narrowed", { agent: { name: "narrow" }, scope: ["read:repos/acme/*", "write:repos/acme/docs"] }),
    );
    const t = await bed.waitPhase<Task>("narrowed", "Issued");
    expect(t.status?.grantedScope).toEqual(["read:repos/acme/*"]);
    expect(t.status?.grantedTtl).toBe("30m");
    expect(lifetimeMs(t)).toBeLessThanOrEqual(30 * 60_000 + 60_000);
  });
});

describe("policy changes", () => {
  it("tightening a policy's maxTtl reissues the tasks it selects with the shorter lifetime", async () => {
    apply(policy("ttl-cap", { selector: { agents: ["capped"] }, rules: [{ name: "cap", maxTtl: "30m" }] }));
    await bed.createTask(task("capped-1", { agent: { name: "capped" } }));
    const before = await bed.waitPhase<Task>("capped-1", "Issued");
    expect(before.status?.grantedTtl).toBe("30m");
    apply(policy("ttl-cap", { selector: { agents: ["capped"] }, rules: [{ name: "cap", maxTtl: "10m" }] }));
    const after = await eventually(
      async () => {
        const t = await bed.getTask<Task>("capped-1");
        expect(t.status?.certificate?.serial).not.toBe(before.status?.certificate?.serial);
        expect(t.status?.phase).toBe("Issued");
        return t;
      },
      { timeoutMs: 20_000 },
    );
    expect(after.status?.grantedTtl).toBe("10m");
    expect(lifetimeMs(after)).toBeLessThanOrEqual(10 * 60_000 + 60_000);
    expect(after.status?.policyVersion).not.toBe(before.status?.policyVersion);
    // The Secret holds the reissued certificate.
    const secret = await core.readNamespacedSecret({ name: "custody-svid-capped-1", namespace: ns });
    const leaf = new X509Certificate(Buffer.from(secret.data?.["tls.crt"] ?? "", "base64"));
    expect(leaf.serialNumber.toLowerCase().replace(/^0+/, "")).toBe(
      after.status?.certificate?.serial.replace(/^0+/, ""),
    );
  });

  it("denying a tool revokes the tasks that use it, and only those", async () => {
    await bed.createTask(
      task("with-shell", { agent: { name: "tooled", tools: [{ name: "shell", version: "1" }] } }),
    );
    await bed.createTask(
      task("without-shell", { agent: { name: "tooled", tools: [{ name: "git", version: "2" }] } }),
    );
    await bed.waitPhase("with-shell", "Issued");
    await bed.waitPhase("without-shell", "Issued");
    apply(
      policy("no-shell", {
        selector: { agents: ["tooled"] },
        rules: [
          {
            name: "no-shell",
            deny: "task.agent.tools.exists(t, t.name == 'shell')",
            message: "shell access is withdrawn",
          },
        ],
      }),
    );
    const revoked = await bed.waitPhase<Task>("with-shell", "Revoked");
    expect(reasonsOf(revoked)).toMatch(/PolicyRevoked: .*shell access is withdrawn/);
    await eventually(async () => expect(await secretGone("with-shell")).toBe(true));
    expect((await bed.getTask<Task>("without-shell")).status?.phase).toBe("Issued");
    const records = await readTopic(env.kafkaBrokers, bed.topic, (rs) =>
      rs.some((r) => r.value.includes('"dev.custody.task.policy.revoked"') && r.value.includes("with-shell")),
    );
    const event = records
      .map((r) => JSON.parse(r.value))
      .find((e) => e.type === "dev.custody.task.policy.revoked" && e.data.context.name === "with-shell");
    expect(event.data.serials).toContain(revoked.status?.certificate?.serial);
    expect(event.data.policyVersion).toMatch(/^sha256:/);
  });

  it("selects by the labels a task had at creation: relabelling does not escape a policy", async () => {
    await bed.createTask(task("relabelled", { agent: { name: "labelled" } }, { team: "red" }));
    await bed.createTask(task("blue-from-start", { agent: { name: "labelled" } }, { team: "blue" }));
    await bed.waitPhase("relabelled", "Issued");
    await bed.waitPhase("blue-from-start", "Issued");
    const relabel = kubectl(["label", "at", "relabelled", "-n", ns, "team=blue", "--overwrite"]);
    expect(relabel.status, relabel.stderr).toBe(0);
    apply(
      policy("red-team-frozen", {
        selector: { matchLabels: { team: "red" } },
        rules: [{ name: "frozen", deny: "true", message: "the red team's agents are frozen" }],
      }),
    );
    const revoked = await bed.waitPhase<Task>("relabelled", "Revoked");
    expect(reasonsOf(revoked)).toContain("the red team's agents are frozen");
    // A task labelled blue at creation is not selected.
    await new Promise((r) => setTimeout(r, 1500));
    expect((await bed.getTask<Task>("blue-from-start")).status?.phase).toBe("Issued");
  });
});
