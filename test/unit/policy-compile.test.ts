import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AgentPolicy,
  type AgentPolicySpec,
  CLUSTER_POLICY_KIND,
  MAX_EXPRESSION_LENGTH,
  MAX_RULES,
  POLICY_KIND,
  parseAgentPolicySpec,
} from "../../core/api/policy.ts";
import { ValidationError } from "../../core/errors.ts";
import {
  compileExpression,
  compilePolicy,
  MAX_COMPREHENSION_NESTING,
  policyVersion,
} from "../../core/policy/compile.ts";
import { CEL_LIMITS, celContext, type PolicyFacts, type PolicyStage } from "../../core/policy/context.ts";
import { formatGrant } from "../../core/scope.ts";
import { PolicyStore } from "../../operator/policies.ts";

function errorOf(fn: () => unknown): ValidationError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
  throw new Error("expected a ValidationError");
}

function policy(
  spec: unknown,
  opts: { kind?: AgentPolicy["kind"]; name?: string; namespace?: string } = {},
): AgentPolicy {
  const kind = opts.kind ?? POLICY_KIND;
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind,
    metadata: {
      name: opts.name ?? "guard",
      ...(kind === POLICY_KIND ? { namespace: opts.namespace ?? "team-a" } : {}),
    },
    spec: spec as AgentPolicySpec,
  };
}

function facts(stage: PolicyStage = "issuance"): PolicyFacts {
  return {
    task: {
      name: "fix-bug",
      namespace: "team-a",
      uid: "uid-1234",
      labels: { team: "payments", env: "prod" },
      agent: {
        name: "coder",
        model: { provider: "anthropic", name: "claude", version: "4" },
        tools: [
          { name: "git", version: "2.45" },
          { name: "shell", version: "1" },
        ],
        labels: { tier: "gold" },
      },
      scope: ["read:repos/a", "write:repos/a"],
      ttlSeconds: 3600,
      audiences: ["api.example"],
      parent: "",
    },
    delegator: { kind: "User", name: "alice", groups: ["devs", "oncall"] },
    chain: [
      { kind: "User", name: "alice" },
      { kind: "AgentTask", name: "fix-bug" },
    ],
    stage,
    // Tuesday 2024-01-02 13:04:05 UTC
    now: Date.UTC(2024, 0, 2, 13, 4, 5),
  };
}

const evaluate = (source: string, f: PolicyFacts): unknown =>
  compileExpression(source, "test")(celContext(f));

