import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AgentPolicy,
  type AgentPolicySpec,
  CLUSTER_POLICY_KIND,
  POLICY_KIND,
  type PolicyRule,
  type PolicySelector,
} from "../../core/api/policy.ts";
import { type CompiledPolicy, compilePolicy, type PolicyRef } from "../../core/policy/compile.ts";
import type { PolicyFacts, PolicyStage } from "../../core/policy/context.ts";
import {
  combinedVersion,
  type DecideOptions,
  decide,
  type SelectionFacts,
  selects,
} from "../../core/policy/decide.ts";
import { grantCovers, parseGrant } from "../../core/scope.ts";

function compile(
  name: string,
  rules: ReadonlyArray<Partial<PolicyRule> & { name: string }>,
  opts: { kind?: AgentPolicy["kind"]; namespace?: string; selector?: PolicySelector } = {},
): CompiledPolicy {
  const kind = opts.kind ?? POLICY_KIND;
  return compilePolicy({
    kind,
    metadata: { name, ...(kind === POLICY_KIND ? { namespace: opts.namespace ?? "team-a" } : {}) },
    spec: { ...(opts.selector ? { selector: opts.selector } : {}), rules } as AgentPolicySpec,
  });
}

function facts(
  stage: PolicyStage = "issuance",
  scope: readonly string[] = ["read:repos/a", "write:repos/a", "read:docs/x"],
): PolicyFacts {
  return {
    task: {
      name: "fix-bug",
      namespace: "team-a",
      uid: "uid-1234",
      labels: { team: "payments", env: "prod" },
      agent: {
        name: "coder",
        model: { provider: "anthropic", name: "claude", version: "4" },
        tools: [{ name: "git", version: "2.45" }],
        labels: {},
      },
      scope,
      ttlSeconds: 3600,
      audiences: ["api.example"],
      parent: "",
    },
    delegator: { kind: "User", name: "alice", groups: ["devs"] },
    chain: [
      { kind: "User", name: "alice" },
      { kind: "AgentTask", name: "fix-bug" },
    ],
    stage,
    now: Date.UTC(2024, 0, 2, 13, 4, 5),
  };
}

const allow: DecideOptions = { defaultDecision: "allow" };
const deny: DecideOptions = { defaultDecision: "deny" };
// A clock that never advances: decisions about the budget are not flaky.
const still: DecideOptions = { defaultDecision: "deny", clock: () => 0 };

const selection = (patch: Partial<SelectionFacts> = {}): SelectionFacts => ({
  namespace: "team-a",
  agent: "coder",
  model: { provider: "anthropic", name: "claude", version: "4" },
  tools: ["git", "shell"],
  delegator: { kind: "User", name: "alice", groups: ["devs", "oncall"] },
  labels: { team: "payments", env: "prod" },
  ...patch,
});

