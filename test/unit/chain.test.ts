import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { AgentTask, ChainLink, Phase } from "../../core/api/v1alpha1.ts";
import {
  type ChainAccepted,
  type ChainRefused,
  type ChainResult,
  descendantsOf,
  evaluateChain,
} from "../../core/chain.ts";
import { formatGrant, type Grant, grantCovers, parseGrant, type Resource } from "../../core/scope.ts";

const NOW = Date.parse("2026-11-28T12:00:00Z");

interface TaskOptions {
  parent?: string;
  scope?: string[];
  ttl?: string;
  deadline?: string;
  phase?: Phase | undefined;
  revoked?: boolean;
  audiences?: string[];
  generation?: number;
  observedGeneration?: number;
  delegationChain?: ChainLink[];
  noDelegator?: boolean;
}

function task(name: string, o: TaskOptions = {}): AgentTask {
  const phase = "phase" in o ? o.phase : "Issued";
  const generation = o.generation ?? 1;
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AgentTask",
    metadata: { name, namespace: "ns", uid: `uid-${name}`, generation },
    spec: {
      agent: { name: "a" },
      scope: o.scope ?? ["read:repos/*"],
      serviceAccountName: "sa",
      ttl: o.ttl ?? "1h",
      ...(o.parent !== undefined ? { parentRef: { name: o.parent } } : {}),
      ...(o.deadline !== undefined ? { deadline: o.deadline } : {}),
      ...(o.revoked !== undefined ? { revoked: o.revoked } : {}),
      ...(o.audiences !== undefined ? { audiences: o.audiences } : {}),
    },
    status: {
      ...(phase !== undefined ? { phase } : {}),
      observedGeneration: o.observedGeneration ?? generation,
      ...(o.noDelegator ? {} : { delegator: { kind: "User", name: "alice", uid: "uid-alice" } }),
      ...(o.delegationChain !== undefined ? { delegationChain: o.delegationChain } : {}),
    },
  };
}

function lookupOf(...tasks: AgentTask[]): (name: string) => AgentTask | undefined {
  const byName = new Map(tasks.map((t) => [t.metadata.name, t]));
  return (name) => byName.get(name);
}

/** Evaluates the last task against all of them. */
function evaluate(tasks: AgentTask[], maxDepth?: number): ChainResult {
  const child = tasks[tasks.length - 1]!;
  return evaluateChain(child, lookupOf(...tasks), {
    now: NOW,
    ...(maxDepth !== undefined ? { maxDepth } : {}),
  });
}

function accepted(r: ChainResult): ChainAccepted {
  if (!r.ok) throw new Error(`expected ok, got ${r.kind} ${r.reason}: ${r.message}`);
  return r;
}

function refused(r: ChainResult): ChainRefused {
  if (r.ok) throw new Error("expected a refusal, got ok");
  return r;
}

