// The issuance seam, with fakes for the I/O shells: no credential reaches a
// Secret (or the status) before its provenance record is acknowledged, and a
// record that fails leaves nothing behind.
import { createHmac, generateKeyPairSync, randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";
import {
  REQUESTER_RECORD_ANNOTATION,
  type RequesterRecord,
  signRequesterRecord,
} from "../../core/admission/record.ts";
import {
  AgentSchema,
  type AgentTask,
  IDENTIFIER_PATTERN,
  LABEL_KEY_PATTERN,
} from "../../core/api/v1alpha1.ts";
import { identitySpecDigest } from "../../core/delegation.ts";
import { parseEventInput, provenanceSalt } from "../../core/provenance/events.ts";
import { createEs256Signer, createKeyRing } from "../../core/provenance/sign.ts";
import { generateCa, serialFromRandom } from "../../core/x509/index.ts";
import type { TaskEventRecorder } from "../../operator/kube-events.ts";
import type { ProvenanceRecorder } from "../../operator/provenance.ts";
import {
  CredentialIndex,
  createTaskReconciler,
  runtimeContext,
  WrittenState,
} from "../../operator/task-reconciler.ts";
import type { TrustBundlePublisher } from "../../operator/trust-bundle.ts";
import type { KubeRest } from "../../shells/kube/rest.ts";
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

/** The record the admission webhook would sign for task(); `change` forges or copies one. */
function signedRecord(t: AgentTask, change: (r: RequesterRecord) => void = () => {}, by = signer): string {
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
  change(record);
  return signRequesterRecord(by, record);
}

function task(record?: (t: AgentTask) => string | undefined): AgentTask {
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
    },
  };
  const annotation = (record ?? ((x) => signedRecord(x)))(t);
  if (annotation !== undefined) t.metadata.annotations = { [REQUESTER_RECORD_ANNOTATION]: annotation };
  return t;
}

/** `t` Issued, holding certificate 0a for another hour. */
function holding(t: AgentTask): AgentTask {
  t.status = {
    phase: "Issued",
    certificate: {
      serial: "0a",
      notBefore: new Date(Date.now() - 60_000).toISOString(),
      notAfter: new Date(Date.now() + 3_600_000).toISOString(),
      renewalTime: new Date(Date.now() + 1_800_000).toISOString(),
      publicKeySHA256: "0".repeat(64),
      secretName: "custody-svid-t1",
    },
  };
  return t;
}

/** An Issued task its platform team has just revoked (spec.revoked). */
function revokedHolding(): AgentTask {
  const t = holding(task());
  t.spec.revoked = true;
  return t;
}

function harness(
  record: (type: string) => Promise<void>,
  theTask: () => AgentTask = () => task(),
  credentials = new CredentialIndex(),
  healthy = true,
  /** Whether (and when) the revocation list holds a withdrawn credential's certificates. */
  listed: () => Promise<boolean> = async () => true,
) {
  const calls: string[] = [];
  const bodies: Record<string, unknown> = {};
  const rest = {
    post: async (path: string, body: unknown) => {
      calls.push(`POST ${path}`);
      bodies[`POST ${path}`] = body;
      return body;
    },
    put: async (path: string, body: unknown) => {
      calls.push(`PUT ${path}`);
      bodies[`PUT ${path}`] = body;
      // As the API server answers a status replace: the stored object with the new status.
      const stored = theTask();
      return {
        ...stored,
        status: (body as AgentTask).status,
        metadata: { ...stored.metadata, resourceVersion: "11" },
      };
    },
    patch: async (path: string) => {
      calls.push(`PATCH ${path}`);
      return theTask();
    },
    delete: async (path: string) => {
      calls.push(`DELETE ${path}`);
      return {};
    },
    get: async () => ({}),
  } as unknown as KubeRest;
  const ids: Array<{ type: string; id: string | undefined }> = [];
  const withdrawn: Array<{ serial: string | undefined; after: string[] }> = [];
  const recorder: ProvenanceRecorder = {
    record: (type, _subject, _data, _root, id) => {
      calls.push(`record ${type}`);
      ids.push({ type, id });
      return record(type);
    },
    healthy,
    backlog: 0,
    close: async () => {},
  };
  const reconciler = createTaskReconciler({
    rest,
    getTask: (key) => (key === "ns/t1" ? theTask() : undefined),
    credentials,
    ca: () => ca,
    recorder,
    events: { emit: () => {} } as unknown as TaskEventRecorder,
    bundles: { ensure: async () => {} } as unknown as TrustBundlePublisher,
    trustDomain: "custody.local",
    recordKeys: createKeyRing([webhookKey]),
    renewJitter: 0.05,
    log: silentLogger,
    // Which certificate, and how many calls (API requests, records) had been made by then.
    credentialWithdrawn: (t) => {
      withdrawn.push({ serial: t.status?.certificate?.serial, after: [...calls] });
      return listed();
    },
  });
  return { calls, bodies, reconciler, ids, withdrawn };
}