describe("parseAgentPolicySpec", () => {
  it("accepts a valid spec", () => {
    const spec = parseAgentPolicySpec({
      selector: { agents: ["coder"] },
      rules: [{ name: "no-prod", stages: ["issuance"], deny: "task.labels.env == 'prod'", maxTtl: "15m" }],
    });
    expect(spec.selector?.agents).toEqual(["coder"]);
    expect(spec.rules.map((r) => r.name)).toEqual(["no-prod"]);
    expect(spec.rules[0]!.maxTtl).toBe("15m");
  });

  it.each([
    [{}, "spec.rules", "required"],
    [{ rules: [] }, "spec.rules", "too_small"],
    [
      { rules: Array.from({ length: MAX_RULES + 1 }, (_, i) => ({ name: `r${i}`, deny: "true" })) },
      "spec.rules",
      "too_big",
    ],
    [{ rules: [{ name: "Not_A_Label", deny: "true" }] }, "spec.rules[0].name", "invalid_format"],
    [{ rules: [{ name: "r", deny: "" }] }, "spec.rules[0].deny", "too_small"],
    [
      { rules: [{ name: "r", deny: "x".repeat(MAX_EXPRESSION_LENGTH + 1) }] },
      "spec.rules[0].deny",
      "too_big",
    ],
    [{ rules: [{ name: "r", deny: "true", stages: ["later"] }] }, "spec.rules[0].stages[0]", "invalid_value"],
    [{ rules: [{ name: "r", maxTtl: "1m" }] }, "spec.rules[0].maxTtl", "min"],
    [{ rules: [{ name: "r", maxTtl: "25h" }] }, "spec.rules[0].maxTtl", "max"],
    [{ rules: [{ name: "r", maxTtl: "1d" }] }, "spec.rules[0].maxTtl", "invalid_format"],
    [
      {
        rules: [
          { name: "ok", deny: "true" },
          { name: "r", scopeCeiling: ["read:a", "read:a/../b"] },
        ],
      },
      "spec.rules[1].scopeCeiling[1]",
      "invalid_format",
    ],
    [{ rules: [{ name: "r", scopeCeiling: ["Read:a"] }] }, "spec.rules[0].scopeCeiling[0]", "invalid_format"],
  ] as const)("refuses %j at %s (rule %s)", (spec, field, rule) => {
    const e = errorOf(() => parseAgentPolicySpec(spec));
    expect(e.field).toBe(field);
    expect(e.rule).toBe(rule);
    expect(e.message).toContain(field);
  });

  it("accepts an expression of exactly MAX_EXPRESSION_LENGTH characters (shape only)", () => {
    const deny = `true${" ".repeat(MAX_EXPRESSION_LENGTH - 4)}`;
    expect(parseAgentPolicySpec({ rules: [{ name: "r", deny }] }).rules[0]!.deny).toBe(deny);
  });

  // parseTtl's message already names its rule: the field is swapped in, the rule not repeated.
  it("names the maxTtl rule once in the message", () => {
    const e = errorOf(() => parseAgentPolicySpec({ rules: [{ name: "r", maxTtl: "1m" }] }));
    expect(e.message.match(/\(rule min\)/g)).toHaveLength(1);
  });
});