describe("evaluateChain: accepted chains", () => {
  it("accepts a child with a narrower scope and builds the chain root first", () => {
    const root = task("root", { scope: ["read:repos/*", "write:repos/acme/issues"] });
    const child = task("child", { parent: "root", scope: ["read:repos/acme/*"], ttl: "30m" });
    const r = accepted(evaluate([root, child]));
    expect(r.chain).toEqual([
      { kind: "User", name: "alice", uid: "uid-alice", scope: ["read:repos/*", "write:repos/acme/issues"] },
      {
        kind: "AgentTask",
        name: "root",
        uid: "uid-root",
        scope: ["read:repos/*", "write:repos/acme/issues"],
      },
      { kind: "AgentTask", name: "child", uid: "uid-child", scope: ["read:repos/acme/*"] },
    ]);
    expect(r.depth).toBe(1);
    expect(r.rootUid).toBe("uid-root");
    expect(r.chainUids).toEqual(["uid-root", "uid-child"]);
    expect(r.parent).toBe(root);
    expect(r.effectiveDeadline).toBeUndefined();
    expect(r.deadlineInherited).toBe(false);
  });

  it("builds a three-level chain", () => {
    const root = task("root", { scope: ["*:repos/*"] });
    const mid = task("mid", { parent: "root", scope: ["read:repos/acme/*", "write:repos/acme/x"] });
    const leaf = task("leaf", { parent: "mid", scope: ["read:repos/acme/api"] });
    const r = accepted(evaluate([root, mid, leaf]));
    expect(r.chain.map((l) => `${l.kind}/${l.name}`)).toEqual([
      "User/alice",
      "AgentTask/root",
      "AgentTask/mid",
      "AgentTask/leaf",
    ]);
    expect(r.depth).toBe(2);
    expect(r.chainUids).toEqual(["uid-root", "uid-mid", "uid-leaf"]);
    expect(r.rootUid).toBe("uid-root");
    expect(r.parent.metadata.name).toBe("mid");
  });

  it("takes the principal link from the root's recorded chain when present", () => {
    const recorded: ChainLink = { kind: "Group", name: "platform", uid: "g-1", scope: ["*:*"] };
    const root = task("root", {
      delegationChain: [
        recorded,
        { kind: "AgentTask", name: "root", uid: "uid-root", scope: ["read:repos/*"] },
      ],
    });
    const r = accepted(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r.chain[0]).toEqual(recorded);
    expect(r.chain[0]).not.toBe(recorded);
  });

  it("accepts equal scope and equal ttl", () => {
    const root = task("root", { scope: ["read:a", "write:b/*"], ttl: "2h" });
    const child = task("child", { parent: "root", scope: ["write:b/*", "read:a"], ttl: "120m" });
    expect(evaluate([root, child]).ok).toBe(true);
  });
});

describe("evaluateChain: waiting", () => {
  it("waits when the parent does not exist yet", () => {
    const r = refused(evaluate([task("child", { parent: "ghost" })]));
    expect(r).toMatchObject({ kind: "wait", reason: "ParentNotFound", field: "spec.parentRef.name" });
    expect(r.message).toContain('"ghost"');
  });

  it("waits when an ancestor above the parent does not exist", () => {
    const mid = task("mid", { parent: "ghost", phase: "Pending" });
    const r = refused(evaluate([mid, task("child", { parent: "mid", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "wait", reason: "AncestorNotFound" });
    expect(r.message).toContain('"ghost"');
  });

  it.each<[Phase | undefined]>([["Pending"], [undefined]])("waits while the parent is %s", (phase) => {
    const root = task("root", { phase });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "wait", reason: "ParentNotIssued", field: "spec.parentRef.name" });
  });

  it("waits while the parent's spec changed since it was issued", () => {
    const root = task("root", { generation: 2, observedGeneration: 1 });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "wait", reason: "ParentNotIssued" });
    expect(r.message).toContain("changed its spec");
  });

  it("waits while a grandparent is not issued", () => {
    const root = task("root", { phase: "Pending" });
    const mid = task("mid", { parent: "root", scope: ["read:repos/a/*"] });
    const r = refused(evaluate([root, mid, task("leaf", { parent: "mid", scope: ["read:repos/a/b"] })]));
    expect(r).toMatchObject({ kind: "wait", reason: "AncestorNotIssued" });
    expect(r.message).toContain('ancestor "root"');
  });

  it("waits until the root's delegator is proven", () => {
    const root = task("root", { noDelegator: true });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "wait", reason: "RootDelegatorUnknown" });
  });
});