const SECRET = "POST /api/v1/namespaces/ns/secrets";
/** Recorded (not awaited on their own) before the first `issued`. */
const FIRST = ["record dev.custody.task.requested", "record dev.custody.task.delegation.verified"];
const STATUS = "PUT /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1/status";

describe("the issuance seam", () => {
  it("records `issued`, then writes the Secret, then the status", async () => {
    const { calls, bodies, reconciler } = harness(async () => {});
    const result = await reconciler.reconcile("ns/t1");
    expect(calls).toEqual([...FIRST, "record dev.custody.task.issued", SECRET, STATUS]);
    const secret = bodies[SECRET] as { data: Record<string, string>; metadata: { name: string } };
    expect(secret.metadata.name).toBe("custody-svid-t1");
    expect(Object.keys(secret.data).sort()).toEqual(["ca.crt", "spiffe-id", "tls.crt", "tls.key"]);
    const status = (bodies[STATUS] as AgentTask).status!;
    expect(status.phase).toBe("Issued");
    // The delegator comes from the verified admission record.
    expect(status.delegator).toEqual({ kind: "User", name: "alice" });
    expect(status.conditions?.find((c) => c.type === "DelegatorProven")).toMatchObject({
      status: "True",
      reason: "Impersonation",
    });
    expect(result).toMatchObject({ requeueAfterMs: expect.any(Number) });
  });

  it("writes nothing while the record is not yet acknowledged", async () => {
    let ack!: () => void;
    const acked = new Promise<void>((r) => {
      ack = r;
    });
    const { calls, reconciler } = harness(() => acked);
    const running = reconciler.reconcile("ns/t1");
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toEqual([...FIRST, "record dev.custody.task.issued"]);
    ack();
    await running;
    expect(calls).toEqual([...FIRST, "record dev.custody.task.issued", SECRET, STATUS]);
  });

  it("leaves no Secret and no status when the record fails", async () => {
    const { calls, reconciler } = harness(async () => {
      throw new Error("broker unreachable");
    });
    await expect(reconciler.reconcile("ns/t1")).rejects.toThrow("broker unreachable");
    expect(calls).toEqual([...FIRST, "record dev.custody.task.issued"]);
  });
});