describe("selects", () => {
  const rule = [{ name: "r", deny: "false" }];
  const ns = (selector: PolicySelector, namespace = "team-a") => compile("p", rule, { selector, namespace });
  const cluster = (selector: PolicySelector) => compile("p", rule, { kind: CLUSTER_POLICY_KIND, selector });

  it("an AgentPolicy selects only tasks of its own namespace", () => {
    expect(selects(compile("p", rule, { namespace: "team-a" }), selection())).toBe(true);
    expect(selects(compile("p", rule, { namespace: "team-b" }), selection())).toBe(false);
    expect(selects(compile("p", rule, { namespace: "team-b" }), selection({ namespace: "team-b" }))).toBe(
      true,
    );
  });

  it("an AgentPolicy ignores selector.namespaces (it cannot reach other namespaces)", () => {
    const p = ns({ namespaces: ["team-b"] }, "team-a");
    expect(selects(p, selection({ namespace: "team-a" }))).toBe(true);
    expect(selects(p, selection({ namespace: "team-b" }))).toBe(false);
  });

  it("a ClusterAgentPolicy selects every namespace, or those listed", () => {
    expect(selects(cluster({}), selection({ namespace: "anything" }))).toBe(true);
    const listed = cluster({ namespaces: ["team-a", "team-c"] });
    expect(selects(listed, selection({ namespace: "team-a" }))).toBe(true);
    expect(selects(listed, selection({ namespace: "team-c" }))).toBe(true);
    expect(selects(listed, selection({ namespace: "team-b" }))).toBe(false);
  });

  it("an empty selector selects every task in scope", () => {
    fc.assert(
      fc.property(
        fc.record({
          namespace: fc.constantFrom("team-a", "team-b"),
          agent: fc.string(),
          tools: fc.array(fc.string()),
          labels: fc.dictionary(fc.string(), fc.string()),
        }),
        (patch) => {
          expect(selects(cluster({}), selection(patch))).toBe(true);
          expect(selects(ns({}), selection(patch))).toBe(patch.namespace === "team-a");
        },
      ),
    );
  });

  it("agents: one of the names", () => {
    const p = cluster({ agents: ["coder", "reviewer"] });
    expect(selects(p, selection({ agent: "coder" }))).toBe(true);
    expect(selects(p, selection({ agent: "reviewer" }))).toBe(true);
    expect(selects(p, selection({ agent: "planner" }))).toBe(false);
  });

  it("models: every given field equal, any entry", () => {
    const m = (provider: string, name: string, version: string) =>
      selection({ model: { provider, name, version } });
    const byProvider = cluster({ models: [{ provider: "anthropic" }] });
    expect(selects(byProvider, m("anthropic", "claude", "4"))).toBe(true);
    expect(selects(byProvider, m("anthropic", "other", "9"))).toBe(true);
    expect(selects(byProvider, m("openai", "claude", "4"))).toBe(false);

    const byNameVersion = cluster({ models: [{ name: "claude", version: "4" }] });
    expect(selects(byNameVersion, m("anyone", "claude", "4"))).toBe(true);
    expect(selects(byNameVersion, m("anthropic", "claude", "3"))).toBe(false);
    expect(selects(byNameVersion, m("anthropic", "haiku", "4"))).toBe(false);

    const full = cluster({ models: [{ provider: "a", name: "b", version: "c" }, { provider: "x" }] });
    expect(selects(full, m("a", "b", "c"))).toBe(true);
    expect(selects(full, m("a", "b", "d"))).toBe(false);
    expect(selects(full, m("x", "y", "z"))).toBe(true);

    expect(selects(cluster({ models: [{}] }), m("p", "q", "r"))).toBe(true);
  });

  it("tools: any of them is used", () => {
    const p = cluster({ tools: ["browser", "shell"] });
    expect(selects(p, selection({ tools: ["git", "shell"] }))).toBe(true);
    expect(selects(p, selection({ tools: ["git"] }))).toBe(false);
    expect(selects(p, selection({ tools: [] }))).toBe(false);
  });

  it("delegators: kind, and name when given", () => {
    const d = (kind: string, name: string) => selection({ delegator: { kind, name, groups: [] } });
    const anyUser = cluster({ delegators: [{ kind: "User" }] });
    expect(selects(anyUser, d("User", "bob"))).toBe(true);
    expect(selects(anyUser, d("ServiceAccount", "bob"))).toBe(false);
    const named = cluster({ delegators: [{ kind: "User", name: "alice" }, { kind: "Workflow" }] });
    expect(selects(named, d("User", "alice"))).toBe(true);
    expect(selects(named, d("User", "bob"))).toBe(false);
    expect(selects(named, d("Workflow", "nightly"))).toBe(true);
    expect(selects(named, d("Group", "alice"))).toBe(false);
  });

  it("delegatorGroups: any group of the delegator", () => {
    const p = cluster({ delegatorGroups: ["admins", "oncall"] });
    expect(selects(p, selection())).toBe(true);
    expect(selects(p, selection({ delegator: { kind: "User", name: "alice", groups: ["devs"] } }))).toBe(
      false,
    );
    expect(selects(p, selection({ delegator: { kind: "User", name: "alice", groups: [] } }))).toBe(false);
  });

  it("matchLabels: all must match", () => {
    const p = cluster({ matchLabels: { team: "payments", env: "prod" } });
    expect(selects(p, selection())).toBe(true);
    expect(selects(p, selection({ labels: { team: "payments", env: "prod", extra: "x" } }))).toBe(true);
    expect(selects(p, selection({ labels: { team: "payments" } }))).toBe(false);
    expect(selects(p, selection({ labels: { team: "payments", env: "dev" } }))).toBe(false);
    expect(selects(p, selection({ labels: {} }))).toBe(false);
    expect(selects(cluster({ matchLabels: { toString: "x" } }), selection({ labels: {} }))).toBe(false);
  });

  it("every given field must match (AND)", () => {
    const p = cluster({
      namespaces: ["team-a"],
      agents: ["coder"],
      tools: ["git"],
      matchLabels: { env: "prod" },
    });
    expect(selects(p, selection())).toBe(true);
    expect(selects(p, selection({ namespace: "team-b" }))).toBe(false);
    expect(selects(p, selection({ agent: "planner" }))).toBe(false);
    expect(selects(p, selection({ tools: ["shell"] }))).toBe(false);
    expect(selects(p, selection({ labels: { env: "dev" } }))).toBe(false);
  });
});