describe("evaluateChain: denials", () => {
  it.each<[Phase, string]>([
    ["Denied", "ParentDenied"],
    ["Expired", "ParentExpired"],
    ["Revoked", "ParentRevoked"],
    ["Failed", "ParentFailed"],
  ])("denies a child of a %s parent", (phase, reason) => {
    const root = task("root", { phase });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "deny", reason, field: "spec.parentRef.name" });
    expect(r.message).toContain(phase);
  });

  it("denies below a revoked grandparent even while the parent still shows Issued", () => {
    const root = task("root", { phase: "Revoked" });
    const mid = task("mid", { parent: "root", scope: ["read:repos/a/*"] });
    const r = refused(evaluate([root, mid, task("leaf", { parent: "mid", scope: ["read:repos/a/b"] })]));
    expect(r).toMatchObject({ kind: "deny", reason: "AncestorRevoked" });
    expect(r.message).toContain('ancestor "root"');
  });

  it("denies under a parent marked spec.revoked before the operator wrote its phase", () => {
    const root = task("root", { revoked: true });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "deny", reason: "ParentRevoked" });
  });

  it("denies under a parent whose deadline has passed", () => {
    const root = task("root", { deadline: "2026-11-28T11:59:59Z" });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"] })]));
    expect(r).toMatchObject({ kind: "deny", reason: "ParentExpired" });
  });

  it("reports the first escalating grant with its index", () => {
    const root = task("root", { scope: ["read:repos/*", "write:repos/acme/issues"] });
    const child = task("child", {
      parent: "root",
      scope: ["read:repos/acme", "write:repos/acme/*", "delete:x"],
    });
    const r = refused(evaluate([root, child]));
    expect(r).toMatchObject({ kind: "deny", reason: "ScopeEscalation", field: "spec.scope[1]" });
    expect(r.message).toMatch(/^spec\.scope\[1\]: grant "write:repos\/acme\/\*" is not covered/);
    expect(r.message).toContain("rule scope-subset");
  });

  it("denies a child naming an audience its parent does not, with the index", () => {
    const root = task("root", { audiences: ["https://a.example", "https://b.example"] });
    const child = task("child", {
      parent: "root",
      scope: ["read:repos/a"],
      audiences: ["https://b.example", "https://c.example"],
    });
    const r = refused(evaluate([root, child]));
    expect(r).toMatchObject({ kind: "deny", reason: "AudienceEscalation", field: "spec.audiences[1]" });
    expect(r.message).toContain("rule audiences-subset");
    // A parent with no audiences lets its children have none either.
    const bare = refused(
      evaluate([task("root"), task("child", { parent: "root", scope: ["read:repos/a"], audiences: ["x"] })]),
    );
    expect(bare).toMatchObject({ reason: "AudienceEscalation", field: "spec.audiences[0]" });
    // The same audiences, or fewer, pass.
    const ok = evaluate([
      root,
      task("child", { parent: "root", scope: ["read:repos/a"], audiences: ["https://a.example"] }),
    ]);
    expect(ok.ok).toBe(true);
  });

  it("does not let X/* cover X itself", () => {
    const root = task("root", { scope: ["read:repos/*"] });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["read:repos"] })]));
    expect(r).toMatchObject({ reason: "ScopeEscalation", field: "spec.scope[0]" });
  });

  it("does not let a * verb in the child be covered by a concrete verb", () => {
    const root = task("root", { scope: ["read:*", "write:*"] });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["*:a"] })]));
    expect(r).toMatchObject({ reason: "ScopeEscalation", field: "spec.scope[0]" });
  });

  it("denies escalation even while the parent is still Pending", () => {
    const root = task("root", { phase: "Pending", scope: ["read:a"] });
    const r = refused(evaluate([root, task("child", { parent: "root", scope: ["write:a"] })]));
    expect(r).toMatchObject({ kind: "deny", reason: "ScopeEscalation" });
  });

  it("denies a ttl longer than the parent's", () => {
    const root = task("root", { ttl: "30m" });
    const r = refused(
      evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "31m" })]),
    );
    expect(r).toMatchObject({ kind: "deny", reason: "TtlExceedsParent", field: "spec.ttl" });
    expect(r.message).toBe('spec.ttl: 31m is longer than parent "root"\'s ttl 30m (rule ttl-within-parent)');
  });

  it("compares ttls by duration, not by text", () => {
    const root = task("root", { ttl: "1h30m" });
    expect(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "90m" })]).ok).toBe(
      true,
    );
    const r = refused(
      evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "91m" })]),
    );
    expect(r.message).toBe(
      'spec.ttl: 91m (1h31m) is longer than parent "root"\'s ttl 1h30m (rule ttl-within-parent)',
    );
  });

  it("denies a deadline later than the parent's", () => {
    const root = task("root", { deadline: "2026-11-28T18:00:00Z" });
    const child = task("child", {
      parent: "root",
      scope: ["read:repos/a"],
      deadline: "2026-11-28T18:00:01Z",
    });
    const r = refused(evaluate([root, child]));
    expect(r).toMatchObject({ kind: "deny", reason: "DeadlineExceedsParent", field: "spec.deadline" });
    expect(r.message).toContain("2026-11-28T18:00:00Z");
  });

  it("accepts an equal deadline and reports it as the effective one", () => {
    const root = task("root", { deadline: "2026-11-28T18:00:00Z" });
    const child = task("child", {
      parent: "root",
      scope: ["read:repos/a"],
      deadline: "2026-11-28T18:00:00Z",
    });
    const r = accepted(evaluate([root, child]));
    expect(r.effectiveDeadline).toBe("2026-11-28T18:00:00Z");
    expect(r.deadlineInherited).toBe(false);
  });

  it("lets a child without a deadline inherit the earliest ancestor deadline", () => {
    const root = task("root", { deadline: "2026-11-28T15:00:00Z" });
    const mid = task("mid", { parent: "root", scope: ["read:repos/a/*"] });
    const leaf = task("leaf", { parent: "mid", scope: ["read:repos/a/b"] });
    const r = accepted(evaluate([root, mid, leaf]));
    expect(r.effectiveDeadline).toBe("2026-11-28T15:00:00Z");
    expect(r.deadlineInherited).toBe(true);
  });

  it("denies a deadline later than one the parent inherits from a grandparent", () => {
    const root = task("root", { deadline: "2026-11-28T15:00:00Z" });
    const mid = task("mid", { parent: "root", scope: ["read:repos/a/*"] });
    const leaf = task("leaf", { parent: "mid", scope: ["read:repos/a/b"], deadline: "2026-11-28T16:00:00Z" });
    const r = refused(evaluate([root, mid, leaf]));
    expect(r).toMatchObject({ reason: "DeadlineExceedsParent", field: "spec.deadline" });
    expect(r.message).toContain('inherits from ancestor "root"');
  });

  it("denies an ancestor re-created under the same name", () => {
    const root = task("root");
    root.metadata.uid = "uid-root-2";
    const child = task("child", {
      parent: "root",
      scope: ["read:repos/a"],
      delegationChain: [
        { kind: "User", name: "alice", uid: "uid-alice", scope: ["read:repos/*"] },
        { kind: "AgentTask", name: "root", uid: "uid-root", scope: ["read:repos/*"] },
        { kind: "AgentTask", name: "child", uid: "uid-child", scope: ["read:repos/a"] },
      ],
    });
    expect(refused(evaluate([root, child]))).toMatchObject({ kind: "deny", reason: "AncestorReplaced" });
    root.metadata.uid = "uid-root";
    expect(evaluate([root, child]).ok).toBe(true);
  });

  it("denies a malformed child scope as InvalidSpec naming the element", () => {
    const root = task("root");
    const r = refused(
      evaluate([root, task("child", { parent: "root", scope: ["read:repos/a", "read:a/../b"] })]),
    );
    expect(r).toMatchObject({ kind: "deny", reason: "InvalidSpec", field: "spec.scope[1]" });
  });
});

