// Sub-agents against the real apiserver: a child is issued only within its
// parent's scope, ttl and deadline; its chain is root first in status and
// bound into its certificate; revoking or deleting an ancestor revokes the
// whole subtree and deletes every credential below it.
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import type { CoreV1Api } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { chainDigest } from "../../core/delegation.ts";
import { DELEGATION_EXTENSION_OID, decodeDelegationExtension } from "../../core/x509/index.ts";
import { eventually } from "../support/eventually.ts";
import { GROUP, PLURAL, startTestbed, type Testbed, VERSION } from "../support/testbed.ts";

const env = inject("localEnv");
let bed: Testbed;
let core: CoreV1Api;
let ns: string;

interface Task {
  metadata: { name: string; uid: string };
  status?: {
    phase?: string;
    delegationChain?: Array<{ kind: string; name: string; uid: string; scope: string[] }>;
    certificate?: { secretName: string; serial: string; notAfter: string };
    conditions?: Array<{ type: string; reason: string; message: string }>;
  };
}

const body = (name: string, spec: Record<string, unknown>) => ({
  apiVersion: `${GROUP}/${VERSION}`,
  kind: "AgentTask",
  metadata: { name, namespace: ns },
  spec: {
    agent: { name: "planner" },
    scope: ["read:repos/acme/*", "comment:repos/acme/*"],
    serviceAccountName: "agents",
    ttl: "1h",
    ...spec,
  },
});

const create = (name: string, spec: Record<string, unknown>) => bed.createTask(body(name, spec));
const phaseOf = (name: string, phase: string) => bed.waitPhase<Task>(name, phase);
const secretGone = (name: string) =>
  core.readNamespacedSecret({ name, namespace: ns }).then(
    () => false,
    (e: { code?: number }) => e.code === 404,
  );

beforeAll(async () => {
  bed = await startTestbed(env, "chain");
  ({ core, ns } = bed);
}, 120_000);

afterAll(() => bed?.teardown());