describe("decide", () => {
  describe("with no policy in force", () => {
    it("the default allows, within the task's scope", () => {
      const d = decide([], facts(), allow);
      expect(d.allowed).toBe(true);
      expect(d.version).toBe("none");
      expect(d.policies).toEqual([]);
      expect(d.scope).toEqual(["read:repos/a", "write:repos/a", "read:docs/x"]);
      expect(d.dropped).toEqual([]);
      expect(d.maxTtlMs).toBeUndefined();
      expect(d.reasons).toHaveLength(1);
    });

    it.each(["issuance", "renewal", "action"] as const)("the default denies (%s)", (stage) => {
      const d = decide([], facts(stage), deny);
      expect(d.allowed).toBe(false);
      expect(d.version).toBe("none");
      expect(d.reasons.join()).toContain("default denies");
    });
  });

  it("a policy that allows overrides a deny default; the version is that of the policies", () => {
    const p = compile("permit", [{ name: "nothing", deny: "false" }]);
    const d = decide([p], facts(), still);
    expect(d.allowed).toBe(true);
    expect(d.reasons).toEqual([]);
    expect(d.policies).toEqual([
      { kind: POLICY_KIND, namespace: "team-a", name: "permit", version: p.version },
    ]);
    expect(d.version).toBe(combinedVersion(d.policies));
    expect(d.version).not.toBe("none");
  });

  it("deny wins across policies, in any order", () => {
    const permit = compile("a-permit", [{ name: "ok", deny: "false" }]);
    const forbid = compile(
      "b-forbid",
      [{ name: "prod", deny: "task.labels.env == 'prod'", message: "no prod" }],
      {
        kind: CLUSTER_POLICY_KIND,
      },
    );
    for (const order of [
      [permit, forbid],
      [forbid, permit],
    ]) {
      const d = decide(order, facts(), allow);
      expect(d.allowed).toBe(false);
      expect(d.reasons).toEqual(["b-forbid: rule prod: no prod"]);
      expect(d.version).toBe(combinedVersion([forbid, permit]));
      expect(d.policies.map((p) => p.name).sort()).toEqual(["a-permit", "b-forbid"]);
    }
    const dev = { ...facts(), task: { ...facts().task, labels: { env: "dev" } } };
    expect(decide([permit, forbid], dev, deny).allowed).toBe(true);
  });

  it("deny wins across rules of one policy, each denying rule gives a reason", () => {
    const p = compile(
      "mixed",
      [
        { name: "one", deny: "task.agent.name == 'coder'" },
        { name: "two", deny: "false" },
        { name: "three", allow: "true" },
        { name: "four", deny: "'devs' in delegator.groups", message: "devs may not" },
      ],
      { namespace: "team-a" },
    );
    const d = decide([p], facts(), allow);
    expect(d.allowed).toBe(false);
    expect(d.reasons).toEqual([
      "team-a/mixed: rule one: denied by rule one",
      "team-a/mixed: rule four: devs may not",
    ]);
  });

  it("an allow rule that is false denies with its message; true allows", () => {
    const p = compile("allow-list", [
      { name: "only-reviewer", allow: "task.agent.name == 'reviewer'", message: "reviewers only" },
    ]);
    const d = decide([p], facts(), allow);
    expect(d.allowed).toBe(false);
    expect(d.reasons).toEqual(["team-a/allow-list: rule only-reviewer: reviewers only"]);
    const reviewer = {
      ...facts(),
      task: { ...facts().task, agent: { ...facts().task.agent, name: "reviewer" } },
    };
    expect(decide([p], reviewer, deny).allowed).toBe(true);
  });

  it("a rule whose `when` is false is skipped, deny and narrowing alike", () => {
    const p = (when: string) =>
      compile("guarded", [
        { name: "d", when, deny: "true" },
        { name: "n", when, maxTtl: "10m", scopeCeiling: ["read:*"] },
      ]);
    const skipped = decide([p("task.agent.name == 'other'")], facts(), still);
    expect(skipped.allowed).toBe(true);
    expect(skipped.maxTtlMs).toBeUndefined();
    expect(skipped.dropped).toEqual([]);
    const applied = decide([p("task.agent.name == 'coder'")], facts(), still);
    expect(applied.allowed).toBe(false);
    expect(applied.maxTtlMs).toBe(600_000);
    expect(applied.dropped).toEqual(["write:repos/a"]);
  });

  describe("narrowing", () => {
    it("the shortest maxTtl wins across rules and policies", () => {
      const a = compile("a", [
        { name: "thirty", maxTtl: "30m" },
        { name: "hour", maxTtl: "1h" },
      ]);
      const b = compile("b", [{ name: "ten", maxTtl: "10m" }], { kind: CLUSTER_POLICY_KIND });
      const c = compile("c", [{ name: "two-h", maxTtl: "2h" }]);
      expect(decide([a, b, c], facts(), still).maxTtlMs).toBe(10 * 60_000);
      expect(decide([c, a], facts(), still).maxTtlMs).toBe(30 * 60_000);
      expect(decide([c], facts(), still).maxTtlMs).toBe(2 * 3_600_000);
      expect(
        decide([compile("none", [{ name: "x", deny: "false" }])], facts(), still).maxTtlMs,
      ).toBeUndefined();
      expect(decide([a, b, c], facts(), still).allowed).toBe(true);
    });

    it("a scopeCeiling drops the grants it does not cover", () => {
      const p = compile("ceiling", [{ name: "read-only", scopeCeiling: ["read:*"] }]);
      const d = decide([p], facts(), still);
      expect(d.allowed).toBe(true);
      expect(d.scope).toEqual(["read:repos/a", "read:docs/x"]);
      expect(d.dropped).toEqual(["write:repos/a"]);
    });

    it("ceilings use the grammar's coverage, and several ceilings all apply", () => {
      const task = ["read:repos/a", "read:repos", "write:repos/a/b", "*:repos/a", "read:docs/x", "read:*"];
      const repos = compile("repos", [{ name: "repos", scopeCeiling: ["*:repos/*"] }]);
      const d1 = decide([repos], facts("issuance", task), still);
      expect(d1.scope).toEqual(["read:repos/a", "write:repos/a/b", "*:repos/a"]);
      expect(d1.dropped).toEqual(["read:repos", "read:docs/x", "read:*"]);
      const reads = compile("reads", [{ name: "reads", scopeCeiling: ["read:*"] }], {
        kind: CLUSTER_POLICY_KIND,
      });
      const d2 = decide([repos, reads], facts("issuance", task), still);
      expect(d2.scope).toEqual(["read:repos/a"]);
      expect(d2.allowed).toBe(true);
    });

    it("kept grants are exactly those every applying ceiling covers (property)", () => {
      const seg = fc.constantFrom("a", "b");
      const grant = fc.oneof(
        fc
          .tuple(
            fc.constantFrom("read", "write", "*"),
            fc.array(seg, { minLength: 1, maxLength: 3 }),
            fc.boolean(),
          )
          .map(([v, s, prefix]) => `${v}:${s.join("/")}${prefix ? "/*" : ""}`),
        fc.constantFrom("read:*", "*:*"),
      );
      const scope = fc.uniqueArray(grant, { minLength: 1, maxLength: 6 });
      let dropped = 0;
      let kept = 0;
      fc.assert(
        fc.property(scope, fc.array(scope, { minLength: 1, maxLength: 3 }), (taskScope, ceilings) => {
          const policies = ceilings.map((c, i) => compile(`p${i}`, [{ name: "c", scopeCeiling: c }]));
          const d = decide(policies, facts("issuance", taskScope), still);
          const covered = (g: string) =>
            ceilings.every((c) => c.some((x) => grantCovers(parseGrant(x), parseGrant(g))));
          expect(d.scope).toEqual(taskScope.filter(covered));
          expect(d.dropped).toEqual(taskScope.filter((g) => !covered(g)));
          expect(d.allowed).toBe(d.scope.length > 0);
          dropped += d.dropped.length;
          kept += d.scope.length;
        }),
      );
      expect(dropped).toBeGreaterThan(0);
      expect(kept).toBeGreaterThan(0);
    });

    it("a narrowing that drops every grant denies", () => {
      const p = compile("nothing-left", [{ name: "deletes", scopeCeiling: ["delete:*"] }]);
      const d = decide([p], facts(), still);
      expect(d.allowed).toBe(false);
      expect(d.scope).toEqual([]);
      expect(d.dropped).toEqual(["read:repos/a", "write:repos/a", "read:docs/x"]);
      expect(d.reasons.join()).toContain("dropped");
    });

    it("narrowing does not apply at action", () => {
      const p = compile("ceiling", [{ name: "deletes", maxTtl: "10m", scopeCeiling: ["delete:*"] }]);
      const d = decide([p], facts("action"), still);
      expect(d.allowed).toBe(true);
      expect(d.maxTtlMs).toBeUndefined();
      expect(d.dropped).toEqual([]);
      expect(decide([p], facts("renewal"), still).allowed).toBe(false);
    });
  });

  describe("stages", () => {
    const issuanceOnly = compile("at-issuance", [{ name: "i", stages: ["issuance"], deny: "true" }]);
    const actionOnly = compile("at-action", [{ name: "a", stages: ["action"], deny: "true" }]);
    const both = compile("at-both", [{ name: "b", deny: "true" }]);

    it.each([
      ["issuance", { i: false, a: true, b: false }],
      ["renewal", { i: false, a: true, b: false }],
      ["action", { i: true, a: false, b: false }],
    ] as const)("at %s", (stage, expected) => {
      expect(decide([issuanceOnly], facts(stage), still).allowed).toBe(expected.i);
      expect(decide([actionOnly], facts(stage), still).allowed).toBe(expected.a);
      expect(decide([both], facts(stage), still).allowed).toBe(expected.b);
    });

    it("expressions see `renewal` as the stage", () => {
      const p = compile("no-renewal", [{ name: "r", stages: ["issuance"], deny: "stage == 'renewal'" }]);
      expect(decide([p], facts("renewal"), still).allowed).toBe(false);
      expect(decide([p], facts("issuance"), still).allowed).toBe(true);
    });
  });

  describe("runtime failures deny", () => {
    it.each([
      ["deny", "context.missing == 1"],
      ["allow", "context.missing == 1"],
      ["when", "context.missing == 1"],
      ["deny", "task.ttlSeconds / (task.ttlSeconds - 3600) == 1"],
      ["allow", "resource.properties.size > 1"],
    ] as const)("%s: %s", (key, source) => {
      const rule = { name: "boom", stages: ["action" as const], deny: "false", [key]: source };
      const d = decide([compile("fragile", [rule])], facts("action"), {
        defaultDecision: "allow",
        clock: () => 0,
      });
      expect(d.allowed).toBe(false);
      expect(d.reasons).toHaveLength(1);
      expect(d.reasons[0]).toMatch(/^team-a\/fragile: rule boom failed to evaluate, which denies: ./);
    });

    it("the same rule evaluates when the value is there", () => {
      const p = compile("fragile", [{ name: "boom", stages: ["action"], deny: "context.missing == 1" }]);
      const with1 = { ...facts("action"), context: { missing: 1 } };
      const with2 = { ...facts("action"), context: { missing: 2 } };
      expect(decide([p], with1, still).reasons).toEqual(["team-a/fragile: rule boom: denied by rule boom"]);
      expect(decide([p], with2, still).allowed).toBe(true);
    });

    it("a failure in one policy does not hide another policy's allow or deny", () => {
      const fragile = compile("a-fragile", [{ name: "boom", deny: "1 / (task.ttlSeconds - 3600) == 0" }]);
      const forbid = compile("b-forbid", [{ name: "no", deny: "true" }]);
      const d = decide([fragile, forbid], facts(), still);
      expect(d.reasons).toHaveLength(2);
      expect(d.reasons[0]).toContain("rule boom failed to evaluate");
      expect(d.reasons[1]).toBe("team-a/b-forbid: rule no: denied by rule no");
    });
  });

  describe("time budget", () => {
    const permit = compile("a-permit", [{ name: "ok", deny: "false" }]);
    const other = compile("b-permit", [{ name: "ok", deny: "false" }]);
    const ticking = (step: number) => {
      let t = 0;
      return () => (t += step);
    };

    it("a policy that takes longer than budgetMs denies", () => {
      const d = decide([permit], facts(), { defaultDecision: "allow", budgetMs: 5, clock: ticking(10) });
      expect(d.allowed).toBe(false);
      expect(d.reasons).toHaveLength(1);
      expect(d.reasons[0]).toContain("team-a/a-permit");
      expect(d.reasons[0]).toContain("budget");
    });

    it("within budget allows", () => {
      expect(
        decide([permit], facts(), { defaultDecision: "deny", budgetMs: 50, clock: ticking(10) }).allowed,
      ).toBe(true);
      expect(
        decide([permit], facts(), { defaultDecision: "deny", budgetMs: 5, clock: ticking(5) }).allowed,
      ).toBe(true);
    });

    it("the default budget is 5 ms", () => {
      expect(decide([permit], facts(), { defaultDecision: "allow", clock: ticking(6) }).allowed).toBe(false);
      expect(decide([permit], facts(), { defaultDecision: "allow", clock: ticking(4) }).allowed).toBe(true);
    });

    it("the budget is per policy: only the slow one is named", () => {
      // a: 1 ms; b: 100 ms, and 100 ms again when timed a second time.
      const readings = [0, 1, 100, 200, 300, 400];
      const clock = () => readings.shift()!;
      const d = decide([other, permit], facts(), { defaultDecision: "allow", budgetMs: 50, clock });
      expect(d.allowed).toBe(false);
      expect(d.reasons).toHaveLength(1);
      expect(d.reasons[0]).toContain("b-permit");
      expect(d.reasons[0]).not.toContain("a-permit");
    });
  });
});

