// The operator against the real apiserver and Kafka: a task is Issued with a
// valid SPIFFE X.509-SVID, provenance precedes the credential, renewal swaps
// the Secret atomically, deletion revokes, bad specs are refused by field.
import "reflect-metadata";
import { execFileSync } from "node:child_process";
import { type JsonWebKey, randomUUID, X509Certificate } from "node:crypto";
import { join } from "node:path";
import type { CoreV1Api, CustomObjectsApi } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { verifyCheckpoint } from "../../core/provenance/checkpoint.ts";
import { createKeyRing } from "../../core/provenance/sign.ts";
import { DELEGATION_EXTENSION_OID, decodeDelegationExtension } from "../../core/x509/index.ts";
import { eventually } from "../support/eventually.ts";
import { readTopic } from "../support/kafka.ts";
import { startTestbed, type Testbed } from "../support/testbed.ts";

const env = inject("localEnv");
const group = "custody.dev";
const version = "v1alpha1";
const plural = "agenttasks";

let bed: Testbed;
let core: CoreV1Api;
let custom: CustomObjectsApi;
let ns: string;
let topic: string;

interface TaskObj {
  metadata: { name: string; uid: string; resourceVersion: string; finalizers?: string[] };
  status?: {
    phase?: string;
    spiffeID?: string;
    certificate?: {
      serial: string;
      notAfter: string;
      renewalTime: string;
      secretName: string;
      publicKeySHA256: string;
    };
    conditions?: Array<{ type: string; status: string; reason: string; message: string }>;
    delegationChain?: Array<{ kind: string; name: string }>;
  };
}

const task = (name: string, spec: Record<string, unknown>) => ({
  apiVersion: `${group}/${version}`,
  kind: "AgentTask",
  metadata: { name, namespace: ns },
  spec: {
    agent: { name: "reviewer", model: { provider: "anthropic", name: "claude", version: "2026-01" } },
    delegator: { kind: "User", name: "alice" },
    scope: ["read:repos/acme/*", "comment:repos/acme/api"],
    serviceAccountName: "reviewer",
    ...spec,
  },
});

const createTask = (body: unknown) => bed.createTask(body);
const getTask = (name: string) => bed.getTask<TaskObj>(name);
const waitPhase = (name: string, phase: string) => bed.waitPhase<TaskObj>(name, phase);

beforeAll(async () => {
  bed = await startTestbed(env, "issue");
  ({ core, custom, ns, topic } = bed);
}, 120_000);

afterAll(() => bed?.teardown());

/** Pulls a task's renewal time into the past through the status subresource. */
function renewNow(name: string): void {
  execFileSync(
    join(env.binDir, "kubectl"),
    [
      "patch",
      "at",
      name,
      "-n",
      ns,
      "--subresource=status",
      "--type=json",
      `-p=[{"op":"replace","path":"/status/certificate/renewalTime","value":"${new Date(Date.now() - 1000).toISOString()}"}]`,
    ],
    { env: { ...process.env, KUBECONFIG: env.kubeconfig }, stdio: "pipe" },
  );
}