describe("evaluateChain: depth and cycles", () => {
  /** t0 (root) ← t1 ← ... ← tn; evaluates tn. */
  function line(n: number): AgentTask[] {
    const tasks = [task("t0", { scope: ["read:*"] })];
    for (let i = 1; i <= n; i++) tasks.push(task(`t${i}`, { parent: `t${i - 1}`, scope: ["read:*"] }));
    return tasks;
  }

  it("accepts depth 5 under the default cap and denies depth 6", () => {
    expect(accepted(evaluate(line(5))).depth).toBe(5);
    const r = refused(evaluate(line(6)));
    expect(r).toMatchObject({ kind: "deny", reason: "DepthExceeded", field: "spec.parentRef.name" });
    expect(r.message).toContain("max-depth 5");
  });

  it("honours a configured cap", () => {
    expect(accepted(evaluate(line(2), 2)).depth).toBe(2);
    expect(refused(evaluate(line(3), 2)).reason).toBe("DepthExceeded");
    expect(refused(evaluate(line(1), 0)).reason).toBe("DepthExceeded");
  });

  it("refuses a cap the chain status could not hold", () => {
    expect(() => evaluate(line(1), 31)).toThrow(RangeError);
    expect(() => evaluate(line(1), -1)).toThrow(RangeError);
    expect(() => evaluate(line(1), 1.5)).toThrow(RangeError);
  });

  it("refuses a self-reference", () => {
    const r = refused(evaluate([task("a", { parent: "a" })]));
    expect(r).toMatchObject({ kind: "deny", reason: "CycleDetected", field: "spec.parentRef.name" });
    expect(r.message).toContain("names itself");
  });

  it("refuses a cycle of two", () => {
    const a = task("a", { parent: "b", phase: "Pending" });
    const b = task("b", { parent: "a", phase: "Pending" });
    const r = refused(evaluateChain(a, lookupOf(a, b), { now: NOW }));
    expect(r).toMatchObject({ kind: "deny", reason: "CycleDetected" });
    expect(r.message).toContain("a → b → a");
    expect(refused(evaluateChain(b, lookupOf(a, b), { now: NOW })).reason).toBe("CycleDetected");
  });

  it("refuses a child hanging below a cycle it is not part of", () => {
    const a = task("a", { parent: "b", phase: "Pending" });
    const b = task("b", { parent: "a", phase: "Pending" });
    const c = task("c", { parent: "a" });
    expect(refused(evaluateChain(c, lookupOf(a, b, c), { now: NOW })).reason).toBe("CycleDetected");
  });

  it("ends a cycle longer than the cap after maxDepth + 1 lookups", () => {
    const ring = Array.from({ length: 20 }, (_, i) => task(`r${i}`, { parent: `r${(i + 1) % 20}` }));
    const byName = lookupOf(...ring);
    let lookups = 0;
    const r = refused(
      evaluateChain(
        ring[0]!,
        (name) => {
          lookups++;
          return byName(name);
        },
        { now: NOW },
      ),
    );
    expect(r.reason).toBe("DepthExceeded");
    expect(lookups).toBeLessThanOrEqual(6);
  });

  it("throws for a task without a parent", () => {
    expect(() => evaluate([task("root")])).toThrow(/no spec.parentRef/);
  });
});

