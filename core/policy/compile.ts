/**
 * Compiling a policy: every expression parsed and type-checked against the
 * documented context (must be bool), bounded statically (length, AST size and
 * depth, comprehension nesting), once per policy version. An expression that
 * fails is refused with the field, the line:column and the checker's message,
 * so the API server refuses the policy at apply time.
 */
import { createHash } from "node:crypto";
import type { ASTNode, Environment } from "@marcbachmann/cel-js";
import {
  type AgentPolicy,
  type AgentPolicySpec,
  type PolicySelector,
  parseAgentPolicySpec,
  STAGES,
  type Stage,
} from "../api/policy.ts";
import { parseTtl } from "../duration.ts";
import { ValidationError } from "../errors.ts";
import { canonicalize } from "../provenance/canonical-json.ts";
import { type Grant, validateScope } from "../scope.ts";
import { celContext, type PolicyFacts, policyEnvironment } from "./context.ts";

/** Macros that iterate: nesting them multiplies cost, so their depth is capped. */
const COMPREHENSIONS = new Set(["all", "exists", "exists_one", "map", "filter"]);
export const MAX_COMPREHENSION_NESTING = 2;

export type Evaluator = (context: Record<string, unknown>) => unknown;

export interface CompiledRule {
  readonly name: string;
  readonly stages: ReadonlySet<Stage>;
  readonly when?: Evaluator;
  readonly deny?: Evaluator;
  readonly allow?: Evaluator;
  readonly message: string;
  readonly maxTtlMs?: number;
  readonly scopeCeiling?: readonly Grant[];
}

export interface PolicyRef {
  readonly kind: AgentPolicy["kind"];
  readonly namespace?: string;
  readonly name: string;
  /** sha256:<hex> of the policy's content. */
  readonly version: string;
}

export interface CompiledPolicy extends PolicyRef {
  readonly selector: PolicySelector;
  readonly rules: readonly CompiledRule[];
}

let shared: Environment | undefined;
const environment = (): Environment => {
  shared ??= policyEnvironment();
  return shared;
};

/** sha256 over the RFC 8785 form of what defines the policy: kind, namespace, name and spec. */
export function policyVersion(policy: Pick<AgentPolicy, "kind" | "metadata" | "spec">): string {
  const content = {
    kind: policy.kind,
    ...(policy.metadata.namespace ? { namespace: policy.metadata.namespace } : {}),
    name: policy.metadata.name,
    spec: policy.spec,
  };
  return `sha256:${createHash("sha256").update(canonicalize(content), "utf8").digest("hex")}`;
}

/**
 * The selector as selection reads it, fixed once per version: an empty list
 * reads as absent (every value), never as "nothing".
 */
export function normalizeSelector(selector: PolicySelector | undefined): PolicySelector {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(selector ?? {})) {
    if (v === undefined || (Array.isArray(v) && v.length === 0)) continue;
    out[k] = v;
  }
  return out as PolicySelector;
}

/** Compiles one policy; throws ValidationError naming the field (e.g. spec.rules[1].deny) and the position. */
export function compilePolicy(
  policy: Pick<AgentPolicy, "kind" | "metadata" | "spec">,
  {
    warm = true,
    version = policyVersion(policy),
  }: {
    /** Run each expression a few times on sample facts so the first real decision is not the JIT's (the operator does; admission, which only checks, need not). */
    warm?: boolean;
    /** policyVersion(policy), when the caller has it already. */
    version?: string;
  } = {},
): CompiledPolicy {
  const spec: AgentPolicySpec = parseAgentPolicySpec(policy.spec);
  const names = new Set<string>();
  const rules = spec.rules.map((rule, i): CompiledRule => {
    const at = `spec.rules[${i}]`;
    if (names.has(rule.name)) {
      throw new ValidationError(
        `${at}.name`,
        "unique",
        `${at}.name: ${rule.name} is used by an earlier rule (rule unique)`,
      );
    }
    names.add(rule.name);
    if (!rule.deny && !rule.allow && !rule.maxTtl && !rule.scopeCeiling) {
      throw new ValidationError(
        at,
        "effect",
        `${at}: a rule needs deny, allow, maxTtl or scopeCeiling (rule effect)`,
      );
    }
    const stages = new Set<Stage>(rule.stages && rule.stages.length > 0 ? rule.stages : STAGES);
    if ((rule.maxTtl || rule.scopeCeiling) && !stages.has("issuance")) {
      throw new ValidationError(
        `${at}.stages`,
        "narrowing-at-issuance",
        `${at}.stages: maxTtl and scopeCeiling narrow credentials, so the rule must run at issuance (rule narrowing-at-issuance)`,
      );
    }
    return {
      name: rule.name,
      stages,
      ...(rule.when ? { when: compileExpression(rule.when, `${at}.when`) } : {}),
      ...(rule.deny ? { deny: compileExpression(rule.deny, `${at}.deny`) } : {}),
      ...(rule.allow ? { allow: compileExpression(rule.allow, `${at}.allow`) } : {}),
      message: rule.message ?? `denied by rule ${rule.name}`,
      ...(rule.maxTtl ? { maxTtlMs: parseTtl(rule.maxTtl, `${at}.maxTtl`) } : {}),
      ...(rule.scopeCeiling ? { scopeCeiling: validateScope(rule.scopeCeiling, `${at}.scopeCeiling`) } : {}),
    };
  });
  if (warm) warmUp(rules);
  return {
    kind: policy.kind,
    ...(policy.metadata.namespace ? { namespace: policy.metadata.namespace } : {}),
    name: policy.metadata.name,
    version,
    selector: normalizeSelector(spec.selector),
    rules,
  };
}