describe("issuance", () => {
  it("issues a SPIFFE X.509-SVID that chains to the published bundle and carries the delegation", async () => {
    await createTask(task("review-pr", {}));
    const t = await waitPhase("review-pr", "Issued");
    const spiffeId = `spiffe://custody.local/ns/${ns}/agent/reviewer/task/review-pr`;
    expect(t.status?.spiffeID).toBe(spiffeId);
    expect(t.status?.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "True",
      reason: "Issued",
    });
    expect(t.metadata.finalizers).toContain("custody.dev/revoke-credential");

    const secret = await core.readNamespacedSecret({
      name: t.status!.certificate!.secretName,
      namespace: ns,
    });
    expect(secret.type).toBe("kubernetes.io/tls");
    expect(secret.metadata?.ownerReferences?.[0]).toMatchObject({ kind: "AgentTask", uid: t.metadata.uid });
    const data = (k: string) => Buffer.from(secret.data?.[k] ?? "", "base64").toString("utf8");
    const leaf = new X509Certificate(data("tls.crt"));
    expect(leaf.serialNumber.toLowerCase().replace(/^0+/, "")).toBe(
      t.status!.certificate!.serial.replace(/^0+/, ""),
    );
    expect(leaf.subjectAltName).toBe(`URI:${spiffeId}`);
    expect(leaf.ca).toBe(false);
    expect(data("tls.key")).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(leaf.checkPrivateKey((await import("node:crypto")).createPrivateKey(data("tls.key")))).toBe(true);
    expect(data("spiffe-id")).toBe(spiffeId);

    // The trust bundle ConfigMap of the namespace verifies the leaf.
    const bundle = await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns });
    const caCert = new X509Certificate(bundle.data?.["ca.crt"] ?? "");
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkIssued(caCert)).toBe(true);
    const spiffeBundle = JSON.parse(bundle.data?.["bundle.spiffe"] ?? "{}") as {
      keys: Array<{ use: string }>;
    };
    expect(spiffeBundle.keys[0]?.use).toBe("x509-svid");

    // Key usage, EKU and the delegation extension, read with @peculiar/x509.
    const x509 = await import("@peculiar/x509");
    const parsed = new x509.X509Certificate(data("tls.crt"));
    const ku = parsed.getExtension(x509.KeyUsagesExtension);
    expect(ku?.critical).toBe(true);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    const eku = parsed.getExtension(x509.ExtendedKeyUsageExtension);
    expect(eku?.usages).toEqual(expect.arrayContaining(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]));
    const ext = parsed.extensions.find((e) => e.type === DELEGATION_EXTENSION_OID);
    expect(ext?.critical).toBe(false);
    const info = decodeDelegationExtension(new Uint8Array(ext!.value));
    expect(info.taskUid).toBe(t.metadata.uid);
    // Declared and proven at admission (the test's admin may impersonate alice).
    expect(info.delegator).toMatchObject({ kind: "user", name: "alice" });
    expect(info.scope).toEqual(["read:repos/acme/*", "comment:repos/acme/api"]);
    expect(t.status?.delegationChain?.map((l) => l.kind)).toEqual(["User", "AgentTask"]);

    // Strict RFC 5280 profile as openssl enforces it.
    const { writeFileSync, mkdtempSync } = await import("node:fs");
    const dir = mkdtempSync(join((await import("node:os")).tmpdir(), "custody-verify-"));
    writeFileSync(join(dir, "ca.pem"), bundle.data?.["ca.crt"] ?? "");
    writeFileSync(join(dir, "leaf.pem"), data("tls.crt"));
    const out = execFileSync("openssl", [
      "verify",
      "-x509_strict",
      "-CAfile",
      join(dir, "ca.pem"),
      join(dir, "leaf.pem"),
    ]);
    expect(out.toString()).toContain("OK");

    // The issued event reached Kafka with this serial, and no key material.
    const records = await readTopic(env.kafkaBrokers, topic, (rs) =>
      rs.some((r) => r.value.includes(t.status!.certificate!.serial)),
    );
    const issued = records.map((r) => JSON.parse(r.value)).find((e) => e.type === "dev.custody.task.issued");
    expect(issued?.data?.certificate?.serial).toBe(t.status!.certificate!.serial);
    expect(issued?.data?.certificate?.publicKeySha256).toBe(t.status!.certificate!.publicKeySHA256);
    expect(records.every((r) => !r.value.includes("PRIVATE KEY"))).toBe(true);
  });

  it("renews when the renewal time passes, replacing the Secret's contents in one write", async () => {
    await createTask(task("renew-me", { ttl: "5m" }));
    const first = await waitPhase("renew-me", "Issued");
    const cert = first.status!.certificate!;
    const lifetime = Date.parse(cert.notAfter) - Date.now();
    expect(lifetime).toBeLessThanOrEqual(5 * 60_000);
    expect(Date.parse(cert.renewalTime)).toBeLessThan(Date.parse(cert.notAfter));

    renewNow("renew-me");
    const renewed = await eventually(
      async () => {
        const t = await getTask("renew-me");
        expect(t.status?.certificate?.serial).not.toBe(cert.serial);
        expect(t.status?.phase).toBe("Issued");
        return t;
      },
      { timeoutMs: 20_000 },
    );
    const secret = await core.readNamespacedSecret({ name: cert.secretName, namespace: ns });
    const leaf = new X509Certificate(Buffer.from(secret.data?.["tls.crt"] ?? "", "base64"));
    const key = (await import("node:crypto")).createPrivateKey(
      Buffer.from(secret.data?.["tls.key"] ?? "", "base64"),
    );
    expect(leaf.serialNumber.toLowerCase().replace(/^0+/, "")).toBe(
      renewed.status!.certificate!.serial.replace(/^0+/, ""),
    );
    expect(leaf.checkPrivateKey(key)).toBe(true);
    expect(secret.metadata?.annotations?.["custody.dev/serial"]).toBe(renewed.status!.certificate!.serial);
    expect(renewed.status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe("Renewed");
    // The new renewal time is in the future: no reissue loop.
    expect(Date.parse(renewed.status!.certificate!.renewalTime)).toBeGreaterThan(Date.now());
    const serialNow = renewed.status!.certificate!.serial;
    await new Promise((r) => setTimeout(r, 1500));
    expect((await getTask("renew-me")).status?.certificate?.serial).toBe(serialNow);
  });

  it("re-issues when the credential Secret is deleted by someone", async () => {
    await createTask(task("self-heal", {}));
    const t = await waitPhase("self-heal", "Issued");
    await core.deleteNamespacedSecret({ name: t.status!.certificate!.secretName, namespace: ns });
    await eventually(async () => {
      const s = await core.readNamespacedSecret({ name: t.status!.certificate!.secretName, namespace: ns });
      expect(s.metadata?.annotations?.["custody.dev/serial"]).toBeDefined();
      expect(s.metadata?.annotations?.["custody.dev/serial"]).not.toBe(t.status!.certificate!.serial);
    });
  });

  it("deleting a task removes its credential through the finalizer", async () => {
    await createTask(task("short-lived", {}));
    const t = await waitPhase("short-lived", "Issued");
    await custom.deleteNamespacedCustomObject({ group, version, namespace: ns, plural, name: "short-lived" });
    await eventually(async () => {
      const gone = await getTask("short-lived").then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      expect(gone).toBe(true);
    });
    // The finalizer (not only garbage collection) ran: the revocation and the
    // deletion are in the provenance stream with the serial.
    const serial = t.status!.certificate!.serial;
    const events = (
      await readTopic(env.kafkaBrokers, topic, (rs) =>
        rs.some((r) => r.value.includes("dev.custody.task.deleted") && r.value.includes(t.metadata.uid)),
      )
    )
      .map(
        (r) =>
          JSON.parse(r.value) as {
            type: string;
            data: {
              context: { taskUid: string };
              serials?: string[];
              requester?: { username: string };
              delegator?: { kind: string; name: string };
            };
          },
      )
      .filter((e) => e.data.context.taskUid === t.metadata.uid);
    expect(events.map((e) => e.type)).toEqual([
      "dev.custody.task.requested",
      "dev.custody.task.delegation.verified",
      "dev.custody.task.issued",
      "dev.custody.task.revoked",
      "dev.custody.task.deleted",
    ]);
    // Who asked, as the API server authenticated it (the test's admin), and under whose authority.
    expect(events[0]?.data.requester?.username).toBe("custody-admin");
    expect(events[1]?.data.delegator).toMatchObject({ kind: "user", name: "alice" });
    expect(events[3]?.data.serials).toEqual([serial]);
    const secretGone = await core
      .readNamespacedSecret({ name: t.status!.certificate!.secretName, namespace: ns })
      .then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
    expect(secretGone).toBe(true);
  });

  it("denies a task whose deadline is already past, naming the field", async () => {
    await createTask(task("too-late", { deadline: "2020-01-01T00:00:00Z" }));
    const t = await waitPhase("too-late", "Denied");
    const ready = t.status?.conditions?.find((c) => c.type === "Ready");
    expect(ready?.reason).toBe("DeadlinePassed");
    expect(ready?.message).toContain("spec.deadline");
    expect(t.status?.certificate).toBeUndefined();
  });
});