// ---------------------------------------------------------------- properties

const VERBS = ["read", "write", "list"] as const;
const SEGMENTS = ["a", "b", "c"] as const;
const segmentsArb = (min: number, max: number) =>
  fc.array(fc.constantFrom(...SEGMENTS), { minLength: min, maxLength: max });
const resourceArb: fc.Arbitrary<Resource> = fc.oneof(
  fc.constant<Resource>({ kind: "any" }),
  segmentsArb(1, 3).map((segments): Resource => ({ kind: "exact", segments })),
  segmentsArb(1, 3).map((segments): Resource => ({ kind: "prefix", segments })),
);
const grantArb: fc.Arbitrary<Grant> = fc.record({
  verb: fc.constantFrom("*", ...VERBS),
  resource: resourceArb,
});

/** A grant the parent grant covers, by construction (not by grantCovers). */
function narrowGrant(gen: fc.GeneratorValue, parent: Grant): Grant {
  const verb = parent.verb === "*" ? gen(fc.constantFrom, "*", ...VERBS) : parent.verb;
  const r = parent.resource;
  let resource: Resource;
  if (r.kind === "any") resource = gen(() => resourceArb);
  else if (r.kind === "exact") resource = r;
  else {
    const extra = gen(() => segmentsArb(0, 2));
    const exact = extra.length > 0 && gen(fc.boolean);
    resource = { kind: exact ? "exact" : "prefix", segments: [...r.segments, ...extra] };
  }
  return { verb, resource };
}

