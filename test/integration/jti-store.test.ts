// The jti store against the real API server: a jti is accepted once, also
// when a second store (another replica, with its own connections) or many
// concurrent claims race for it; issuers do not collide; the sweep deletes
// only Leases whose assertions no replica can accept any more.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { loadClusterCredentials } from "../../shells/kube/credentials.ts";
import { isNotFound, KubeRest } from "../../shells/kube/rest.ts";
import {
  DEFAULT_SWEEP_GRACE_MS,
  JTI_ANNOTATION,
  JTI_EXPIRES_ANNOTATION,
  JTI_ISSUER_ANNOTATION,
  JtiStore,
  jtiLeaseName,
  ReplayError,
} from "../../webhook/jti-store.ts";

const env = inject("localEnv");
const ns = `jti-${randomUUID().slice(0, 8)}`;
const leases = `/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`;
let restA: KubeRest;
let restB: KubeRest;
let replicaA: JtiStore;
let replicaB: JtiStore;

const ISS = "https://delegation.example.com";
const later = () => new Date(Date.now() + 5 * 60_000);

interface Lease {
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}

async function leaseExists(name: string): Promise<boolean> {
  return restA.get(`${leases}/${name}`).then(
    () => true,
    (e: unknown) => {
      if (isNotFound(e)) return false;
      throw e;
    },
  );
}

async function replay(store: JtiStore, issuer: string, jti: string): Promise<ReplayError> {
  try {
    await store.claim({ issuer, jti, acceptedUntil: later() });
  } catch (e) {
    if (e instanceof ReplayError) return e;
    throw e;
  }
  throw new Error(`jti ${jti} was accepted twice`);
}

beforeAll(async () => {
  const creds = loadClusterCredentials({ kubeconfig: env.kubeconfig, context: "admin" });
  // Two clients with their own connections: two replicas of the webhook.
  restA = new KubeRest(creds, { connections: 1 });
  restB = new KubeRest(creds, { connections: 1 });
  await restA.post("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: ns } });
  replicaA = new JtiStore(restA, { namespace: ns });
  replicaB = new JtiStore(restB, { namespace: ns });
});

afterAll(async () => {
  await restA?.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
  restA?.close();
  restB?.close();
});

describe("claim", () => {
  it("accepts a jti once: the second claim, from this or another replica, is a replay", async () => {
    const jti = randomUUID();
    await replicaA.claim({ issuer: ISS, jti, acceptedUntil: later(), task: "agents/fix-4711" });
    const again = await replay(replicaA, ISS, jti);
    expect(again.message).toBe(
      `the assertion was already used: jti ${JSON.stringify(jti)} of issuer ${JSON.stringify(ISS)} ` +
        "is accepted only once; ask the issuer for a new assertion",
    );
    expect([again.issuer, again.jti]).toEqual([ISS, jti]);
    await replay(replicaB, ISS, jti);
  });

  it("records the claim as a labelled Lease named after issuer and jti, with its expiry", async () => {
    const jti = randomUUID();
    const until = new Date("2031-02-03T04:05:06.000Z");
    await replicaB.claim({ issuer: ISS, jti, acceptedUntil: until, task: "agents/t" });
    const lease = await restA.get<Lease>(`${leases}/${jtiLeaseName(ISS, jti)}`);
    expect(lease.metadata.name).toMatch(/^custody-jti-[0-9a-f]{40}$/);
    expect(lease.metadata.labels).toEqual({
      "app.kubernetes.io/managed-by": "custody",
      "custody.dev/component": "assertion-jti",
    });
    expect(lease.metadata.annotations?.[JTI_EXPIRES_ANNOTATION]).toBe("2031-02-03T04:05:06.000Z");
    expect(lease.metadata.annotations?.[JTI_ISSUER_ANNOTATION]).toBe(ISS);
    expect(lease.metadata.annotations?.[JTI_ANNOTATION]).toBe(jti);
  });

  it("lets exactly one of many concurrent claims from two replicas win", async () => {
    const jti = randomUUID();
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        (i % 2 === 0 ? replicaA : replicaB).claim({ issuer: ISS, jti, acceptedUntil: later() }),
      ),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(refused).toHaveLength(7);
    for (const r of refused) expect(r.reason).toBeInstanceOf(ReplayError);
  });

  it("keeps issuers apart: the same jti from two issuers is two assertions", async () => {
    const jti = "42";
    await replicaA.claim({ issuer: ISS, jti, acceptedUntil: later() });
    await replicaA.claim({ issuer: "https://workflows.example.com", jti, acceptedUntil: later() });
    await replay(replicaB, "https://workflows.example.com", jti);
    // The separator keeps ("a", "b\nc")-style splits apart from ("a\nb", "c").
    expect(jtiLeaseName("https://a", "b")).not.toBe(jtiLeaseName("https://a\nb", ""));
  });
});

describe("sweepExpired", () => {
  it("deletes only Leases past their expiry plus the grace, and leaves others alone", async () => {
    const store = replicaA;
    const now = Date.now();
    const old = { issuer: ISS, jti: `old-${randomUUID()}`, acceptedUntil: new Date(now - 60 * 60_000) };
    // Past its expiry, but within the grace: another replica's clock may still accept it.
    const recent = { issuer: ISS, jti: `recent-${randomUUID()}`, acceptedUntil: new Date(now - 60_000) };
    const live = { issuer: ISS, jti: `live-${randomUUID()}`, acceptedUntil: new Date(now + 5 * 60_000) };
    for (const c of [old, recent, live]) await store.claim(c);
    // Ours without a readable expiry (kept: forgetting a jti could admit a replay), and not ours.
    await restA.post(leases, {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        name: "custody-jti-unreadable",
        labels: { "app.kubernetes.io/managed-by": "custody", "custody.dev/component": "assertion-jti" },
      },
      spec: {},
    });
    await restA.post(leases, {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "someone-elses", annotations: { [JTI_EXPIRES_ANNOTATION]: "2000-01-01T00:00:00Z" } },
      spec: {},
    });

    const result = await replicaB.sweepExpired(now);
    expect(result.deleted).toBe(1);
    expect(result.unreadable).toEqual(["custody-jti-unreadable"]);
    expect(await leaseExists(jtiLeaseName(old.issuer, old.jti))).toBe(false);
    expect(await leaseExists(jtiLeaseName(recent.issuer, recent.jti))).toBe(true);
    expect(await leaseExists(jtiLeaseName(live.issuer, live.jti))).toBe(true);
    expect(await leaseExists("custody-jti-unreadable")).toBe(true);
    expect(await leaseExists("someone-elses")).toBe(true);
    // A live jti is still a replay after the sweep.
    await replay(replicaA, live.issuer, live.jti);

    // Once the grace has passed too, the recent one goes; the live one stays.
    const second = await replicaA.sweepExpired(now + DEFAULT_SWEEP_GRACE_MS);
    expect(second.deleted).toBe(1);
    expect(await leaseExists(jtiLeaseName(recent.issuer, recent.jti))).toBe(false);
    expect(await leaseExists(jtiLeaseName(live.issuer, live.jti))).toBe(true);
  });
});