describe("the requester record", () => {
  const cases: Array<[string, (t: AgentTask) => string | undefined, string]> = [
    ["missing", () => undefined, "rule present"],

    ["for another task", (t) => signedRecord(t, (r) => (r.name = "t2")), "rule subject"],
    [
      "binding another spec",
      (t) => signedRecord({ ...t, spec: { ...t.spec, scope: ["write:x/*"] } }),
      "rule spec-digest",
    ],
    [
      "copied from a deleted task of the same name",
      (t) => signedRecord(t, (r) => (r.issuedAt = new Date(Date.parse(created) - 60_000).toISOString())),
      "rule issued-at",
    ],
    [
      "proving someone other than the declared delegator",
      (t) => signedRecord(t, (r) => (r.delegator = { kind: "User", name: "bob" })),
      "rule delegator",
    ],
    [
      "tampered after signing",
      (t) => {
        const [h, p, sig] = signedRecord(t).split(".");
        const payload = JSON.parse(Buffer.from(p!, "base64url").toString()) as RequesterRecord;
        payload.delegator.name = "root";
        return `${h}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.${sig}`;
      },
      "rule signature",
    ],
  ];
  for (const [what, make, rule] of cases) {
    it(`denies a task whose record is ${what}, with no credential and no issued record`, async () => {
      const { calls, bodies, reconciler } = harness(
        async () => {},
        () => task(make),
      );
      await reconciler.reconcile("ns/t1");
      // Deny removes any credential (none here), records the delegation refused and the task
      // denied, then writes status: never a Secret write.
      expect(calls).toEqual([
        `DELETE ${SECRET.slice(5)}/custody-svid-t1`,
        "record dev.custody.task.delegation.refused",
        "record dev.custody.task.denied",
        STATUS,
      ]);
      const status = (bodies[STATUS] as AgentTask).status!;
      expect(status.phase).toBe("Denied");
      const ready = status.conditions?.find((c) => c.type === "Ready");
      expect(ready?.reason).toBe("RequesterUnproven");
      expect(ready?.message).toContain(`metadata.annotations[${REQUESTER_RECORD_ANNOTATION}]`);
      expect(ready?.message).toContain(rule);
    });
  }
});

describe("a task signed by another installation's admission key", () => {
  it("is left alone: no credential, no status, no event", async () => {
    const otherKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const { calls, reconciler } = harness(
      async () => {},
      () => task((t) => signedRecord(t, () => {}, createEs256Signer(otherKey))),
    );
    const result = await reconciler.reconcile("ns/t1");
    expect(calls).toEqual([]);
    expect(result).toMatchObject({ requeueAfterMs: expect.any(Number) });
  });

  it("is revoked when this installation issued it (a lost key must not park a credential)", async () => {
    const otherKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const issued = () => holding(task((x) => signedRecord(x, () => {}, createEs256Signer(otherKey))));
    // Its Secret names this installation's CA.
    const mine = new CredentialIndex();
    mine.set("ns/t1", "0a", true);
    const { calls, bodies, reconciler } = harness(async () => {}, issued, mine);
    await reconciler.reconcile("ns/t1");
    expect(calls).toContain("record dev.custody.task.revoked");
    expect((bodies[STATUS] as AgentTask).status?.phase).toBe("Revoked");

    // Issued by another installation (its CA on the Secret): left alone, not revoked.
    const theirs = new CredentialIndex();
    theirs.set("ns/t1", "0a", false);
    const other = harness(async () => {}, issued, theirs);
    await other.reconciler.reconcile("ns/t1");
    expect(other.calls).toEqual([]);
  });

  it("is, when deleted, left to its installation to finalize (the finalizer policy sets the same finalizer on all)", async () => {
    const otherKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const deleting = (record: (t: AgentTask) => string) => () => {
      const t = task(record);
      (t.metadata as { deletionTimestamp?: string }).deletionTimestamp = new Date().toISOString();
      return t;
    };
    const theirs = harness(
      async () => {},
      deleting((t) => signedRecord(t, () => {}, createEs256Signer(otherKey))),
    );
    expect(await theirs.reconciler.reconcile("ns/t1")).toMatchObject({ requeueAfterMs: expect.any(Number) });
    expect(theirs.calls).toEqual([]);

    // Left alone only for a while: an installation gone (or a replaced key of ours) must not
    // leave the deletion hanging. Then the finalizer alone is released: nothing deleted or recorded.
    const longAgo = () => {
      const t = deleting((x) => signedRecord(x, () => {}, createEs256Signer(otherKey)))();
      (t.metadata as { deletionTimestamp?: string }).deletionTimestamp = new Date(
        Date.now() - 6 * 60_000,
      ).toISOString();
      return t;
    };
    const orphan = harness(async () => {}, longAgo);
    await orphan.reconciler.reconcile("ns/t1");
    expect(orphan.calls).toEqual(["PATCH /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1"]);

    // One its installation issued stays its own, however long: its revocation is for it to record.
    const issuedLongAgo = harness(
      async () => {},
      () => holding(longAgo()),
    );
    expect(await issuedLongAgo.reconciler.reconcile("ns/t1")).toMatchObject({ requeueAfterMs: 60_000 });
    expect(issuedLongAgo.calls).toEqual([]);

    // Its own: the credential deleted, `deleted` recorded, then the finalizer released.
    const ours = harness(
      async () => {},
      deleting((t) => signedRecord(t)),
    );
    await ours.reconciler.reconcile("ns/t1");
    expect(ours.calls).toEqual([
      "DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1",
      "record dev.custody.task.deleted",
      "PATCH /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1",
    ]);
  });
});