describe("compilePolicy", () => {
  it("compiles a valid policy with defaults filled in", () => {
    const p = policy({
      selector: { agents: ["coder"] },
      rules: [
        { name: "no-prod", deny: "task.labels.env == 'prod'", message: "no production" },
        { name: "only-devs", stages: ["action"], allow: "'devs' in delegator.groups" },
        {
          name: "short",
          stages: ["issuance"],
          when: "task.agent.name == 'coder'",
          maxTtl: "15m",
          scopeCeiling: ["read:*"],
        },
      ],
    });
    const c = compilePolicy(p);
    expect(c.kind).toBe(POLICY_KIND);
    expect(c.namespace).toBe("team-a");
    expect(c.name).toBe("guard");
    expect(c.version).toBe(policyVersion(p));
    expect(c.selector).toEqual({ agents: ["coder"] });
    expect(c.rules.map((r) => r.name)).toEqual(["no-prod", "only-devs", "short"]);
    expect([...c.rules[0]!.stages].sort()).toEqual(["action", "issuance"]);
    expect([...c.rules[1]!.stages]).toEqual(["action"]);
    expect([...c.rules[2]!.stages]).toEqual(["issuance"]);
    expect(c.rules[0]!.message).toBe("no production");
    expect(c.rules[1]!.message).toBe("denied by rule only-devs");
    expect(c.rules[2]!.maxTtlMs).toBe(15 * 60_000);
    expect(c.rules[0]!.maxTtlMs).toBeUndefined();
    expect(c.rules[2]!.scopeCeiling!.map(formatGrant)).toEqual(["read:*"]);
    expect(c.rules[0]!.allow).toBeUndefined();
    expect(c.rules[1]!.deny).toBeUndefined();

    const prod = celContext(facts());
    const dev = celContext({ ...facts(), task: { ...facts().task, labels: { env: "dev" } } });
    expect(c.rules[0]!.deny!(prod)).toBe(true);
    expect(c.rules[0]!.deny!(dev)).toBe(false);
    expect(c.rules[1]!.allow!(prod)).toBe(true);
    expect(c.rules[2]!.when!(prod)).toBe(true);
  });

  it("a ClusterAgentPolicy carries no namespace", () => {
    const c = compilePolicy(policy({ rules: [{ name: "r", deny: "false" }] }, { kind: CLUSTER_POLICY_KIND }));
    expect(c.kind).toBe(CLUSTER_POLICY_KIND);
    expect(c.namespace).toBeUndefined();
    expect(c.selector).toEqual({});
  });

  it("refuses a spec that does not parse, naming the field", () => {
    const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "r", maxTtl: "2m" }] })));
    expect(e.field).toBe("spec.rules[0].maxTtl");
    expect(e.rule).toBe("min");
  });

  describe("CEL syntax errors", () => {
    it.each([
      ["1 +", "1:4"],
      ["task.name == == 'x'", "1:14"],
      ["task.name ==\n  == 'x'", "2:3"],
      ["task.name == 'x' &&\ntask.uid == 'y' &&\n   (", "3:5"],
    ])("%j is refused at %s", (source, position) => {
      const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "r", deny: source }] })));
      expect(e.field).toBe("spec.rules[0].deny");
      expect(e.rule).toBe("cel-syntax");
      expect(e.message).toContain(`at ${position}:`);
      expect(e.message).toContain("spec.rules[0].deny");
    });

    it.each(["when", "deny", "allow"] as const)("names the %s field of the rule it is in", (key) => {
      const bad = { name: "bad", deny: "true", [key]: "task.name ==" };
      const e = errorOf(() =>
        compilePolicy(
          policy({ rules: [{ name: "fine", deny: "false" }, { name: "other", allow: "true" }, bad] }),
        ),
      );
      expect(e.field).toBe(`spec.rules[2].${key}`);
      expect(e.rule).toBe("cel-syntax");
      expect(e.message).toMatch(/ at 1:\d+: /);
    });
  });

  describe("CEL type errors", () => {
    it.each([
      ["task.agent.model.version == 3", /at 1:\d+:/],
      ["task.nope == 'x'", /at 1:6:/],
      ["task.agent.model.nope == 'x'", /at 1:18:/],
      ["unknown == 1", /at 1:1:/],
      ["task.ttlSeconds", /at 1:1: .*int/],
      ["task.name", /at 1:1: .*string/],
      ["task.scope", /at 1:1: .*list/],
      ["context.flag", /at 1:1: .*dyn/],
      ["task.ttlSeconds + 'x' > 0", /at 1:\d+:/],
      ["task.name.size() > '3'", /at 1:\d+:/],
    ])("%j is refused with rule cel-type", (source, message) => {
      const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "r", allow: source }] })));
      expect(e.field).toBe("spec.rules[0].allow");
      expect(e.rule).toBe("cel-type");
      expect(e.message).toMatch(message);
    });

    it("compileExpression names the field given", () => {
      const e = errorOf(() => compileExpression("task.nope == 1", "somewhere.else"));
      expect(e.field).toBe("somewhere.else");
      expect(e.message.startsWith("somewhere.else: type error at 1:6:")).toBe(true);
    });
  });

  describe("comprehension nesting", () => {
    const macros = ["all", "exists", "exists_one", "map", "filter"] as const;
    /** A bool expression with `chain` comprehensions nested inside one another, outermost first. */
    const nested = (chain: readonly (typeof macros)[number][]): string => {
      let body = "true";
      for (let i = chain.length - 1; i >= 0; i--) {
        const m = chain[i]!;
        const call = `[1, 2].${m}(x${i}, ${body})`;
        body = m === "map" || m === "filter" ? `${call}.size() > 0` : call;
      }
      return body;
    };

    it(`accepts nesting up to ${MAX_COMPREHENSION_NESTING}, refuses deeper (cel-bounds)`, () => {
      fc.assert(
        fc.property(
          fc.array(fc.constantFrom(...macros), { minLength: 1, maxLength: MAX_COMPREHENSION_NESTING + 2 }),
          (chain) => {
            const source = nested(chain);
            if (chain.length <= MAX_COMPREHENSION_NESTING) {
              expect(typeof compileExpression(source, "f")(celContext(facts()))).toBe("boolean");
            } else {
              const e = errorOf(() => compileExpression(source, "spec.rules[0].when"));
              expect(e.field).toBe("spec.rules[0].when");
              expect(e.rule).toBe("cel-bounds");
              expect(e.message).toContain(`nested ${chain.length} deep`);
            }
          },
        ),
      );
    });

    it("counts nesting inside a comprehension's predicate through other operators", () => {
      const source =
        "task.scope.all(g, g != '' && task.audiences.exists(a, [1].exists(x, x == 1) || a == g))";
      const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "r", deny: source }] })));
      expect(e.field).toBe("spec.rules[0].deny");
      expect(e.rule).toBe("cel-bounds");
    });

    it("side-by-side comprehensions are not nesting", () => {
      const source = "[1].all(a, [2].all(b, true)) && [3].exists(c, [4].exists(d, true))";
      expect(compileExpression(source, "f")(celContext(facts()))).toBe(true);
    });

    // A chain l.filter(..).filter(..).filter(..) adds cost, it does not multiply it.
    it("a chain of comprehensions (receiver, not body) is not nesting", () => {
      const source = "task.scope.filter(a, true).filter(b, true).filter(c, true).size() > 0";
      expect(compileExpression(source, "f")(celContext(facts()))).toBe(true);
    });
  });

  describe("AST limits", () => {
    const sum = (terms: number) => `${Array.from({ length: terms }, () => "1").join("+")} > 0`;

    it("a short sum compiles", () => {
      expect(compileExpression(sum(20), "f")(celContext(facts()))).toBe(true);
    });

    it(`refuses an expression with more than ${CEL_LIMITS.maxAstNodes} nodes within the length limit`, () => {
      const source = sum(CEL_LIMITS.maxAstNodes);
      expect(source.length).toBeLessThanOrEqual(MAX_EXPRESSION_LENGTH);
      const e = errorOf(() =>
        compilePolicy(
          policy({
            rules: [
              { name: "ok", deny: "false" },
              { name: "big", deny: source },
            ],
          }),
        ),
      );
      expect(e).toBeInstanceOf(ValidationError);
      expect(e.field).toBe("spec.rules[1].deny");
      expect(e.rule).toMatch(/^cel-/);
    });

    it(`refuses an expression nested deeper than ${CEL_LIMITS.maxDepth}`, () => {
      const depth = CEL_LIMITS.maxDepth + 6;
      const source = `${"(".repeat(depth)}true${")".repeat(depth)}`;
      const e = errorOf(() =>
        compilePolicy(policy({ rules: [{ name: "deep", when: source, deny: "true" }] })),
      );
      expect(e.field).toBe("spec.rules[0].when");
      expect(e.rule).toMatch(/^cel-/);
    });

    it(`refuses a list literal of more than ${CEL_LIMITS.maxListElements} elements`, () => {
      const list = `[${Array.from({ length: CEL_LIMITS.maxListElements + 1 }, () => "1").join(",")}]`;
      const e = errorOf(() => compileExpression(`size(${list}) > 0`, "spec.rules[0].allow"));
      expect(e.field).toBe("spec.rules[0].allow");
      expect(e.rule).toMatch(/^cel-/);
    });
  });

  describe("rule structure", () => {
    it("refuses a duplicate rule name (unique), naming the later rule", () => {
      const e = errorOf(() =>
        compilePolicy(
          policy({
            rules: [
              { name: "a", deny: "true" },
              { name: "b", deny: "true" },
              { name: "a", allow: "true" },
            ],
          }),
        ),
      );
      expect(e.field).toBe("spec.rules[2].name");
      expect(e.rule).toBe("unique");
      expect(e.message).toContain("a is used by an earlier rule");
    });

    it.each([
      [{ name: "r" }],
      [{ name: "r", when: "true" }],
      [{ name: "r", when: "true", message: "why", stages: ["action"] }],
    ])("refuses a rule with no effect: %j", (rule) => {
      const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "first", deny: "false" }, rule] })));
      expect(e.field).toBe("spec.rules[1]");
      expect(e.rule).toBe("effect");
    });

    it.each([
      [{ name: "r", deny: "true" }],
      [{ name: "r", allow: "true" }],
      [{ name: "r", maxTtl: "1h" }],
      [{ name: "r", scopeCeiling: ["read:*"] }],
    ])("accepts a rule with one effect: %j", (rule) => {
      expect(compilePolicy(policy({ rules: [rule] })).rules).toHaveLength(1);
    });

    it.each([
      [{ maxTtl: "10m" }],
      [{ scopeCeiling: ["read:*"] }],
      [{ maxTtl: "10m", scopeCeiling: ["read:*"], deny: "false" }],
    ])("refuses narrowing %j on a rule that runs at action only", (effect) => {
      const e = errorOf(() =>
        compilePolicy(policy({ rules: [{ name: "n", stages: ["action"], ...effect }] })),
      );
      expect(e.field).toBe("spec.rules[0].stages");
      expect(e.rule).toBe("narrowing-at-issuance");
    });

    it.each([[["issuance"]], [["issuance", "action"]], [["action", "issuance"]], [undefined]])(
      "accepts narrowing with stages %j",
      (stages) => {
        const c = compilePolicy(
          policy({
            rules: [{ name: "n", ...(stages ? { stages } : {}), maxTtl: "10m", scopeCeiling: ["read:*"] }],
          }),
        );
        expect(c.rules[0]!.stages.has("issuance")).toBe(true);
        expect(c.rules[0]!.maxTtlMs).toBe(600_000);
      },
    );

    it.each([
      [{ maxTtl: "4m59s" }, "spec.rules[0].maxTtl"],
      [{ maxTtl: "24h1s" }, "spec.rules[0].maxTtl"],
      [{ maxTtl: "15" }, "spec.rules[0].maxTtl"],
      [{ scopeCeiling: ["read:a", "read:a"] }, "spec.rules[0].scopeCeiling[1]"],
      [{ scopeCeiling: [] }, "spec.rules[0].scopeCeiling"],
      [{ scopeCeiling: ["read:a/*/b"] }, "spec.rules[0].scopeCeiling[0]"],
      [{ scopeCeiling: ["read"] }, "spec.rules[0].scopeCeiling[0]"],
    ])("refuses the narrowing %j naming %s", (effect, field) => {
      const e = errorOf(() => compilePolicy(policy({ rules: [{ name: "n", ...effect }] })));
      expect(e.field).toBe(field);
    });
  });
});