describe("identity fields are immutable", () => {
  const kubectlPatch = (name: string, patch: string) => {
    try {
      execFileSync(
        join(env.binDir, "kubectl"),
        ["patch", "at", name, "-n", ns, "--type=merge", "-p", patch],
        {
          env: { ...process.env, KUBECONFIG: env.kubeconfig },
          stdio: "pipe",
        },
      );
      return "";
    } catch (e) {
      return String((e as { stderr: Buffer }).stderr);
    }
  };

  it("refuses an UPDATE that changes scope, parentRef or delegator, naming the field", async () => {
    await createTask(task("frozen", {}));
    await waitPhase("frozen", "Issued");
    expect(kubectlPatch("frozen", '{"spec":{"scope":["*:*"]}}')).toMatch(/spec\.scope.*immutable/);
    expect(kubectlPatch("frozen", '{"spec":{"parentRef":{"name":"other"}}}')).toMatch(
      /spec\.parentRef.*immutable/,
    );
    expect(kubectlPatch("frozen", '{"spec":{"delegator":{"kind":"User","name":"ceo"}}}')).toMatch(
      /spec\.delegator.*immutable/,
    );
    expect((await getTask("frozen")).status?.phase).toBe("Issued");
  });

  it("lists a revoked task's current and renewed-away certificates until they expire, also after the task is deleted", async () => {
    await createTask(task("leaky", { ttl: "5m" }));
    const first = (await waitPhase("leaky", "Issued")).status!.certificate!;
    // Renew once: the first certificate stays valid (in copies) until its notAfter.
    renewNow("leaky");
    const second = await eventually(
      async () => {
        const c = (await getTask("leaky")).status?.certificate;
        if (!c || c.serial === first.serial) throw new Error("not renewed yet");
        return c;
      },
      { timeoutMs: 20_000 },
    );
    expect(second).toMatchObject({ previousSerial: first.serial, previousNotAfter: first.notAfter });
    expect(kubectlPatch("leaky", '{"spec":{"revoked":true,"revocationReason":"leaked"}}')).toBe("");
    await waitPhase("leaky", "Revoked");
    const listed = async () =>
      eventually(
        async () => {
          const text = (await core.readNamespacedConfigMap({ name: "custody-trust-bundle", namespace: ns }))
            .data?.["revoked.txt"];
          for (const serial of [first.serial, second.serial])
            if (!text?.includes(`${serial} spiffe://`)) throw new Error(`${serial} not listed in ${text}`);
          return text!;
        },
        { timeoutMs: 20_000 },
      );
    await listed();
    // The task goes; its certificates stay listed (the published list is the durable record).
    await custom.deleteNamespacedCustomObject({
      group: "custody.dev",
      version: "v1alpha1",
      namespace: ns,
      plural: "agenttasks",
      name: "leaky",
    });
    await eventually(async () => {
      const gone = await getTask("leaky").then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      if (!gone) throw new Error("not gone yet");
    });
    await new Promise((r) => setTimeout(r, 1000));
    const after = await listed();
    expect(after).toContain(first.notAfter);
  });

  it("revokes on spec.revoked and refuses to undo it", async () => {
    await createTask(task("revoke-once", {}));
    await waitPhase("revoke-once", "Issued");
    expect(kubectlPatch("revoke-once", '{"spec":{"revoked":true,"revocationReason":"test"}}')).toBe("");
    await waitPhase("revoke-once", "Revoked");
    expect(kubectlPatch("revoke-once", '{"spec":{"revoked":false,"revocationReason":null}}')).toMatch(
      /spec\.revoked cannot be undone/,
    );
  });
});