/** Parses, bounds and type-checks one expression; it must yield bool. */
export function compileExpression(source: string, field: string): Evaluator {
  const env = environment();
  let parsed: ReturnType<Environment["parse"]>;
  try {
    parsed = env.parse(source);
  } catch (err) {
    throw celError(field, "cel-syntax", "syntax error", source, err);
  }
  const nesting = comprehensionNesting(parsed.ast);
  if (nesting > MAX_COMPREHENSION_NESTING) {
    throw new ValidationError(
      field,
      "cel-bounds",
      `${field}: comprehensions (all, exists, exists_one, map, filter) are nested ${nesting} deep; ` +
        `at most ${MAX_COMPREHENSION_NESTING} (rule cel-bounds)`,
    );
  }
  const regex = usesFunction(parsed.ast, FORBIDDEN_FUNCTIONS);
  if (regex) {
    throw new ValidationError(
      field,
      "cel-bounds",
      `${field}: ${regex}() is not allowed: the engine evaluates regular expressions by backtracking, whose cost ` +
        "cannot be bounded; use startsWith, endsWith, contains or ==, (rule cel-bounds)",
    );
  }
  const checked = parsed.check();
  if (!checked.valid) throw celError(field, "cel-type", "type error", source, checked.error);
  if (checked.type !== "bool") {
    throw new ValidationError(
      field,
      "cel-type",
      `${field}: type error at 1:1: the expression yields ${checked.type}, a rule needs bool (rule cel-type)`,
    );
  }
  return parsed;
}

/**
 * How deep comprehensions nest: only a macro's body multiplies cost; the
 * list it runs over (its receiver) adds to it, so a chain such as
 * `xs.filter(...).map(...)` counts once, while `xs.all(x, ys.exists(...))`
 * counts twice.
 */
/**
 * Runs every expression a few times on a sample context: the evaluator's
 * first calls are slow (the engine compiles them), and the first decision
 * after a policy change must not run past the time budget and deny for that
 * reason alone. Outcomes and errors are ignored.
 */
function warmUp(rules: readonly CompiledRule[]): void {
  const context = celContext(SAMPLE_FACTS);
  for (let i = 0; i < 3; i++) {
    for (const r of rules) {
      for (const e of [r.when, r.deny, r.allow]) {
        try {
          e?.(context);
        } catch {
          // a sample context may miss what a rule reads: irrelevant here
        }
      }
    }
  }
}

const SAMPLE_FACTS: PolicyFacts = {
  task: {
    name: "sample",
    namespace: "sample",
    uid: "sample",
    labels: { team: "sample" },
    agent: {
      name: "sample",
      model: { provider: "p", name: "m", version: "v" },
      tools: [{ name: "t", version: "1" }],
      labels: {},
    },
    scope: ["read:sample/*"],
    ttlSeconds: 3600,
    audiences: ["https://sample.example"],
    parent: "",
  },
  delegator: { kind: "User", name: "sample", groups: ["sample"] },
  chain: [
    { kind: "User", name: "sample" },
    { kind: "AgentTask", name: "sample" },
  ],
  stage: "action",
  now: 0,
  action: { name: "read", properties: {} },
  resource: { type: "sample", id: "sample/a", properties: {} },
  context: {},
};

/** Functions refused at apply time: regular expressions run on a backtracking engine here, not RE2. */
const FORBIDDEN_FUNCTIONS = new Set(["matches"]);

function usesFunction(node: unknown, names: ReadonlySet<string>): string | undefined {
  if (node === null || typeof node !== "object") return undefined;
  const n = node as { op?: unknown; args?: unknown };
  const args = Array.isArray(n.args) ? n.args : undefined;
  if ((n.op === "call" || n.op === "rcall") && args && typeof args[0] === "string" && names.has(args[0])) {
    return args[0];
  }
  const children = Array.isArray(n.args) ? n.args.flat() : [n.args];
  for (const c of children) {
    const found = usesFunction(c, names);
    if (found) return found;
  }
  return undefined;
}

function comprehensionNesting(node: unknown): number {
  if (node === null || typeof node !== "object") return 0;
  const n = node as Partial<ASTNode> & { args?: unknown };
  const deepest = (children: unknown): number => {
    let d = 0;
    const visit = (child: unknown) => {
      if (Array.isArray(child)) for (const c of child) visit(c);
      else if (child !== null && typeof child === "object" && "op" in child)
        d = Math.max(d, comprehensionNesting(child));
    };
    visit(children);
    return d;
  };
  const args = Array.isArray(n.args) ? n.args : undefined;
  if (n.op === "rcall" && args && typeof args[0] === "string" && COMPREHENSIONS.has(args[0])) {
    return Math.max(deepest(args[1]), 1 + deepest(args.slice(2)));
  }
  return deepest(n.args);
}

function celError(field: string, rule: string, what: string, source: string, err: unknown): ValidationError {
  const e = err as { message?: string; range?: { start: number }; node?: { pos?: number } } | undefined;
  const offset = e?.range?.start ?? e?.node?.pos ?? 0;
  const before = source.slice(0, offset);
  const line = before.split("\n").length;
  const column = offset - before.lastIndexOf("\n");
  const message = (e?.message ?? String(err)).split("\n")[0]!.trim();
  return new ValidationError(
    field,
    rule,
    `${field}: ${what} at ${line}:${column}: ${message} (rule ${rule})`,
  );
}