describe("a deleted task's certificates", () => {
  const deletingHolder = () => {
    const t = holding(task());
    (t.metadata as { deletionTimestamp?: string }).deletionTimestamp = new Date().toISOString();
    return t;
  };
  const PATCH = "PATCH /apis/custody.dev/v1alpha1/namespaces/ns/agenttasks/t1";
  /** The reconciler of a deleted task; `secretHeld`: its Secret still exists (the index has its serial). */
  const deletedTask = (listed: () => Promise<boolean>, secretHeld = true, theTask = deletingHolder) => {
    const credentials = new CredentialIndex();
    if (secretHeld) credentials.set("ns/t1", "0a", true);
    return harness(async () => {}, theTask, credentials, true, listed);
  };

  it("are in the revocation list before any event and before the finalizer goes (after the task, only the list remembers them)", async () => {
    let publish!: (ok: boolean) => void;
    const published = new Promise<boolean>((r) => {
      publish = r;
    });
    const h = deletedTask(() => published);
    const finalizing = h.reconciler.reconcile("ns/t1");
    await vi.waitFor(() => expect(h.withdrawn.map((w) => w.serial)).toEqual(["0a"]));
    expect(h.calls).toEqual(["DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1"]);
    publish(true);
    await finalizing;
    expect(h.calls).toEqual([
      "DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1",
      "record dev.custody.task.revoked",
      "record dev.custody.task.deleted",
      PATCH,
    ]);
  });

  it("keep the finalizer while the list cannot be written, recording nothing; the retry finalizes once it is", async () => {
    const failing = deletedTask(async () => false);
    expect(await failing.reconciler.reconcile("ns/t1")).toEqual({ requeueAfterMs: 2_000 });
    expect(failing.calls).toEqual(["DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1"]);
    // The retry: the Secret is gone, the status still says Issued; listed again, then released.
    const retry = deletedTask(async () => true, false);
    await retry.reconciler.reconcile("ns/t1");
    expect(retry.withdrawn.map((w) => w.serial)).toEqual(["0a"]);
    expect(retry.calls.at(-1)).toBe(PATCH);
  });

  it("hold no worker for a list that takes long: the attempt comes back later", async () => {
    vi.useFakeTimers();
    try {
      const h = deletedTask(() => new Promise<boolean>(() => {}));
      const attempt = h.reconciler.reconcile("ns/t1");
      await vi.advanceTimersByTimeAsync(2_000);
      expect(await attempt).toEqual({ requeueAfterMs: 2_000 });
      expect(h.calls).toEqual(["DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1"]);
    } finally {
      vi.useRealTimers();
    }
  });

  it("do not keep the task forever: after 5 minutes of a list that cannot be written, the finalizer goes", async () => {
    const deletedLongAgo = () => {
      const t = deletingHolder();
      (t.metadata as { deletionTimestamp?: string }).deletionTimestamp = new Date(
        Date.now() - 6 * 60_000,
      ).toISOString();
      return t;
    };
    const h = deletedTask(async () => false, false, deletedLongAgo);
    await h.reconciler.reconcile("ns/t1");
    expect(h.withdrawn.map((w) => w.serial)).toEqual(["0a"]);
    expect(h.calls.at(-1)).toBe(PATCH);
  });
});