function distinct(grants: Grant[]): string[] {
  return [...new Set(grants.map(formatGrant))];
}

const MINUTE = 60_000;

// Shrinking a generated tree can take minutes; a failure is still reported
// (with the smallest counterexample found so far) after this budget.
const PROPERTY_PARAMS = { interruptAfterTimeLimit: 4_000, markInterruptAsFailure: true };

/**
 * A random tree of Issued tasks, each child narrower than its parent in
 * scope, ttl and deadline. Node 0 is the root; depth at most 5.
 */
function treeOf(gen: fc.GeneratorValue): AgentTask[] {
  const size = gen(fc.integer, { min: 2, max: 12 });
  const rootScope = distinct(gen(() => fc.array(grantArb, { minLength: 1, maxLength: 5 })));
  const nodes: Array<{ t: AgentTask; depth: number; ttlMin: number; deadline: number | undefined }> = [];
  const rootTtl = gen(fc.integer, { min: 5, max: 24 * 60 });
  const rootDeadline = gen(fc.option, fc.integer({ min: 1, max: 10_000 }), { nil: undefined });
  const rootTask = task("n0", { scope: rootScope, ttl: `${rootTtl}m` });
  if (rootDeadline !== undefined)
    rootTask.spec.deadline = new Date(NOW + rootDeadline * MINUTE).toISOString();
  nodes.push({
    t: rootTask,
    depth: 0,
    ttlMin: rootTtl,
    deadline: rootDeadline === undefined ? undefined : NOW + rootDeadline * MINUTE,
  });
  for (let i = 1; i < size; i++) {
    const candidates = nodes.filter((n) => n.depth < 5);
    const parent = candidates[gen(fc.nat, candidates.length - 1)]!;
    const parentGrants = parent.t.spec.scope.map((s) => parseGrant(s));
    const count = gen(fc.integer, { min: 1, max: 4 });
    const grants: Grant[] = [];
    for (let k = 0; k < count; k++) {
      grants.push(narrowGrant(gen, parentGrants[gen(fc.nat, parentGrants.length - 1)]!));
    }
    const ttlMin = gen(fc.integer, { min: 5, max: parent.ttlMin });
    let deadline: number | undefined;
    if (gen(fc.boolean)) {
      const cap = parent.deadline ?? NOW + 20_000 * MINUTE;
      deadline = NOW + gen(fc.integer, { min: 1, max: Math.round((cap - NOW) / MINUTE) }) * MINUTE;
    }
    const t = task(`n${i}`, { parent: parent.t.metadata.name, scope: distinct(grants), ttl: `${ttlMin}m` });
    if (deadline !== undefined) t.spec.deadline = new Date(deadline).toISOString();
    nodes.push({ t, depth: parent.depth + 1, ttlMin, deadline: deadline ?? parent.deadline });
  }
  return nodes.map((n) => n.t);
}