describe("policyVersion", () => {
  const spec = { selector: { agents: ["coder"] }, rules: [{ name: "r", deny: "task.name == 'x'" }] };

  it("is sha256 over the content, independent of key order and of other metadata", () => {
    const v = policyVersion(policy(spec));
    expect(v).toMatch(/^sha256:[0-9a-f]{64}$/);
    const reordered = {
      rules: [{ deny: "task.name == 'x'", name: "r" }],
      selector: { agents: ["coder"] },
    };
    expect(policyVersion(policy(reordered))).toBe(v);
    const p = policy(spec);
    expect(
      policyVersion({ ...p, metadata: { ...p.metadata, uid: "u", generation: 7, resourceVersion: "99" } }),
    ).toBe(v);
  });

  it("changes when the spec changes and not otherwise", () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, maxLength: 20 }),
        fc.string({ minLength: 1, maxLength: 20 }),
        (m1, m2) => {
          const a = policyVersion(policy({ rules: [{ name: "r", deny: "true", message: m1 }] }));
          const b = policyVersion(policy({ rules: [{ name: "r", deny: "true", message: m2 }] }));
          expect(a === b).toBe(m1 === m2);
        },
      ),
    );
    const base = policyVersion(policy(spec));
    expect(policyVersion(policy({ ...spec, selector: { agents: ["other"] } }))).not.toBe(base);
    expect(policyVersion(policy({ ...spec, rules: [{ name: "r", deny: "task.name == 'y'" }] }))).not.toBe(
      base,
    );
    expect(
      policyVersion(
        policy({ ...spec, rules: [{ name: "r", deny: "task.name == 'x'", stages: ["action"] }] }),
      ),
    ).not.toBe(base);
  });

  it("differs between kinds, namespaces and names", () => {
    const versions = [
      policyVersion(policy(spec, { kind: POLICY_KIND, name: "p", namespace: "a" })),
      policyVersion(policy(spec, { kind: CLUSTER_POLICY_KIND, name: "p" })),
      policyVersion(policy(spec, { kind: POLICY_KIND, name: "p", namespace: "b" })),
      policyVersion(policy(spec, { kind: POLICY_KIND, name: "q", namespace: "a" })),
    ];
    expect(new Set(versions).size).toBe(versions.length);
    // The kind counts by itself, not only through the namespace.
    const metadata = { name: "p" };
    expect(policyVersion({ kind: POLICY_KIND, metadata, spec })).not.toBe(
      policyVersion({ kind: CLUSTER_POLICY_KIND, metadata, spec }),
    );
  });
});