describe("kubectl", () => {
  it("shows PHASE, DELEGATOR, SPIFFE-ID, EXPIRES, AGE, and with -o wide SCOPE and PARENT", async () => {
    await waitPhase("review-pr", "Issued");
    const kubectl = (...a: string[]) =>
      execFileSync(join(env.binDir, "kubectl"), a, {
        env: { ...process.env, KUBECONFIG: env.kubeconfig },
      }).toString();
    const table = kubectl("get", "at", "review-pr", "-n", ns);
    const [header, row] = table.trim().split("\n");
    expect(header?.split(/\s+/)).toEqual(["NAME", "PHASE", "DELEGATOR", "SPIFFE-ID", "EXPIRES", "AGE"]);
    expect(row).toContain("Issued");
    expect(row).toMatch(/Issued\s+alice\s/);
    expect(row).toContain(`spiffe://custody.local/ns/${ns}/agent/reviewer/task/review-pr`);
    expect(row).toMatch(/\d{4}-\d{2}-\d{2}T/);
    const wide = kubectl("get", "agenttasks.custody.dev", "review-pr", "-n", ns, "-o", "wide");
    const [wideHeader, wideRow] = wide.trim().split("\n");
    expect(wideHeader?.split(/\s+/)).toEqual([
      "NAME",
      "PHASE",
      "DELEGATOR",
      "SPIFFE-ID",
      "EXPIRES",
      "AGE",
      "SCOPE",
      "PARENT",
    ]);
    expect(wideRow).toContain("read:repos/acme/*");
    const described = kubectl("describe", "at", "review-pr", "-n", ns);
    expect(described).toContain("Delegation Chain");
    expect(described).toContain("Conditions");
  });
});