describe("evaluateChain: properties", () => {
  it("accepts every child of a tree built by narrowing, with a root-first chain ending in the task", () => {
    fc.assert(
      fc.property(fc.gen(), (gen) => {
        const tasks = treeOf(gen);
        const lookup = lookupOf(...tasks);
        for (const t of tasks.slice(1)) {
          const r = accepted(evaluateChain(t, lookup, { now: NOW }));
          expect(r.chain.length).toBe(r.depth + 2);
          expect(r.chain[0]).toMatchObject({ kind: "User", name: "alice" });
          expect(r.chain[1]).toMatchObject({ kind: "AgentTask", name: "n0" });
          expect(r.chain[r.chain.length - 1]).toEqual({
            kind: "AgentTask",
            name: t.metadata.name,
            uid: t.metadata.uid,
            scope: t.spec.scope,
          });
          expect(r.chain[r.chain.length - 2]!.name).toBe(t.spec.parentRef!.name);
          expect(r.chainUids).toEqual(r.chain.slice(1).map((l) => l.uid));
          // Each link holds a scope within the one above it.
          for (let k = 2; k < r.chain.length; k++) {
            const above = r.chain[k - 1]!.scope.map((s) => parseGrant(s));
            for (const s of r.chain[k]!.scope) {
              expect(above.some((p) => grantCovers(p, parseGrant(s)))).toBe(true);
            }
          }
        }
      }),
      PROPERTY_PARAMS,
    );
  });

  it("denies with ScopeEscalation once a child gains a grant its parent lacks", () => {
    fc.assert(
      fc.property(fc.gen(), grantArb, fc.nat(), (gen, extra, position) => {
        const tasks = treeOf(gen);
        const child = tasks[1 + gen(fc.nat, tasks.length - 2)]!;
        const parent = tasks.find((t) => t.metadata.name === child.spec.parentRef!.name)!;
        const parentGrants = parent.spec.scope.map((s) => parseGrant(s));
        fc.pre(!parentGrants.some((p) => grantCovers(p, extra)));
        const text = formatGrant(extra);
        fc.pre(!child.spec.scope.includes(text));
        const index = position % (child.spec.scope.length + 1);
        child.spec.scope.splice(index, 0, text);
        const r = refused(evaluateChain(child, lookupOf(...tasks), { now: NOW }));
        expect(r).toMatchObject({ kind: "deny", reason: "ScopeEscalation", field: `spec.scope[${index}]` });
        expect(r.message).toContain(JSON.stringify(text));
      }),
      PROPERTY_PARAMS,
    );
  });

  it("denies with TtlExceedsParent once a child's ttl outgrows its parent's", () => {
    fc.assert(
      fc.property(fc.gen(), (gen) => {
        const tasks = treeOf(gen);
        const child = tasks[1 + gen(fc.nat, tasks.length - 2)]!;
        const parent = tasks.find((t) => t.metadata.name === child.spec.parentRef!.name)!;
        const parentMinutes = Number(parent.spec.ttl.slice(0, -1));
        fc.pre(parentMinutes < 24 * 60);
        child.spec.ttl = `${gen(fc.integer, { min: parentMinutes + 1, max: 24 * 60 })}m`;
        expect(refused(evaluateChain(child, lookupOf(...tasks), { now: NOW }))).toMatchObject({
          reason: "TtlExceedsParent",
          field: "spec.ttl",
        });
      }),
      PROPERTY_PARAMS,
    );
  });
});

// ---------------------------------------------------------------- descendants