describe("ids of terminal events", () => {
  it("are the same for a retry of one fact, and differ once the task was edited and judged again", async () => {
    const unproven = (generation: number) => () => {
      const t = task(() => undefined); // no requester record: Denied, RequesterUnproven
      t.metadata.generation = generation;
      return t;
    };
    const idsOf = async (generation: number) => {
      const h = harness(async () => {}, unproven(generation));
      await h.reconciler.reconcile("ns/t1");
      return h.ids.filter((x) => x.type === "dev.custody.task.denied").map((x) => x.id);
    };
    const [first] = await idsOf(1);
    const [again] = await idsOf(1);
    const [edited] = await idsOf(2);
    expect(first).toBeDefined();
    expect(again).toBe(first);
    expect(edited).not.toBe(first);
  });

  it("are the same for a retried expiry of a task that holds no certificate (not derived from the clock)", async () => {
    const deadline = new Date(Date.now() - 60_000).toISOString();
    const issuedWithoutCertificate = () => {
      const t = task(() => undefined);
      t.spec.deadline = deadline;
      t.metadata.annotations = { [REQUESTER_RECORD_ANNOTATION]: signedRecord(t) };
      t.status = { phase: "Issued" };
      return t;
    };
    vi.useFakeTimers();
    try {
      const expiredEvents = async () => {
        const h = harness(async () => {}, issuedWithoutCertificate);
        await h.reconciler.reconcile("ns/t1");
        expect((h.bodies[STATUS] as AgentTask).status?.phase).toBe("Expired");
        return h.ids.filter((x) => x.type === "dev.custody.task.expired").map((x) => x.id);
      };
      const [first] = await expiredEvents();
      vi.setSystemTime(Date.now() + 7_000); // a restart's retry, seconds later
      const [again] = await expiredEvents();
      expect(first).toBeDefined();
      expect(again).toBe(first);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("while the provenance stream is unavailable (Kafka down, or not yet open after a takeover)", () => {
  it("mints nothing and says why in the task's status, then issues once the stream is back", async () => {
    const down = harness(async () => {}, undefined, new CredentialIndex(), false);
    const result = await down.reconciler.reconcile("ns/t1");
    expect(down.calls).toEqual([STATUS]);
    const status = (down.bodies[STATUS] as AgentTask).status!;
    expect(status.phase).toBe("Pending");
    expect(status.certificate).toBeUndefined();
    expect(status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "ProvenanceUnavailable",
    });
    expect(result).toEqual({ requeueAfterMs: 5_000 });

    const up = harness(async () => {});
    await up.reconciler.reconcile("ns/t1");
    expect(up.calls).toEqual([...FIRST, "record dev.custody.task.issued", SECRET, STATUS]);
  });

  it("gives up an attempt whose issued event Kafka does not acknowledge in time; records it abandoned once it does", async () => {
    vi.useFakeTimers();
    try {
      let ack!: () => void;
      const late = new Promise<void>((r) => {
        ack = r;
      });
      let first = true;
      const { calls, bodies, reconciler } = harness(async (type) => {
        if (type === "dev.custody.task.issued" && first) {
          first = false;
          return late;
        }
      });
      const attempt = reconciler.reconcile("ns/t1");
      await vi.advanceTimersByTimeAsync(3_000);
      expect(await attempt).toEqual({ requeueAfterMs: 5_000 });
      expect(calls).toEqual([...FIRST, "record dev.custody.task.issued", STATUS]);
      expect((bodies[STATUS] as AgentTask).status?.conditions?.find((c) => c.type === "Ready")?.reason).toBe(
        "ProvenanceUnavailable",
      );
      // While that event waits, no attempt appends another certificate behind it.
      calls.length = 0;
      expect(await reconciler.reconcile("ns/t1")).toEqual({ requeueAfterMs: 5_000 });
      expect(calls.filter((c) => c.startsWith("record") || c === SECRET)).toEqual([]);
      // Kafka takes it: the undelivered certificate is recorded as abandoned; the next attempt issues.
      ack();
      await vi.advanceTimersByTimeAsync(0);
      expect(calls).toContain("record dev.custody.task.issuance.abandoned");
      calls.length = 0;
      await reconciler.reconcile("ns/t1");
      // (`requested` and `delegation.verified` again, with the same ids: recognisable duplicates.)
      expect(calls).toEqual([...FIRST, "record dev.custody.task.issued", SECRET, STATUS]);
    } finally {
      vi.useRealTimers();
    }
  });

  it("does not hold a worker on a revocation's event Kafka does not acknowledge; the retry's event is a duplicate by id", async () => {
    vi.useFakeTimers();
    try {
      const revoked = revokedHolding;
      let ack!: () => void;
      const late = new Promise<void>((r) => {
        ack = r;
      });
      let calls = 0;
      const held = new CredentialIndex();
      held.set("ns/t1", "0a", true);
      const h = harness(async () => (calls++ === 0 ? late : undefined), revoked, held);
      const attempt = h.reconciler.reconcile("ns/t1");
      await vi.advanceTimersByTimeAsync(3_000);
      expect(await attempt).toEqual({ requeueAfterMs: 5_000 });
      // The credential went at once; no status before the event is acknowledged.
      expect(h.calls).toEqual([
        "DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1",
        "record dev.custody.task.revoked",
      ]);
      // Its certificate was handed to the revocation list right after the
      // deletion, before the event that waits for Kafka.
      expect(h.withdrawn).toEqual([
        { serial: "0a", after: ["DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1"] },
      ]);
      // While it waits, nothing else is appended.
      h.calls.length = 0;
      expect(await h.reconciler.reconcile("ns/t1")).toEqual({ requeueAfterMs: 5_000 });
      expect(h.calls.filter((c) => c.startsWith("record"))).toEqual([]);
      ack();
      await vi.advanceTimersByTimeAsync(0);
      h.calls.length = 0;
      await h.reconciler.reconcile("ns/t1");
      expect(h.calls).toContain("record dev.custody.task.revoked");
      expect((h.bodies[STATUS] as AgentTask).status?.phase).toBe("Revoked");
      const ids = h.ids.filter((x) => x.type === "dev.custody.task.revoked").map((x) => x.id);
      expect(ids).toHaveLength(2);
      expect(ids[0]).toBeDefined();
      expect(ids[1]).toBe(ids[0]);
    } finally {
      vi.useRealTimers();
    }
  });

  it("lists as revoked only certificates a task held: not a serial written into the status of one that never did", async () => {
    const forged = () => {
      const t = task(() => undefined); // no requester record: Denied before any issuance
      t.status = { phase: "Pending", certificate: holding(task()).status!.certificate! };
      return t;
    };
    const h = harness(async () => {}, forged);
    await h.reconciler.reconcile("ns/t1");
    expect((h.bodies[STATUS] as AgentTask).status?.phase).toBe("Denied");
    expect(h.calls).toContain("DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1");
    expect(h.withdrawn).toEqual([]);
  });

  it("still deletes a revoked task's credential at once; its event and status follow when the stream is back", async () => {
    const revoked = revokedHolding;
    const held = new CredentialIndex();
    held.set("ns/t1", "0a", true);
    const down = harness(async () => {}, revoked, held, false);
    expect(await down.reconciler.reconcile("ns/t1")).toEqual({ requeueAfterMs: 5_000 });
    expect(down.calls).toEqual(["DELETE /api/v1/namespaces/ns/secrets/custody-svid-t1"]);

    const up = harness(async () => {}, revoked, new CredentialIndex());
    await up.reconciler.reconcile("ns/t1");
    expect(up.calls).toContain("record dev.custody.task.revoked");
    expect((up.bodies[STATUS] as AgentTask).status?.phase).toBe("Revoked");
  });
});

/** A `requested` event around what runtimeContext recorded. */
function requestedEvent(recorded: ReturnType<typeof runtimeContext>) {
  return {
    id: "e1",
    source: "custody.dev/operator/test",
    type: "dev.custody.task.requested",
    subject: "ns/t1",
    time: new Date().toISOString(),
    data: {
      context: {
        taskUid: "uid-1",
        namespace: "ns",
        name: "t1",
        chainUids: ["uid-1"],
        rootUid: "uid-1",
        contextDigest: "0".repeat(64),
      },
      requester: { username: "alice" },
      agent: "reviewer",
      ...recorded,
      scope: ["read:x/*"],
      ttl: "1h",
    },
  };
}

describe("the requested event's runtime context", () => {
  const agent = {
    name: "reviewer",
    model: { provider: "anthropic", name: "claude", version: "2026-10" },
    tools: [{ name: "git", version: "2.45" }],
    // The longest values the spec allows (tools and labels) pass the event's schema too.
    labels: { team: "payments", customer: "ACME-Bank-0042", notes: "n".repeat(256) },
    sensitiveLabels: ["customer"],
  };

  it("records model, tools and labels; a label marked sensitive only as an HMAC under the salt", () => {
    const salt = provenanceSalt(Buffer.alloc(32, 9));
    const recorded = runtimeContext(agent, salt);
    expect(recorded).toEqual({
      model: agent.model,
      tools: agent.tools,
      labels: { team: "payments", notes: "n".repeat(256) },
      sensitive: {
        saltId: salt.id,
        digests: {
          "labels.customer": createHmac("sha256", salt.key).update("ACME-Bank-0042").digest("hex"),
        },
      },
    });
    expect(JSON.stringify(recorded)).not.toContain("ACME-Bank-0042");
    // The schema of `requested` takes it as is.
    expect(() => parseEventInput(requestedEvent(recorded))).not.toThrow();
  });

  it("yields data the requested event's schema accepts for every agent the spec accepts", () => {
    const salt = provenanceSalt(Buffer.alloc(32, 3));
    const ident = fc.stringMatching(new RegExp(IDENTIFIER_PATTERN)).filter((x) => x.length <= 128);
    const labelKey = fc.stringMatching(new RegExp(LABEL_KEY_PATTERN)).filter((x) => x.length <= 63);
    const agents = fc
      .record({
        model: fc.option(fc.record({ provider: ident, name: ident, version: ident }), { nil: undefined }),
        tools: fc.uniqueArray(fc.record({ name: ident, version: ident }), {
          maxLength: 64,
          selector: (t) => t.name,
        }),
        labels: fc.dictionary(labelKey, fc.string({ maxLength: 256 }), { maxKeys: 32 }),
      })
      .chain((a) =>
        fc
          .subarray(Object.keys(a.labels))
          .map((sensitiveLabels) => ({ name: "agent", ...a, sensitiveLabels })),
      );
    fc.assert(
      fc.property(agents, (candidate) => {
        const agent = AgentSchema.parse(candidate);
        parseEventInput(requestedEvent(runtimeContext(agent, salt)));
      }),
      { numRuns: 200 },
    );
  });

  it("leaves a sensitive value out entirely when no salt is configured", () => {
    const recorded = runtimeContext(agent, undefined);
    expect(recorded.labels).toEqual({ team: "payments", notes: "n".repeat(256) });
    expect(recorded).not.toHaveProperty("sensitive");
    expect(JSON.stringify(recorded)).not.toContain("ACME-Bank-0042");
  });
});

describe("WrittenState: our status writes until the informer has them", () => {
  const withRv = (rv: string): AgentTask => {
    const t = task();
    t.metadata.resourceVersion = rv;
    (t.metadata as { managedFields?: unknown }).managedFields = [{ manager: "custody", fieldsV1: {} }];
    return t;
  };

  it("bridges a write the cache has not seen yet, without the API server's managedFields", () => {
    const w = new WrittenState(() => "10");
    w.remember("ns/t1", withRv("11"));
    const fresh = w.freshest("ns/t1", withRv("10"));
    expect(fresh.metadata.resourceVersion).toBe("11");
    expect(fresh.metadata).not.toHaveProperty("managedFields");
    expect(fresh.metadata.annotations?.[REQUESTER_RECORD_ANNOTATION]).toBeDefined();
  });

  it("keeps nothing when the watch event arrived before the write's response", () => {
    let cached = "11";
    const w = new WrittenState(() => cached);
    w.remember("ns/t1", withRv("11"));
    cached = "12";
    w.remember("ns/t1", withRv("11")); // an older answer than the cache, too
    // Nothing remembered: the cached copy is returned as it is.
    const c = withRv("9");
    expect(w.freshest("ns/t1", c)).toBe(c);
  });
});