describe("provenance anchoring", () => {
  it("publishes the provenance key and anchors a signed checkpoint of an acknowledged stream head", async () => {
    await waitPhase("review-pr", "Issued");
    const cm = await eventually(
      async () => {
        const c = await core.readNamespacedConfigMap({ name: "custody-provenance", namespace: bed.opNs });
        if (!Object.keys(c.data ?? {}).some((k) => k.startsWith("checkpoint.")))
          throw new Error("no checkpoint anchored yet");
        return c;
      },
      { timeoutMs: 30_000 },
    );
    const keys = createKeyRing(
      (JSON.parse(cm.data!["jwks.json"]!) as { keys: JsonWebKey[] }).keys.map(
        (k) => ({ ...k }) as JsonWebKey,
      ),
    );
    const [key, text] = Object.entries(cm.data!).find(([k]) => k.startsWith("checkpoint."))!;
    const verdict = verifyCheckpoint(JSON.parse(text), keys);
    expect(verdict.ok).toBe(true);
    if (!verdict.ok) return;
    expect(key).toBe(`checkpoint.${verdict.checkpoint.stream.replace("/", ".")}`);
    // The anchored head is an event Kafka holds, with that exact hash.
    const records = await readTopic(env.kafkaBrokers, topic, (rs) =>
      rs.some((r) => r.value.includes(`"custodyhash":"${verdict.checkpoint.hash}"`)),
    );
    const head = records
      .map(
        (r) =>
          JSON.parse(r.value) as {
            custodystream: string;
            custodyseq: number;
            custodyhash: string;
            custodykid: string;
          },
      )
      .find((e) => e.custodyhash === verdict.checkpoint.hash);
    expect(head).toMatchObject({
      custodystream: verdict.checkpoint.stream,
      custodyseq: verdict.checkpoint.seq,
    });
    expect(keys.has(head!.custodykid)).toBe(true);
    // A tampered checkpoint does not verify.
    expect(verifyCheckpoint({ ...JSON.parse(text), seq: verdict.checkpoint.seq + 1 }, keys).ok).toBe(false);
  });
});

describe("the CLI", () => {
  it("`custody status` and the kubectl plugin show the task's phase and identity", async () => {
    await waitPhase("review-pr", "Issued");
    const bin = join(import.meta.dirname, "..", "..", "bin");
    const childEnv = {
      ...process.env,
      KUBECONFIG: env.kubeconfig,
      PATH: `${env.binDir}:${bin}:${process.env.PATH}`,
    };
    const json = JSON.parse(
      execFileSync(join(bin, "custody"), ["status", "review-pr", "-n", ns, "-o", "json"], {
        env: childEnv,
      }).toString(),
    ) as Array<{ name: string; phase: string; spiffeID: string; delegator: string }>;
    expect(json).toEqual([
      expect.objectContaining({
        name: "review-pr",
        phase: "Issued",
        delegator: "alice",
        spiffeID: `spiffe://custody.local/ns/${ns}/agent/reviewer/task/review-pr`,
      }),
    ]);
    // kubectl finds the plugin on PATH as `kubectl custody`.
    const table = execFileSync(join(env.binDir, "kubectl"), ["custody", "status", "-n", ns], {
      env: childEnv,
    }).toString();
    expect(table.split("\n")[0]).toMatch(/^NAMESPACE\s+NAME\s+PHASE/);
    expect(table).toMatch(/review-pr\s+Issued\s+alice\s/);
    // Bad flags are refused with the flag named and exit code 2.
    let code = 0;
    let stderr = "";
    try {
      execFileSync(join(bin, "custody"), ["status", "-o", "yaml"], { env: childEnv, stdio: "pipe" });
    } catch (e) {
      code = (e as { status: number }).status;
      stderr = String((e as { stderr: Buffer }).stderr);
    }
    expect(code).toBe(2);
    expect(stderr).toContain("-o: must be table or json");
  });
});

describe("bad input is refused by the API server with the field named", () => {
  const cases: Array<[string, Record<string, unknown>, RegExp, string?]> = [
    ["malformed scope", { scope: ["read repos"] }, /spec\.scope/],
    ["wildcard in the middle", { scope: ["read:a/*/b"] }, /spec\.scope/],
    ["ttl out of range", { ttl: "1m" }, /ttl must be between 5m and 24h/],
    ["ttl not a duration", { ttl: "ten minutes" }, /spec\.ttl/],
    ["unicode agent name", { agent: { name: "révieweur" } }, /spec\.agent\.name/],
    ["SPIFFE-illegal characters in the agent name", { agent: { name: "a/b%2e" } }, /spec\.agent\.name/],
    ["malformed deadline", { deadline: "tomorrow" }, /spec\.deadline/],
    ["uppercase task name", {}, /metadata\.name|DNS/, "Review-PR"],
    ["overlong task name", {}, /63/, "a".repeat(64)],
  ];
  for (const [what, spec, message, name] of cases) {
    it(`refuses ${what}`, async () => {
      const err = await custom
        .createNamespacedCustomObject({
          group,
          version,
          namespace: ns,
          plural,
          body: task(name ?? `bad-${randomUUID().slice(0, 6)}`, spec),
        })
        .then(
          () => undefined,
          (e: { code?: number; body?: string }) => e,
        );
      expect(err?.code).toBe(422);
      expect(String(err?.body)).toMatch(message);
    });
  }
});