describe("PolicyStore: each version compiles once", () => {
  const spec = { rules: [{ name: "r", deny: "task.labels.env == 'prod'" }] };
  const store = () => new PolicyStore({ defaultDecision: "allow" });

  it("returns the same compiled object for the same version", () => {
    const s = store();
    const first = s.upsert(policy(spec)).after;
    expect(first.rules[0]!.name).toBe("r");
    // A fresh but equal object (as a watch event would deliver) keeps it.
    const again = s.upsert(structuredClone(policy(spec))).after;
    expect(again).toBe(first);
    // A fresh store compiles anew.
    expect(store().upsert(policy(spec)).after).not.toBe(first);
  });

  it("recompiles after a spec change", () => {
    const s = store();
    const first = s.upsert(policy(spec)).after;
    const changedSpec = { rules: [{ name: "r", deny: "task.labels.env == 'dev'" }] };
    const second = s.upsert(policy(changedSpec)).after;
    expect(second).not.toBe(first);
    expect(second.version).toBe(policyVersion(policy(changedSpec)));
    expect(second.version).not.toBe(first.version);
    const prod = celContext(facts());
    expect(first.rules[0]!.deny!(prod)).toBe(true);
    expect(second.rules[0]!.deny!(prod)).toBe(false);
    // And the new version is now the one kept.
    expect(s.upsert(policy(changedSpec)).after).toBe(second);
  });

  it("keeps an AgentPolicy and a ClusterAgentPolicy of the same name apart", () => {
    const s = store();
    const ns = s.upsert(policy(spec, { name: "same" })).after;
    const cluster = s.upsert(policy(spec, { name: "same", kind: CLUSTER_POLICY_KIND })).after;
    expect(ns.kind).toBe(POLICY_KIND);
    expect(cluster.kind).toBe(CLUSTER_POLICY_KIND);
    expect(s.upsert(policy(spec, { name: "same" })).after).toBe(ns);
    expect(s.upsert(policy(spec, { name: "same", kind: CLUSTER_POLICY_KIND })).after).toBe(cluster);
  });

  it("keeps a bad policy in force as one that denies, naming the field and the rule, and compiles it once fixed", () => {
    const s = store();
    const good = s.upsert(policy(spec)).after;
    const bad = s.upsert(policy({ rules: [{ name: "r", deny: "task.nope" }] })).after;
    expect(bad.rules.map((r) => r.name)).toEqual(["does-not-compile"]);
    expect(bad.rules[0]!.message).toMatch(
      /^the policy does not compile: spec\.rules\[0\]\.deny: .*\(rule cel-type\)$/,
    );
    expect(bad.rules[0]!.deny!(celContext(facts()))).toBe(true);
    const fixed = s.upsert(policy(spec)).after;
    expect(fixed.rules.map((r) => r.name)).toEqual(["r"]);
    expect(fixed.version).toBe(good.version);
  });

  it("remove drops the entry", () => {
    const s = store();
    const first = s.upsert(policy(spec)).after;
    expect(s.remove(policy(spec))).toBe(first);
    const second = s.upsert(policy(spec)).after;
    expect(second).not.toBe(first);
    expect(second.version).toBe(first.version);
    expect(second.rules.map((r) => r.name)).toEqual(first.rules.map((r) => r.name));
  });
});