describe("the time budget and a pause of the process", () => {
  it("does not deny when only the first timing ran over (a pause), and denies when both did", () => {
    const slowOnce = compilePolicy({
      kind: "ClusterAgentPolicy",
      metadata: { name: "slow-once" },
      spec: { rules: [{ name: "r", deny: "false" }] },
    });
    const facts0 = {
      task: {
        name: "t",
        namespace: "ns",
        uid: "u",
        labels: {},
        agent: { name: "a", model: { provider: "", name: "", version: "" }, tools: [], labels: {} },
        scope: ["read:a"],
        ttlSeconds: 3600,
        audiences: [],
        parent: "",
      },
      delegator: { kind: "User", name: "alice", groups: [] },
      chain: [],
      stage: "issuance" as const,
      now: 0,
    };
    const paused = [0, 100, 200, 201];
    const once = decide([slowOnce], facts0, {
      defaultDecision: "allow",
      budgetMs: 50,
      clock: () => paused.shift()!,
    });
    expect(once.allowed).toBe(true);
    const slow = [0, 100, 200, 300];
    const twice = decide([slowOnce], facts0, {
      defaultDecision: "allow",
      budgetMs: 50,
      clock: () => slow.shift()!,
    });
    expect(twice.allowed).toBe(false);
    expect(twice.reasons[0]).toContain("past its 50 ms budget");
  });
});