describe("delegation chains", () => {
  it("issues a narrower sub-agent with the chain root first, bound into its certificate", async () => {
    await create("root", { delegator: { kind: "User", name: "alice" }, deadline: "2099-01-01T00:00:00Z" });
    const root = await phaseOf("root", "Issued");
    await create("child", { parentRef: { name: "root" }, scope: ["read:repos/acme/api"], ttl: "30m" });
    const child = await phaseOf("child", "Issued");
    const chain = child.status?.delegationChain ?? [];
    expect(chain.map((l) => [l.kind, l.name])).toEqual([
      // Proven at admission: the test's admin may impersonate alice.
      ["User", "alice"],
      ["AgentTask", "root"],
      ["AgentTask", "child"],
    ]);
    expect(chain[1]?.uid).toBe(root.metadata.uid);
    expect(chain[2]?.scope).toEqual(["read:repos/acme/api"]);

    const secret = await core.readNamespacedSecret({
      name: child.status!.certificate!.secretName,
      namespace: ns,
    });
    const der = new X509Certificate(Buffer.from(secret.data?.["tls.crt"] ?? "", "base64")).raw;
    const x509 = await import("@peculiar/x509");
    const ext = new x509.X509Certificate(der).extensions.find((e) => e.type === DELEGATION_EXTENSION_OID);
    const info = decodeDelegationExtension(new Uint8Array(ext!.value));
    expect(Buffer.from(info.chainDigest).toString("hex")).toBe(chainDigest(chain as never).toString("hex"));
    expect(info.chainDepth).toBe(1);
  });

  const refused: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ["a wider scope", { scope: ["write:repos/acme/api"] }, "ScopeEscalation", /spec\.scope\[0\]/],
    ["a longer ttl", { scope: ["read:repos/acme/api"], ttl: "2h" }, "TtlExceedsParent", /spec\.ttl/],
    [
      "a later deadline",
      { scope: ["read:repos/acme/api"], deadline: "2100-01-01T00:00:00Z" },
      "DeadlineExceedsParent",
      /spec\.deadline/,
    ],
  ];
  for (const [what, spec, reason, field] of refused) {
    it(`denies a sub-agent asking for ${what}, naming the field`, async () => {
      const name = `bad-${reason.toLowerCase()}`;
      await create(name, { parentRef: { name: "root" }, ...spec });
      const t = await phaseOf(name, "Denied");
      const ready = t.status?.conditions?.find((c) => c.type === "Ready");
      expect(ready?.reason).toBe(reason);
      expect(ready?.message).toMatch(field);
      expect(t.status?.certificate).toBeUndefined();
    });
  }

  it("refuses a sub-agent of a missing parent at admission, and denies a cycle and a chain deeper than the cap", async () => {
    // Nothing can prove delegation from a task that does not exist.
    const refused = await create("loop-a", { parentRef: { name: "loop-b" } }).then(
      () => "",
      (e: { code?: number; body?: unknown }) => `${e.code} ${String(e.body)}`,
    );
    expect(refused).toMatch(
      /^403 .*spec\.parentRef\.name: AgentTask .*loop-b does not exist.*rule parent-exists/,
    );
    // A cycle can still be built by re-creating a deleted ancestor under its own descendant.
    await create("loop-a", { parentRef: { name: "root" }, scope: ["read:repos/acme/api"] });
    await create("loop-b", { parentRef: { name: "loop-a" }, scope: ["read:repos/acme/api"] });
    await bed.custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: PLURAL,
      name: "loop-a",
    });
    await eventually(async () => {
      const gone = await bed.getTask("loop-a").then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      if (!gone) throw new Error("loop-a not gone yet");
    });
    await create("loop-a", { parentRef: { name: "loop-b" }, scope: ["read:repos/acme/api"] });
    expect(
      (await phaseOf("loop-a", "Denied")).status?.conditions?.find((c) => c.type === "Ready")?.reason,
    ).toBe("CycleDetected");
    // root → d1 … d5 is allowed (depth 5); d6 is one hop too many.
    let parent = "root";
    for (let i = 1; i <= 6; i++) {
      await create(`d${i}`, { parentRef: { name: parent }, scope: ["read:repos/acme/api"] });
      parent = `d${i}`;
    }
    await phaseOf("d5", "Issued");
    const d6 = await phaseOf("d6", "Denied");
    expect(d6.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("DepthExceeded");
  });

  it("revoking a root revokes its three-level subtree and deletes every credential below it", async () => {
    await create("r2", { delegator: { kind: "User", name: "bob" } });
    await phaseOf("r2", "Issued");
    await create("r2-a", { parentRef: { name: "r2" }, scope: ["read:repos/acme/*"] });
    await phaseOf("r2-a", "Issued");
    await create("r2-a-b", { parentRef: { name: "r2-a" }, scope: ["read:repos/acme/api"] });
    const leaf = await phaseOf("r2-a-b", "Issued");
    execFileSync(
      join(env.binDir, "kubectl"),
      [
        "patch",
        "at",
        "r2",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"revoked":true,"revocationReason":"credential leak"}}',
      ],
      { env: { ...process.env, KUBECONFIG: env.kubeconfig }, stdio: "pipe" },
    );
    await phaseOf("r2", "Revoked");
    const a = await phaseOf("r2-a", "Revoked");
    const b = await phaseOf("r2-a-b", "Revoked");
    expect(a.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("ParentRevoked");
    expect(b.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("AncestorRevoked");
    expect(await secretGone(leaf.status!.certificate!.secretName)).toBe(true);
    expect(await secretGone("custody-svid-r2-a")).toBe(true);
    // Copies of those certificates stay valid until notAfter: the namespace's
    // trust bundle lists them as revoked until then.
    const revoked = await eventually(async () => {
      const cm = await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns });
      const text = cm.data?.["revoked.txt"] ?? "";
      for (const t of [a, b]) expect(text).toContain(`${t.status!.certificate!.serial} spiffe://`);
      return text;
    });
    expect(revoked).toContain(`/task/r2-a-b `);
  });

  it("a parent reaching its deadline expires, and its subtree is revoked naming it", async () => {
    const deadline = new Date(Date.now() + 12_000).toISOString();
    await create("r4", { delegator: { kind: "User", name: "dave" }, deadline });
    await phaseOf("r4", "Issued");
    await create("r4-a", { parentRef: { name: "r4" }, scope: ["read:repos/acme/api"] });
    const child = await phaseOf("r4-a", "Issued");
    // The child inherits the deadline: its certificate never outlives it.
    expect(Date.parse(child.status!.certificate!.notAfter)).toBeLessThanOrEqual(Date.parse(deadline));
    const root = await bed.waitPhase<Task>("r4", "Expired", 30_000);
    expect(root.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("DeadlinePassed");
    const a = await bed.waitPhase<Task>("r4-a", "Revoked", 30_000);
    expect(a.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("ParentExpired");
    expect(await secretGone("custody-svid-r4")).toBe(true);
    expect(await secretGone("custody-svid-r4-a")).toBe(true);
  });

  it("deleting a root revokes its subtree", async () => {
    await create("r3", { delegator: { kind: "User", name: "carol" } });
    await phaseOf("r3", "Issued");
    await create("r3-a", { parentRef: { name: "r3" }, scope: ["read:repos/acme/api"] });
    await phaseOf("r3-a", "Issued");
    await create("r3-a-b", { parentRef: { name: "r3-a" }, scope: ["read:repos/acme/api"] });
    await phaseOf("r3-a-b", "Issued");
    await bed.custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: PLURAL,
      name: "r3",
    });
    const a = await phaseOf("r3-a", "Revoked");
    expect(a.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("ParentDeleted");
    await phaseOf("r3-a-b", "Revoked");
    expect(await secretGone("custody-svid-r3-a")).toBe(true);
    expect(await secretGone("custody-svid-r3-a-b")).toBe(true);
  });
});
