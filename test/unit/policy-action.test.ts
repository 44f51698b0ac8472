import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AgentPolicy,
  type AgentPolicySpec,
  CLUSTER_POLICY_KIND,
  POLICY_KIND,
  type PolicyRule,
} from "../../core/api/policy.ts";
import { type ActionRequest, decideAction, type TaskState } from "../../core/policy/action.ts";
import { type CompiledPolicy, compilePolicy } from "../../core/policy/compile.ts";
import type { PolicyFacts } from "../../core/policy/context.ts";
import { combinedVersion, type DecideOptions } from "../../core/policy/decide.ts";
import { scopeAllows, validateScope } from "../../core/scope.ts";

function compile(
  name: string,
  rules: ReadonlyArray<Partial<PolicyRule> & { name: string }>,
  kind: AgentPolicy["kind"] = POLICY_KIND,
): CompiledPolicy {
  return compilePolicy({
    kind,
    metadata: { name, ...(kind === POLICY_KIND ? { namespace: "team-a" } : {}) },
    spec: { rules } as AgentPolicySpec,
  });
}

const NOW = Date.UTC(2024, 0, 2, 13, 4, 5);

function facts(
  scope: readonly string[] = ["read:repos/*", "write:repos/a"],
): Omit<PolicyFacts, "stage" | "action" | "resource" | "context"> {
  return {
    task: {
      name: "fix-bug",
      namespace: "team-a",
      uid: "uid-1234",
      labels: { env: "prod" },
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
    now: NOW,
  };
}

const issued = (grantedScope: readonly string[] = ["read:repos/*", "write:repos/a"]): TaskState => ({
  phase: "Issued",
  revoked: false,
  deleting: false,
  notAfter: NOW + 600_000,
  grantedScope,
});

const request = (action: string, id: string, extra: Partial<ActionRequest> = {}): ActionRequest => ({
  action,
  resource: { type: "repo", id },
  ...extra,
});

const clockless = (defaultDecision: DecideOptions["defaultDecision"]): DecideOptions => ({
  defaultDecision,
  clock: () => 0,
});

const permit = compile("permit", [{ name: "nothing", deny: "false" }]);
const forbidAll = compile(
  "forbid",
  [{ name: "everything", deny: "true", message: "frozen" }],
  CLUSTER_POLICY_KIND,
);

describe("decideAction: the task's state", () => {
  const base = {
    facts: facts(),
    request: request("read", "repos/a"),
    policies: [permit],
    options: clockless("allow"),
  };

  it("an Issued, live task within scope with a permitting policy is allowed", () => {
    const d = decideAction({ ...base, state: issued() });
    expect(d).toEqual({
      allowed: true,
      reasons: [],
      version: combinedVersion([permit]),
      policies: [{ kind: POLICY_KIND, namespace: "team-a", name: "permit", version: permit.version }],
    });
  });

  it.each([
    ["revoked flag", { revoked: true }, /revoked/],
    ["Revoked phase", { phase: "Revoked" }, /revoked/],
    ["being deleted", { deleting: true }, /deleted/],
    ["Pending", { phase: "Pending" }, /Pending, not Issued/],
    ["Denied", { phase: "Denied" }, /Denied, not Issued/],
    ["Expired phase", { phase: "Expired" }, /Expired, not Issued/],
    ["no phase", { phase: undefined }, /not issued/],
    ["no certificate", { notAfter: undefined }, /expired/],
    ["notAfter == now", { notAfter: NOW }, /expired/],
    ["notAfter in the past", { notAfter: NOW - 1 }, /expired/],
    ["granted scope that does not parse", { grantedScope: ["read:a/../b"] }, /does not parse/],
    ["empty granted scope", { grantedScope: [] }, /does not parse/],
  ] as const)("%s denies", (_, patch, reason) => {
    const d = decideAction({ ...base, state: { ...issued(), ...patch } });
    expect(d.allowed).toBe(false);
    expect(d.reasons).toHaveLength(1);
    expect(d.reasons[0]).toMatch(reason);
    expect(d.version).toBe("none");
  });

  it("a state denial is not lifted by a default allow and no policy", () => {
    const d = decideAction({ ...base, policies: [], state: { ...issued(), revoked: true } });
    expect(d.allowed).toBe(false);
  });
});

describe("decideAction: scope and policies", () => {
  const run = (
    req: ActionRequest,
    policies: readonly CompiledPolicy[],
    defaultDecision: DecideOptions["defaultDecision"] = "allow",
    state: TaskState = issued(),
  ) => decideAction({ facts: facts(), state, request: req, policies, options: clockless(defaultDecision) });

  it.each([
    ["write", "repos/b"],
    ["delete", "repos/a"],
    ["read", "repos"],
    ["read", "docs/x"],
    ["read", "repos/../secrets"],
    ["read", "repos//a"],
    ["read", "repos/*"],
    ["*", "repos/a"],
    ["READ", "repos/a"],
  ])("%s %s is outside the granted scope: denied even when policies allow", (verb, id) => {
    for (const [policies, def] of [
      [[permit], "allow"],
      [[], "allow"],
    ] as const) {
      const d = run(request(verb, id), policies, def);
      expect(d.allowed).toBe(false);
      expect(d.reasons[0]).toBe(`${verb}:${id} is outside the task's scope`);
    }
  });

  it.each([
    ["read", "repos/a"],
    ["read", "repos/a/b/c"],
    ["write", "repos/a"],
  ])("%s %s is within scope: allowed when policies allow", (verb, id) => {
    expect(run(request(verb, id), [permit], "deny").allowed).toBe(true);
    expect(run(request(verb, id), [], "allow").allowed).toBe(true);
  });

  it("the granted scope, not the requested one, bounds the action", () => {
    const narrowed = issued(["read:repos/*"]);
    expect(run(request("write", "repos/a"), [permit], "allow", narrowed).allowed).toBe(false);
    expect(run(request("read", "repos/a"), [permit], "allow", narrowed).allowed).toBe(true);
  });

  it("with no policy, a deny default denies even within scope", () => {
    const d = run(request("read", "repos/a"), [], "deny");
    expect(d.allowed).toBe(false);
    expect(d.version).toBe("none");
    expect(d.reasons.join()).toContain("default denies");
  });

  it("a policy denying at action denies within scope, and names itself", () => {
    const d = run(request("read", "repos/a"), [permit, forbidAll], "allow");
    expect(d.allowed).toBe(false);
    expect(d.reasons).toEqual(["forbid: rule everything: frozen"]);
    expect(d.version).toBe(combinedVersion([permit, forbidAll]));
  });

  it("out of scope and denied by policy: both reasons", () => {
    const d = run(request("delete", "repos/a"), [forbidAll], "allow");
    expect(d.reasons).toEqual([
      "delete:repos/a is outside the task's scope",
      "forbid: rule everything: frozen",
    ]);
  });

  it("an issuance-only deny does not affect actions", () => {
    const p = compile("issuance", [{ name: "i", stages: ["issuance"], deny: "true" }]);
    expect(run(request("read", "repos/a"), [p], "deny").allowed).toBe(true);
  });

  it("the request reaches the rules as action, resource and context", () => {
    const p = compile("inspect", [
      { name: "no-write", stages: ["action"], deny: "action.name == 'write'" },
      { name: "repo-only", stages: ["action"], allow: "resource.type == 'repo'" },
      {
        name: "ticket",
        stages: ["action"],
        allow: "has(context.ticket) && context.ticket.startsWith('OPS-')",
      },
      {
        name: "small",
        stages: ["action"],
        deny: "has(resource.properties.size) && resource.properties.size > 100",
      },
      {
        name: "no-force",
        stages: ["action"],
        deny: "has(action.properties.force) && action.properties.force == true",
      },
      { name: "stage", stages: ["action"], allow: "stage == 'action'" },
    ]);
    const ok = request("read", "repos/a", {
      context: { ticket: "OPS-7" },
      resource: { type: "repo", id: "repos/a", properties: { size: 100 } },
      actionProperties: { force: false },
    });
    expect(run(ok, [p], "deny").allowed).toBe(true);
    const deniedBy = (req: ActionRequest) =>
      run(req, [p], "deny").reasons.map((r) => r.replace(/^team-a\/inspect: rule ([a-z-]+):.*$/, "$1"));
    expect(deniedBy({ ...ok, action: "write" })).toEqual(["no-write"]);
    expect(deniedBy({ ...ok, resource: { ...ok.resource, type: "issue" } })).toEqual(["repo-only"]);
    expect(deniedBy({ ...ok, context: { ticket: "JIRA-1" } })).toEqual(["ticket"]);
    expect(deniedBy({ ...ok, context: {} })).toEqual(["ticket"]);
    expect(deniedBy({ ...ok, resource: { ...ok.resource, properties: { size: 101 } } })).toEqual(["small"]);
    expect(deniedBy({ ...ok, actionProperties: { force: true } })).toEqual(["no-force"]);
  });
});

describe("decideAction never allows outside the task's scope (property)", () => {
  const verbs = ["read", "write", "delete"] as const;
  const segment = fc.constantFrom("a", "b", "c");
  const path = fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => s.join("/"));
  const grant = fc.oneof(
    {
      weight: 8,
      arbitrary: fc
        .tuple(fc.constantFrom(...verbs, "*"), path, fc.boolean())
        .map(([v, p, prefix]) => `${v}:${p}${prefix ? "/*" : ""}`),
    },
    { weight: 1, arbitrary: fc.constantFrom(...verbs, "*").map((v) => `${v}:*`) },
  );
  const granted = fc.uniqueArray(grant, { minLength: 1, maxLength: 5 });
  const action = fc.record({
    verb: fc.oneof(
      { weight: 9, arbitrary: fc.constantFrom(...verbs) },
      { weight: 1, arbitrary: fc.constantFrom("*", "admin", "") },
    ),
    path: fc.oneof(
      { weight: 9, arbitrary: fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.join("/")) },
      { weight: 1, arbitrary: fc.constantFrom("a/../b", "a//b", "a/*", "*", "", "a/", "./a") },
    ),
  });

  // A pool of policies, each evaluated only at action or everywhere.
  const pool: readonly CompiledPolicy[] = [
    permit,
    compile("allow-all", [{ name: "yes", allow: "true" }], CLUSTER_POLICY_KIND),
    compile("no-delete", [{ name: "d", deny: "action.name == 'delete'" }]),
    compile(
      "only-a",
      [{ name: "a", stages: ["action"], allow: "resource.id.startsWith('a')" }],
      CLUSTER_POLICY_KIND,
    ),
    compile("issuance-narrowing", [
      { name: "n", stages: ["issuance"], maxTtl: "10m", scopeCeiling: ["read:*"] },
    ]),
    compile("rarely", [{ name: "r", deny: "resource.id == 'c/c/c'" }]),
    forbidAll,
  ];
  const permissive = new Set(["permit", "allow-all", "issuance-narrowing"]);

  const state = fc.oneof(
    { weight: 8, arbitrary: fc.constant({}) },
    {
      weight: 1,
      arbitrary: fc.constantFrom<Partial<TaskState>>(
        { revoked: true },
        { deleting: true },
        { phase: "Pending" },
        { notAfter: NOW },
        { notAfter: undefined },
      ),
    },
  );

  it("allowed implies scopeAllows(granted, action)", () => {
    const counts = { allowed: 0, denied: 0, outOfScopePermissive: 0, inScopeDeniedByPolicy: 0 };
    fc.assert(
      fc.property(
        granted,
        action,
        fc.subarray([...pool]),
        fc.constantFrom<DecideOptions["defaultDecision"]>("allow", "deny"),
        state,
        (grantedScope, act, policies, defaultDecision, patch) => {
          const d = decideAction({
            facts: facts(grantedScope),
            state: { ...issued(grantedScope), ...patch },
            request: request(act.verb, act.path),
            policies,
            options: clockless(defaultDecision),
          });
          const inScope = scopeAllows(validateScope(grantedScope), act);
          if (d.allowed) {
            expect(inScope).toBe(true);
            expect(patch).toEqual({});
            counts.allowed++;
          } else {
            counts.denied++;
            expect(d.reasons.length).toBeGreaterThan(0);
          }
          const onlyPermissive =
            policies.length > 0 ? policies.every((p) => permissive.has(p.name)) : defaultDecision === "allow";
          if (!inScope && onlyPermissive && Object.keys(patch).length === 0) {
            counts.outOfScopePermissive++;
            expect(d.reasons[0]).toBe(`${act.verb}:${act.path} is outside the task's scope`);
          }
          if (inScope && !d.allowed && Object.keys(patch).length === 0) counts.inScopeDeniedByPolicy++;
        },
      ),
      { numRuns: 1000 },
    );
    expect(counts.allowed).toBeGreaterThan(20);
    expect(counts.denied).toBeGreaterThan(20);
    expect(counts.outOfScopePermissive).toBeGreaterThan(5);
    expect(counts.inScopeDeniedByPolicy).toBeGreaterThan(5);
  });

  it("with a live task and only permitting policies, allowed is exactly scopeAllows", () => {
    let allowed = 0;
    let denied = 0;
    fc.assert(
      fc.property(
        granted,
        action,
        fc.constantFrom<readonly CompiledPolicy[]>([permit], [permit, pool[1]!], []),
        (grantedScope, act, policies) => {
          const d = decideAction({
            facts: facts(grantedScope),
            state: issued(grantedScope),
            request: request(act.verb, act.path),
            policies,
            options: clockless("allow"),
          });
          expect(d.allowed).toBe(scopeAllows(validateScope(grantedScope), act));
          if (d.allowed) allowed++;
          else denied++;
        },
      ),
      { numRuns: 500 },
    );
    expect(allowed).toBeGreaterThan(10);
    expect(denied).toBeGreaterThan(10);
  });
});