describe("policy context", () => {
  type Mutate = (f: PolicyFacts) => PolicyFacts;
  const task = (f: PolicyFacts, patch: Partial<PolicyFacts["task"]>): PolicyFacts => ({
    ...f,
    task: { ...f.task, ...patch },
  });
  const agent = (f: PolicyFacts, patch: Partial<PolicyFacts["task"]["agent"]>): PolicyFacts =>
    task(f, { agent: { ...f.task.agent, ...patch } });
  const action = (f: PolicyFacts): PolicyFacts => ({
    ...f,
    stage: "action",
    action: { name: "read", properties: { dryRun: true, attempt: 2 } },
    resource: { type: "repo", id: "repos/a", properties: { size: 10, owner: { team: "payments" } } },
    context: { ticket: "OPS-1", retries: 3, ratio: 0.5, nested: { xs: [1, 2, 3] } },
  });

  // Each expression is true for the base facts and false after `mutate`.
  const cases: Array<[string, Mutate, Mutate?]> = [
    ["task.name == 'fix-bug'", (f) => task(f, { name: "other" })],
    ["task.namespace == 'team-a'", (f) => task(f, { namespace: "team-b" })],
    ["task.uid == 'uid-1234'", (f) => task(f, { uid: "uid-9" })],
    [
      "task.labels.env == 'prod' && task.labels['team'] == 'payments'",
      (f) => task(f, { labels: { env: "prod", team: "risk" } }),
    ],
    ["'env' in task.labels", (f) => task(f, { labels: {} })],
    ["task.agent.name == 'coder'", (f) => agent(f, { name: "reviewer" })],
    [
      "task.agent.model.provider == 'anthropic' && task.agent.model.name == 'claude' && task.agent.model.version == '4'",
      (f) => agent(f, { model: { provider: "anthropic", name: "claude", version: "3" } }),
    ],
    [
      "task.agent.tools.exists(t, t.name == 'git' && t.version == '2.45')",
      (f) => agent(f, { tools: [{ name: "git", version: "2.44" }] }),
    ],
    ["task.agent.labels.tier == 'gold'", (f) => agent(f, { labels: { tier: "silver" } })],
    ["'write:repos/a' in task.scope && size(task.scope) == 2", (f) => task(f, { scope: ["read:repos/a"] })],
    ["task.ttlSeconds == 3600", (f) => task(f, { ttlSeconds: 3599 })],
    ["task.ttlSeconds > 1800 && task.ttlSeconds / 60 == 60", (f) => task(f, { ttlSeconds: 1800 })],
    ["task.audiences == ['api.example']", (f) => task(f, { audiences: ["api.example", "other"] })],
    ["task.parent == ''", (f) => task(f, { parent: "root-task" })],
    [
      "delegator.kind == 'User' && delegator.name == 'alice'",
      (f) => ({ ...f, delegator: { ...f.delegator, name: "bob" } }),
    ],
    ["'oncall' in delegator.groups", (f) => ({ ...f, delegator: { ...f.delegator, groups: ["devs"] } })],
    [
      "size(chain) == 2 && chain[0].kind == 'User' && chain[1].name == 'fix-bug'",
      (f) => ({
        ...f,
        chain: [{ kind: "User", name: "alice" }, { kind: "AgentTask", name: "p" }, ...f.chain.slice(1)],
      }),
    ],
    ["stage == 'issuance'", (f) => ({ ...f, stage: "renewal" })],
    ["now.getHours() == 13 && now.getMinutes() == 4", (f) => ({ ...f, now: f.now + 3_600_000 })],
    ["now.getDayOfWeek() == 2 && now.getFullYear() == 2024", (f) => ({ ...f, now: f.now + 86_400_000 })],
    ["now < timestamp('2024-01-02T13:04:06Z')", (f) => ({ ...f, now: f.now + 1000 })],
    ["action.name == ''", action],
    ["resource.type == '' && resource.id == '' && size(resource.properties) == 0", action],
    ["size(context) == 0", action],
  ];

  it.each(cases)("%s", (source, mutate) => {
    expect(evaluate(source, facts())).toBe(true);
    expect(evaluate(source, mutate(facts()))).toBe(false);
  });

  const actionCases: Array<[string, Mutate]> = [
    [
      "stage == 'action' && action.name == 'read'",
      (f) => ({ ...f, action: { name: "write", properties: {} } }),
    ],
    [
      "action.properties.dryRun == true && action.properties.attempt == 2",
      (f) => ({ ...f, action: { name: "read", properties: { dryRun: true, attempt: 3 } } }),
    ],
    [
      "resource.type == 'repo' && resource.id.startsWith('repos/')",
      (f) => ({ ...f, resource: { type: "repo", id: "docs/x", properties: {} } }),
    ],
    [
      "resource.properties.size > 3 && resource.properties.owner.team == 'payments'",
      (f) => ({ ...f, resource: { ...f.resource!, properties: { size: 3, owner: { team: "payments" } } } }),
    ],
    [
      "context.ticket.startsWith('OPS-') && context.retries == 3",
      (f) => ({ ...f, context: { ...f.context, retries: 4 } }),
    ],
    [
      "context.nested.xs[2] == 3 && size(context.nested.xs) == 3",
      (f) => ({ ...f, context: { nested: { xs: [1, 2] } } }),
    ],
    ["has(context.ticket)", (f) => ({ ...f, context: {} })],
  ];

  it.each(actionCases)("at action: %s", (source, mutate) => {
    const f = action(facts());
    expect(evaluate(source, f)).toBe(true);
    expect(evaluate(source, mutate(f))).toBe(false);
  });

  it("whole numbers in context and properties become CEL ints, fractions stay doubles", () => {
    const f = action(facts());
    for (const source of [
      "type(context.retries) == int",
      "type(context.nested.xs[0]) == int",
      "type(resource.properties.size) == int",
      "type(resource.properties.size + 1) == int",
      "type(action.properties.attempt) == int",
      "type(context.ratio) == double",
      "type(task.ttlSeconds) == int",
      "type(context.ticket) == string",
    ]) {
      expect([source, evaluate(source, f)]).toEqual([source, true]);
    }
    expect(evaluate("type(context.retries) == double", f)).toBe(false);
    const ctx = celContext(f);
    expect((ctx.context as Record<string, unknown>).retries).toBe(3n);
    expect((ctx.context as Record<string, unknown>).ratio).toBe(0.5);
    expect((ctx.context as { nested: { xs: unknown[] } }).nested.xs).toEqual([1n, 2n, 3n]);
    expect((ctx.task as { ttlSeconds: unknown }).ttlSeconds).toBe(3600n);
    expect(ctx.now).toEqual(new Date(f.now));
  });

  it("a fractional ttlSeconds is floored to an int", () => {
    expect(
      evaluate("task.ttlSeconds == 90", { ...facts(), task: { ...facts().task, ttlSeconds: 90.9 } }),
    ).toBe(true);
  });

  it("celContext copies: changing its output does not change the facts", () => {
    const f = facts();
    const ctx = celContext(f) as { task: { labels: Record<string, string>; scope: string[] } };
    ctx.task.labels.env = "dev";
    ctx.task.scope.push("delete:*");
    expect(f.task.labels.env).toBe("prod");
    expect(f.task.scope).toHaveLength(2);
  });
});

describe("regular expressions", () => {
  it("refuses matches() at apply time: backtracking regexes have no cost bound", () => {
    const e = (() => {
      try {
        compileExpression("resource.id.matches('^(a+)+$')", "spec.rules[0].deny");
      } catch (err) {
        return err as { field: string; rule: string; message: string };
      }
      throw new Error("expected a refusal");
    })();
    expect(e).toMatchObject({ field: "spec.rules[0].deny", rule: "cel-bounds" });
    expect(e.message).toContain("matches() is not allowed");
  });
});
