import { describe, expect, it } from "vitest";
import {
  formatMicroTime,
  kubeLeaseStore,
  LeaderElector,
  type LeaderElectorOptions,
  type LeaseSpec,
  type LeaseStore,
  type StoredLease,
} from "../../shells/kube/leader-election.ts";
import { KubeApiError, type KubeRest } from "../../shells/kube/rest.ts";
import { FakeClock } from "../support/fake-clock.ts";

/** The apiserver's view of one Lease: resourceVersion-checked create and update. */
class LeaseServer {
  lease: StoredLease | undefined;
  private rv = 0;
  /** Runs just before an update is applied (to inject a rival write). */
  beforeUpdate: (() => void) | undefined;

  write(spec: LeaseSpec): StoredLease {
    this.lease = { resourceVersion: String(++this.rv), spec: structuredClone(spec), metadata: { name: "l" } };
    return structuredClone(this.lease);
  }
  get spec(): LeaseSpec {
    if (!this.lease) throw new Error("no lease");
    return this.lease.spec;
  }

  /** A client of this server; `mode` simulates a partition ("fail") or a stuck connection ("hang"). */
  client(): LeaseStore & { mode: "ok" | "fail" | "hang" } {
    const server = this;
    const gate = async (c: { mode: string }) => {
      await Promise.resolve();
      if (c.mode === "fail") throw new Error("connect ECONNREFUSED");
      if (c.mode === "hang") await new Promise(() => {});
    };
    return {
      mode: "ok",
      async get() {
        await gate(this);
        return server.lease && structuredClone(server.lease);
      },
      async create(spec) {
        await gate(this);
        if (server.lease) throw new KubeApiError(409, "AlreadyExists", "leases exists", {});
        return server.write(spec);
      },
      async update(current, spec) {
        await gate(this);
        const hook = server.beforeUpdate;
        server.beforeUpdate = undefined;
        hook?.();
        if (!server.lease) throw new KubeApiError(404, "NotFound", "lease not found", {});
        if (server.lease.resourceVersion !== current.resourceVersion) {
          throw new KubeApiError(409, "Conflict", "the object has been modified", {});
        }
        return server.write(spec);
      },
    };
  }
}

interface Candidate {
  elector: LeaderElector;
  store: ReturnType<LeaseServer["client"]>;
  events: string[];
  epochs: number[];
  startedAt: number[];
  stoppedAt: number[];
  signals: AbortSignal[];
}

function candidate(
  server: LeaseServer,
  clock: FakeClock,
  identity: string,
  extra: Partial<LeaderElectorOptions> = {},
): Candidate {
  const store = server.client();
  const c: Candidate = {
    store,
    events: [],
    epochs: [],
    startedAt: [],
    stoppedAt: [],
    signals: [],
    elector: undefined as unknown as LeaderElector,
  };
  c.elector = new LeaderElector({
    store,
    namespace: "custody-system",
    name: "custody-operator",
    identity,
    clock,
    onStartedLeading: (epoch, signal) => {
      c.events.push(`started:${epoch}`);
      c.epochs.push(epoch);
      c.startedAt.push(clock.now());
      c.signals.push(signal);
    },
    onStoppedLeading: () => {
      c.events.push("stopped");
      c.stoppedAt.push(clock.now());
    },
    onNewLeader: (id) => c.events.push(`leader:${id}`),
    ...extra,
  } as LeaderElectorOptions);
  return c;
}

const MICRO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

/** Advances in small steps, failing if both ever claim leadership at once. */
async function advanceChecked(clock: FakeClock, ms: number, cs: Candidate[], stepMs = 100): Promise<void> {
  for (let t = 0; t < ms; t += stepMs) {
    await clock.advance(Math.min(stepMs, ms - t));
    expect(cs.filter((c) => c.elector.isLeader()).length).toBeLessThanOrEqual(1);
  }
}