describe("descendantsOf", () => {
  it("returns the subtree breadth first with depths, excluding the task itself", () => {
    const tasks = [
      task("leaf", { parent: "mid1" }),
      task("mid1", { parent: "root" }),
      task("other-root"),
      task("mid2", { parent: "root" }),
      task("root"),
      task("elsewhere", { parent: "other-root" }),
      task("deep", { parent: "leaf" }),
    ];
    const out = descendantsOf("root", tasks).map((d) => [d.task.metadata.name, d.depth]);
    expect(out).toEqual([
      ["mid1", 1],
      ["mid2", 1],
      ["leaf", 2],
      ["deep", 3],
    ]);
    expect(descendantsOf("mid1", tasks).map((d) => d.task.metadata.name)).toEqual(["leaf", "deep"]);
    expect(descendantsOf("deep", tasks)).toEqual([]);
  });

  it("finds the subtree of a deleted task (absent from the list)", () => {
    const tasks = [task("a", { parent: "gone" }), task("b", { parent: "a" })];
    expect(descendantsOf("gone", tasks).map((d) => d.task.metadata.name)).toEqual(["a", "b"]);
  });

  it("accepts a namespace/name key and ignores other namespaces", () => {
    const foreign = task("x", { parent: "root" });
    foreign.metadata.namespace = "other";
    const tasks = [task("root"), task("y", { parent: "root" }), foreign];
    expect(descendantsOf("ns/root", tasks).map((d) => d.task.metadata.name)).toEqual(["y"]);
    expect(descendantsOf("root", tasks).map((d) => d.task.metadata.name)).toEqual(["y", "x"]);
  });

  it("terminates on cycles and never returns the starting task", () => {
    const tasks = [task("a", { parent: "b" }), task("b", { parent: "a" }), task("c", { parent: "b" })];
    expect(descendantsOf("a", tasks).map((d) => [d.task.metadata.name, d.depth])).toEqual([
      ["b", 1],
      ["c", 2],
    ]);
  });

  it("agrees with walking each task's parentRef chain upward", () => {
    fc.assert(
      fc.property(fc.array(fc.nat(30), { minLength: 1, maxLength: 30 }), fc.nat(29), (parents, start) => {
        // Task i's parent is t<parents[i]> when that is a smaller index, else none: a forest.
        const tasks = parents.map((p, i) => task(`t${i}`, p < i ? { parent: `t${p}` } : {}));
        const from = `t${start % tasks.length}`;
        const expected = new Map<string, number>();
        for (const t of tasks) {
          let depth = 0;
          let cur: AgentTask | undefined = t;
          while (cur?.spec.parentRef !== undefined) {
            depth++;
            const name: string = cur.spec.parentRef.name;
            if (name === from) expected.set(t.metadata.name, depth);
            cur = tasks.find((x) => x.metadata.name === name);
          }
        }
        const got = descendantsOf(from, tasks);
        expect(new Map(got.map((d) => [d.task.metadata.name, d.depth]))).toEqual(expected);
        // Breadth first: depths never decrease.
        for (let i = 1; i < got.length; i++) expect(got[i]!.depth).toBeGreaterThanOrEqual(got[i - 1]!.depth);
      }),
    );
  });

  it("handles a 1,000-descendant tree among 100,000 tasks in linear time", () => {
    const tasks: AgentTask[] = [task("root")];
    for (let i = 1; i <= 1000; i++)
      tasks.push(task(`d${i}`, { parent: i <= 10 ? "root" : `d${i % 10 || 10}` }));
    for (let i = 0; i < 99_000; i++) tasks.push(task(`u${i}`, { parent: `u${Math.floor(i / 2)}` }));
    const started = performance.now();
    const out = descendantsOf("root", tasks);
    const elapsed = performance.now() - started;
    expect(out.length).toBe(1000);
    expect(elapsed).toBeLessThan(1000);
  });
});

describe("a parent narrowed by policy", () => {
  it("holds only its granted scope (a child asking for what policy dropped is denied) and caps its children's ttl", () => {
    const root = task("root", { scope: ["read:repos/*", "write:repos/*"], ttl: "1h" });
    root.status = { ...root.status, grantedScope: ["read:repos/*"], grantedTtl: "15m" };
    const wantsDropped = refused(
      evaluate([root, task("child", { parent: "root", scope: ["write:repos/a"], ttl: "10m" })]),
    );
    expect(wantsDropped).toMatchObject({ kind: "deny", reason: "ScopeEscalation", field: "spec.scope[0]" });
    // A longer ttl than the parent's grant is capped, not denied: only the parent was narrowed.
    const longer = evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "30m" })]);
    expect(longer).toMatchObject({ ok: true, ttlCapMs: 15 * 60_000 });
    // Beyond the parent's spec ttl it is still denied.
    const tooLong = refused(
      evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "2h" })]),
    );
    expect(tooLong).toMatchObject({ kind: "deny", reason: "TtlExceedsParent" });
    expect(evaluate([root, task("child", { parent: "root", scope: ["read:repos/a"], ttl: "10m" })]).ok).toBe(
      true,
    );
  });
});