describe("combinedVersion", () => {
  const ref = (i: number, version = `sha256:${String(i).padStart(64, "0")}`): PolicyRef => ({
    kind: i % 2 === 0 ? POLICY_KIND : CLUSTER_POLICY_KIND,
    ...(i % 2 === 0 ? { namespace: `ns-${i}` } : {}),
    name: `p-${i}`,
    version,
  });

  it("is none with no policy and sha256 otherwise", () => {
    expect(combinedVersion([])).toBe("none");
    expect(combinedVersion([ref(1)])).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it("does not depend on the order", () => {
    fc.assert(
      fc.property(
        fc
          .uniqueArray(fc.integer({ min: 0, max: 50 }), { minLength: 1, maxLength: 8 })
          .chain((ids) =>
            fc.tuple(
              fc.constant(ids),
              fc.shuffledSubarray(ids, { minLength: ids.length, maxLength: ids.length }),
            ),
          ),
        ([ids, shuffled]) => {
          expect(combinedVersion(shuffled.map((i) => ref(i)))).toBe(combinedVersion(ids.map((i) => ref(i))));
        },
      ),
    );
  });

  it("changes when any policy's version changes, or one is added or removed", () => {
    const refs = [0, 1, 2, 3].map((i) => ref(i));
    const base = combinedVersion(refs);
    const seen = new Set([base]);
    for (let i = 0; i < refs.length; i++) {
      const changed = refs.map((r, j) => (j === i ? { ...r, version: `sha256:${"f".repeat(64)}` } : r));
      seen.add(combinedVersion(changed));
    }
    seen.add(combinedVersion(refs.slice(1)));
    seen.add(combinedVersion([...refs, ref(4)]));
    expect(seen.size).toBe(refs.length + 3);
  });

  it("tells apart kind and namespace", () => {
    const v = "sha256:1";
    const versions = [
      combinedVersion([{ kind: POLICY_KIND, namespace: "a", name: "p", version: v }]),
      combinedVersion([{ kind: POLICY_KIND, namespace: "b", name: "p", version: v }]),
      combinedVersion([{ kind: CLUSTER_POLICY_KIND, name: "p", version: v }]),
    ];
    expect(new Set(versions).size).toBe(3);
  });

  it("decide reports the combined version of the policies it was given", () => {
    const a = compile("a", [{ name: "r", deny: "false" }]);
    const b = compile("b", [{ name: "r", deny: "false" }], { kind: CLUSTER_POLICY_KIND });
    const b2 = compile("b", [{ name: "r", deny: "false", message: "changed" }], {
      kind: CLUSTER_POLICY_KIND,
    });
    const v = decide([a, b], facts(), still).version;
    expect(v).toBe(combinedVersion([b, a]));
    expect(decide([b, a], facts(), still).version).toBe(v);
    expect(decide([a, b2], facts(), still).version).not.toBe(v);
  });
});

describe("selects: empty lists", () => {
  it("reads an empty list as absent, so namespaces: [] never silently selects nothing", () => {
    const compiled = compilePolicy({
      kind: "ClusterAgentPolicy",
      metadata: { name: "everywhere" },
      spec: { selector: { namespaces: [], agents: [] }, rules: [{ name: "r", deny: "false" }] },
    });
    const facts = {
      namespace: "team-a",
      agent: "coder",
      model: { provider: "p", name: "n", version: "v" },
      tools: [],
      delegator: { kind: "User", name: "alice", groups: [] },
      labels: {},
    };
    expect(selects(compiled, facts)).toBe(true);
    const narrowed = compilePolicy({
      kind: "ClusterAgentPolicy",
      metadata: { name: "elsewhere" },
      spec: { selector: { namespaces: ["team-b"] }, rules: [{ name: "r", deny: "false" }] },
    });
    expect(selects(narrowed, facts)).toBe(false);
  });
});