function setup() {
  const clock = new FakeClock(Date.UTC(2026, 10, 28, 3, 0, 0));
  const server = new LeaseServer();
  return { clock, server };
}

describe("LeaderElector", () => {
  it("a single candidate creates the Lease and leads with epoch 0", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    expect(a.elector.isLeader()).toBe(true);
    expect(a.elector.epoch()).toBe(0);
    expect(a.events).toEqual(["leader:a", "started:0"]);
    expect(server.spec).toMatchObject({ holderIdentity: "a", leaseDurationSeconds: 15, leaseTransitions: 0 });
    expect(server.spec.acquireTime).toBe("2026-11-28T03:00:00.000000Z");
    expect(server.spec.renewTime).toMatch(MICRO_TIME);

    // Renews every retry period, keeping acquireTime and the epoch.
    await clock.advance(2_000);
    expect(server.spec.renewTime).toBe("2026-11-28T03:00:02.000000Z");
    expect(server.spec.acquireTime).toBe("2026-11-28T03:00:00.000000Z");
    expect(server.spec.leaseTransitions).toBe(0);
    await a.elector.stop();
  });

  it("a second candidate waits while the leader renews", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    const b = candidate(server, clock, "b");
    void a.elector.run();
    await clock.advance(0);
    void b.elector.run();
    await advanceChecked(clock, 60_000, [a, b]);
    expect(a.elector.isLeader()).toBe(true);
    expect(b.elector.isLeader()).toBe(false);
    expect(b.elector.epoch()).toBeUndefined();
    expect(b.events).toEqual(["leader:a"]);
    expect(server.spec.holderIdentity).toBe("a");
    expect(server.spec.leaseTransitions).toBe(0);
  });

  it("two candidates racing to create the Lease: exactly one wins", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    const b = candidate(server, clock, "b");
    void a.elector.run();
    void b.elector.run();
    await advanceChecked(clock, 10_000, [a, b]);
    const leaders = [a, b].filter((c) => c.elector.isLeader());
    expect(leaders).toHaveLength(1);
    const winner = leaders[0]!.elector.identity;
    expect(server.spec.holderIdentity).toBe(winner);
    expect(a.events[0]).toBe(`leader:${winner}`);
    expect(b.events[0]).toBe(`leader:${winner}`);
  });

  for (const failure of ["fail", "hang"] as const) {
    it(`a partitioned leader (calls ${failure}) steps down within renewDeadline, before the standby may take over`, async () => {
      const { clock, server } = setup();
      const a = candidate(server, clock, "a");
      const b = candidate(server, clock, "b");
      void a.elector.run();
      await clock.advance(0);
      void b.elector.run();
      await advanceChecked(clock, 7_000, [a, b]);

      a.store.mode = failure;
      const lastRenew = Date.parse(server.spec.renewTime!);
      await advanceChecked(clock, 30_000, [a, b]);

      expect(a.stoppedAt).toHaveLength(1);
      expect(a.stoppedAt[0]!).toBeLessThanOrEqual(lastRenew + 10_000);
      expect(a.signals[0]!.aborted).toBe(true);
      expect(a.elector.isLeader()).toBe(false);

      expect(b.startedAt).toHaveLength(1);
      // Not before the lease (15 s after B saw the last renewal) expired...
      expect(b.startedAt[0]!).toBeGreaterThanOrEqual(lastRenew + 15_000);
      // ...but within one lease duration plus two retry periods of it.
      expect(b.startedAt[0]!).toBeLessThanOrEqual(lastRenew + 15_000 + 4_000);
      expect(b.epochs).toEqual([1]);
      expect(server.spec).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 });
    });
  }

  it("a leader whose renewals fail but recover within renewDeadline keeps leading", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    a.store.mode = "fail";
    await clock.advance(7_000);
    expect(a.elector.isLeader()).toBe(true);
    a.store.mode = "ok";
    await clock.advance(20_000);
    expect(a.elector.isLeader()).toBe(true);
    expect(a.events).toEqual(["leader:a", "started:0"]);
  });

  it("isLeader() is false past the deadline even if the step-down timer has not run yet", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    a.store.mode = "hang";
    // Move the clock without firing timers, as a blocked event loop would.
    (clock as unknown as { t: number }).t += 10_000;
    expect(a.elector.isLeader()).toBe(false);
    expect(a.elector.epoch()).toBeUndefined();
  });

  it("re-acquiring after a step-down starts a new epoch even with no rival", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    a.store.mode = "fail";
    await clock.advance(12_000);
    expect(a.elector.isLeader()).toBe(false);
    a.store.mode = "ok";
    await clock.advance(2_000);
    expect(a.elector.isLeader()).toBe(true);
    expect(a.epochs).toEqual([0, 1]);
    expect(server.spec.leaseTransitions).toBe(1);
  });

  it("graceful stop fences first, then releases, and the standby takes over at its next retry", async () => {
    const { clock, server } = setup();
    let holderWhenStopped: string | undefined;
    const a = candidate(server, clock, "a", {
      onStoppedLeading: async () => {
        holderWhenStopped = server.spec.holderIdentity;
      },
    });
    const b = candidate(server, clock, "b");
    void a.elector.run();
    await clock.advance(0);
    void b.elector.run();
    await clock.advance(5_000);

    const stopped = a.elector.stop();
    await clock.advance(0);
    await stopped;
    expect(holderWhenStopped).toBe("a");
    expect(a.elector.isLeader()).toBe(false);
    expect(server.spec).toMatchObject({ holderIdentity: "", leaseDurationSeconds: 1, leaseTransitions: 0 });

    const releasedAt = clock.now();
    await advanceChecked(clock, 2_000, [a, b]);
    expect(b.elector.isLeader()).toBe(true);
    expect(b.startedAt[0]! - releasedAt).toBeLessThanOrEqual(2_000);
    expect(b.epochs).toEqual([1]);
    expect(server.spec.holderIdentity).toBe("b");
  });

  it("stop() does not release a lease held by someone else", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    const b = candidate(server, clock, "b");
    void a.elector.run();
    await clock.advance(0);
    void b.elector.run();
    await clock.advance(3_000);
    await b.elector.stop();
    expect(server.spec.holderIdentity).toBe("a");
    expect(b.events).toEqual(["leader:a"]);
  });

  it("an update that loses an optimistic-concurrency race does not lead; the rival's lease is honoured", async () => {
    const { clock, server } = setup();
    server.write({
      holderIdentity: "",
      leaseDurationSeconds: 1,
      renewTime: formatMicroTime(0),
      leaseTransitions: 4,
    });
    // A rival writes between A's read and A's update.
    server.beforeUpdate = () =>
      server.write({
        holderIdentity: "c",
        leaseDurationSeconds: 15,
        renewTime: formatMicroTime(0),
        leaseTransitions: 5,
      });
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    expect(a.elector.isLeader()).toBe(false);
    expect(server.spec.holderIdentity).toBe("c");

    // c never renews: A takes over once 15 s have passed since A first saw c's record.
    await clock.advance(14_000);
    expect(a.elector.isLeader()).toBe(false);
    await clock.advance(4_000);
    expect(a.elector.isLeader()).toBe(true);
    expect(a.epochs).toEqual([6]);
    expect(a.events).toEqual(["leader:c", "leader:a", "started:6"]);
  });

  it("a leader that finds the lease taken by another holder steps down at once", async () => {
    const { clock, server } = setup();
    const a = candidate(server, clock, "a");
    void a.elector.run();
    await clock.advance(0);
    server.write({ ...server.spec, holderIdentity: "x", leaseTransitions: 1 });
    await clock.advance(2_000);
    expect(a.elector.isLeader()).toBe(false);
    expect(a.events).toEqual(["leader:a", "started:0", "leader:x", "stopped"]);
    // And it does not take the lease back while x's lease is unexpired.
    await clock.advance(10_000);
    expect(server.spec.holderIdentity).toBe("x");
  });

  it("rejects timings that could let two leaders overlap", () => {
    const base = {
      store: new LeaseServer().client(),
      namespace: "ns",
      name: "l",
      identity: "a",
      onStartedLeading: () => {},
      onStoppedLeading: () => {},
    };
    expect(() => new LeaderElector({ ...base, leaseDurationMs: 10_000, renewDeadlineMs: 10_000 })).toThrow(
      /leaseDurationMs: must be greater than renewDeadlineMs/,
    );
    expect(() => new LeaderElector({ ...base, renewDeadlineMs: 2_000, retryPeriodMs: 2_000 })).toThrow(
      /renewDeadlineMs: must be greater than retryPeriodMs/,
    );
    expect(() => new LeaderElector({ ...base, leaseDurationMs: 15_500 })).toThrow(/whole number of seconds/);
    expect(() => new LeaderElector({ ...base, identity: "" })).toThrow(/identity/);
  });
});

describe("formatMicroTime", () => {
  it("writes RFC 3339 with six fractional digits in UTC", () => {
    expect(formatMicroTime(Date.UTC(2026, 10, 28, 3, 0, 0, 123))).toBe("2026-11-28T03:00:00.123000Z");
    expect(formatMicroTime(0)).toMatch(MICRO_TIME);
  });
});

describe("kubeLeaseStore", () => {
  function fakeRest(responses: Record<string, (body?: unknown) => unknown>) {
    const calls: Array<{ method: string; path: string; body?: unknown }> = [];
    const call = (method: string) => async (path: string, body?: unknown) => {
      calls.push({ method, path, body });
      const handler = responses[`${method} ${path}`];
      if (!handler) throw new Error(`unexpected ${method} ${path}`);
      return handler(body);
    };
    const rest = { get: call("GET"), post: call("POST"), put: call("PUT") } as unknown as KubeRest;
    return { rest, calls };
  }
  const path = "/apis/coordination.k8s.io/v1/namespaces/custody-system/leases/custody-operator";

  it("maps 404 to undefined and reads resourceVersion and spec", async () => {
    const { rest } = fakeRest({
      [`GET ${path}`]: () => {
        throw new KubeApiError(404, "NotFound", "not found", {});
      },
    });
    expect(await kubeLeaseStore(rest, "custody-system", "custody-operator").get()).toBeUndefined();
  });

  it("creates with POST to the collection and updates with PUT carrying resourceVersion and metadata", async () => {
    const { rest, calls } = fakeRest({
      "POST /apis/coordination.k8s.io/v1/namespaces/custody-system/leases": (body) => ({
        ...(body as object),
        metadata: {
          name: "custody-operator",
          namespace: "custody-system",
          resourceVersion: "7",
          labels: { x: "y" },
        },
      }),
      [`PUT ${path}`]: (body) => ({
        ...(body as object),
        metadata: { ...(body as { metadata: object }).metadata, resourceVersion: "8" },
      }),
    });
    const store = kubeLeaseStore(rest, "custody-system", "custody-operator");
    const created = await store.create({ holderIdentity: "a", leaseDurationSeconds: 15 });
    expect(created.resourceVersion).toBe("7");
    expect(calls[0]!.body).toMatchObject({
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "custody-operator", namespace: "custody-system" },
      spec: { holderIdentity: "a" },
    });
    const updated = await store.update(created, { holderIdentity: "b", leaseDurationSeconds: 15 });
    expect(updated.resourceVersion).toBe("8");
    expect(updated.spec.holderIdentity).toBe("b");
    expect(calls[1]!.body).toMatchObject({ metadata: { resourceVersion: "7", labels: { x: "y" } } });
  });
});
